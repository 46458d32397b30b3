"""go_binary: one Go main package compiled for one platform inside the
builder image, from a sandbox holding exactly the files `go list` says the
build reads plus the vendor tree, with no network in the container.

The key covers those files' digests (per GOOS/GOARCH, since build
constraints pick different files), go.mod and go.sum, the flags, and the
builder image and vendor tree by their output digests.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from kaibuild.address import Address
from kaibuild.cache import OutputRecord
from kaibuild.context import Context
from kaibuild.errors import ConfigError, PlatformMismatch
from kaibuild.fingerprint import key_of
from kaibuild.image_archive import elf_arch
from kaibuild.platform import Platform
from kaibuild.report import ActionLog
from kaibuild.rule import Node, Rule, RunResult
from rules.docker_image import image_name
from rules.gotool import go_version, list_packages, module_fingerprint, vendor_view

# Bump when what _packages stores changes shape, so old cache entries are not misread.
_GOLIST_FORMAT = 2
_FILE_LISTS = ("GoFiles", "CgoFiles", "CFiles", "CXXFiles", "HFiles", "SFiles", "SysoFiles", "EmbedFiles")


class GoBinaryRule(Rule):
    kind = "go_binary"
    version = 2
    settings = {
        "package": str,  # e.g. "./cmd/scheduler"
        "output": str,  # e.g. "bin/scheduler-{arch}"
        "builder": str,  # address of the docker_image with the Go toolchain
        "vendor": str,  # address of the go_vendor target
        "cgo_enabled": bool,
        "arch_env": dict,  # {arch: {NAME: value}}, e.g. CC per target arch
        "ldflags": str,
        "tags": list,
    }
    required = frozenset({"package", "output", "builder", "vendor"})

    def expand(self, node: Node, ctx: Context) -> list[Node]:
        builder = ctx.target_node(self._address(node, "builder"), ctx.exec_platform, wanted_by=node.where)
        vendor = ctx.target_node(self._address(node, "vendor"), None, wanted_by=node.where)
        node.deps = {"builder": builder.id, "vendor": vendor.id}
        return [builder, vendor]

    def inputs(self, node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> dict[str, Any]:
        env = self._go_env(node)
        packages = self._packages(node, ctx, deps["vendor"], env | self._tag_env(node))
        files = []
        for pkg in packages:
            if pkg.get("Standard") or not (pkg.get("Module") or {}).get("Main"):
                continue  # the standard library is the builder's; modules come from vendor
            directory = Path(pkg["Dir"])  # relative to the workspace
            files += [(directory / name).as_posix() for key in _FILE_LISTS for name in pkg.get(key) or []]
        files += [f for f in ("go.mod", "go.sum") if (ctx.workspace / f).exists()]
        return {
            "files": ctx.digests.tree(ctx.workspace, files),
            "env": env,
            "ldflags": self._ldflags(node, ctx),
            "tags": sorted(node.settings.get("tags", [])),
        }

    def run(self, node: Node, ctx: Context, deps: dict[str, OutputRecord], inputs: dict[str, Any],
            work: Path, log: ActionLog) -> RunResult:
        platform = _platform(node)
        sandbox = work / "src"
        for rel in inputs["files"]:
            (sandbox / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ctx.workspace / rel, sandbox / rel)
        ctx.store.materialize(deps["vendor"], sandbox)
        output = self._output(node)
        out = work / "out"
        (out / output).parent.mkdir(parents=True)
        gocache = ctx.store.root / "go-build"  # Go's own cache: safe to share, only speeds up
        gocache.mkdir(exist_ok=True)
        command = ["go", "build", "-mod=vendor", "-trimpath", "-buildvcs=false", "-o", f"/out/{output}"]
        # An empty build ID: Go's default one hashes the source files, so a
        # comment-only edit would change the binary and rebuild every image.
        command += ["-ldflags", f"{inputs['ldflags']} -buildid=".strip()]
        if inputs["tags"]:
            command += ["-tags", ",".join(inputs["tags"])]
        command.append(node.settings["package"])
        env = inputs["env"] | {"GOFLAGS": "", "GOPROXY": "off", "GOTOOLCHAIN": "local", "GOWORK": "off",
                               "GOCACHE": "/gocache", "HOME": "/tmp", "GOPATH": "/tmp/go"}
        ctx.docker.run(image_name(ctx.nodes[node.deps["builder"]], deps["builder"]), command, log=log,
                       mounts=[(sandbox, "/src", True), (out, "/out", False), (gocache, "/gocache", False)],
                       env=env, workdir="/src", user=f"{os.getuid()}:{os.getgid()}")
        binary = out / output
        arch = elf_arch(binary.read_bytes()[:64])
        if arch != platform.arch:
            raise PlatformMismatch(f"{node.id.label}: built a {arch or 'non-ELF'} binary, expected {platform.arch}",
                                   where=node.where, fix="check GOARCH/arch_env settings and the builder image")
        return RunResult(out, {"arch": arch})

    # --- helpers -----------------------------------------------------------------
    def _packages(self, node: Node, ctx: Context, vendor: OutputRecord, env: dict[str, str]) -> list[dict]:
        """`go list -deps` of the package, reused while no .go file of the
        module, go.mod, the vendor tree, the Go version or the env changed."""
        memo_key = key_of({"format": _GOLIST_FORMAT, "module": module_fingerprint(ctx), "vendor": vendor.digest, "env": env,
                           "package": node.settings["package"], "go": go_version()})
        cached = ctx.store.actions.get(f"golist:{memo_key}")
        if cached is not None:
            return cached
        scratch = ctx.store.temp_dir("golist-")
        try:
            packages = list_packages(ctx.workspace, vendor_view(ctx.store, vendor), node.settings["package"], env, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        ctx.store.actions.set(f"golist:{memo_key}", packages)
        return packages

    def _go_env(self, node: Node) -> dict[str, str]:
        platform = _platform(node)
        env = {"GOOS": platform.os, "GOARCH": platform.arch,
               "CGO_ENABLED": "1" if node.settings.get("cgo_enabled", False) else "0"}
        if platform.arch == "arm" and platform.variant:
            env["GOARM"] = platform.variant.removeprefix("v")
        extra = node.settings.get("arch_env", {}).get(platform.arch, {})
        if not isinstance(extra, dict):
            raise ConfigError(f"arch_env.{platform.arch} must be a table of NAME = \"value\"", where=node.where)
        return env | {k: str(v) for k, v in extra.items()}

    def _tag_env(self, node: Node) -> dict[str, str]:
        tags = node.settings.get("tags", [])
        return {"GOFLAGS": f"-tags={','.join(tags)}"} if tags else {}

    def _ldflags(self, node: Node, ctx: Context) -> str:
        text = node.settings.get("ldflags", "")
        return text.format(module=ctx.go_module) if "{module}" in text else text

    def _output(self, node: Node) -> str:
        platform = _platform(node)
        path = node.settings["output"].format(os=platform.os, arch=platform.arch, variant=platform.variant)
        if path.startswith("/") or ".." in Path(path).parts:
            raise ConfigError(f"output {path!r} must be a relative path inside the workspace", where=node.where)
        return path

    def _address(self, node: Node, setting: str) -> Address:
        try:
            return Address.parse(node.settings[setting])
        except ConfigError as error:
            raise ConfigError(error.message, where=f"{node.where} ({setting})", fix=error.fix) from None


def _platform(node: Node) -> Platform:
    assert node.id.platform is not None, "Go binaries are always built for one platform"
    return node.id.platform
