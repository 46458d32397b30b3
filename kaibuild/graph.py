"""The action graph: nodes from the requested targets and everything they need."""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from kaibuild.context import Context
from kaibuild.errors import ConfigError
from kaibuild.rule import Node, NodeId


def build_graph(roots: list[Node], ctx: Context) -> nx.DiGraph:
    """Expand the roots' dependencies; edges point from a dependency to its user."""
    graph: nx.DiGraph = nx.DiGraph()
    pending = list(roots)
    expanded: set[NodeId] = set()
    while pending:
        node = pending.pop()
        if node.id in expanded:
            continue
        expanded.add(node.id)
        ctx.nodes[node.id] = node
        graph.add_node(node.id)
        for dep in ctx.rules[node.kind].expand(node, ctx):
            ctx.nodes.setdefault(dep.id, dep)
            pending.append(ctx.nodes[dep.id])
        for dep_id in node.deps.values():
            graph.add_edge(dep_id, node.id)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return graph
    path = " -> ".join(str(a) for a, _ in cycle) + f" -> {cycle[0][0]}"
    raise ConfigError(f"dependency cycle: {path}", where=ctx.nodes[cycle[0][0]].where,
                      fix="remove one of these dependencies")


def execution_order(graph: nx.DiGraph, early: Callable[[NodeId], bool] = lambda _: False) -> list[NodeId]:
    """Dependencies first; among ready nodes the `early` ones (quick checks
    that can fail, like resolving a registry pin) go first, so a bad input
    stops the build before the long actions; ties broken by name so runs
    are repeatable."""
    return list(nx.lexicographical_topological_sort(graph, key=lambda n: f"{0 if early(n) else 1}{n}"))
