"""go_tool: a Go tool (controller-gen, ...) at a pinned version, built by
`go install <package>@<version>` on the host for the node's platform.

It runs in its own clean Go environment: none of the project's Go settings
(GOFLAGS=-mod=vendor, GOOS, GOBIN... -- field case C4: `go install m@v`
refuses under -mod=vendor) leak in; GOOS/GOARCH come from the platform, a
private GOPATH in the action's work directory receives the binary
($GOPATH/bin/<goos>_<goarch>/ when cross-compiling; GOBIN is never set, as
Go refuses to install cross-compiled binaries there), and the user's module
cache is shared so downloads happen once.

The version is resolved once to a canonical one (a branch such as
"release-0.20" becomes its pseudo-version) with `go mod download -json`,
trying the package path and then each shorter prefix to find the module;
the result is remembered in the action cache, so the key stays stable and
offline builds can use it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kaibuild.cache import OutputRecord
from kaibuild.context import Context
from kaibuild.errors import ActionFailed, ConfigError, KaibuildError, PlatformMismatch
from kaibuild.image_archive import elf_arch
from kaibuild.platform import Platform
from kaibuild.report import ActionLog
from kaibuild.rule import Node, Rule, RunResult
from rules.gotool import clean_env, go_command, go_version

INSTALL_FIX = "check the version exists and GOPROXY can serve it; offline, export a bundle first"
_MAJOR_SUFFIX = re.compile(r"^v[0-9]+$")
_NOT_A_MODULE = ("not found", "404", "410", "no such file or directory", "malformed module path", "missing dot in first path element")


# --- pure planning (unit-tested) ---------------------------------------------------------------
def tool_name(settings: Mapping[str, Any]) -> str:
    """The binary's name: setting `name`, else what `go install` calls it (the
    package path's last element, or the one before a /vN major suffix)."""
    name = settings.get("name")
    if name:
        return str(name)
    parts = str(settings["package"]).rstrip("/").split("/")
    if len(parts) > 1 and _MAJOR_SUFFIX.match(parts[-1]) and parts[-1] not in ("v0", "v1"):
        return parts[-2]
    return parts[-1]


def platform_env(platform: Platform, cgo_enabled: bool = False) -> dict[str, str]:
    """The settings of the build that decide the binary: GOOS/GOARCH (and
    GOARM for arm variants), CGO_ENABLED."""
    env = {"GOOS": platform.os, "GOARCH": platform.arch, "CGO_ENABLED": "1" if cgo_enabled else "0"}
    if platform.arch == "arm" and platform.variant:
        env["GOARM"] = platform.variant.removeprefix("v")
    return env


def install_env(base: Mapping[str, str], platform: Platform, *, cgo_enabled: bool, gopath: Path,
                gomodcache: str) -> dict[str, str]:
    """The environment of `go install`: `base` (a clean_env(): the host's
    environment without its Go settings, GOPROXY & co. kept) plus our own.
    """
    env = {k: v for k, v in base.items() if not (k.startswith("GO") or k.startswith("CGO_"))
           or k in ("GOPROXY", "GONOSUMDB", "GONOSUMCHECK", "GOPRIVATE", "GONOPROXY", "GOSUMDB", "GOINSECURE", "GOCACHE")}
    env.update({"GOFLAGS": "", "GOTOOLCHAIN": "local", "GOWORK": "off", "GOPATH": str(gopath), "GOMODCACHE": gomodcache})
    env.update(platform_env(platform, cgo_enabled))
    return env


def install_command(go: str, package: str, version: str) -> list[str]:
    return [go, "install", "-trimpath", f"{package}@{version}"]


def module_candidates(package: str) -> list[str]:
    """Module paths that may hold `package`, longest first (as `go install` picks)."""
    parts = package.strip("/").split("/")
    return ["/".join(parts[:n]) for n in range(len(parts), 0, -1) if n > 1 or "." in parts[0]]


def check_settings(node: Node) -> tuple[str, str]:
    package, version = str(node.settings.get("package", "")), str(node.settings.get("version", ""))
    if not package or package.startswith((".", "/")) or "@" in package or " " in package:
        raise ConfigError(f"go_tool package {package!r} must be a full import path without @version",
                          where=node.where, fix='write e.g. package = "sigs.k8s.io/controller-tools/cmd/controller-gen"')
    if not version or any(c.isspace() for c in version) or "@" in version:
        raise ConfigError(f"go_tool version {version!r} is not a version", where=node.where,
                          fix='write a tag or branch, e.g. version = "v0.16.1"')
    return package, version


# --- the rule ------------------------------------------------------------------------------------
class GoToolRule(Rule):
    kind = "go_tool"
    version = 1
    settings = {
        "package": str,  # e.g. "sigs.k8s.io/controller-tools/cmd/controller-gen"
        "version": str,  # a tag ("v0.16.1") or branch ("release-0.20"), resolved once to a canonical version
        "name": str,  # the binary's name in bin/ (default: from the package path)
        "cgo_enabled": bool,
    }
    required = frozenset({"package", "version"})
    offline_reuses_inputs = True  # offline, the bundle's recorded inputs stand in

    def expand(self, node: Node, ctx: Context) -> list[Node]:
        return []

    def inputs(self, node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> dict[str, Any]:
        package, version = check_settings(node)
        module, resolved = resolve(node, ctx, package, version)
        return {
            "package": package,
            "module": module,
            "resolved_version": resolved,
            "go_version": go_version(),
            "env": platform_env(_platform(node), bool(node.settings.get("cgo_enabled", False))),
        }

    def run(self, node: Node, ctx: Context, deps: dict[str, OutputRecord], inputs: dict[str, Any],
            work: Path, log: ActionLog) -> RunResult:
        platform = _platform(node)
        name = tool_name(node.settings)
        gopath = work / "gopath"
        gopath.mkdir()
        gomodcache = module_cache()
        env = install_env(clean_env(), platform, cgo_enabled=bool(node.settings.get("cgo_enabled", False)),
                          gopath=gopath, gomodcache=gomodcache)
        if ctx.options.offline:
            # Only what the module cache holds: its download cache is a proxy in GOPROXY's
            # file layout (GOPROXY=off would fail: `go install m@v` looks up deprecations).
            env["GOPROXY"] = (Path(gomodcache) / "cache" / "download").as_uri()
        command = install_command(go_command(), inputs["package"], inputs["resolved_version"])
        log.write("$ " + " ".join(f"{k}={env[k]}" for k in ("GOOS", "GOARCH", "CGO_ENABLED")) + " " + " ".join(command))
        scratch = work / "cwd"  # outside any module, so no go.mod or go.work is consulted
        scratch.mkdir()
        done = subprocess.run(command, cwd=scratch, capture_output=True, text=True, env=env)
        log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            raise ActionFailed(f"go install {inputs['package']}@{inputs['resolved_version']} failed: {last}",
                               where=node.where or str(node.id), fix=INSTALL_FIX, log_tail=done.stderr[-4000:])
        binary = _installed_binary(gopath / "bin", node)
        out = work / "out"
        (out / "bin").mkdir(parents=True)
        shutil.move(binary, out / "bin" / name)
        os.chmod(out / "bin" / name, 0o755)
        with open(out / "bin" / name, "rb") as handle:
            arch = elf_arch(handle.read(64))
        if arch != platform.arch:
            raise PlatformMismatch(f"go tool {name} ({inputs['package']}): built a {arch or 'non-ELF'} binary, "
                                   f"expected {platform.arch} for {platform}", where=node.where or str(node.id),
                                   fix="check that nothing overrides GOOS/GOARCH for the host's go command")
        return RunResult(out, {"module": inputs["module"], "version": inputs["resolved_version"], "package": inputs["package"]})

    def artifact(self, node: Node, record: OutputRecord) -> tuple[str, str] | None:
        name = tool_name(node.settings)
        return f"bin/{name}", name

    def bundle_section(self, node: Node) -> str | None:
        return "tools"


# --- helpers ------------------------------------------------------------------------------------
def module_cache() -> str:
    """The user's usual module cache, so downloads are shared."""
    if os.environ.get("GOMODCACHE"):
        return os.environ["GOMODCACHE"]
    done = subprocess.run([go_command(), "env", "GOMODCACHE"], capture_output=True, text=True, env=clean_env())
    found = done.stdout.strip()
    if done.returncode != 0 or not found:
        raise KaibuildError("cannot find Go's module cache ('go env GOMODCACHE' failed)", where="go env",
                            fix="set GOMODCACHE (or GOPATH, or HOME) in the environment")
    return found


def resolve(node: Node, ctx: Context, package: str, version: str) -> tuple[str, str]:
    """(module path, canonical version) of package@version, resolved once and
    remembered in the action cache."""
    memo_key = f"gotool-version:{package}@{version}"
    known = ctx.store.actions.get(memo_key)
    if known is not None:
        return known["module"], known["version"]
    name = tool_name(node.settings)
    if ctx.options.offline:
        raise KaibuildError(f"go tool {name} ({package}@{version}) has never been resolved, and --offline forbids the module proxy",
                            where=node.where or str(node.id),
                            fix="export a bundle first (or run the build once with network access)")
    env = clean_env(GOMODCACHE=module_cache())  # GOFLAGS="", GOTOOLCHAIN=local, GOWORK=off; GOPROXY & co. kept
    scratch = ctx.store.temp_dir("gotool-resolve-")
    errors: list[tuple[str, str]] = []
    try:
        for candidate in module_candidates(package):
            done = subprocess.run([go_command(), "mod", "download", "-json", f"{candidate}@{version}"],
                                  cwd=scratch, capture_output=True, text=True, env=env)
            info = _json_object(done.stdout)
            if done.returncode == 0 and info.get("Version") and not info.get("Error"):
                module, resolved = str(info.get("Path") or candidate), str(info["Version"])
                break
            errors.append((candidate, str(info.get("Error") or done.stderr.strip() or f"exit {done.returncode}")))
        else:
            raise ActionFailed(f"go tool {name}: cannot resolve {package}@{version}: {_best_error(errors)}",
                               where=node.where or str(node.id), fix=INSTALL_FIX,
                               log_tail="\n".join(f"{c}@{version}: {e}" for c, e in errors)[-4000:])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ctx.store.actions.set(memo_key, {"module": module, "version": resolved})
    return module, resolved


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _best_error(errors: list[tuple[str, str]]) -> str:
    """The error that says most: one from a module that exists (a bad
    version), else the one for the package path itself."""
    for _, error in errors:
        if not any(marker in error for marker in _NOT_A_MODULE):
            return error.strip().splitlines()[-1]
    return errors[0][1].strip().splitlines()[-1] if errors else "no module path to try"


def _installed_binary(bin_dir: Path, node: Node) -> Path:
    """The one file `go install` wrote: $GOPATH/bin/<goos>_<goarch>/ when
    cross-compiling, $GOPATH/bin/ when the platform is the host's."""
    found = [p for p in bin_dir.rglob("*") if p.is_file()] if bin_dir.is_dir() else []
    if len(found) != 1:
        raise ActionFailed(f"go install left {len(found)} files in GOPATH/bin, expected one binary: "
                           f"{[p.relative_to(bin_dir).as_posix() for p in found][:5]}", where=node.where or str(node.id),
                           fix="the package must be a main package (a command)")
    return found[0]


def _platform(node: Node) -> Platform:
    assert node.id.platform is not None, "Go tools are always built for one platform"
    return node.id.platform
