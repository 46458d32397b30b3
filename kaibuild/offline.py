"""Offline bundles: export what a machine with no network needs, import it.

Export builds, through the ordinary graph (so a second export is
incremental), every node the targets' rules say a bundle needs for one
platform, and writes their artifacts with a manifest (kaibuild.bundle). It
also writes cache/actions.json: the action records of those nodes. Keys are
content addresses that do not depend on the machine, so once import has put
the records and their files into the local cache, an offline build finds
base images, tool images and tools already built (the vendor tree is taken
from the workspace's vendor/, which import placed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaibuild import __version__
from kaibuild.bundle import (
    BundleWriter,
    check_destination,
    extract_archive,
    is_bundle_output,
    safe_import_plan,
    verify_bundle,
)
from kaibuild.cache import OutputRecord
from kaibuild.config import CONFIG_NAME
from kaibuild.context import Context
from kaibuild.errors import KaibuildError
from kaibuild.executor import Result, execute
from kaibuild.fingerprint import sha256_file
from kaibuild.graph import build_graph
from kaibuild.platform import Platform
from kaibuild.report import Reporter
from kaibuild.rule import Node, NodeId

CACHE_FILE = "cache/actions.json"
# Never copied into source/: generated output, caches, bundles.
_NOT_SOURCE = {".git", ".kaibuild", "dist", "bin", "vendor", "offline-bundle"}


@dataclass
class ExportOutcome:
    path: Path | None
    result: Result
    missing: dict[str, str]  # node -> how to supply it


def export_offline(ctx: Context, platform: Platform, dest: Path, *, archive: bool, allow_missing: bool,
                   reporter: Reporter) -> ExportOutcome:
    roots: list[Node] = []
    for address in sorted(ctx.config.targets):
        target = ctx.target_node(address, platform)
        for node in ctx.rules[target.kind].export_nodes(target, ctx):
            if node.id not in {r.id for r in roots}:
                roots.append(node)
    check_destination(dest, archive=archive)  # before the work, not after it
    graph = build_graph(roots, ctx)
    # Always keep going: one run then names everything that is missing.
    result = execute(graph, ctx, reporter, keep_going=True)
    by_id = {r.id: r for r in roots}
    failed = [by_id[n] for n in result.summary.failed + result.summary.skipped if n in by_id]
    missing = {str(node.id): ctx.rules[node.kind].supply_hint(node) for node in failed}
    if failed and not allow_missing:
        return ExportOutcome(None, result, missing)
    if any(n not in by_id for n in result.summary.failed):
        return ExportOutcome(None, result, missing)  # something a bundled node needs failed
    writer = BundleWriter(dest, str(platform), _versions(ctx, roots, result))
    try:
        for name, hint in missing.items():
            writer.note_missing(name, "could not be built or fetched when the bundle was exported",
                                f"on the connected machine, {hint}, then export again")
        entries = []
        for node in roots:
            record = result.records.get(node.id)
            if record is None:
                continue
            _add_node(writer, ctx, node, record)
            entries.append(_cache_entry(ctx, node, record, result.keys[node.id], result.materials[node.id]))
        _add_source(writer, ctx)
        scratch = ctx.store.temp_dir("export-")
        try:
            cache_json = scratch / "actions.json"
            cache_json.write_text(json.dumps(entries, indent=1, sort_keys=True))
            writer.add_file(CACHE_FILE, cache_json)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        path = writer.commit(archive=archive)
    except BaseException:
        writer.abort()
        raise
    return ExportOutcome(path, result, missing)


def _add_node(writer: BundleWriter, ctx: Context, node: Node, record: OutputRecord) -> None:
    for bundle_path, record_path in ctx.rules[node.kind].bundle_files(node, record):
        blob = ctx.store.blob_path(record.files[record_path])
        if bundle_path.startswith("images/"):
            reference = node.settings.get("ref") or node.id.label
            writer.add_image(bundle_path, blob, reference, str(record.meta.get("manifest_digest") or ""))
        elif bundle_path.startswith("source/"):
            writer.add_file(bundle_path, blob)
        else:
            writer.add_file(bundle_path, blob, executable=record_path in record.executable)


def _cache_entry(ctx: Context, node: Node, record: OutputRecord, key: str, material: dict[str, Any]) -> dict[str, Any]:
    """What import needs to recreate this node's cache entry on another machine."""
    rule = ctx.rules[node.kind]
    return {
        "node": node.id.label, "platform": str(node.id.platform) if node.id.platform else None,
        "kind": node.kind, "settings": node.settings, "key": key, "material": material, "record": record.to_json(),
        "files": {record_path: bundle_path for bundle_path, record_path in rule.bundle_files(node, record)},
        "pin": ({"ref": node.settings["ref"], "digest": record.meta["manifest_digest"]}
                if node.kind == "base_image" else None),
    }


def _add_source(writer: BundleWriter, ctx: Context) -> None:
    workspace = ctx.workspace
    files = _git_tracked(workspace)
    if files is None:
        sys.stderr.write(f"kaibuild: note: {workspace} is not in a git repository, so source/ holds every file under it "
                         f"but {', '.join(sorted(_NOT_SOURCE))} and bundles\n")
        files = _all_files(workspace)
    writer.add_tree("source", workspace, files)
    if ctx.config.path != workspace / CONFIG_NAME:  # kaibuild's default: the offline machine gets the config used here
        writer.add_file(f"source/{CONFIG_NAME}", ctx.config.path)


def _git_tracked(workspace: Path) -> list[str] | None:
    """The files git tracks under the workspace (which may be any directory of
    a repository), or None when git does not track the workspace's go.mod."""
    listed = subprocess.run(["git", "-C", str(workspace), "ls-files", "-z"], capture_output=True, text=True)
    files = [f for f in listed.stdout.split("\0") if f] if listed.returncode == 0 else []
    if "go.mod" not in files:  # not a repository, or an untracked directory inside one
        return None
    return [f for f in files if f.split("/")[0] not in _NOT_SOURCE and (workspace / f).is_file()]


def _all_files(workspace: Path) -> list[str]:
    """Every file under the workspace but generated ones and bundles (finished,
    or an export's temp dir), wherever they were written."""
    found = []
    for root, dirs, names in os.walk(workspace):
        here = Path(root)
        dirs[:] = [d for d in dirs if not (here == workspace and d in _NOT_SOURCE) and not is_bundle_output(here / d)]
        found += [(here / n).relative_to(workspace).as_posix() for n in names if not is_bundle_output(here / n)]
    return sorted(found)


def _versions(ctx: Context, roots: list[Node], result: Result) -> dict[str, str]:
    from rules.gotool import go_version

    versions = {"kaibuild": __version__, "go": go_version()}
    for node in roots:
        record = result.records.get(node.id)
        meta = record.meta if record else {}
        if meta.get("version"):
            versions[node.id.label] = str(meta.get("resolved_version") or meta["version"])
        elif node.settings.get("version"):
            versions[node.id.label] = str(node.settings["version"])
    envtest = [n for n in roots if n.settings.get("bundle_section") == "envtest" and n.settings.get("version")]
    if envtest:
        versions["envtest"] = str(envtest[0].settings["version"])
    return versions


# --- import -------------------------------------------------------------------------
@dataclass
class ImportOutcome:
    manifest: dict[str, Any]
    images: list[str]
    placed: list[Path]
    source_placed: str  # "source" (all of it), "vendor" or "vendor replaced" (vendor/ only), or ""


def import_offline(ctx: Context, bundle: Path, *, fill_workspace: bool, platform: str | None = None) -> ImportOutcome:
    """Verify everything first; then fill the cache, load images, place tools.

    `fill_workspace`: the workspace was empty (or absent) before this command
    (the cache may since have been made inside it), so it gets all of source/.
    """
    if not bundle.exists():
        raise KaibuildError("does not exist", where=str(bundle),
                            fix="give the bundle directory or the .tar.zst that export-offline wrote")
    # On the store's filesystem, so assembled image tarballs move into it.
    scratch = Path(tempfile.mkdtemp(prefix=".kaibuild-import-", dir=ctx.store.tmp))
    archive = bundle if bundle.is_file() else None
    try:
        if archive is not None:
            bundle = extract_archive(archive, scratch / "bundle")
        assembled = scratch / "assembled"
        try:
            manifest = verify_bundle(bundle, expected_platform=platform, assemble_into=assembled)
        except KaibuildError as error:
            if archive is not None and error.where:  # name the member of the user's file, not our scratch copy
                error.where = error.where.replace(f"{bundle}/", f"{archive}: member ").replace(str(bundle), str(archive))
            raise
        plan = safe_import_plan(bundle, ctx.workspace)
        if not fill_workspace:
            _check_same_module(bundle, ctx.workspace)
        entries = json.loads((bundle / CACHE_FILE).read_text()) if (bundle / CACHE_FILE).is_file() else []
        sources = _entry_sources(entries, manifest, bundle, assembled)
        images = _fill_cache(ctx, sources, entries)  # first: if Docker fails, a checkout is left as it was
        source_placed = _place_source(bundle, ctx.workspace, fill=fill_workspace)
        placed = []
        for src, dest in plan:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.import")
            shutil.copyfile(src, tmp)
            os.chmod(tmp, 0o755 if manifest["files"][src.relative_to(bundle).as_posix()].get("executable") else 0o644)
            os.replace(tmp, dest)
            placed.append(dest)
        return ImportOutcome(manifest, images, placed, source_placed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _entry_sources(entries: list[dict[str, Any]], manifest: dict[str, Any], bundle: Path,
                   assembled: Path) -> dict[str, Path]:
    """Where each cache entry's file is (a bundle file, or an image tarball
    verify assembled), checked to be the verified content the entry names."""
    verified = {rel: (info["sha256"], bundle / rel) for rel, info in manifest["files"].items()}
    verified |= {image["path"]: (image["sha256"], assembled / image["path"]) for image in manifest["images"]}
    sources = {}
    for entry in entries:
        for record_path, bundle_path in entry["files"].items():
            digest, path = verified.get(bundle_path, (None, None))
            if path is None or digest != entry["record"]["files"].get(record_path):
                raise KaibuildError(f"bundle cache entry for {entry['node']} does not match {bundle_path}",
                                    where=CACHE_FILE, fix="re-export the bundle")
            sources[bundle_path] = path
    return sources


def _check_same_module(bundle: Path, workspace: Path) -> None:
    """A checkout gets the bundle's vendor/ only if it has the go.mod and go.sum
    the bundle was exported from: with others that tree would not match."""
    for name in ("go.mod", "go.sum"):
        ours, theirs = workspace / name, bundle / "source" / name
        if ours.is_file() != theirs.is_file() or (ours.is_file() and ours.read_bytes() != theirs.read_bytes()):
            raise KaibuildError(f"{name} differs from the one the bundle was exported from, so the bundle's vendor/ "
                                "would not match it", where=str(ours),
                                fix="check out the commit the bundle was exported from (or export a bundle from this "
                                    "checkout), or import into a new or empty directory")


def _place_source(bundle: Path, workspace: Path, *, fill: bool) -> str:
    """Copy all of source/ into an empty workspace; into a checkout (with the
    bundle's go.mod), only vendor/, replacing any it has: vendor/ is made
    from go.mod, and an old or damaged one is what import repairs. Says which."""
    source = bundle / "source"
    part = source if fill else source / "vendor"
    if not part.is_dir():
        return ""
    if fill:
        workspace.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".kaibuild-source-", dir=workspace.parent if fill else workspace))
    try:
        shutil.copytree(part, tmp / "tree")
        if fill:
            workspace.mkdir(parents=True, exist_ok=True)
            for entry in (tmp / "tree").iterdir():
                os.replace(entry, workspace / entry.name)
            return "source"
        old = workspace / "vendor"
        replaced = old.exists() or old.is_symlink()
        if replaced:
            os.replace(old, tmp / "old-vendor")  # out of the way, so the new one appears whole
        try:
            os.replace(tmp / "tree", old)
        except BaseException:
            if replaced and not old.exists():
                os.replace(tmp / "old-vendor", old)  # put the old one back rather than lose it
            raise
        return "vendor replaced" if replaced else "vendor"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fill_cache(ctx: Context, sources: dict[str, Path], entries: list[dict[str, Any]]) -> list[str]:
    """Put each bundled output into the store and record its action, then load images."""
    images = []
    for entry in entries:
        for record_path, bundle_path in entry["files"].items():
            digest = entry["record"]["files"][record_path]
            blob = ctx.store.blob_path(digest)
            if not blob.exists():
                tmp_dir = ctx.store.temp_dir("import-")
                tmp = tmp_dir / "blob"
                shutil.copyfile(sources[bundle_path], tmp)
                if sha256_file(tmp) != digest:
                    raise KaibuildError(f"{bundle_path} changed while importing", where=str(sources[bundle_path]))
                ctx.store.put_file(tmp)
                tmp_dir.rmdir()
        record = OutputRecord.from_json(entry["record"])
        ctx.store.put(entry["key"], record)
        platform = Platform.parse(entry["platform"]) if entry["platform"] else None
        # As if this machine had built it: offline builds reuse these inputs.
        ctx.store.actions.set(f"last:{NodeId(entry['node'], platform)}", {"key": entry["key"], "material": entry["material"]})
        if entry["pin"]:
            ctx.store.actions.set(f"pin:{entry['pin']['ref']}@{entry['platform']}", entry["pin"]["digest"])
        node = Node(id=NodeId(entry["node"], platform), kind=entry["kind"], settings=entry["settings"])
        rule = ctx.rules[entry["kind"]]
        if rule.bundle_section(node) == "images":
            rule.restore(node, ctx, record)
            images.append(node.settings.get("ref") or node.id.label)
    return images

