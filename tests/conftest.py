"""Shared test helpers: a scratch copy of examples/kai-mini, and running the
kaibuild CLI as a user would, reading its JSON-lines events."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
    done = subprocess.run(command, cwd=workspace, capture_output=True, text=True, env={**os.environ, **(env or {})})
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
