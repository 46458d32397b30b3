"""go_vendor: the module's vendor tree, made by `go mod vendor` on the host.

One output serves every platform (`go mod vendor` ignores build
constraints). Its key covers go.mod, go.sum, the set of packages the
module's files import (not their bodies: editing code without changing
imports cannot change the vendor tree) and the Go version, which decides the
format of vendor/modules.txt. Offline, the workspace's own vendor/ (placed
by import-offline) is the output, as it is. Either way Go itself checks the
tree against go.mod before it is used or written (`go list -mod=vendor`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from kaibuild.cache import OutputRecord
from kaibuild.context import Context
from kaibuild.errors import ActionFailed, KaibuildError
from kaibuild.report import ActionLog
from kaibuild.rule import Node, Rule, RunResult
from rules.gotool import clean_env, go_command, go_version, imports_of, module_go_files


def _workspace_vendor(ws: Path) -> list[str]:
    """The files of the workspace's own vendor/ (offline builds use it)."""
    vendor = ws / "vendor"
    if not (vendor / "modules.txt").is_file():
        raise KaibuildError("--offline needs the vendor tree in the workspace, and vendor/modules.txt is missing",
                            where=str(vendor), fix="import an offline bundle (kaibuild import-offline), which places vendor/")
    return sorted(p.relative_to(ws).as_posix() for p in vendor.rglob("*") if p.is_file())


class GoVendorRule(Rule):
    kind = "go_vendor"
    version = 1
    settings: dict[str, type | tuple[type, ...]] = {}
    platform_independent = True

    def expand(self, node: Node, ctx: Context) -> list[Node]:
        return []

    def bundle_section(self, node: Node) -> str | None:
        return "source"

    def bundle_files(self, node: Node, record: OutputRecord) -> list[tuple[str, str]]:
        return [(f"source/{rel}", rel) for rel in sorted(record.files)]  # vendor/ in place

    def inputs(self, node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> dict[str, Any]:
        ws = ctx.workspace
        go_files = {"go.mod": ctx.digests.digest(ws / "go.mod"),
                    "go.sum": ctx.digests.digest(ws / "go.sum") if (ws / "go.sum").exists() else None}
        if ctx.options.offline:  # go.mod too: an edit after import must be checked against vendor/ again
            return {"offline_vendor": ctx.digests.tree(ws, _workspace_vendor(ws)), **go_files}
        imports: set[str] = set()
        for rel in module_go_files(ws):
            digest = ctx.digests.digest(ws / rel)  # stat-cached: unchanged files are not read
            found = ctx.store.actions.get(f"imports:{digest}")
            if found is None:
                found = sorted(imports_of((ws / rel).read_text(errors="replace")))
                ctx.store.actions.set(f"imports:{digest}", found)
            imports.update(found)
        module = ctx.go_module
        external = sorted(p for p in imports if "." in p.split("/")[0] and p != module and not p.startswith(module + "/"))
        return {
            **go_files,
            "imports": external,
            "go_version": go_version(),
        }

    def run(self, node: Node, ctx: Context, deps: dict[str, OutputRecord], inputs: dict[str, Any],
            work: Path, log: ActionLog) -> RunResult:
        ws = ctx.workspace
        if ctx.options.offline:  # the vendor tree the bundle placed in the workspace, as it is
            _check_consistent(ws, ws, log,
                              fix="undo the go.mod/go.sum edit, or export a bundle from this go.mod and import it here "
                                  "(import replaces vendor/)",
                              fix_missing="import the bundle again (it replaces vendor/); if the code now imports a "
                                          "package the bundle never had, export a new bundle from this code")
            out = work / "out"
            for rel in inputs["offline_vendor"]:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ws / rel, out / rel)
            out.mkdir(exist_ok=True)
            return RunResult(out, {})
        sandbox = work / "module"
        for rel in ["go.mod", "go.sum", *module_go_files(ws)]:
            if (ws / rel).exists():
                (sandbox / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ws / rel, sandbox / rel)
        out = work / "out"
        out.mkdir()
        command = [go_command(), "mod", "vendor"]
        log.write("$ " + " ".join(command))
        done = subprocess.run(command, cwd=sandbox, capture_output=True, text=True, env=clean_env(GOFLAGS="-mod=mod"))
        log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise _go_failed("go mod vendor failed", done, where=str(ws / "go.mod"),
                             fix="check go.mod/go.sum ('go mod tidy') and that GOPROXY can serve the modules")
        vendor = sandbox / "vendor"
        if vendor.exists():  # a module with no dependencies has no vendor tree
            if not (vendor / "modules.txt").is_file():
                raise ActionFailed("go mod vendor wrote no vendor/modules.txt", where=str(ws / "go.mod"))
            tidy = "run 'go mod tidy' and check go.mod/go.sum"
            _check_consistent(sandbox, ws, log, fix=tidy, fix_missing=tidy)
            os.replace(vendor, out / "vendor")
        return RunResult(out, {})


# Each package's errors, one per line; -e keeps going past errors that are
# not the vendor tree's (an embed pattern whose files the sandbox lacks).
_LIST_ERRORS = '{{with .Error}}{{.}}{{"\\n"}}{{end}}{{range .DepsErrors}}{{.}}{{"\\n"}}{{end}}'


def _check_consistent(module_dir: Path, workspace: Path, log: ActionLog, *, fix: str, fix_missing: str) -> None:
    """Go's own check that vendor/modules.txt matches go.mod (fatal to any
    -mod=vendor command) and that every package the module imports is
    vendored. `go list` reads only imports, so it is quick (2 s on KAI).
    Errors name the workspace's files, whichever copy was checked."""
    command = [go_command(), "list", "-e", "-mod=vendor", "-f", _LIST_ERRORS, "./..."]
    log.write("$ " + " ".join(command))
    done = subprocess.run(command, cwd=module_dir, capture_output=True, text=True,
                          env=clean_env(GOFLAGS="-mod=vendor", GOPROXY="off"))
    log.write(done.stdout + done.stderr)
    where = f"{workspace / 'go.mod'} and {workspace / 'vendor' / 'modules.txt'}"
    if done.returncode != 0:
        raise _go_failed("the vendor tree does not match go.mod", done, where=where, fix=fix)
    unvendored = sorted({line for line in done.stdout.splitlines() if "-mod=vendor" in line})
    if unvendored:  # "import lookup disabled by -mod=vendor": imported, not vendored
        raise ActionFailed(f"the vendor tree lacks a package the module imports: {unvendored[0]}", where=where,
                           fix=fix_missing, log_tail="\n".join(unvendored)[-4000:])


def _go_failed(what: str, done: subprocess.CompletedProcess[str], *, where: str, fix: str) -> ActionFailed:
    """The error for a failed Go command, with Go's own first line of it."""
    lines = done.stderr.strip().splitlines()
    if "requires go >=" in done.stderr:  # GOTOOLCHAIN=local: never a toolchain download (C5)
        line = next(text for text in lines if "requires go >=" in text)
        return ActionFailed(f"{what}: {line}", where=where, log_tail=done.stderr[-4000:],
                            fix="install the Go version go.mod asks for (and put it first on PATH), "
                                "or lower go.mod's go/toolchain line")
    # Go's header lines name a scratch copy; the first line after them says what is wrong.
    first = next((text.strip() for text in lines if not text.startswith(("go: downloading", "go: inconsistent vendoring"))),
                 f"exit {done.returncode}")
    return ActionFailed(f"{what}: {first}", where=where, fix=fix, log_tail=done.stderr[-4000:])
