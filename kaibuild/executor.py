"""Walks the action graph: key each action, reuse a cached output or run it.

Outcomes are kept apart: executed, cached, failed, and skipped (because a
dependency failed, or the build stopped at the first failure).
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from kaibuild.cache import OutputRecord
from kaibuild.context import Context
from kaibuild.errors import ActionFailed, KaibuildError
from kaibuild.fingerprint import key_of
from kaibuild.graph import execution_order
from kaibuild.report import ActionLog, Reporter, Summary
from kaibuild.rule import Node, NodeId


@dataclass
class Result:
    summary: Summary
    records: dict[NodeId, OutputRecord] = field(default_factory=dict)
    keys: dict[NodeId, str] = field(default_factory=dict)
    materials: dict[NodeId, dict[str, Any]] = field(default_factory=dict)  # what each key hashes

    @property
    def ok(self) -> bool:
        return not self.summary.failed and not self.summary.skipped


def action_key_material(node: Node, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    """Everything the key is a hash of; `explain` compares two of these."""
    rule = ctx.rules[node.kind]
    return {
        "kind": node.kind,
        "rule_version": rule.version,
        "settings": node.settings,
        "platform": str(node.id.platform) if node.id.platform else None,
        "inputs": inputs,
        "deps": {role: ctx.records[dep].digest for role, dep in sorted(node.deps.items())},
    }


def execute(graph: nx.DiGraph, ctx: Context, reporter: Reporter, *, explain: bool = False,
            keep_going: bool = False) -> Result:
    """Run the graph. After a failure, only with `keep_going` do independent
    actions still run; otherwise the rest are reported as skipped."""
    order = execution_order(graph, early=lambda n: ctx.rules[ctx.nodes[n].kind].run_early)
    reporter.planned(order)
    summary = Summary()
    result = Result(summary=summary)
    broken: set[NodeId] = set()
    started = time.monotonic()
    for index, node_id in enumerate(order, 1):
        node = ctx.nodes[node_id]
        failed_deps = [d for d in node.deps.values() if d in broken]
        if summary.failed and not keep_going:
            broken.add(node_id)
            summary.skipped.append(node_id)
            reporter.skipped(node_id, "not run: an earlier action failed (--keep-going runs independent ones)")
            continue
        if failed_deps:
            broken.add(node_id)
            summary.skipped.append(node_id)
            reporter.skipped(node_id, f"dependency {failed_deps[0]} did not build")
            continue
        try:
            _build_one(node, ctx, reporter, index, len(order), result, explain)
        except KaibuildError as error:
            broken.add(node_id)
            summary.failed.append(node_id)
            tail = error.log_tail if isinstance(error, ActionFailed) else ""
            log_path = ctx.store.root / "logs" / f"{result.keys[node_id]}.log" if node_id in result.keys else None
            reporter.failed(node_id, error, tail, log_path if log_path and log_path.exists() else None)
    summary.seconds = time.monotonic() - started
    ctx.store.actions.set("stats:last", {"executed": len(summary.executed), "cached": len(summary.cached),
                                         "failed": len(summary.failed), "time": time.time()})
    return result


def _build_one(node: Node, ctx: Context, reporter: Reporter, index: int, total: int,
               result: Result, explain: bool) -> None:
    rule = ctx.rules[node.kind]
    deps = {role: ctx.records[dep] for role, dep in node.deps.items()}
    inputs = _inputs(node, ctx, deps)
    material = action_key_material(node, ctx, inputs)
    key = key_of(material)
    result.keys[node.id] = key
    result.materials[node.id] = material
    record = ctx.store.get(key)
    if record is not None:
        ctx.records[node.id] = result.records[node.id] = record
        result.summary.cached.append(node.id)
        reporter.cached(node.id, index, total, record.digest)
        _remember(ctx, node.id, key, material)
        return
    if explain:
        reporter.explained(node.id, explain_change(ctx, node.id, material))
    reporter.started(node.id, index, total)
    begun = time.monotonic()
    log = ActionLog(ctx.store.root / "logs" / f"{key}.log", echo=sys.stderr if ctx.options.verbose else None)
    work = ctx.store.temp_dir(f"{node.kind}-")
    try:
        for dep in node.deps.values():
            ctx.ensure_ready(dep)
        run = rule.run(node, ctx, deps, inputs, work, log)
        files, executable = ctx.store.put_tree(run.out)
        record = OutputRecord(files=files, executable=executable, meta=run.meta)
        ctx.store.put(key, record)  # last: success is recorded only once outputs are whole
    except KaibuildError as error:
        if isinstance(error, ActionFailed) and not error.log_tail:
            error.log_tail = log.tail()
        raise
    except Exception as error:  # a bug or an unexpected tool failure: still name the action
        raise ActionFailed(f"{type(error).__name__}: {error}", where=str(node.id), log_tail=log.tail()) from error
    finally:
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    ctx.records[node.id] = result.records[node.id] = record
    result.summary.executed.append(node.id)
    reporter.finished(node.id, time.monotonic() - begun, record.digest)
    _remember(ctx, node.id, key, material)


def _inputs(node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> dict[str, Any]:
    """A rule's inputs; offline, for rules whose inputs need the network
    (a registry pin, a download, a module version), the last recorded ones:
    an imported bundle records those of the machine that exported it."""
    rule = ctx.rules[node.kind]
    if ctx.options.offline and rule.offline_reuses_inputs:
        last = ctx.store.actions.get(f"last:{node.id}")
        if last is not None:
            return dict(last["material"]["inputs"])
    return rule.inputs(node, ctx, deps)


def _remember(ctx: Context, node_id: NodeId, key: str, material: dict[str, Any]) -> None:
    """Keep the last key material per node, for `explain`."""
    ctx.store.actions.set(f"last:{node_id}", {"key": key, "material": material})


def explain_change(ctx: Context, node_id: NodeId, material: dict[str, Any]) -> list[str]:
    """Why this node's key differs from the last one recorded for it."""
    last = ctx.store.actions.get(f"last:{node_id}")
    if last is None:
        return ["never built with this cache (no earlier record)"]
    if last["key"] == key_of(material):
        if ctx.store.get(last["key"]) is None:
            return ["inputs unchanged, but the cached output is gone (pruned or damaged): rebuilding"]
        return ["unchanged: cached"]
    changes = _diff(last["material"], material)
    return changes or ["key changed (no input difference found)"]


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                lines.append(f"added   {sub} = {_short(new[key])}")
            elif key not in new:
                lines.append(f"removed {sub} (was {_short(old[key])})")
            else:
                lines.extend(_diff(old[key], new[key], sub))
        return lines
    if old != new:
        return [f"changed {path}: {_short(old)} -> {_short(new)}"]
    return []


def _short(value: Any) -> str:
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12]
    return text if len(text) <= 80 else text[:77] + "..."
