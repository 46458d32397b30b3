"""Shared test helpers: a scratch copy of examples/kai-mini, and running the
kaibuild CLI as a user would, reading its JSON-lines events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
KAI_MINI = REPO / "examples" / "kai-mini"
_GENERATED = shutil.ignore_patterns("dist", ".kaibuild", "bin", "vendor")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    events: list[dict]

    def nodes(self, event: str) -> set[str]:
        return {e["node"] for e in self.events if e["event"] == event}

    @property
    def summary(self) -> dict:
        return next(e for e in self.events if e["event"] == "summary")


def kaibuild(workspace: Path, *args: str, cache_dir: Path | None = None, env: dict[str, str] | None = None,
             json_events: bool = True) -> Run:
    command = [sys.executable, "-m", "kaibuild", *args]
    if json_events and args and args[0] == "build":
        command.append("--json")
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    # This tree's kaibuild, whichever clone an editable install points at.
    tree = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=workspace, capture_output=True, text=True, env={**os.environ, **tree, **(env or {})})
    events = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return Run(done.returncode, done.stdout, done.stderr, events)


def copy_kai_mini(dest: Path) -> Path:
    shutil.copytree(KAI_MINI, dest, ignore=_GENERATED)
    return dest


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    """The real engine, registry and Go the integration tests need.

    Missing parts fail the test (never skip): run scripts/setup-env.sh, or
    the README's test command, which does.
    """
    problems = []
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        problems.append(f"no Docker engine at DOCKER_HOST={os.environ.get('DOCKER_HOST', '(unset)')}")
    if not os.environ.get("KAIBUILD_TEST_REGISTRY"):
        problems.append("KAIBUILD_TEST_REGISTRY is unset (the loopback registry)")
    go = shutil.which("go")
    if not go or "go1.24" not in subprocess.run([go, "version"], capture_output=True, text=True).stdout:
        problems.append("Go 1.24 is not first on PATH")
    if problems:
        pytest.fail("integration environment missing: " + "; ".join(problems)
                    + " -- run 'source scripts/dev-env.sh' (or bash scripts/test.sh)")
    return {"registry": os.environ["KAIBUILD_TEST_REGISTRY"]}


def clone_cache(source: Path, dest: Path) -> Path:
    """A copy of a cache directory as CI would restore it: blobs hard-linked
    (they are read-only), everything else copied."""
    dest.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == "cas":
            subprocess.run(["cp", "-al", str(entry), str(dest / "cas")], check=True)
        elif entry.name not in ("tmp", "views"):
            if entry.is_dir():
                shutil.copytree(entry, dest / entry.name)
            else:
                shutil.copy2(entry, dest / entry.name)
    return dest


WARM_TARGETS = ("//services:scheduler", "//services:binder")


@pytest.fixture(scope="session")
def warm(tmp_path_factory: pytest.TempPathFactory, docker_env: dict) -> tuple[Path, Path]:
    """kai-mini with scheduler and binder built for linux/amd64 once per
    session: (workspace, cache). Tests copy both before changing anything."""
    root = tmp_path_factory.mktemp("warm")
    ws = copy_kai_mini(root / "kai-mini")
    run = kaibuild(ws, "build", *WARM_TARGETS, "--platform", "linux/amd64", cache_dir=root / "cache")
    assert run.returncode == 0, run.stderr
    return ws, root / "cache"


@pytest.fixture
def warm_copy(warm: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    ws, cache = warm
    return copy_kai_mini_from(ws, tmp_path / "kai-mini"), clone_cache(cache, tmp_path / "cache")


def copy_kai_mini_from(source: Path, dest: Path) -> Path:
    """Copy a workspace keeping file times, as a CI checkout of the same tree."""
    shutil.copytree(source, dest, ignore=_GENERATED)
    return dest


@contextmanager
def _another_engine(*, containerd_store: bool) -> Iterator[dict[str, str]]:
    """An empty Docker engine of its own: own data, socket and network
    namespace, so it has no route to the loopback registry and its bridge
    is its own. Yields the environment that points docker at it."""
    root = Path(tempfile.mkdtemp(prefix="kb-engine2-", dir="/var/tmp"))
    namespace = f"kaibuild-{root.name}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    subprocess.run(["ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up"], check=True)
    sock = root / "docker.sock"
    config = root / "daemon.json"
    config.write_text(json.dumps({"features": {"containerd-snapshotter": containerd_store}}))
    log = open(root / "dockerd.log", "w")
    process = subprocess.Popen(
        # nsenter joins only the network namespace (`ip netns exec` would also
        # remount /sys, hiding the cgroup mounts dockerd needs).
        ["nsenter", f"--net=/var/run/netns/{namespace}", "dockerd", "--config-file", str(config), "--data-root", str(root / "data"),
         "--exec-root", str(root / "exec"), "--pidfile", str(root / "docker.pid"), "--host", f"unix://{sock}"],
        stdout=log, stderr=subprocess.STDOUT)
    env = {"DOCKER_HOST": f"unix://{sock}"}
    try:
        for _ in range(60):
            if subprocess.run(["docker", "info"], capture_output=True, env={**os.environ, **env}).returncode == 0:
                break
            time.sleep(1)
        else:
            pytest.fail(f"second dockerd did not start; see {root / 'dockerd.log'}")
        yield env
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def second_engine(docker_env: dict) -> Iterator[dict[str, str]]:
    """A second, empty Docker engine with the containerd image store (a fresh
    CI runner's, or the machine with no network). A new one for each test,
    so each starts empty."""
    with _another_engine(containerd_store=True) as env:
        yield env


@pytest.fixture
def classic_engine(docker_env: dict) -> Iterator[dict[str, str]]:
    """An empty engine on the classic image store, whose default builder
    cannot write a tarball (field case C3)."""
    with _another_engine(containerd_store=False) as env:
        yield env
