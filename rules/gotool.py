"""Helpers shared by the Go rules: the host's Go command, a clean Go
environment, and `go list` over a view of the workspace with a vendor tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from kaibuild.cache import OutputRecord, Store
from kaibuild.errors import ActionFailed, KaibuildError
from kaibuild.fingerprint import key_of

if TYPE_CHECKING:
    from kaibuild.context import Context

# Directories `go` never treats as packages of the main module, plus our own.
SKIPPED_DIRS = {"vendor", "testdata", ".git", ".kaibuild", "dist", "bin", "node_modules"}


def go_command() -> str:
    found = shutil.which("go")
    if not found:
        raise KaibuildError("the Go command is not on PATH", where="PATH",
                            fix="install Go (scripts/setup-env.sh puts Go 1.24.4 in /var/lib/kaibuild-env/go/bin)")
    return found


@cache
def go_version() -> str:
    return subprocess.run([go_command(), "env", "GOVERSION"], capture_output=True, text=True,
                          env=clean_env(), check=True).stdout.strip()


# Go settings that say where modules come from: kept from the user's setup
# (environment or `go env -w`), since they do not change what is built.
_MODULE_SOURCE_VARS = ("GOPROXY", "GONOPROXY", "GOPRIVATE", "GONOSUMDB", "GOSUMDB", "GOINSECURE", "GOMODCACHE")


def _module_source_settings() -> dict[str, str]:
    # Asked of `go env` (which also reads `go env -w` settings) once per
    # distinct environment, since the answer depends on it.
    return dict(_go_env_values(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("GO") or k == "HOME"))))


@cache
def _go_env_values(go_environ: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GO")}, **dict(go_environ)}
    env.pop("GOFLAGS", None)
    done = subprocess.run([go_command(), "env", "-json", *_MODULE_SOURCE_VARS], capture_output=True, text=True, env=env)
    values = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {}
    return tuple(sorted((k, v) for k, v in values.items() if v))


def clean_env(**extra: str) -> dict[str, str]:
    """The host environment with no Go setting of the project's: no
    GOFLAGS=-mod=vendor, GOOS, GOBIN..., whether exported or set with
    `go env -w` (GOENV=off), so kaibuild's Go commands behave the same
    whatever the shell had (field case C4). Where modules come from is kept."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("GO") or k.startswith("CGO_"))}
    env.update(_module_source_settings())
    env.update({"GOENV": "off", "GOTOOLCHAIN": "local", "GOWORK": "off", "GOFLAGS": ""})
    env.update(extra)
    return env


def module_go_files(workspace: Path) -> list[str]:
    """Relative paths of the main module's .go files (not vendor, testdata,
    hidden or _ directories, nor nested modules)."""
    found = []
    for root, dirs, files in os.walk(workspace):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith((".", "_"))
                         and not (here / d / "go.mod").exists())
        found.extend((here / f).relative_to(workspace).as_posix() for f in sorted(files) if f.endswith(".go"))
    return found


def module_fingerprint(ctx: Context) -> str:
    """One digest over go.mod, go.sum and every .go file of the main module,
    computed once per run (file digests come from the stat cache)."""
    found = ctx.memo.get("go-module-fingerprint")
    if found is None:
        files = [f for f in ("go.mod", "go.sum") if (ctx.workspace / f).exists()] + module_go_files(ctx.workspace)
        found = ctx.memo["go-module-fingerprint"] = key_of(ctx.digests.tree(ctx.workspace, files))
    return str(found)


_IMPORT_BLOCK = re.compile(r"^import\s*\((.*?)\)", re.S | re.M)
_IMPORT_LINE = re.compile(r"^import\s+(?:[\w.]+\s+)?\"([^\"]+)\"", re.M)
_QUOTED = re.compile(r"\"([^\"]+)\"")
_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def imports_of(source: str) -> set[str]:
    """Import paths a Go file declares (its import clause only)."""
    head = _COMMENTS.sub("", source)
    body = re.search(r"^\s*(?:func|type|var|const)\b", head, re.M)
    head = head[: body.start()] if body else head
    paths = set(_IMPORT_LINE.findall(head))
    for block in _IMPORT_BLOCK.findall(head):
        paths.update(_QUOTED.findall(block))
    return paths


def vendor_view(store: Store, vendor: OutputRecord) -> Path:
    """A directory holding `vendor/` for this vendor output, made once per
    digest and shared: a read-only hard-linked copy of the store's files."""
    view = store.root / "views" / f"vendor-{vendor.digest[:24]}"
    if not view.exists():
        tmp = store.temp_dir("vendor-view-")
        store.materialize(vendor, tmp)
        view.parent.mkdir(exist_ok=True)
        try:
            os.replace(tmp, view)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return view


def list_packages(workspace: Path, vendor_dir: Path, package: str, env: dict[str, str], scratch: Path) -> list[dict]:
    """`go list -deps` of `package` for the env's GOOS/GOARCH, against the
    vendor tree, without touching the network or the workspace."""
    view = scratch / "golist-view"
    view.mkdir(parents=True)
    for entry in workspace.iterdir():
        if entry.name not in ("vendor", ".kaibuild", "dist", ".git"):
            (view / entry.name).symlink_to(entry)
    (view / "vendor").symlink_to(vendor_dir / "vendor" if (vendor_dir / "vendor").exists() else _empty(scratch))
    fields = "Dir,ImportPath,Standard,Module,GoFiles,CgoFiles,CFiles,CXXFiles,HFiles,SFiles,SysoFiles,EmbedFiles,Error,DepsErrors"
    command = [go_command(), "list", "-mod=vendor", "-deps", f"-json={fields}", package]
    done = subprocess.run(command, cwd=view, capture_output=True, text=True,
                          env=clean_env(GOPROXY="off", **env))
    if done.returncode != 0:
        raise ActionFailed(f"go list {package} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}",
                           where=str(workspace), log_tail=done.stderr[-4000:],
                           fix="check the package path and that go.mod, go.sum and the sources agree (try 'go build' there)")
    packages = []
    decoder = json.JSONDecoder()
    text, position = done.stdout, 0
    while position < len(text):
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        value, position = decoder.raw_decode(text, position)
        packages.append(value)
    for pkg in packages:
        pkg["Dir"] = _unview(pkg.get("Dir", ""), view)
    return packages


def _unview(directory: str, view: Path) -> str:
    """A package directory relative to the workspace root (so a result can be
    reused by any copy of the same tree), or as Go gave it if outside."""
    try:
        return Path(directory).relative_to(view).as_posix()
    except ValueError:
        return directory


def _empty(scratch: Path) -> Path:
    empty = scratch / "empty-vendor"
    empty.mkdir(exist_ok=True)
    return empty
