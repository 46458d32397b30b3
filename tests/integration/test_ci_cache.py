"""The cache directory is all a fresh CI runner needs: restored on a second,
empty Docker engine, an unchanged tree executes nothing and a change
executes only what it affects, with images restored from the cache."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kaibuild.image_archive import canonicalize, read_images
from tests.conftest import WARM_TARGETS, kaibuild

pytestmark = pytest.mark.docker


def test_restored_cache_on_an_empty_engine(warm_copy: tuple[Path, Path], warm: tuple[Path, Path],
                                           second_engine: dict[str, str]) -> None:
    ws, cache = warm_copy
    images = subprocess.run(["docker", "images", "-q"], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin", **second_engine}).stdout
    assert images.strip() == ""  # the runner's engine starts empty

    first = kaibuild(warm[0], "build", *WARM_TARGETS, "--platform", "linux/amd64", cache_dir=warm[1])
    again = kaibuild(ws, "build", *WARM_TARGETS, "--platform", "linux/amd64", cache_dir=cache, env=second_engine)
    assert again.returncode == 0, again.stderr
    assert again.summary["executed"] == 0
    digests = {e["node"]: e["digest"] for e in again.events if e["event"] == "cached"}
    assert digests == {e["node"]: e["digest"] for e in first.events if e["event"] == "cached"}
    assert (ws / "dist" / "linux_amd64" / "scheduler.tar").read_bytes() == (warm[0] / "dist" / "linux_amd64" / "scheduler.tar").read_bytes()

    scheduler = ws / "pkg" / "scheduler" / "scheduler.go"
    scheduler.write_text(scheduler.read_text().replace('"kai-mini-scheduler"', '"kai-mini-scheduler-ci"'))
    changed = kaibuild(ws, "build", *WARM_TARGETS, "--platform", "linux/amd64", cache_dir=cache, env=second_engine)
    assert changed.returncode == 0, changed.stderr
    assert changed.nodes("finished") == {"//services:scheduler-bin [linux/amd64]", "//services:scheduler [linux/amd64]"}
    # The builder and base image were loaded into the empty engine from the cache, not rebuilt or pulled.
    names = subprocess.run(["docker", "images", "--format", "{{.Repository}}"], capture_output=True, text=True, check=True,
                           env={"PATH": "/usr/local/bin:/usr/bin:/bin", **second_engine}).stdout.split()
    assert "kaibuild.local/build/builder" in names
    assert "kaibuild.local/nvcr.io/nvidia/distroless/go" in names


def test_c3_classic_image_store_builds_into_the_engine_then_saves_the_one_image(
        warm_copy: tuple[Path, Path], classic_engine: dict[str, str]) -> None:
    """Its `docker` builder refuses a tarball output: kaibuild builds into the
    engine and saves that image, in the same canonical tarball form."""
    ws, cache = warm_copy
    docker = {"PATH": "/usr/local/bin:/usr/bin:/bin", **classic_engine}
    info = subprocess.run(["docker", "info", "--format", "{{json .DriverStatus}}"], capture_output=True, text=True,
                          check=True, env=docker).stdout
    assert "io.containerd.snapshotter" not in info  # really the classic store
    scheduler = ws / "pkg" / "scheduler" / "scheduler.go"
    scheduler.write_text(scheduler.read_text().replace('"kai-mini-scheduler"', '"kai-mini-scheduler-classic"'))
    run = kaibuild(ws, "build", "//services:scheduler", "--platform", "linux/amd64", cache_dir=cache, env=classic_engine)
    assert run.returncode == 0, run.stderr
    assert run.nodes("finished") == {"//services:scheduler-bin [linux/amd64]", "//services:scheduler [linux/amd64]"}
    tarball = ws / "dist" / "linux_amd64" / "scheduler.tar"
    [image] = read_images(tarball)
    assert (image.os, image.architecture) == ("linux", "amd64")
    canonical = tarball.with_name("again.tar")
    canonicalize(tarball, canonical)
    assert canonical.read_bytes() == tarball.read_bytes()  # already canonical: a bundle can reassemble it
    subprocess.run(["docker", "rmi", "-f", "registry/local/kai-scheduler/scheduler:0.0.0"], capture_output=True, env=docker)
    subprocess.run(["docker", "load", "-i", str(tarball)], capture_output=True, check=True, env=docker)
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", "registry/local/kai-scheduler/scheduler:0.0.0"],
                         capture_output=True, text=True, env=docker)
    assert out.returncode == 0 and "scheduler version 0.0.0" in out.stdout, out.stderr


def test_image_removed_behind_kaibuilds_back_is_restored_not_rebuilt(warm_copy: tuple[Path, Path]) -> None:
    ws, cache = warm_copy
    builder = [n for n in subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                                         text=True, check=True).stdout.split() if n.startswith("kaibuild.local/build/builder:")]
    for name in builder:
        subprocess.run(["docker", "rmi", "-f", name], capture_output=True, check=True)
    binder = ws / "cmd" / "binder" / "main.go"
    binder.write_text(binder.read_text().replace('"binder"', '"binder-restored"'))
    run = kaibuild(ws, "build", "//services:binder", "--platform", "linux/amd64", cache_dir=cache)
    assert run.returncode == 0, run.stderr
    assert "//build:builder [linux/amd64]" in run.nodes("cached")
    assert run.nodes("finished") == {"//services:binder-bin [linux/amd64]", "//services:binder [linux/amd64]"}


def test_buildkit_layer_cache_goes_to_a_directory(warm_copy: tuple[Path, Path], tmp_path: Path) -> None:
    ws, cache = warm_copy
    dockerfile = ws / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("USER 65532:65532", 'LABEL org.example.layer-cache="1"\nUSER 65532:65532'))
    layers = tmp_path / "buildkit-cache"
    run = kaibuild(ws, "build", "//services:binder", "--platform", "linux/amd64", "--buildkit-cache", str(layers), cache_dir=cache)
    assert run.returncode == 0, run.stderr
    assert run.nodes("finished") == {"//services:binder [linux/amd64]"}
    assert (layers / "index.json").is_file() and any((layers / "blobs" / "sha256").iterdir())


def test_noop_build_of_everything_says_0_executed_and_its_time(warm_copy: tuple[Path, Path]) -> None:
    import re

    ws, cache = warm_copy
    first = kaibuild(ws, "build", "//...", "--platform", "linux/amd64", cache_dir=cache)
    assert first.returncode == 0, first.stderr
    noop = kaibuild(ws, "build", "//...", "--platform", "linux/amd64", cache_dir=cache, json_events=False)
    assert noop.returncode == 0, noop.stderr
    summary = noop.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"kaibuild: 0 executed, \d+ cached in \d+\.\ds", summary), summary
