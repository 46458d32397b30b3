"""go_vendor: the module's vendor tree, made by `go mod vendor` on the host.

One output serves every platform (`go mod vendor` ignores build
constraints). Its key covers go.mod, go.sum, the set of packages the
module's files import (not their bodies: editing code without changing
imports cannot change the vendor tree) and the Go version, which decides the
format of vendor/modules.txt. Offline, the workspace's own vendor/ (placed
by import-offline) is the output, as it is.
"""

from __future__ import annotations

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
        if ctx.options.offline:
            return {"offline_vendor": ctx.digests.tree(ws, _workspace_vendor(ws))}
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
            "go.mod": ctx.digests.digest(ws / "go.mod"),
            "go.sum": ctx.digests.digest(ws / "go.sum") if (ws / "go.sum").exists() else None,
            "imports": external,
            "go_version": go_version(),
        }

    def run(self, node: Node, ctx: Context, deps: dict[str, OutputRecord], inputs: dict[str, Any],
            work: Path, log: ActionLog) -> RunResult:
        ws = ctx.workspace
        if ctx.options.offline:  # the vendor tree the bundle placed in the workspace, as it is
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
        command = [go_command(), "mod", "vendor", "-o", str(out / "vendor")]
        log.write("$ " + " ".join(command))
        done = subprocess.run(command, cwd=sandbox, capture_output=True, text=True, env=clean_env(GOFLAGS="-mod=mod"))
        log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            too_new = "requires go >=" in done.stderr  # GOTOOLCHAIN=local: never a toolchain download (C5)
            raise ActionFailed(f"go mod vendor failed: {last}", where=str(ws / "go.mod"),
                               fix="install the Go version go.mod asks for (and put it first on PATH), or lower go.mod's "
                                   "go/toolchain line" if too_new else
                                   "check go.mod/go.sum ('go mod tidy') and that GOPROXY can serve the modules")
        if (out / "vendor").exists() and not (out / "vendor" / "modules.txt").is_file():
            raise ActionFailed("go mod vendor wrote no vendor/modules.txt", where=str(ws / "go.mod"))
        return RunResult(out, {})
