"""docker_image without Docker: the Dockerfile a build is given, and its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kaibuild.cache import OutputRecord, Store
from kaibuild.config import Config
from kaibuild.context import Context, Options
from kaibuild.errors import ConfigError
from kaibuild.platform import Platform
from kaibuild.rule import Node, NodeId
from rules.base_image import local_image_name
from rules.docker_image import DockerImageRule

AMD64 = Platform.parse("linux/amd64")
ARM64 = Platform.parse("linux/arm64")

DOCKERFILE = """\
ARG GO_IMAGE=golang:1.24.4-bullseye
FROM --platform=$BUILDPLATFORM \\
    ${GO_IMAGE} \\
    AS build
RUN curl -fsSLo /kubectl https://dl.k8s.io/release/v1.35.0/bin/linux/amd64/kubectl \\
 && chmod +x /kubectl
FROM build AS test
FROM nvcr.io/nvidia/distroless/go:v3.2.1
COPY --from=build /kubectl /kubectl
COPY --from=busybox:1 /bin/sh /sh
"""


def setup(tmp_path: Path, text: str = DOCKERFILE, **settings: Any) -> tuple[Context, Node]:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "Dockerfile").write_text(text)
    config = Config(path=workspace / "kaibuild.toml", workspace=workspace, default_platforms=[AMD64],
                    dist_dir="dist", mirrors={})
    ctx = Context(config, Store(tmp_path / "cache"), {"docker_image": DockerImageRule()}, Options(exec_platform=AMD64))
    node = Node(id=NodeId("//images:app", ARM64), kind="docker_image",
                settings={"dockerfile": "Dockerfile", **settings}, where="kaibuild.toml:1")
    return ctx, node


def base_records(ctx: Context, node: Node, digest: str = "1") -> dict[str, OutputRecord]:
    """What the base_image deps would have recorded: each pinned to a made-up manifest."""
    DockerImageRule().expand(node, ctx)
    return {role: OutputRecord(meta={"ref": role.removeprefix("base:").rsplit("@", 1)[0],
                                     "manifest_digest": f"sha256:{digest * 64}",
                                     "platform": role.rsplit("@", 1)[1]})
            for role in node.deps if role.startswith("base:")}


def test_build_dockerfile_names_local_base_images_in_from_lines(tmp_path: Path) -> None:
    ctx, node = setup(tmp_path)
    deps = base_records(ctx, node)
    golang = local_image_name(deps["base:golang:1.24.4-bullseye@linux/amd64"])
    distroless = local_image_name(deps["base:nvcr.io/nvidia/distroless/go:v3.2.1@linux/arm64"])

    built = DockerImageRule()._build_dockerfile(node, ctx, deps)

    assert golang == "kaibuild.local/docker.io/library/golang:sha256-" + "1" * 64
    assert built.parent == ctx.store.root / "views" / "dockerfiles"
    assert built.read_text().splitlines() == [
        "ARG GO_IMAGE=golang:1.24.4-bullseye",
        f"FROM --platform=$BUILDPLATFORM {golang} AS build",
        "",
        "",
        *DOCKERFILE.splitlines()[4:7],  # RUN (two lines) and FROM build: untouched
        f"FROM {distroless}",
        *DOCKERFILE.splitlines()[8:],  # COPY --from=busybox:1 stays a named build context
    ]
    assert (ctx.workspace / "Dockerfile").read_text() == DOCKERFILE  # never edited in place


def test_replace_steps_and_from_rewrites_go_into_one_derived_file(tmp_path: Path) -> None:
    steps = [{"contains": "dl.k8s.io", "with": "COPY bin/kubectl-{arch} /kubectl"}]
    ctx, node = setup(tmp_path, replace_steps=steps)
    deps = base_records(ctx, node)

    lines = DockerImageRule()._build_dockerfile(node, ctx, deps).read_text().splitlines()

    assert lines[1].startswith("FROM --platform=$BUILDPLATFORM kaibuild.local/docker.io/library/golang:sha256-")
    assert lines[4:6] == ["COPY bin/kubectl-arm64 /kubectl", ""]
    assert lines[7].startswith("FROM kaibuild.local/nvcr.io/nvidia/distroless/go:sha256-")
    assert len(lines) == len(DOCKERFILE.splitlines())


def test_key_inputs_hold_the_users_from_lines_not_local_names(tmp_path: Path) -> None:
    ctx, node = setup(tmp_path)
    rule = DockerImageRule()
    first = rule._build_dockerfile(node, ctx, base_records(ctx, node, "1"))
    moved = rule._build_dockerfile(node, ctx, base_records(ctx, node, "2"))

    inputs = rule.inputs(node, ctx, base_records(ctx, node))

    assert first != moved  # a new pin is a new local name, so a new derived file
    assert "FROM nvcr.io/nvidia/distroless/go:v3.2.1" in inputs["dockerfile"]
    assert not any("kaibuild.local" in line for line in inputs["dockerfile"])


def test_dockerfile_without_external_from_is_built_as_it_is(tmp_path: Path) -> None:
    ctx, node = setup(tmp_path, "FROM scratch\nCOPY --from=busybox:1 /bin/sh /sh\n")

    assert DockerImageRule()._build_dockerfile(node, ctx, base_records(ctx, node)) == ctx.workspace / "Dockerfile"


def test_a_stage_the_dockerfile_lacks_names_the_kaibuild_toml_setting(tmp_path: Path) -> None:
    ctx, node = setup(tmp_path, stage="prodd")
    with pytest.raises(ConfigError, match="target stage 'prodd' not found") as raised:
        DockerImageRule().expand(node, ctx)
    assert raised.value.where == "kaibuild.toml:1 (stage)"
    assert raised.value.fix and "stage in kaibuild.toml" in raised.value.fix and "build, test" in raised.value.message
