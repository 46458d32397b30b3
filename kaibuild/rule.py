"""What the engine knows of a rule kind: an interface, and nothing of KAI.

A rule turns a node (a target, or a synthetic node such as a base image, for
one platform or none) into outputs. The engine asks it, in order:
  expand()  -> the dependency nodes, by role
  inputs()  -> JSON-able facts that, with the dependencies' output digests,
               determine the output; they form the action key
  run()     -> produce the outputs into a fresh directory
  restore() -> make a cached output usable by a consumer (load an image)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from kaibuild.address import Address
from kaibuild.cache import OutputRecord
from kaibuild.platform import Platform

if TYPE_CHECKING:
    from kaibuild.context import Context
    from kaibuild.report import ActionLog


@dataclass(frozen=True, order=True)
class NodeId:
    label: str  # "//services:scheduler" or "base-image golang:1.24.4-bullseye"
    platform: Platform | None  # None: the output does not depend on a platform

    def __str__(self) -> str:
        return f"{self.label} [{self.platform}]" if self.platform else self.label


@dataclass
class Node:
    id: NodeId
    kind: str
    settings: dict[str, Any]
    address: Address | None = None  # None for synthetic nodes
    where: str = ""  # where it was declared, for error messages
    deps: dict[str, NodeId] = field(default_factory=dict)  # role -> dependency


@dataclass
class RunResult:
    """What run() hands back: files it wrote under `out`, and content facts."""

    out: Path
    meta: dict[str, Any] = field(default_factory=dict)


class Rule(ABC):
    kind: ClassVar[str]
    version: ClassVar[int]  # bump when a change in run() changes outputs
    settings: ClassVar[dict[str, type | tuple[type, ...]]]  # setting -> type(s)
    required: ClassVar[frozenset[str]] = frozenset()
    platform_independent: ClassVar[bool] = False  # True: one output serves every platform
    run_early: ClassVar[bool] = False  # True: schedule as soon as possible (cheap checks that fail fast)
    offline_reuses_inputs: ClassVar[bool] = False  # True: inputs need the network; offline, reuse the recorded ones

    def node_platform(self, settings: dict[str, Any], requested: Platform | None, ctx: Context) -> Platform | None:
        """The platform a target's node is built for, given the one asked for."""
        return None if self.platform_independent else requested

    @abstractmethod
    def expand(self, node: Node, ctx: Context) -> list[Node]:
        """Fill node.deps and return dependency nodes not declared as targets."""

    @abstractmethod
    def inputs(self, node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> dict[str, Any]:
        """Everything besides dependency outputs that determines the output."""

    @abstractmethod
    def run(self, node: Node, ctx: Context, deps: dict[str, OutputRecord], inputs: dict[str, Any],
            work: Path, log: ActionLog) -> RunResult:
        """Build the output into a directory under `work`; raise on failure."""

    def restore(self, node: Node, ctx: Context, record: OutputRecord) -> None:  # noqa: B027 - optional hook
        """Make a (possibly cached) output usable by consumers."""

    def artifact(self, node: Node, record: OutputRecord) -> tuple[str, str] | None:
        """(relpath in record, file name under dist/<platform>/) to export, if any."""
        return None

    # --- the offline bundle -------------------------------------------------------
    def bundle_section(self, node: Node) -> str | None:
        """The bundle folder this node's artifact goes to; None: not bundled."""
        return None

    def supply_hint(self, node: Node) -> str:
        """How a user supplies this node's output when it cannot be made here."""
        return "fix the cause the export reported for it"

    def export_nodes(self, node: Node, ctx: Context) -> list[Node]:
        """The nodes an offline bundle needs for this target (built by export)."""
        return [node] if self.bundle_section(node) else []

    def bundle_files(self, node: Node, record: OutputRecord) -> list[tuple[str, str]]:
        """(path in the bundle, path in the record) of what the bundle carries."""
        section, artifact = self.bundle_section(node), self.artifact(node, record)
        if not section or not artifact:
            return []
        return [(f"{section}/{artifact[1]}", artifact[0])]
