"""kaibuild's command line: build, list, graph, explain."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import shutil
import signal
import sys
from pathlib import Path

import psutil

from kaibuild import __version__
from kaibuild.address import Address, matches
from kaibuild.cache import Store
from kaibuild.cache_admin import build_lock, cache_stats, parse_size, prune
from kaibuild.config import Config, load_config
from kaibuild.context import Context, Options
from kaibuild.errors import ConfigError, KaibuildError
from kaibuild.executor import Result, execute
from kaibuild.graph import build_graph, execution_order
from kaibuild.platform import Platform, parse_platforms
from kaibuild.report import ConsoleReporter, JsonLinesReporter, Reporter
from kaibuild.rule import Node, Rule
from rules.download import DOWNLOAD_DIR_ENV


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "download_dir", None):  # read where the download rule reads it, as if exported
        os.environ[DOWNLOAD_DIR_ENV] = str(args.download_dir.resolve())
    _signals_received.clear()
    handlers = {number: signal.signal(number, _interrupted) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        return args.handler(args)
    except KaibuildError as error:
        sys.stderr.write(f"kaibuild: error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("kaibuild: interrupted\n")
        return 128 + _signals_received[-1] if _signals_received else 130  # 130 for Ctrl-C, 143 for SIGTERM
    except BrokenPipeError:  # e.g. `kaibuild graph | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)


_signals_received: list[int] = []


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM (CI cancelling, `timeout`) stops kaibuild as Ctrl-C does, so
    temp files are removed and nothing half-done is recorded. First the
    docker and go processes it started: python-on-whales leaves them running,
    and a killed parent would leave them building on."""
    _signals_received.append(signum)
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    raise KeyboardInterrupt


def _download_dir_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--download-dir", type=Path, default=None, metavar="DIR",
                         help=f"files for pinned downloads, named as the URL names them or NAME-VERSION-OS-ARCH "
                              f"(the same as {DOWNLOAD_DIR_ENV}=DIR)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaibuild", description="Build a Go monorepo's images per platform, "
                                     "incrementally and offline.")
    parser.add_argument("--version", action="version", version=f"kaibuild {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", "-C", type=Path, default=Path.cwd(), help="workspace root (default: .)")
    common.add_argument("--cache-dir", type=Path, default=None,
                        help="cache directory (default: $KAIBUILD_CACHE_DIR or WORKSPACE/.kaibuild/cache)")
    common.add_argument("--platform", default=None, help="linux/amd64, linux/arm64 or a comma list "
                        "(default: kaibuild.toml's default_platforms)")
    common.add_argument("--offline", action="store_true", help="use no network: pinned base images only")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", parents=[common], help="build targets")
    build.add_argument("targets", nargs="+", help="addresses or patterns: //services:scheduler, //...")
    build.add_argument("--dist", type=Path, default=None, help="where tarballs go (default: WORKSPACE/dist)")
    build.add_argument("--explain", action="store_true", help="say why each executed action ran")
    build.add_argument("--buildkit-cache", type=Path, default=None,
                       help="also export BuildKit's layer cache to DIR and import it from there (cache-to/cache-from)")
    build.add_argument("--keep-going", "-k", action="store_true", help="after a failure, still run independent actions")
    build.add_argument("--json", action="store_true", help="JSON-lines events on stdout instead of progress")
    build.add_argument("-v", "--verbose", action="store_true", help="echo each action's log while it runs")
    _download_dir_option(build)
    build.set_defaults(handler=_build)

    listing = commands.add_parser("list", parents=[common], help="list the targets")
    listing.set_defaults(handler=_list)

    graph = commands.add_parser("graph", parents=[common], help="print the action graph (DOT)")
    graph.add_argument("targets", nargs="*", default=["//..."])
    graph.set_defaults(handler=_graph)

    export = commands.add_parser("export-offline", parents=[common],
                                 help="write a bundle for building with no network on --platform")
    export.add_argument("-o", "--output", type=Path, default=Path("offline-bundle"), help="bundle directory (default: offline-bundle)")
    export.add_argument("--archive", action="store_true",
                        help="write one compressed file (.tar.zst) instead (implied by -o NAME.tar.zst)")
    export.add_argument("--allow-missing", action="store_true",
                        help="write the bundle even if some download or tool could not be made (marked in the manifest)")
    export.add_argument("--json", action="store_true", help="JSON-lines events on stdout instead of progress")
    _download_dir_option(export)
    export.set_defaults(handler=_export)

    importer = commands.add_parser("import-offline", parents=[common],
                                   help="verify a bundle, load its images, place tools, fill the cache")
    importer.add_argument("bundle", type=Path, help="bundle directory or .tar.zst archive")
    importer.set_defaults(handler=_import)

    cache = commands.add_parser("cache", help="inspect or shrink the cache directory")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    stats = cache_commands.add_parser("stats", parents=[common], help="entries, bytes, last run's hit rate")
    stats.set_defaults(handler=_cache_stats)
    prune = cache_commands.add_parser("prune", parents=[common], help="drop least recently used outputs")
    prune.add_argument("--max-size", required=True, help="keep at most this much output, e.g. 2G, 500M")
    prune.set_defaults(handler=_cache_prune)

    explain = commands.add_parser("explain", parents=[common], help="why a target would (not) rebuild")
    explain.add_argument("target")
    explain.set_defaults(handler=_explain)
    return parser


# --- commands -------------------------------------------------------------------
def _build(args: argparse.Namespace) -> int:
    config, ctx = _setup(args)
    reporter: Reporter = JsonLinesReporter() if args.json else ConsoleReporter()
    try:
        platforms = _platforms(args, config)
        roots = _roots(args.targets, config, ctx, platforms)
        ctx.docker.check_can_build(platforms)
        graph = build_graph(roots, ctx)
        with build_lock(ctx.store):  # a prune waits until no build uses the cache
            result = execute(graph, ctx, reporter, explain=args.explain, keep_going=args.keep_going)
            _write_artifacts(roots, result, ctx, args.dist or config.workspace / config.dist_dir, reporter)
        reporter.summary(result.summary)
        return 0 if result.ok else 1
    finally:
        ctx.store.close()


def _list(args: argparse.Namespace) -> int:
    config = load_config(args.workspace.resolve(), _schemas())
    for address, spec in sorted(config.targets.items()):
        print(f"{address}\t{spec.kind}" + ("\t(manual: not in //...)" if spec.manual else ""))
    return 0


def _graph(args: argparse.Namespace) -> int:
    config, ctx = _setup(args)
    try:
        graph = build_graph(_roots(args.targets, config, ctx, _platforms(args, config)), ctx)
        print("digraph kaibuild {")
        for node_id in execution_order(graph):
            print(f'  "{node_id}";')
        for dep, user in sorted(graph.edges, key=str):
            print(f'  "{dep}" -> "{user}";')
        print("}")
        return 0
    finally:
        ctx.store.close()


def _export(args: argparse.Namespace) -> int:
    from kaibuild.offline import export_offline

    platforms = parse_platforms(args.platform) if args.platform else None
    config, ctx = _setup(args, exec_platform=platforms[0] if platforms else None)
    platforms = platforms or config.default_platforms
    if len(platforms) != 1:
        raise ConfigError("a bundle is for one platform", where="--platform", fix="export once per platform")
    reporter: Reporter = JsonLinesReporter() if args.json else ConsoleReporter()
    try:
        ctx.docker.check_can_build(platforms)
        with build_lock(ctx.store):
            archive = args.archive or args.output.name.endswith(".tar.zst")  # -o x.tar.zst: an archive, not a dir
            outcome = export_offline(ctx, platforms[0], args.output.resolve(), archive=archive,
                                     allow_missing=args.allow_missing, reporter=reporter)
        reporter.summary(outcome.result.summary, failures_accepted=outcome.path is not None)
        if outcome.path is None:
            sys.stderr.write("kaibuild: no bundle written; could not make:\n"
                             + "".join(f"  {name}: {hint}\n" for name, hint in outcome.missing.items())
                             + "  fix: supply what is missing as said, or pass --allow-missing to write the rest "
                               "and mark the gaps in manifest.json\n")
            return 1
        if outcome.missing:
            sys.stderr.write("kaibuild: bundle written WITHOUT: " + ", ".join(outcome.missing) + " (see manifest.json 'missing')\n")
        print(outcome.path)
        return 0
    finally:
        ctx.store.close()


def _import(args: argparse.Namespace) -> int:
    from kaibuild.offline import import_offline

    workspace = args.workspace.resolve()
    existed = workspace.exists()
    if existed and not workspace.is_dir():
        raise KaibuildError("is not a directory", where=f"--workspace {workspace}", fix=_IMPORT_WORKSPACES)
    pristine = not existed or not any(workspace.iterdir())  # before the cache may be made inside it
    if not pristine and not (workspace / "go.mod").is_file():
        raise KaibuildError("is neither empty nor a checkout of the project (no go.mod): import would not know what "
                            "to do with what is there", where=f"--workspace {workspace}", fix=_IMPORT_WORKSPACES)
    platform = str(parse_platforms(args.platform)[0]) if args.platform else None
    config_workspace = workspace if (workspace / "go.mod").exists() else None
    new_cache = _first_missing(_cache_dir(args, workspace))
    ctx = _import_context(args, workspace, config_workspace)
    try:
        with build_lock(ctx.store):
            outcome = import_offline(ctx, args.bundle.resolve(), fill_workspace=pristine, platform=platform)
    except BaseException:
        ctx.store.close()
        if pristine:  # leave it as it was: empty, or not there at all
            _empty_out(workspace, remove=not existed)
        elif new_cache is not None:  # nor a cache directory this import made
            shutil.rmtree(new_cache, ignore_errors=True)
        raise
    ctx.store.close()
    envtest = sum(1 for path in outcome.placed if "k8s" in path.relative_to(workspace / "bin").parts[:1])
    sys.stderr.write(f"kaibuild: imported a {outcome.manifest['platform']} bundle: {len(outcome.images)} images loaded, "
                     f"{len(outcome.placed) - envtest} tools and {envtest} envtest files placed under {workspace / 'bin'}"
                     f"{_SOURCE_PLACED[outcome.source_placed].format(workspace)}\n")
    for missing in outcome.manifest.get("missing", []):
        sys.stderr.write(f"kaibuild: note: the bundle lacks {missing['name']}: {missing['how_to_supply']}\n")
    bundle_platform, here = outcome.manifest["platform"], str(ctx.docker.native_platform())
    if bundle_platform != here:  # its builder and tools are for a machine like the one it was exported for
        sys.stderr.write(f"kaibuild: note: this bundle is for {bundle_platform} machines and this one is {here}: the "
                         f"tools in bin/ will not run here, and building offline here also needs a bundle exported "
                         f"for {here} (import it too)\n")
    return 0


_IMPORT_WORKSPACES = ("import into a new or empty directory (it gets the bundle's source), or into the checkout "
                      "the bundle was exported from (it gets the bundle's vendor/, bin/ and the cache)")
_SOURCE_PLACED = {"source": ", source copied into {}", "vendor": ", vendor/ placed in {} (its other files left as they were)",
                  "vendor replaced": ", vendor/ in {} replaced by the bundle's (its other files left as they were)",
                  "": ""}


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (what making it would create)."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _empty_out(directory: Path, *, remove: bool) -> None:
    """Undo a failed import into a directory that was empty before it."""
    if remove:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for entry in directory.iterdir() if directory.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _import_context(args: argparse.Namespace, workspace: Path, config_workspace: Path | None) -> Context:
    """Import may run before the workspace exists (the bundle carries it)."""
    config = load_config(config_workspace or workspace if workspace.exists() else workspace.parent, _schemas())
    config.workspace = workspace
    return Context(config, Store(_cache_dir(args, workspace)), _rules(), Options(offline=True))


def _cache_stats(args: argparse.Namespace) -> int:
    store = Store(_cache_dir(args, args.workspace.resolve()))
    try:
        stats = cache_stats(store)
    finally:
        store.close()
    print(f"cache:       {store.root}")
    print(f"entries:     {stats.entries}")
    print(f"outputs:     {_size(stats.blob_bytes)}")
    for name, size in stats.other_bytes.items():
        print(f"{name + ':':<12} {_size(size)}")
    if stats.last_run:
        rate = f"{stats.hit_rate:.0%}" if stats.hit_rate is not None else "n/a"
        print(f"last run:    {stats.last_run.get('executed', 0)} executed, {stats.last_run.get('cached', 0)} cached "
              f"(hit rate {rate})")
    return 0


def _cache_prune(args: argparse.Namespace) -> int:
    max_bytes = parse_size(args.max_size)
    store = Store(_cache_dir(args, args.workspace.resolve()))
    try:
        result = prune(store, max_bytes)
    finally:
        store.close()
    print(f"removed {result.removed_entries} entries ({_size(result.removed_bytes)}); "
          f"{_size(result.remaining_bytes)} of outputs remain")
    return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{count} B"
        value /= 1024
    return f"{count} B"


def _explain(args: argparse.Namespace) -> int:
    from kaibuild.executor import action_key_material, explain_change

    config, ctx = _setup(args)
    try:
        roots = _roots([args.target], config, ctx, _platforms(args, config))
        graph = build_graph(roots, ctx)
        # Key every dependency first (from the cache, without building), then the target.
        for node_id in execution_order(graph):
            node = ctx.nodes[node_id]
            rule = ctx.rules[node.kind]
            deps = {role: ctx.records[d] for role, d in node.deps.items() if d in ctx.records}
            if len(deps) != len(node.deps):
                pending = next(d for d in node.deps.values() if d not in ctx.records)
                print(f"{node_id}: depends on {pending}, which will rebuild; this rebuilds too if that output changes")
                continue
            material = action_key_material(node, ctx, rule.inputs(node, ctx, deps))
            lines = explain_change(ctx, node_id, material)
            last = ctx.store.actions.get(f"last:{node_id}")
            record = ctx.store.get(last["key"]) if last else None
            if record is not None and lines == ["unchanged: cached"]:
                ctx.records[node_id] = record
            print(f"{node_id}: {'will rebuild' if lines != ['unchanged: cached'] else 'cached'}")
            for line in lines:
                print(f"    {line}")
            if node_id in [r.id for r in roots]:
                print("    inputs of its key:")
                for key, value in sorted(material["inputs"].items()):
                    print(f"      {key}: {value if not isinstance(value, dict) else f'{len(value)} entries'}")
        return 0
    finally:
        ctx.store.close()


# --- helpers --------------------------------------------------------------------
def _rules() -> dict[str, Rule]:
    from rules import all_rules  # the registered rule kinds

    return all_rules()


def _schemas() -> dict[str, dict]:
    return {kind: rule.settings for kind, rule in _rules().items()}


def _setup(args: argparse.Namespace, exec_platform: Platform | None = None) -> tuple[Config, Context]:
    workspace = args.workspace.resolve()
    if not workspace.is_dir():
        raise ConfigError(f"workspace {workspace} is not a directory", where="--workspace")
    if not (workspace / "go.mod").is_file():  # before the cache is made there
        raise ConfigError(f"{workspace} is not a Go module's root (no go.mod)", where=str(workspace / "go.mod"),
                          fix="run kaibuild where go.mod is, or pass --workspace DIR (after import-offline: the "
                              "directory it filled)")
    config = load_config(workspace, _schemas())
    store = Store(_cache_dir(args, workspace))
    layer_cache = getattr(args, "buildkit_cache", None)
    options = Options(offline=args.offline, verbose=getattr(args, "verbose", False), exec_platform=exec_platform,
                      buildkit_cache=layer_cache.resolve() if layer_cache else None)
    return config, Context(config, store, _rules(), options)


def _cache_dir(args: argparse.Namespace, workspace: Path) -> Path:
    env = os.environ.get("KAIBUILD_CACHE_DIR")
    return (args.cache_dir or (Path(env) if env else workspace / ".kaibuild" / "cache")).resolve()


def _platforms(args: argparse.Namespace, config: Config) -> list[Platform]:
    if args.platform is None:
        return config.default_platforms
    try:
        return parse_platforms(args.platform)
    except ConfigError as error:
        raise ConfigError(error.message, where="--platform", fix=error.fix) from None


def _roots(patterns: list[str], config: Config, ctx: Context, platforms: list[Platform]) -> list[Node]:
    selected: list[Address] = []
    for pattern in patterns:
        wildcard = pattern.rstrip().endswith("...")
        found = [a for a in sorted(config.targets) if matches(pattern, a) and not (wildcard and config.targets[a].manual)]
        if not found:
            close = difflib.get_close_matches(pattern, [str(a) for a in config.targets], n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"no target matches {pattern}", where=str(config.path),
                              fix=hint + "see 'kaibuild list' for the targets")
        selected += [a for a in found if a not in selected]
    roots = []
    for address in selected:
        for platform in platforms:
            node = ctx.target_node(address, platform)
            if node not in roots:
                roots.append(node)
    return roots


def _write_artifacts(roots: list[Node], result: Result, ctx: Context, dist: Path, reporter: Reporter) -> None:
    """Copy each built root's artifact to dist/<os>_<arch>/ (temp, then rename)."""
    for node in roots:
        record = result.records.get(node.id)
        artifact = ctx.rules[node.kind].artifact(node, record) if record else None
        if record is None or artifact is None:
            continue
        relpath, name = artifact
        folder = node.id.platform.dirname if node.id.platform else "any"
        dest = dist / folder / name
        ctx.store.export_file(record.files[relpath], dest, executable=relpath in record.executable)
        reporter.artifact(node.id, dest)


if __name__ == "__main__":
    raise SystemExit(main())
