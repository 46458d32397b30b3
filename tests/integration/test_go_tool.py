"""go_tool with the real Go 1.24 against a file-based module proxy: a tool
built for linux/arm64 on this (amd64) host, and for linux/amd64 where it
runs; the project's GOFLAGS=-mod=vendor and GOOS in the shell change
nothing (field case C4); a branch resolves to its canonical pseudo-version
once, and is remembered."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaibuild.address import Address
from kaibuild.cache import OutputRecord, Store
from kaibuild.config import Config, TargetSpec
from kaibuild.context import Context, Options
from kaibuild.executor import execute
from kaibuild.graph import build_graph
from kaibuild.image_archive import elf_arch
from kaibuild.platform import Platform
from kaibuild.report import RecordingReporter
from rules.go_tool import GoToolRule

pytestmark = pytest.mark.docker

GO_BIN = Path("/var/lib/kaibuild-env/go/bin")
MODULE = "example.com/hello"
PACKAGE = f"{MODULE}/cmd/hello"
PSEUDO = "v0.0.0-20240101000000-abcdefabcdef"
MAIN_GO = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello from %s") }\n'


def add_version(proxy: Path, version: str, *, alias: str = "") -> None:
    """One version of example.com/hello in GOPROXY's file layout; `alias`
    (a branch name) answers the proxy's query for it with this version."""
    where = proxy / MODULE / "@v"
    where.mkdir(parents=True, exist_ok=True)
    go_mod = f"module {MODULE}\n\ngo 1.21\n"
    info = json.dumps({"Version": version, "Time": "2024-01-01T00:00:00Z"})
    (where / f"{version}.info").write_text(info)
    (where / f"{version}.mod").write_text(go_mod)
    with zipfile.ZipFile(where / f"{version}.zip", "w") as archive:
        archive.writestr(f"{MODULE}@{version}/go.mod", go_mod)
        archive.writestr(f"{MODULE}@{version}/cmd/hello/main.go", MAIN_GO % version)
    if alias:
        (where / f"{alias}.info").write_text(info)
    else:
        with open(where / "list", "a") as listing:
            listing.write(version + "\n")


class Reporter(RecordingReporter):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def failed(self, node, error, log_tail, log_path) -> None:  # type: ignore[no-untyped-def]
        super().failed(node, error, log_tail, log_path)
        self.errors.append(f"{node}: {error}\n{log_tail}")


@pytest.fixture
def go_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A shell with the fake proxy and a project's Go settings exported; returns the proxy directory."""
    go = shutil.which("go")
    if not go or "go1.24" not in subprocess.run([go, "version"], capture_output=True, text=True).stdout:
        monkeypatch.setenv("PATH", f"{GO_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proxy = tmp_path / "proxy"
    add_version(proxy, "v1.0.0")
    add_version(proxy, PSEUDO, alias="main")
    modcache = tmp_path / "modcache"
    monkeypatch.setenv("GOPROXY", proxy.as_uri())
    monkeypatch.setenv("GONOSUMDB", "example.com")
    monkeypatch.setenv("GOMODCACHE", str(modcache))
    monkeypatch.setenv("GOFLAGS", "-mod=vendor")  # the project's: `go install m@v` refuses under it (C4)
    monkeypatch.setenv("GOOS", "darwin")
    monkeypatch.setenv("GOARCH", "ppc64le")
    monkeypatch.setenv("GOBIN", str(tmp_path / "gobin"))  # would make Go refuse cross-compiled installs
    yield proxy
    for root, dirs, _ in os.walk(modcache):  # the module cache is read-only; let pytest clean it up
        for name in dirs:
            path = Path(root) / name
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def make_context(tmp_path: Path, version: str, *, offline: bool = False) -> Context:
    config = Config(path=tmp_path / "kaibuild.toml", workspace=tmp_path, default_platforms=[Platform.parse("linux/amd64")],
                    dist_dir="dist", mirrors={})
    address = Address.parse("//tools:hello")
    config.targets[address] = TargetSpec(address, "go_tool", {"package": PACKAGE, "version": version}, "kaibuild.toml:1")
    return Context(config, Store(tmp_path / "cache"), {"go_tool": GoToolRule()}, Options(offline=offline))


def build(ctx: Context, platform: str) -> tuple[Reporter, OutputRecord | None, dict]:
    reporter = Reporter()
    node = ctx.target_node(Address.parse("//tools:hello"), Platform.parse(platform))
    result = execute(build_graph([node], ctx), ctx, reporter)
    reporter.summary(result.summary)
    assert result.ok, "\n".join(reporter.errors)
    inputs = ctx.store.actions.get(f"last:{node.id}")["material"]["inputs"]
    return reporter, result.records.get(node.id), inputs


def binary(ctx: Context, record: OutputRecord, dest: Path) -> Path:
    ctx.store.export_file(record.files["bin/hello"], dest, executable=True)
    return dest


def test_cross_built_for_arm64_and_native_amd64_despite_project_goflags(go_env: Path, tmp_path: Path) -> None:
    ctx = make_context(tmp_path, "v1.0.0")
    reporter, record, inputs = build(ctx, "linux/arm64")
    assert record is not None and "bin/hello" in record.executable
    assert record.meta == {"module": MODULE, "version": "v1.0.0", "package": PACKAGE}
    assert inputs["module"] == MODULE and inputs["resolved_version"] == "v1.0.0"
    assert inputs["env"] == {"GOOS": "linux", "GOARCH": "arm64", "CGO_ENABLED": "0"}
    arm = binary(ctx, record, tmp_path / "out-arm64" / "hello")
    assert elf_arch(arm.read_bytes()[:64]) == "arm64"

    _, record, _ = build(ctx, "linux/amd64")
    assert record is not None
    amd = binary(ctx, record, tmp_path / "out-amd64" / "hello")
    assert elf_arch(amd.read_bytes()[:64]) == "amd64"
    assert subprocess.run([str(amd)], capture_output=True, text=True, check=True).stdout == "hello from v1.0.0\n"
    assert not (tmp_path / "gobin").exists()  # GOBIN of the shell was not used

    # Resolved once and remembered: a new run with the proxy gone is all cached.
    shutil.rmtree(go_env)
    again = Context(ctx.config, ctx.store, ctx.rules)
    reporter, _, _ = build(again, "linux/arm64")
    assert reporter.last_summary is not None and len(reporter.last_summary.cached) == 1


def test_branch_resolves_to_its_pseudo_version(go_env: Path, tmp_path: Path) -> None:
    ctx = make_context(tmp_path, "main")
    _, record, inputs = build(ctx, "linux/amd64")
    assert inputs["resolved_version"] == PSEUDO and inputs["module"] == MODULE
    assert ctx.store.actions.get(f"gotool-version:{PACKAGE}@main") == {"module": MODULE, "version": PSEUDO}
    assert record is not None and record.meta["version"] == PSEUDO
    out = binary(ctx, record, tmp_path / "out" / "hello")
    assert subprocess.run([str(out)], capture_output=True, text=True, check=True).stdout == f"hello from {PSEUDO}\n"


def test_offline_builds_a_new_platform_from_the_module_cache(go_env: Path, tmp_path: Path) -> None:
    build(make_context(tmp_path, "v1.0.0"), "linux/amd64")
    shutil.rmtree(go_env)  # no proxy: only the recorded resolution and the module cache remain
    _, record, _ = build(make_context(tmp_path, "v1.0.0", offline=True), "linux/arm64")
    assert record is not None
    assert elf_arch(binary(make_context(tmp_path, "v1.0.0"), record, tmp_path / "o" / "hello").read_bytes()[:64]) == "arm64"


def test_missing_version_fails_with_the_fix(go_env: Path, tmp_path: Path) -> None:
    ctx = make_context(tmp_path, "v9.9.9")
    reporter = Reporter()
    node = ctx.target_node(Address.parse("//tools:hello"), Platform.parse("linux/arm64"))
    result = execute(build_graph([node], ctx), ctx, reporter)
    assert not result.ok and len(reporter.errors) == 1
    assert "v9.9.9" in reporter.errors[0] and "export a bundle" in reporter.errors[0]
