"""Everything a rule may use while planning and running, in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from kaibuild.address import Address
from kaibuild.cache import OutputRecord, Store
from kaibuild.config import Config
from kaibuild.errors import ConfigError
from kaibuild.fingerprint import FileDigests
from kaibuild.platform import Platform
from kaibuild.rule import Node, NodeId, Rule

if TYPE_CHECKING:
    from kaibuild.docker import DockerEngine


@dataclass(frozen=True)
class Options:
    offline: bool = False
    verbose: bool = False
    exec_platform: Platform | None = None  # where tools will run, if not this engine (an offline bundle's)
    buildkit_cache: Path | None = None  # BuildKit layer cache directory (cache-to/cache-from type=local)


class Context:
    def __init__(self, config: Config, store: Store, rules: dict[str, Rule], options: Options = Options()):
        self.config = config
        self.workspace = config.workspace
        self.store = store
        self.rules = rules
        self.options = options
        self.digests = FileDigests(store.actions)
        self.records: dict[NodeId, OutputRecord] = {}  # outputs known so far this run
        self.nodes: dict[NodeId, Node] = {}
        self._restored: set[NodeId] = set()
        self.memo: dict[str, object] = {}  # per-run values rules share (e.g. a module's file digests)

    @cached_property
    def docker(self) -> DockerEngine:
        from kaibuild.docker import DockerEngine  # imported late: planning tests need no engine

        return DockerEngine(self.config.mirrors)

    @cached_property
    def exec_platform(self) -> Platform:
        """The platform tools run on: the Docker engine's own (or the bundle's)."""
        return self.options.exec_platform or self.docker.native_platform()

    @cached_property
    def go_module(self) -> str:
        """The module path from the workspace's go.mod."""
        go_mod = self.workspace / "go.mod"
        try:
            text = go_mod.read_text()
        except OSError:
            raise ConfigError("the workspace has no go.mod", where=str(go_mod),
                              fix="run kaibuild in the root of a Go module (or pass --workspace)") from None
        match = re.search(r"^module\s+(\S+)", text, re.M)
        if not match:
            raise ConfigError("go.mod has no module line", where=str(go_mod), fix="add 'module <path>' to go.mod")
        return match.group(1).strip('"')

    def target_node(self, address: Address, platform: Platform | None, *, wanted_by: str = "") -> Node:
        """The node that builds `address` for `platform` (None if the rule is platform-independent)."""
        spec = self.config.targets.get(address)
        if spec is None:
            raise ConfigError(f"no target {address}", where=wanted_by or str(self.config.path),
                              fix="check the address; 'kaibuild list' shows the targets")
        rule = self.rules[spec.kind]
        node_id = NodeId(str(address), rule.node_platform(spec.settings, platform, self))
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = Node(id=node_id, kind=spec.kind, settings=spec.settings,
                                              address=address, where=spec.where)
        return node

    def ensure_ready(self, node_id: NodeId) -> OutputRecord:
        """A dependency's output, restored for use (once per run)."""
        record = self.records[node_id]
        if node_id not in self._restored:
            node = self.nodes[node_id]
            self.rules[node.kind].restore(node, self, record)
            self._restored.add(node_id)
        return record
