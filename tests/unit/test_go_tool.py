"""go_tool planning without Go: settings -> name, environment, command, key inputs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kaibuild.cache import OutputRecord, Store
from kaibuild.config import Config
from kaibuild.context import Context, Options
from kaibuild.errors import ActionFailed, ConfigError, KaibuildError
from kaibuild.platform import Platform
from kaibuild.rule import Node, NodeId
from rules import go_tool
from rules.go_tool import GoToolRule, install_command, install_env, module_candidates, platform_env, tool_name
from rules.gotool import clean_env

AMD64 = Platform.parse("linux/amd64")
ARM64 = Platform.parse("linux/arm64")
CONTROLLER_GEN = "sigs.k8s.io/controller-tools/cmd/controller-gen"


def node(platform: Platform = ARM64, **settings: Any) -> Node:
    settings = {"package": CONTROLLER_GEN, "version": "v0.16.1", **settings}
    return Node(id=NodeId("//tools:controller-gen", platform), kind="go_tool", settings=settings, where="kaibuild.toml:7")


def context(tmp_path: Path, offline: bool = False) -> Context:
    config = Config(path=tmp_path / "kaibuild.toml", workspace=tmp_path, default_platforms=[AMD64], dist_dir="dist", mirrors={})
    return Context(config, Store(tmp_path / "cache"), {"go_tool": GoToolRule()}, Options(offline=offline))


@pytest.fixture
def project_go_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell of a project that vendors: none of this may reach `go install`."""
    for name, value in {"GOFLAGS": "-mod=vendor", "GOOS": "darwin", "GOARCH": "ppc64le", "GOBIN": "/usr/local/bin",
                        "CGO_ENABLED": "1", "GOPATH": "/home/u/go", "GOWORK": "/home/u/go.work", "GOTOOLCHAIN": "auto",
                        "GOPROXY": "https://proxy.example,direct", "GONOSUMDB": "corp.example", "GOPRIVATE": "corp.example",
                        "GOSUMDB": "sum.example", "GOINSECURE": "insecure.example"}.items():
        monkeypatch.setenv(name, value)


def test_tool_name_defaults_to_the_binary_go_install_makes() -> None:
    assert tool_name({"package": CONTROLLER_GEN}) == "controller-gen"
    assert tool_name({"package": "example.com/tool/v2"}) == "tool"  # major-version suffix, as go install names it
    assert tool_name({"package": "example.com/cmd/v1"}) == "v1"
    assert tool_name({"package": CONTROLLER_GEN, "name": "cg"}) == "cg"


def test_platform_env_comes_from_the_platform() -> None:
    assert platform_env(ARM64) == {"GOOS": "linux", "GOARCH": "arm64", "CGO_ENABLED": "0"}
    assert platform_env(AMD64, cgo_enabled=True)["CGO_ENABLED"] == "1"
    assert platform_env(Platform.parse("linux/arm/v7"))["GOARM"] == "7"


@pytest.mark.usefixtures("project_go_env")
def test_install_env_is_clean_of_the_projects_go_settings(tmp_path: Path) -> None:
    env = install_env(clean_env(), ARM64, cgo_enabled=False, gopath=tmp_path / "gopath", gomodcache="/home/u/go/pkg/mod")
    assert env["GOFLAGS"] == ""  # C4: `go install m@v` refuses under -mod=vendor
    assert (env["GOOS"], env["GOARCH"], env["CGO_ENABLED"]) == ("linux", "arm64", "0")
    assert "GOBIN" not in env  # Go refuses to install cross-compiled binaries into GOBIN
    assert env["GOPATH"] == str(tmp_path / "gopath")
    assert env["GOMODCACHE"] == "/home/u/go/pkg/mod"
    assert (env["GOTOOLCHAIN"], env["GOWORK"]) == ("local", "off")
    assert env["GOPROXY"] == "https://proxy.example,direct"
    for name in ("GONOSUMDB", "GOPRIVATE", "GOSUMDB", "GOINSECURE"):
        assert env[name]  # passed through
    assert "GOARM" not in env


@pytest.mark.usefixtures("project_go_env")
def test_install_env_drops_go_settings_even_from_a_raw_environment(tmp_path: Path) -> None:
    env = install_env(dict(os.environ), AMD64, cgo_enabled=True, gopath=tmp_path, gomodcache="/mc")
    assert env["GOFLAGS"] == "" and "GOBIN" not in env
    assert (env["GOOS"], env["GOARCH"], env["CGO_ENABLED"]) == ("linux", "amd64", "1")
    assert env["GOTOOLCHAIN"] == "local" and env["GOWORK"] == "off"


def test_install_command_pins_the_resolved_version() -> None:
    assert install_command("/go/bin/go", CONTROLLER_GEN, "v0.16.1") == ["/go/bin/go", "install", "-trimpath", f"{CONTROLLER_GEN}@v0.16.1"]


def test_module_candidates_longest_first() -> None:
    assert module_candidates(CONTROLLER_GEN) == [CONTROLLER_GEN, "sigs.k8s.io/controller-tools/cmd",
                                                 "sigs.k8s.io/controller-tools", "sigs.k8s.io"]
    assert module_candidates("golang.org/x/tools/cmd/stringer")[-1] == "golang.org"
    assert module_candidates("nodot/cmd") == ["nodot/cmd"]


def test_bad_settings_are_config_errors(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    for settings in ({"package": "./cmd/tool"}, {"package": CONTROLLER_GEN + "@v1"}, {"version": ""}, {"version": "v1 2"}):
        with pytest.raises(ConfigError):
            GoToolRule().inputs(node(**settings), ctx, {})


def test_inputs_use_the_recorded_resolution_and_the_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(go_tool, "go_version", lambda: "go1.24.4")
    ctx = context(tmp_path)
    ctx.store.actions.set(f"gotool-version:{CONTROLLER_GEN}@release-0.16",
                          {"module": "sigs.k8s.io/controller-tools", "version": "v0.16.2-0.20240801000000-0123456789ab"})
    rule = GoToolRule()
    arm = rule.inputs(node(version="release-0.16"), ctx, {})
    assert arm == {"package": CONTROLLER_GEN, "module": "sigs.k8s.io/controller-tools",
                   "resolved_version": "v0.16.2-0.20240801000000-0123456789ab", "go_version": "go1.24.4",
                   "env": {"GOOS": "linux", "GOARCH": "arm64", "CGO_ENABLED": "0"}}
    amd = rule.inputs(node(AMD64, version="release-0.16", cgo_enabled=True), ctx, {})
    assert amd["env"] == {"GOOS": "linux", "GOARCH": "amd64", "CGO_ENABLED": "1"}
    assert not rule.platform_independent


def test_resolution_tries_shorter_module_paths_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        calls.append(command)
        if command[1:3] == ["env", "GOMODCACHE"]:
            return subprocess.CompletedProcess(command, 0, "/mc\n", "")
        target = command[-1]
        if target == "sigs.k8s.io/controller-tools@main":
            assert kwargs["env"]["GOFLAGS"] == "" and kwargs["env"]["GOMODCACHE"] == "/mc"
            info = {"Path": "sigs.k8s.io/controller-tools", "Version": "v0.0.0-20240801000000-0123456789ab", "Query": "main"}
            return subprocess.CompletedProcess(command, 0, json.dumps(info), "")
        path = target.split("@")[0]
        return subprocess.CompletedProcess(command, 1, f'{{"Path": "{path}", "Error": "{path}@main: 404 Not Found"}}', "")

    monkeypatch.delenv("GOMODCACHE", raising=False)
    monkeypatch.setattr(go_tool, "go_command", lambda: "go")
    monkeypatch.setattr(go_tool, "go_version", lambda: "go1.24.4")
    monkeypatch.setattr(go_tool.subprocess, "run", fake_run)
    ctx = context(tmp_path)
    found = GoToolRule().inputs(node(version="main"), ctx, {})
    assert (found["module"], found["resolved_version"]) == ("sigs.k8s.io/controller-tools", "v0.0.0-20240801000000-0123456789ab")
    tried = [c[-1] for c in calls if c[1:3] == ["mod", "download"]]
    assert tried == [f"{CONTROLLER_GEN}@main", "sigs.k8s.io/controller-tools/cmd@main", "sigs.k8s.io/controller-tools@main"]
    calls.clear()
    GoToolRule().inputs(node(AMD64, version="main"), ctx, {})
    assert calls == []  # resolved once, remembered in the action cache


def test_unresolvable_version_fails_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        path = command[-1].split("@")[0]
        error = "invalid version: unknown revision v9.9.9" if path == "sigs.k8s.io/controller-tools" else "404 Not Found"
        return subprocess.CompletedProcess(command, 1, f'{{"Path": "{path}", "Error": "{path}@v9.9.9: {error}"}}', "")

    monkeypatch.setenv("GOMODCACHE", "/mc")
    monkeypatch.setattr(go_tool, "go_command", lambda: "go")
    monkeypatch.setattr(go_tool.subprocess, "run", fake_run)
    with pytest.raises(ActionFailed) as caught:
        GoToolRule().inputs(node(version="v9.9.9"), context(tmp_path), {})
    assert "unknown revision v9.9.9" in caught.value.message and "controller-gen" in caught.value.message
    assert caught.value.fix and "GOPROXY" in caught.value.fix and "export a bundle" in caught.value.fix


def test_offline_needs_a_recorded_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(go_tool, "go_version", lambda: "go1.24.4")
    monkeypatch.setattr(go_tool.subprocess, "run", lambda *a, **k: pytest.fail("offline must not run go"))
    ctx = context(tmp_path, offline=True)
    with pytest.raises(KaibuildError) as caught:
        GoToolRule().inputs(node(), ctx, {})
    assert "controller-gen" in str(caught.value) and "export a bundle" in str(caught.value)
    ctx.store.actions.set(f"gotool-version:{CONTROLLER_GEN}@v0.16.1", {"module": "sigs.k8s.io/controller-tools", "version": "v0.16.1"})
    assert GoToolRule().inputs(node(), ctx, {})["resolved_version"] == "v0.16.1"


def test_no_dependencies_and_the_binary_is_the_artifact(tmp_path: Path) -> None:
    rule, n = GoToolRule(), node()
    assert rule.expand(n, context(tmp_path)) == [] and n.deps == {}
    assert rule.artifact(n, OutputRecord()) == ("bin/controller-gen", "controller-gen")
    assert rule.artifact(node(name="cg"), OutputRecord()) == ("bin/cg", "cg")
