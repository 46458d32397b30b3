"""The engine on pure-logic rules (no Docker): keys, caching, outcomes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaibuild.address import Address
from kaibuild.cache import OutputRecord, Store
from kaibuild.config import Config, TargetSpec
from kaibuild.context import Context
from kaibuild.errors import ActionFailed, ConfigError
from kaibuild.executor import execute
from kaibuild.graph import build_graph
from kaibuild.platform import Platform
from kaibuild.report import ActionLog, RecordingReporter
from kaibuild.rule import Node, Rule, RunResult

AMD64 = Platform.parse("linux/amd64")


class WriteRule(Rule):
    """Writes settings["text"] plus its dependencies' outputs to out.txt."""

    kind = "write"
    version = 1
    settings = {"text": str, "deps": list, "fail": bool}

    def __init__(self) -> None:
        self.runs: list[str] = []

    def expand(self, node: Node, ctx: Context) -> list[Node]:
        deps = [ctx.target_node(Address.parse(a), node.id.platform) for a in node.settings.get("deps", [])]
        node.deps = {f"dep:{d.id.label}": d.id for d in deps}
        return deps

    def inputs(self, node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> dict[str, Any]:
        return {"text": node.settings["text"]}

    def run(self, node: Node, ctx: Context, deps: dict[str, OutputRecord], inputs: dict[str, Any],
            work: Path, log: ActionLog) -> RunResult:
        self.runs.append(node.id.label)
        out = work / "out"
        out.mkdir()
        (out / "out.txt").write_text(inputs["text"] + "".join(sorted(r.digest for r in deps.values())))
        if node.settings.get("fail"):
            log.write("something went wrong\nat the end")
            raise ActionFailed("boom", where=node.id.label)
        return RunResult(out, {})


def make(tmp_path: Path, targets: dict[str, dict]) -> tuple[Context, WriteRule]:
    rule = WriteRule()
    config = Config(path=tmp_path / "kaibuild.toml", workspace=tmp_path, default_platforms=[AMD64],
                    dist_dir="dist", mirrors={})
    for text, settings in targets.items():
        config.targets[Address.parse(text)] = TargetSpec(Address.parse(text), "write", settings, "test")
    return Context(config, Store(tmp_path / "cache"), {"write": rule}), rule


def build(ctx: Context, *roots: str, keep_going: bool = False) -> RecordingReporter:
    reporter = RecordingReporter()
    nodes = [ctx.target_node(Address.parse(r), AMD64) for r in roots]
    reporter.summary(execute(build_graph(nodes, ctx), ctx, reporter, keep_going=keep_going).summary)
    return reporter


def fresh(ctx: Context) -> Context:
    """A new run on the same cache (as a second kaibuild process would be)."""
    return Context(ctx.config, ctx.store, ctx.rules)


def test_second_run_executes_nothing(tmp_path: Path) -> None:
    ctx, rule = make(tmp_path, {"//a:lib": {"text": "x"}, "//a:app": {"text": "y", "deps": ["//a:lib"]}})
    build(ctx, "//a:app")
    assert sorted(rule.runs) == ["//a:app", "//a:lib"]
    reporter = build(fresh(ctx), "//a:app")
    assert rule.runs == ["//a:lib", "//a:app"]  # unchanged: nothing new ran
    assert reporter.last_summary and len(reporter.last_summary.cached) == 2


def test_changed_dependency_reruns_its_users_only(tmp_path: Path) -> None:
    targets = {"//a:lib": {"text": "x"}, "//a:app": {"text": "y", "deps": ["//a:lib"]}, "//a:other": {"text": "z"}}
    ctx, rule = make(tmp_path, targets)
    build(ctx, "//a:app", "//a:other")
    rule.runs.clear()
    targets["//a:lib"]["text"] = "changed"
    ctx2, _ = make(tmp_path, targets)
    ctx2.rules = ctx.rules
    build(ctx2, "//a:app", "//a:other")
    assert sorted(rule.runs) == ["//a:app", "//a:lib"]


def test_first_failure_stops_the_build_by_default(tmp_path: Path) -> None:
    ctx, rule = make(tmp_path, {"//a:lib": {"text": "x", "fail": True}, "//a:zzz": {"text": "z"}})
    reporter = build(ctx, "//a:lib", "//a:zzz")
    assert ("failed", "//a:lib [linux/amd64]") in reporter.events
    assert ("skipped", "//a:zzz [linux/amd64]") in reporter.events
    assert "//a:zzz" not in rule.runs


def test_failure_records_nothing_and_skips_dependents(tmp_path: Path) -> None:
    ctx, rule = make(tmp_path, {"//a:lib": {"text": "x", "fail": True}, "//a:app": {"text": "y", "deps": ["//a:lib"]},
                                "//a:other": {"text": "z"}})
    reporter = build(ctx, "//a:app", "//a:other", keep_going=True)
    assert ("failed", "//a:lib [linux/amd64]") in reporter.events
    assert ("skipped", "//a:app [linux/amd64]") in reporter.events
    assert reporter.last_summary is not None and [str(n) for n in reporter.last_summary.executed] == ["//a:other [linux/amd64]"]
    rule.runs.clear()
    build(fresh(ctx), "//a:app")
    assert "//a:lib" in rule.runs  # the failure was not cached


def test_lost_output_blob_reruns_the_action(tmp_path: Path) -> None:
    ctx, rule = make(tmp_path, {"//a:lib": {"text": "x"}})
    build(ctx, "//a:lib")
    for blob in (tmp_path / "cache" / "cas").rglob("*"):
        if blob.is_file():
            blob.chmod(0o644)
            blob.unlink()
    rule.runs.clear()
    build(fresh(ctx), "//a:lib")
    assert rule.runs == ["//a:lib"]


def test_cycle_error_prints_the_path(tmp_path: Path) -> None:
    ctx, _ = make(tmp_path, {"//a:x": {"text": "1", "deps": ["//a:y"]}, "//a:y": {"text": "2", "deps": ["//a:x"]}})
    with pytest.raises(ConfigError, match=r"cycle: //a:\w \[linux/amd64\] -> //a:\w \[linux/amd64\] -> //a:\w"):
        build(ctx, "//a:x")


def test_early_nodes_are_ordered_before_other_ready_nodes() -> None:
    import networkx as nx

    from kaibuild.graph import execution_order
    from kaibuild.rule import NodeId

    a, b, check, user = (NodeId(x, None) for x in ("//a:a", "//a:b", "zz-check", "//a:user"))
    graph = nx.DiGraph([(a, user), (check, user), (b, user)])
    order = execution_order(graph, early=lambda n: n.label.startswith("zz"))
    assert order[0] == check and order[-1] == user
