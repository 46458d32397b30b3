"""The main job on examples/kai-mini, against the real engine, registry and Go.

Tests in this module share one workspace copy and one cache, in file order,
like a developer's successive builds: the first build pays for the builder
image, the later ones check what is (not) rebuilt.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from kaibuild.cache import Store
from kaibuild.image_archive import elf_arch, read_file, read_images
from tests.conftest import Run, copy_kai_mini, kaibuild

pytestmark = pytest.mark.docker
SCHEDULER = "//services:scheduler"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, docker_env: dict) -> Path:
    return copy_kai_mini(tmp_path_factory.mktemp("main-job") / "kai-mini")


def build(ws: Path, *args: str) -> Run:
    return kaibuild(ws, "build", *args, cache_dir=ws.parent / "cache")


def executed(run: Run) -> set[str]:
    return run.nodes("finished")


def load_and_run(tarball: Path, platform: str) -> str:
    loaded = subprocess.run(["docker", "load", "-q", "-i", str(tarball)], capture_output=True, text=True, check=True)
    image = loaded.stdout.strip().split()[-1]
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "--platform", platform, image],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_amd64_tarball_loads_and_prints_the_version(ws: Path) -> None:
    run = build(ws, SCHEDULER, "--platform", "linux/amd64")
    assert run.returncode == 0, run.stderr
    tarball = ws / "dist" / "linux_amd64" / "scheduler.tar"
    assert str(tarball) in run.stdout  # the path is printed
    [image] = read_images(tarball)
    assert (image.os, image.architecture) == ("linux", "amd64")
    assert load_and_run(tarball, "linux/amd64").startswith("scheduler version 0.0.0")


def base_image_tarball(cache: Path, ref: str, platform: str) -> Path:
    """The tarball of the base image `ref` as pinned for `platform`, from the store."""
    store = Store(cache)
    try:
        pin = store.actions[f"pin:{ref}@{platform}"]
        for key in store.actions.iterkeys():
            data = store.actions[key] if len(key) == 64 else None
            if isinstance(data, dict) and data.get("meta") == {"ref": ref, "manifest_digest": pin, "platform": platform}:
                return store.blob_path(data["files"]["image.tar"])
    finally:
        store.close()
    raise AssertionError(f"no base_image record for {ref} ({platform})")


def layer_digests(tarball: Path) -> list[str]:
    """The layer digests of a one-image tarball's manifest (index.json -> manifest blob)."""
    [image] = read_images(tarball)
    assert image.manifest_digest is not None
    with tarfile.open(tarball) as tar:
        blob = tar.extractfile(f"blobs/sha256/{image.manifest_digest.removeprefix('sha256:')}")
        assert blob is not None
        return [layer["digest"] for layer in json.load(blob)["layers"]]


def test_builder_image_keeps_the_golang_base_layers_byte_for_byte(ws: Path) -> None:
    # Built by the test above (it compiles the scheduler in it), so cached:
    # the builder's FROM names the pinned base's local image, not a named
    # build context, so BuildKit does not re-compress the base layers.
    run = build(ws, "//build:builder")
    assert run.returncode == 0, run.stderr
    [builder] = (ws / "dist").glob("*/builder.tar")
    platform = builder.parent.name.replace("_", "/")
    base = layer_digests(base_image_tarball(ws.parent / "cache", "golang:1.24.4-bullseye", platform))
    layers = layer_digests(builder)
    assert base and layers[: len(base)] == base
    assert len(layers) > len(base)  # plus the apt-get layer


def test_arm64_tarball_holds_an_aarch64_binary_that_runs_under_qemu(ws: Path) -> None:
    run = build(ws, SCHEDULER, "--platform", "linux/arm64")
    assert run.returncode == 0, run.stderr
    tarball = ws / "dist" / "linux_arm64" / "scheduler.tar"
    [image] = read_images(tarball)
    assert image.architecture == "arm64"
    assert elf_arch(read_file(tarball, image, "/workspace/app") or b"") == "arm64"
    assert load_and_run(tarball, "linux/arm64").startswith("scheduler version 0.0.0")


def test_unchanged_rebuild_executes_nothing_and_says_so(ws: Path) -> None:
    run = kaibuild(ws, "build", SCHEDULER, "--platform", "linux/amd64", "--cache-dir", str(ws.parent / "cache"),
                   json_events=False)
    assert run.returncode == 0, run.stderr
    assert "0 executed, 6 cached" in run.stderr


def test_only_what_reads_an_edited_file_rebuilds(ws: Path) -> None:
    binder = ws / "cmd" / "binder" / "main.go"
    binder.write_text(binder.read_text().replace('"binder"', '"binder-edited"'))
    run = build(ws, SCHEDULER, "--platform", "linux/amd64")
    assert run.returncode == 0, run.stderr
    assert executed(run) == set()

    own = ws / "pkg" / "scheduler" / "scheduler.go"
    own.write_text(own.read_text().replace('"kai-mini-scheduler"', '"kai-mini-scheduler-edited"'))
    run = build(ws, SCHEDULER, "--platform", "linux/amd64")
    assert run.returncode == 0, run.stderr
    assert executed(run) == {"//services:scheduler-bin [linux/amd64]", "//services:scheduler [linux/amd64]"}
    assert "kai-mini-scheduler-edited" in load_and_run(ws / "dist" / "linux_amd64" / "scheduler.tar", "linux/amd64")


def test_two_platforms_in_one_build_give_one_tarball_each(ws: Path) -> None:
    run = build(ws, SCHEDULER, "--platform", "linux/amd64,linux/arm64")
    assert run.returncode == 0, run.stderr
    for arch in ("amd64", "arm64"):
        [image] = read_images(ws / "dist" / f"linux_{arch}" / "scheduler.tar")
        assert image.architecture == arch


def test_compile_error_names_the_target_and_shows_the_log_tail(ws: Path, tmp_path: Path) -> None:
    other = copy_kai_mini(tmp_path / "ws")
    main_go = other / "cmd" / "scheduler" / "main.go"
    main_go.write_text(main_go.read_text() + "\nfunc broken() { undefinedThing() }\n")
    run = kaibuild(other, "build", SCHEDULER, "--platform", "linux/amd64", cache_dir=ws.parent / "cache", json_events=False)
    assert run.returncode == 1
    assert "FAILED //services:scheduler-bin [linux/amd64]" in run.stderr
    assert "undefined: undefinedThing" in run.stderr  # from the compiler, via the log tail
    assert "skipped  //services:scheduler [linux/amd64]" in run.stderr
    assert not (other / "dist").exists()


def failure_with_prod_base(ws: Path, tmp_path: Path, base: str) -> str:
    """Build the scheduler with `base` as the prod stage's FROM, expecting it to
    fail with nothing in dist/; the failure's message."""
    other = copy_kai_mini(tmp_path / "ws")
    dockerfile = other / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("nvcr.io/nvidia/distroless/go:v3.2.1", base))
    run = kaibuild(other, "build", SCHEDULER, "--platform", "linux/amd64", cache_dir=ws.parent / "cache")
    assert run.returncode != 0 and not (other / "dist").exists()
    return next(e for e in run.events if e["event"] == "failed")["error"]


def test_base_image_missing_the_platform_fails_naming_both(ws: Path, docker_env: dict, tmp_path: Path) -> None:
    # A base image whose registry entry offers arm64 only.
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY marker /marker\n")
    (tmp_path / "marker").write_text("arm64 only\n")
    name = f"{docker_env['registry']}/docker.io/kaibuild-test/arm64-only:1"
    subprocess.run(["docker", "buildx", "build", "--platform", "linux/arm64", "--provenance", "false",
                    "--output", f"type=image,name={name},push=true", str(tmp_path)], check=True, capture_output=True)
    error = failure_with_prod_base(ws, tmp_path, "kaibuild-test/arm64-only:1")
    assert "kaibuild-test/arm64-only:1" in error
    assert "linux/amd64" in error and "linux/arm64" in error


def test_a_base_tag_the_registry_lacks_is_called_a_typo_not_a_network_problem(ws: Path, tmp_path: Path) -> None:
    error = failure_with_prod_base(ws, tmp_path, "nvcr.io/nvidia/distroless/go:v9.9.9")
    assert "nvcr.io/nvidia/distroless/go:v9.9.9" in error and "not found" in error
    assert "may have a typo" in error and "reachable" not in error


def test_binary_for_the_wrong_arch_in_the_image_fails_the_build(ws: Path, tmp_path: Path) -> None:
    # The Apple Silicon trap: the Dockerfile copies a fixed-arch binary (here
    # a stale arm64 one in bin/) into an image built for amd64.
    other = copy_kai_mini(tmp_path / "ws")
    dockerfile = other / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("bin/$SERVICE_NAME-$TARGETARCH app", "bin/$SERVICE_NAME-arm64 app"))
    arm64_elf = b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + (2).to_bytes(2, "little") + (183).to_bytes(2, "little") + b"\x00" * 44
    (other / "bin").mkdir()
    (other / "bin" / "scheduler-arm64").write_bytes(arm64_elf)
    run = kaibuild(other, "build", SCHEDULER, "--platform", "linux/amd64", cache_dir=ws.parent / "cache")
    assert run.returncode != 0
    failure = next(e for e in run.events if e["event"] == "failed")
    assert failure["node"] == "//services:scheduler [linux/amd64]"
    assert "arm64" in failure["error"] and "expected amd64" in failure["error"]
    assert not (other / "dist").exists()
