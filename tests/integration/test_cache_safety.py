"""The cache under concurrency and crashes, on the real engine: two builds at
once both succeed and agree; a build killed with SIGKILL at any moment
leaves no record pointing to missing or partial outputs; SIGTERM stops the
docker processes kaibuild started and leaves no temp files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kaibuild.cache import OutputRecord, Store
from kaibuild.fingerprint import sha256_file
from tests.conftest import kaibuild

pytestmark = pytest.mark.docker


def check_cache(cache: Path) -> int:
    """Every action record's outputs are present and whole; returns the count."""
    store = Store(cache)
    try:
        count = 0
        for key in store.actions.iterkeys():
            if len(key) != 64:
                continue
            record = OutputRecord.from_json(store.actions[key])
            for rel, digest in record.files.items():
                blob = store.blob_path(digest)
                assert blob.is_file(), f"record {key[:12]} points to missing {rel}"
                assert sha256_file(blob) == digest, f"record {key[:12]}: {rel} is partial or corrupt"
            count += 1
        return count
    finally:
        store.close()


def start_build(ws: Path, cache: Path, *targets: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kaibuild", "build", *targets, "--platform", "linux/amd64", "--json",
                             "--cache-dir", str(cache)], cwd=ws, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_two_overlapping_builds_at_once_both_succeed_and_agree(warm_copy: tuple[Path, Path]) -> None:
    ws, cache = warm_copy
    shared = ws / "pkg" / "shared" / "shared.go"
    shared.write_text(shared.read_text().replace('[]byte("kai-mini")', '[]byte("kai-mini-concurrent")'))
    first = start_build(ws, cache, "//services:scheduler", "//services:binder")
    second = start_build(ws, cache, "//services:scheduler", "//services:podgrouper")
    outputs = [p.communicate(timeout=900) for p in (first, second)]
    assert first.returncode == 0, outputs[0][1]
    assert second.returncode == 0, outputs[1][1]
    digests = [{e["node"]: e["digest"] for line in out.splitlines() if line.startswith("{")
                for e in [json.loads(line)] if e["event"] in ("finished", "cached")} for out, _ in outputs]
    for node in ("//services:scheduler-bin [linux/amd64]", "//services:scheduler [linux/amd64]"):
        assert digests[0][node] == digests[1][node]
    check_cache(cache)
    again = kaibuild(ws, "build", "//services:scheduler", "//services:binder", "//services:podgrouper",
                     "--platform", "linux/amd64", cache_dir=cache)
    assert again.returncode == 0 and again.summary["executed"] == 0


@pytest.mark.parametrize("delay", [0.5, 2.0, 4.0, 8.0])
def test_sigkill_mid_build_leaves_a_sound_cache(warm_copy: tuple[Path, Path], delay: float) -> None:
    ws, cache = warm_copy
    scheduler = ws / "pkg" / "scheduler" / "scheduler.go"
    scheduler.write_text(scheduler.read_text().replace('"kai-mini-scheduler"', f'"kai-mini-scheduler-kill-{delay}"'))
    before = check_cache(cache)
    process = start_build(ws, cache, "//services:scheduler")
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGKILL)  # kaibuild and the docker CLIs it started
    process.wait()
    assert check_cache(cache) >= before
    run = kaibuild(ws, "build", "//services:scheduler", "--platform", "linux/amd64", cache_dir=cache)
    assert run.returncode == 0, run.stderr
    assert "//services:scheduler-bin [linux/amd64]" in run.nodes("finished") | run.nodes("cached")
    check_cache(cache)
    load = subprocess.run(["docker", "load", "-q", "-i", str(ws / "dist/linux_amd64/scheduler.tar")],
                          capture_output=True, text=True)
    assert load.returncode == 0, load.stderr  # Docker's own words if it fails (a containerd race was seen once)
    loaded = load.stdout.split()[-1]
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", loaded], capture_output=True, text=True)
    assert f"kai-mini-scheduler-kill-{delay}" in out.stdout


def test_sigterm_mid_buildx_stops_its_docker_processes_and_leaves_nothing_half_written(
        warm_copy: tuple[Path, Path]) -> None:
    ws, cache = warm_copy
    dockerfile = ws / "build" / "builder" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN sleep 120 # sigterm-test\n")  # a long step, a new key
    process = start_build(ws, cache, "//build:builder")
    assert process.stdout is not None
    for line in process.stdout:  # until the builder's buildx is under way
        if line.startswith("{") and json.loads(line)["event"] == "started":
            break
    time.sleep(5)
    children = psutil.Process(process.pid).children(recursive=True)
    assert any("buildx" in " ".join(child.cmdline()) for child in children)  # the CLI the test is about
    process.send_signal(signal.SIGTERM)  # to kaibuild alone, as `timeout` or a CI runner sends it
    _, stderr = process.communicate(timeout=60)

    assert process.returncode == 128 + signal.SIGTERM, stderr  # 143, as a shell reports it
    assert "kaibuild: interrupted" in stderr
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
    assert list((cache / "tmp").iterdir()) == []  # no image.tar.raw or work dir left
    assert not (ws / "dist").exists() or not any((ws / "dist").rglob("*.tar"))
    check_cache(cache)
    explain = kaibuild(ws, "explain", "//build:builder", cache_dir=cache)
    assert "//build:builder" in explain.stdout and "will rebuild" in explain.stdout  # nothing recorded for the new key
