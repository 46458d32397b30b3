"""Progress reporting as hooks: a console reporter, a JSON-lines one for CI,
and a recording one for tests. Action logs go to files, with a tail kept for
failure messages."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kaibuild.rule import NodeId


class ActionLog:
    """Collects one action's output into a file and keeps its last lines."""

    def __init__(self, path: Path, echo: TextIO | None = None, tail_lines: int = 40):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "w")
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._echo = echo

    def write(self, text: str) -> None:
        for line in text.splitlines():
            self._file.write(line + "\n")
            self._tail.append(line)
            if self._echo:
                self._echo.write(f"    | {line}\n")
        self._file.flush()

    def tail(self) -> str:
        return "\n".join(self._tail)

    def close(self) -> None:
        self._file.close()


@dataclass
class Summary:
    executed: list[NodeId] = field(default_factory=list)
    cached: list[NodeId] = field(default_factory=list)
    failed: list[NodeId] = field(default_factory=list)
    skipped: list[NodeId] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        parts = [f"{len(self.executed)} executed", f"{len(self.cached)} cached"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        return ", ".join(parts) + f" in {self.seconds:.1f}s"


class Reporter:
    """Hooks the executor calls; the base class ignores them all."""

    def planned(self, nodes: list[NodeId]) -> None: ...
    def started(self, node: NodeId, index: int, total: int) -> None: ...
    def cached(self, node: NodeId, index: int, total: int, digest: str = "") -> None: ...
    def finished(self, node: NodeId, seconds: float, digest: str = "") -> None: ...
    def failed(self, node: NodeId, error: Exception, log_tail: str, log_path: Path | None) -> None: ...
    def skipped(self, node: NodeId, reason: str) -> None: ...
    def explained(self, node: NodeId, lines: list[str]) -> None: ...
    def artifact(self, node: NodeId, path: Path) -> None: ...
    def summary(self, summary: Summary, *, failures_accepted: bool = False) -> None: ...


class ConsoleReporter(Reporter):
    def __init__(self, stream: TextIO = sys.stderr, out: TextIO = sys.stdout):
        self.stream, self.out = stream, out
        self._started: dict[NodeId, float] = {}

    def _say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def planned(self, nodes: list[NodeId]) -> None:
        self._say(f"kaibuild: {len(nodes)} actions planned")

    def started(self, node: NodeId, index: int, total: int) -> None:
        self._started[node] = time.monotonic()
        self._say(f"[{index}/{total}] running  {node} ...")

    def cached(self, node: NodeId, index: int, total: int, digest: str = "") -> None:
        self._say(f"[{index}/{total}] cached   {node}")

    def finished(self, node: NodeId, seconds: float, digest: str = "") -> None:
        self._say(f"      done     {node} ({seconds:.1f}s)")

    def failed(self, node: NodeId, error: Exception, log_tail: str, log_path: Path | None) -> None:
        self._say(f"FAILED {node}\n  {error}".replace("\n", "\n  "))
        if log_tail:
            self._say("  --- last lines of its log ---")
            self._say("  " + log_tail.replace("\n", "\n  "))
        if log_path:
            self._say(f"  full log: {log_path}")

    def skipped(self, node: NodeId, reason: str) -> None:
        self._say(f"      skipped  {node}: {reason}")

    def explained(self, node: NodeId, lines: list[str]) -> None:
        self._say(f"      why      {node}:")
        for line in lines:
            self._say(f"               {line}")

    def artifact(self, node: NodeId, path: Path) -> None:
        self.out.write(f"{path}\n")
        self.out.flush()

    def summary(self, summary: Summary, *, failures_accepted: bool = False) -> None:
        # failures_accepted: the command went on without them (export --allow-missing).
        failed = summary.failed and not failures_accepted
        self._say(("BUILD FAILED: " if failed else "kaibuild: ") + summary.line())


class JsonLinesReporter(Reporter):
    """One JSON object per event, for CI logs and tools."""

    def __init__(self, stream: TextIO = sys.stdout):
        self.stream = stream

    def _emit(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, "time": time.time(), **fields}) + "\n")
        self.stream.flush()

    def started(self, node: NodeId, index: int, total: int) -> None:
        self._emit("started", node=str(node), index=index, total=total)

    def cached(self, node: NodeId, index: int, total: int, digest: str = "") -> None:
        self._emit("cached", node=str(node), index=index, total=total, digest=digest)

    def finished(self, node: NodeId, seconds: float, digest: str = "") -> None:
        self._emit("finished", node=str(node), seconds=round(seconds, 3), digest=digest)

    def failed(self, node: NodeId, error: Exception, log_tail: str, log_path: Path | None) -> None:
        self._emit("failed", node=str(node), error=str(error), log_tail=log_tail, log=str(log_path or ""))

    def skipped(self, node: NodeId, reason: str) -> None:
        self._emit("skipped", node=str(node), reason=reason)

    def explained(self, node: NodeId, lines: list[str]) -> None:
        self._emit("explained", node=str(node), reasons=lines)

    def artifact(self, node: NodeId, path: Path) -> None:
        self._emit("artifact", node=str(node), path=str(path))

    def summary(self, summary: Summary, *, failures_accepted: bool = False) -> None:
        self._emit("summary", executed=len(summary.executed), cached=len(summary.cached),
                   failed=len(summary.failed), skipped=len(summary.skipped), seconds=round(summary.seconds, 3))


class RecordingReporter(Reporter):
    """Keeps every event, for tests to assert on."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.last_summary: Summary | None = None

    def started(self, node: NodeId, index: int, total: int) -> None:
        self.events.append(("started", str(node)))

    def cached(self, node: NodeId, index: int, total: int, digest: str = "") -> None:
        self.events.append(("cached", str(node)))

    def failed(self, node: NodeId, error: Exception, log_tail: str, log_path: Path | None) -> None:
        self.events.append(("failed", str(node)))

    def skipped(self, node: NodeId, reason: str) -> None:
        self.events.append(("skipped", str(node)))

    def summary(self, summary: Summary, *, failures_accepted: bool = False) -> None:
        self.last_summary = summary
