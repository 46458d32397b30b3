"""The rule kinds kaibuild knows, registered explicitly (no discovery)."""

from __future__ import annotations

from kaibuild.rule import Rule
from rules.base_image import BaseImageRule
from rules.docker_image import DockerImageRule
from rules.download import DownloadRule
from rules.go_binary import GoBinaryRule
from rules.go_tool import GoToolRule
from rules.go_vendor import GoVendorRule


def all_rules() -> dict[str, Rule]:
    rules: list[Rule] = [BaseImageRule(), DockerImageRule(), DownloadRule(), GoBinaryRule(), GoToolRule(), GoVendorRule()]
    return {rule.kind: rule for rule in rules}
