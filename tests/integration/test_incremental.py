"""Issue 3's mutation suite: for each kind of change to examples/kai-mini,
exactly the actions that read what changed execute; never more, never fewer.

One workspace and cache go through the changes in order (each step is
relative to the one before), starting from the session's warm cache.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kaibuild.config import DEFAULT_CONFIG
from tests.conftest import Run, kaibuild

pytestmark = pytest.mark.docker

AMD = "[linux/amd64]"
S_BIN, S_IMG = f"//services:scheduler-bin {AMD}", f"//services:scheduler {AMD}"
B_BIN, B_IMG = f"//services:binder-bin {AMD}", f"//services:binder {AMD}"
VENDOR, BUILDER = "//build:vendor", f"//build:builder {AMD}"
BASE = "kaibuild-test/distroless-mut:1"


def push_base(registry: str, source: str, tag: str) -> None:
    subprocess.run(["docker", "buildx", "imagetools", "create", "-t", f"{registry}/docker.io/{tag}", source],
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def suite(warm: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, docker_env: dict) -> dict:
    from tests.conftest import clone_cache, copy_kai_mini_from

    root = tmp_path_factory.mktemp("mutations")
    ws = copy_kai_mini_from(warm[0], root / "kai-mini")
    cache = clone_cache(warm[1], root / "cache")
    registry = docker_env["registry"]
    # A base image of the test's own, so moving its tag affects no other test.
    push_base(registry, f"{registry}/nvcr.io/nvidia/distroless/go:v3.2.1", BASE)
    (ws / "kaibuild.toml").write_text(DEFAULT_CONFIG.read_text())  # the workspace's own copy, to edit
    dockerfile = ws / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("nvcr.io/nvidia/distroless/go:v3.2.1", BASE)
                          .replace("COPY NOTICE .", "COPY NOTICE .\nCOPY config/ /workspace/config/"))
    (ws / "config").mkdir()
    (ws / "config" / "app.yaml").write_text("level: info\n")
    (ws / "config" / "dev.local").write_text("level: debug\n")
    (ws / ".dockerignore").write_text("config/*.local\n")
    state = {"ws": ws, "cache": cache, "registry": registry}
    baseline = build(state)
    # Vendor tree, builder and binaries come from the warm cache; only what
    # uses the new base image and the new Dockerfile lines runs.
    assert executed(baseline) == {f"base-image {BASE} {AMD}", S_IMG, B_IMG}
    return state


def build(state: dict, platform: str = "linux/amd64") -> Run:
    run = kaibuild(state["ws"], "build", "//services:scheduler", "//services:binder", "--platform", platform,
                   cache_dir=state["cache"])
    assert run.returncode == 0, run.stderr
    return run


def executed(run: Run) -> set[str]:
    return run.nodes("finished")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_01_go_file_only_the_scheduler_compiles(suite: dict) -> None:
    edit(suite["ws"] / "pkg/scheduler/scheduler.go", '"kai-mini-scheduler"', '"kai-mini-scheduler-v2"')
    assert executed(build(suite)) == {S_BIN, S_IMG}


def test_01b_explain_names_the_changed_file_before_and_during_the_build(suite: dict) -> None:
    edit(suite["ws"] / "pkg/scheduler/scheduler.go", '"kai-mini-scheduler-v2"', '"kai-mini-scheduler-v3"')
    explain = kaibuild(suite["ws"], "explain", "//services:scheduler-bin", "--platform", "linux/amd64", cache_dir=suite["cache"])
    assert explain.returncode == 0, explain.stderr
    assert f"{S_BIN}: will rebuild" in explain.stdout
    assert "changed inputs.files.pkg/scheduler/scheduler.go" in explain.stdout
    assert "//build:vendor: cached" in explain.stdout
    run = kaibuild(suite["ws"], "build", "//services:scheduler", "--platform", "linux/amd64", "--explain", cache_dir=suite["cache"])
    reasons = {e["node"]: e["reasons"] for e in run.events if e["event"] == "explained"}
    assert any("pkg/scheduler/scheduler.go" in r for r in reasons[S_BIN])
    assert any(r.startswith("changed deps.input://services:scheduler-bin") for r in reasons[S_IMG])
    edit(suite["ws"] / "pkg/scheduler/scheduler.go", '"kai-mini-scheduler-v3"', '"kai-mini-scheduler-v2"')
    build(suite)


def test_02_reverting_an_edit_executes_nothing(suite: dict) -> None:
    edit(suite["ws"] / "pkg/scheduler/scheduler.go", '"kai-mini-scheduler-v2"', '"kai-mini-scheduler"')
    assert executed(build(suite)) == set()  # both keys are back to ones already in the cache
    edit(suite["ws"] / "pkg/scheduler/scheduler.go", '"kai-mini-scheduler"', '"kai-mini-scheduler-v2"')
    assert executed(build(suite)) == set()


def test_03_shared_package_used_by_two_services(suite: dict) -> None:
    edit(suite["ws"] / "pkg/shared/shared.go", '[]byte("kai-mini")', '[]byte("kai-mini-2")')
    assert executed(build(suite)) == {S_BIN, S_IMG, B_BIN, B_IMG}


def test_04_comment_only_edit_rebuilds_the_binary_but_not_the_image(suite: dict) -> None:
    # The binary is rebuilt (its source changed) but comes out identical, so
    # the image's key is unchanged: early cutoff on output digests.
    # At the end of the file, so no line of code moves (line numbers are in the binary).
    with open(suite["ws"] / "cmd/scheduler/main.go", "a") as handle:
        handle.write("\n// The banner format is shared by every kai-mini service.\n")
    assert executed(build(suite)) == {S_BIN}


def test_05_go_sum_change(suite: dict) -> None:
    with open(suite["ws"] / "go.sum", "a") as handle:
        handle.write("example.com/unused v1.0.0/go.mod h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    # The vendor tree and the binaries read go.sum; both come out identical.
    assert executed(build(suite)) == {VENDOR, S_BIN, B_BIN}


def test_06_dockerfile_line_of_the_built_stage(suite: dict) -> None:
    edit(suite["ws"] / "Dockerfile", "USER 65532:65532", 'LABEL org.example.step="6"\nUSER 65532:65532')
    assert executed(build(suite)) == {S_IMG, B_IMG}


def test_07_dockerfile_line_of_another_stage_or_a_comment(suite: dict) -> None:
    edit(suite["ws"] / "Dockerfile", "ADD bin/$SERVICE_NAME-$TARGETARCH app", "ADD bin/$SERVICE_NAME-$TARGETARCH /workspace/app")
    edit(suite["ws"] / "Dockerfile", "FROM golang:1.22 AS debug", "# the debug stage\nFROM golang:1.22 AS debug")
    assert executed(build(suite)) == set()


def test_08_build_arg(suite: dict) -> None:
    edit(suite["ws"] / "kaibuild.toml", 'build_args = { SERVICE_NAME = "{service}" }\ninputs = ["//services:{service}-bin"]\n'
         'verify_binary = "/workspace/app"\n\n[[target]]\naddress = "//services:{service}-debug"',
         'build_args = { SERVICE_NAME = "{service}", EXTRA = "1" }\ninputs = ["//services:{service}-bin"]\n'
         'verify_binary = "/workspace/app"\n\n[[target]]\naddress = "//services:{service}-debug"')
    assert executed(build(suite)) == {S_IMG, B_IMG}


def test_09_dockerignored_file_and_copied_file(suite: dict) -> None:
    (suite["ws"] / "config" / "dev.local").write_text("level: trace\n")
    assert executed(build(suite)) == set()
    (suite["ws"] / "config" / "app.yaml").write_text("level: warn\n")
    assert executed(build(suite)) == {S_IMG, B_IMG}


def test_10_file_no_action_reads(suite: dict) -> None:
    (suite["ws"] / "README.md").write_text("changed\n")
    (suite["ws"] / "pkg" / "shared" / "shared_test.go").write_text(
        'package shared\n\nimport "testing"\n\nfunc TestID(t *testing.T) {\n\tif InstanceID() == "" {\n\t\tt.Fatal("empty")\n\t}\n}\n')
    assert executed(build(suite)) == set()


def test_11_base_image_digest_moves_in_the_registry(suite: dict) -> None:
    registry = suite["registry"]
    moved = f"{registry}/docker.io/kaibuild-test/distroless-mut:moved"
    dockerfile = suite["ws"].parent / "moved.Dockerfile"
    dockerfile.write_text(f"FROM {registry}/docker.io/{BASE}\nLABEL org.example.moved=yes\n")
    subprocess.run(["docker", "buildx", "build", "--platform", "linux/amd64", "--provenance", "false", "-f", str(dockerfile),
                    "--output", f"type=image,name={moved},push=true", str(suite["ws"].parent)], check=True, capture_output=True)
    # The tag now points at an index whose amd64 entry changed (arm64 kept).
    subprocess.run(["docker", "buildx", "imagetools", "create", "-t", f"{registry}/docker.io/{BASE}", moved,
                    f"{registry}/nvcr.io/nvidia/distroless/go@{_arm64_digest(registry)}"], check=True, capture_output=True)
    assert executed(build(suite)) == {f"base-image {BASE} {AMD}", S_IMG, B_IMG}


def test_12_platform(suite: dict) -> None:
    arm = "[linux/arm64]"
    assert executed(build(suite, "linux/arm64")) == {
        f"base-image {BASE} {arm}", f"//services:scheduler-bin {arm}", f"//services:scheduler {arm}",
        f"//services:binder-bin {arm}", f"//services:binder {arm}"}


def test_13_kaibuild_toml_setting(suite: dict) -> None:
    edit(suite["ws"] / "kaibuild.toml", 'version = "0.0.0"', 'version = "0.0.1"')
    assert executed(build(suite)) == {S_BIN, S_IMG, B_BIN, B_IMG}


def test_14_upstream_image_output(suite: dict) -> None:
    with open(suite["ws"] / "build" / "builder" / "Dockerfile", "a") as handle:
        handle.write("RUN echo mutation > /etc/kaibuild-mutation\n")
    # The builder's output changes, so the binaries rebuild in it; they come
    # out identical, so the images stay cached.
    assert executed(build(suite)) == {BUILDER, S_BIN, B_BIN}


def _arm64_digest(registry: str) -> str:
    import json

    raw = subprocess.run(["docker", "buildx", "imagetools", "inspect", "--raw", f"{registry}/nvcr.io/nvidia/distroless/go:v3.2.1"],
                         check=True, capture_output=True, text=True).stdout
    return next(m["digest"] for m in json.loads(raw)["manifests"] if m["platform"]["architecture"] == "arm64")
