"""kaibuild.dockerfile: BuildKit-compatible Dockerfile analysis and context selection."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from kaibuild.dockerfile import (
    BaseImage,
    DockerfilePlan,
    analyze_dockerfile,
    rewrite_from_lines,
    select_context_files,
)
from kaibuild.errors import DockerfileError

KAI_DOCKERFILE = """\
# Service images; binaries are built beforehand into bin/<service>-<arch>.
FROM golang:1.22 AS debug
ARG TARGETARCH
ARG SERVICE_NAME
ENV SERVICE_NAME=$SERVICE_NAME
RUN go install github.com/go-delve/delve/cmd/dlv@latest
WORKDIR /workspace
COPY --chown=65532:65532 --chmod=0555 bin/$SERVICE_NAME-$TARGETARCH app
ENTRYPOINT ["/go/bin/dlv", "exec", "/workspace/app"]

FROM nvcr.io/nvidia/distroless/go:v3.2.1 AS prod
ARG TARGETARCH
ARG SERVICE_NAME
WORKDIR /workspace
COPY --chown=65532:65532 --chmod=0555 bin/$SERVICE_NAME-$TARGETARCH app
USER 65532:65532
ENTRYPOINT ["/workspace/app"]
"""


def analyze(
    tmp_path: Path,
    text: str,
    *,
    target: str | None = None,
    build_args: Mapping[str, str] | None = None,
    target_platform: str = "linux/arm64",
    build_platform: str = "linux/amd64",
) -> DockerfilePlan:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return analyze_dockerfile(
        path,
        target=target,
        build_args=build_args or {},
        target_platform=target_platform,
        build_platform=build_platform,
    )


def make_tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(content)
    return root


# --- analyze_dockerfile --------------------------------------------------------------


def test_kai_prod_target_needs_only_distroless_and_the_arch_binary(tmp_path: Path) -> None:
    plan = analyze(tmp_path, KAI_DOCKERFILE, target="prod", build_args={"SERVICE_NAME": "scheduler"})

    assert plan.base_images == (
        BaseImage(ref="nvcr.io/nvidia/distroless/go:v3.2.1", stage="prod", line=11, platform=None),
    )
    assert plan.context_sources == ("bin/scheduler-arm64",)
    assert plan.stages == ("prod",)
    assert plan.urls == ()


def test_kai_debug_target_uses_golang_and_target_platform_arch(tmp_path: Path) -> None:
    plan = analyze(
        tmp_path, KAI_DOCKERFILE, target="debug", build_args={"SERVICE_NAME": "binder"}, target_platform="linux/amd64"
    )

    assert [image.ref for image in plan.base_images] == ["golang:1.22"]
    assert plan.context_sources == ("bin/binder-amd64",)


def test_no_target_means_the_last_stage(tmp_path: Path) -> None:
    plan = analyze(tmp_path, KAI_DOCKERFILE, build_args={"SERVICE_NAME": "scheduler"})

    assert plan.stages == ("prod",)


def test_global_arg_default_and_build_arg_override_in_from(tmp_path: Path) -> None:
    text = "ARG GO_VERSION=1.24.4\nARG VARIANT=bullseye\nFROM golang:${GO_VERSION}-$VARIANT\n"

    default = analyze(tmp_path, text)
    overridden = analyze(tmp_path, text, build_args={"GO_VERSION": "1.23.10"})

    assert default.base_images == (BaseImage("golang:1.24.4-bullseye", "0", 3, None),)
    assert overridden.base_images[0].ref == "golang:1.23.10-bullseye"


def test_global_arg_reaches_a_stage_only_when_redeclared(tmp_path: Path) -> None:
    text = "ARG VERSION=1.0\nFROM alpine AS a\nCOPY app-${VERSION}.tgz /\n"
    text += "FROM a\nARG VERSION\nCOPY app-${VERSION}.tgz /\n"

    plan = analyze(tmp_path, text)

    assert plan.context_sources == ("app-.tgz", "app-1.0.tgz")


def test_from_platform_buildplatform_expands_to_the_build_platform(tmp_path: Path) -> None:
    text = """\
FROM --platform=$BUILDPLATFORM golang:1.24.4-bullseye AS builder
ARG TARGETOS TARGETARCH
COPY go.mod go.sum ./
COPY cmd/ cmd/
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/app ./cmd/app

FROM gcr.io/distroless/static:nonroot
COPY --from=builder /out/app /app
"""
    plan = analyze(tmp_path, text, target_platform="linux/arm64", build_platform="linux/amd64")

    assert plan.base_images == (
        BaseImage("golang:1.24.4-bullseye", "builder", 1, "linux/amd64"),
        BaseImage("gcr.io/distroless/static:nonroot", "1", 7, None),
    )
    assert plan.context_sources == ("go.mod", "go.sum", "cmd/")
    assert plan.stages == ("builder", "1")


def test_platform_args_come_from_target_platform_with_variant(tmp_path: Path) -> None:
    text = "FROM alpine\nARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDARCH\n"
    text += "COPY $TARGETOS/$TARGETARCH/$TARGETVARIANT/$BUILDARCH ${TARGETPLATFORM} /\n"

    plan = analyze(tmp_path, text, target_platform="linux/arm/v7", build_platform="linux/amd64")

    assert plan.context_sources == ("linux/arm/v7/amd64", "linux/arm/v7")


def test_stage_images_name_each_needed_external_from_once_per_stage(tmp_path: Path) -> None:
    text = """\
ARG BASE=golang:1.24.4-bullseye
FROM --platform=$BUILDPLATFORM ${BASE} AS build
FROM build AS test
FROM scratch AS empty
FROM alpine:3 AS unused
FROM golang:1.24.4-bullseye
COPY --from=build /out /out
COPY --from=busybox:1 /bin/sh /sh
COPY --from=empty / /
"""
    plan = analyze(tmp_path, text, target_platform="linux/arm64", build_platform="linux/amd64")

    # Not deduplicated by (ref, platform) like base_images, and only FROMs:
    # not the stage FROM a stage, scratch, an unneeded stage or COPY --from.
    assert plan.stage_images == (
        BaseImage("golang:1.24.4-bullseye", "build", 2, "linux/amd64"),
        BaseImage("golang:1.24.4-bullseye", "4", 6, None),
    )
    assert [image.ref for image in plan.base_images] == ["golang:1.24.4-bullseye"] * 2 + ["busybox:1"]


def test_rewrite_from_keeps_flags_and_as_name_as_written() -> None:
    text = 'FROM --platform="$BUILDPLATFORM" ${BASE} as Build\nRUN make\n'

    out = rewrite_from_lines(text, {1: "kaibuild.local/docker.io/library/golang:sha256-1"})

    assert out == 'FROM --platform="$BUILDPLATFORM" kaibuild.local/docker.io/library/golang:sha256-1 as Build\nRUN make\n'


def test_rewrite_multi_line_from_blanks_continuations_so_lines_keep_their_numbers() -> None:
    text = "# escape=`\nFROM `\n  --platform=linux/arm64 `\n  golang:1.22 `\n  AS build\nRUN make\n"

    out = rewrite_from_lines(text, {2: "local:1"})

    assert out.splitlines() == ["# escape=`", "FROM --platform=linux/arm64 local:1 AS build", "", "", "", "RUN make"]


def test_rewrite_leaves_every_other_byte_alone() -> None:
    # CRLF endings, a form feed (not a line break for BuildKit), no final newline.
    text = "FROM golang:1.22 \\\r\n  AS build\r\nRUN a\x0cb\r\nFROM alpine"

    assert rewrite_from_lines(text, {1: "l:1", 4: "l:2"}) == "FROM l:1 AS build\n\nRUN a\x0cb\r\nFROM l:2"


def test_rewrite_touches_only_the_given_from_lines() -> None:
    text = "FROM golang:1.22 AS build\nFROM build\nFROM scratch\nCOPY --from=build /a /a\n"

    assert rewrite_from_lines(text, {1: "local:1"}) == text.replace("golang:1.22", "local:1", 1)
    with pytest.raises(ValueError, match="line 4"):
        rewrite_from_lines(text, {4: "local:1"})


def test_rewritten_from_of_an_arg_expanded_image_analyzes_to_the_local_name(tmp_path: Path) -> None:
    text = "ARG BASE=golang:1.22\nFROM ${BASE} AS build\nARG BASE\nRUN echo $BASE\n"
    [image] = analyze(tmp_path, text).stage_images

    out = rewrite_from_lines(text, {image.line: "kaibuild.local/x:sha256-1"})

    # The global ARG stays, so a stage that redeclares it still sees its value.
    assert out == text.replace("FROM ${BASE}", "FROM kaibuild.local/x:sha256-1")
    assert [i.ref for i in analyze(tmp_path, out).stage_images] == ["kaibuild.local/x:sha256-1"]


def test_multistage_needs_only_stages_reached_by_from_and_copy_from(tmp_path: Path) -> None:
    text = """\
FROM golang:1.22 AS Deps
COPY go.mod go.sum ./
FROM deps AS builder
COPY . .
FROM python:3.12 AS docs
COPY docs/ /docs
FROM scratch AS final
COPY --from=BUILDER /out/app /app
COPY --from=0 /go/pkg /pkg
COPY --from=busybox:1.36 /bin/sh /sh
"""
    plan = analyze(tmp_path, text, target="final")

    assert plan.stages == ("deps", "builder", "final")
    assert plan.base_images == (
        BaseImage("golang:1.22", "deps", 1, None),
        BaseImage("busybox:1.36", "final", 10, None),
    )
    assert plan.context_sources == ("go.mod", "go.sum", ".")


def test_run_mount_from_stage_is_needed_and_bind_mount_reads_the_context(tmp_path: Path) -> None:
    text = """\
FROM alpine AS certs
FROM golang:1.22 AS unused
FROM golang:1.22
RUN --mount=type=bind,from=certs,source=/etc/ssl,target=/ssl \\
    --mount=type=cache,target=/root/.cache \\
    --mount=type=bind,source=go.mod,target=go.mod go mod download
"""
    plan = analyze(tmp_path, text)

    assert plan.stages == ("certs", "2")
    assert [image.ref for image in plan.base_images] == ["alpine", "golang:1.22"]
    assert plan.context_sources == ("go.mod",)


def test_unknown_target_error_names_target_file_and_stages(tmp_path: Path) -> None:
    with pytest.raises(DockerfileError) as raised:
        analyze(tmp_path, KAI_DOCKERFILE, target="release")

    text = str(raised.value)
    assert "'release'" in text
    assert str(tmp_path / "Dockerfile") in text
    assert "debug, prod" in text


def test_unresolved_from_variable_raises_with_its_line(tmp_path: Path) -> None:
    text = "FROM alpine AS base\n\nFROM ${BASE_IMAGE}\n"

    with pytest.raises(DockerfileError) as raised:
        analyze(tmp_path, text, build_args={"BASE_IMAGE": "alpine"})  # no global ARG declares it

    assert raised.value.where == f"{tmp_path / 'Dockerfile'}:3"
    assert "BASE_IMAGE" in raised.value.message
    assert "ARG" in (raised.value.fix or "")


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("$DIR/main.go", "cmd/api/main.go"),
        ("${DIR}.go", "cmd/api.go"),
        ("${UNSET:-fallback}", "fallback"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${EMPTY-kept}", ""),
        ("${DIR:+set}", "set"),
        ("${UNSET:+set}", ""),
        ("${DIR#cmd/}", "api"),
        ("${DIR%/*}", "cmd"),
        ("'$DIR'", "$DIR"),
        ('"$DIR"', "cmd/api"),
        ("\\$DIR", "$DIR"),
    ],
)
def test_arg_and_env_expand_in_copy_sources(tmp_path: Path, word: str, expected: str) -> None:
    text = f"FROM alpine\nARG NAME=api\nENV DIR=cmd/$NAME EMPTY=\nCOPY x{word} /dst/\n"

    plan = analyze(tmp_path, text)

    assert plan.context_sources == (f"x{expected}",)


def test_env_values_in_one_instruction_see_the_previous_env(tmp_path: Path) -> None:
    text = "FROM alpine\nENV A=old\nENV A=new B=$A\nCOPY $A-$B /\n"

    assert analyze(tmp_path, text).context_sources == ("new-old",)


def test_heredoc_is_not_a_context_source(tmp_path: Path) -> None:
    text = "FROM alpine\nCOPY <<EOF config.yaml /etc/app/\nkey: value\nEOF\n"

    assert analyze(tmp_path, text).context_sources == ("config.yaml",)


def test_json_form_copy(tmp_path: Path) -> None:
    text = 'FROM alpine\nARG NAME=web\nCOPY ["static files/$NAME", "go.mod", "/srv/"]\n'

    assert analyze(tmp_path, text).context_sources == ("static files/web", "go.mod")


def test_urls_from_run_curl_wget_and_add(tmp_path: Path) -> None:
    text = """\
FROM alpine
ARG HELM_VERSION=3.15.0
ARG TARGETARCH
RUN curl -fsSL "https://get.helm.sh/helm-v${HELM_VERSION}-linux-${TARGETARCH}.tar.gz" | tar xz \\
 && wget -q https://example.com/tool.sh; for f in a b; do curl https://mirror.test/$f; done
ADD https://github.com/org/repo/releases/download/v1/app.tgz /tmp/
ADD git@github.com:org/repo.git /src
"""
    plan = analyze(tmp_path, text, target_platform="linux/arm64")

    assert plan.urls == (
        "https://get.helm.sh/helm-v3.15.0-linux-arm64.tar.gz",
        "https://example.com/tool.sh",
        "https://mirror.test/$f",  # a shell variable: left as written
        "https://github.com/org/repo/releases/download/v1/app.tgz",
    )
    assert plan.context_sources == ()


def test_urls_held_in_an_arg_or_env_that_a_run_line_uses(tmp_path: Path) -> None:
    text = """\
FROM alpine
ARG TOOL_URL=https://example.com/tool-1.0.tgz
ARG UNUSED_URL=https://example.com/never-fetched
ENV MIRROR=https://mirror.test/base
RUN wget -q $TOOL_URL && curl -fsSL "${MIRROR}/file" -o /f
"""
    plan = analyze(tmp_path, text)

    assert set(plan.urls) == {"https://example.com/tool-1.0.tgz", "https://mirror.test/base"}


def test_copy_from_a_later_stage_raises(tmp_path: Path) -> None:
    text = "FROM alpine AS a\nCOPY --from=b /x /x\nFROM alpine AS b\n"

    with pytest.raises(DockerfileError, match="not defined before"):
        analyze(tmp_path, text, target="a")


def test_bad_platform_and_unknown_instruction_raise(tmp_path: Path) -> None:
    with pytest.raises(DockerfileError, match="invalid target_platform"):
        analyze(tmp_path, "FROM alpine\n", target_platform="arm64")
    with pytest.raises(DockerfileError, match="unknown instruction: COPYY") as raised:
        analyze(tmp_path, "FROM alpine\nCOPYY a b\n")
    assert raised.value.where == f"{tmp_path / 'Dockerfile'}:2"


# --- select_context_files ------------------------------------------------------------


def test_dockerignore_double_star_and_exceptions(tmp_path: Path) -> None:
    make_tree(
        tmp_path,
        {
            ".dockerignore": "# generated\n**/*.md\n!docs/keep.md\nbin\n!bin/api-arm64\n**/testdata\n",
            "Dockerfile": "FROM scratch\n",
            "README.md": "",
            "docs/keep.md": "",
            "docs/drop.md": "",
            "pkg/a.go": "",
            "pkg/deep/x.md": "",
            "pkg/deep/testdata/in.json": "",
            "bin/api-arm64": "",
            "bin/api-amd64": "",
        },
    )

    assert select_context_files(tmp_path, ["."]) == ["bin/api-arm64", "docs/keep.md", "pkg/a.go"]
    assert select_context_files(tmp_path, ["bin"]) == ["bin/api-arm64"]


def test_dockerignore_matches_case_sensitively_like_docker(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "*.MD\n", "README.md": "", "NOTES.MD": ""})

    assert select_context_files(tmp_path, ["."]) == ["README.md"]


def test_dockerfile_and_dockerignore_are_selected_only_when_named(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "*.tmp\n", "Dockerfile": "", "main.go": ""})

    assert select_context_files(tmp_path, ["."]) == ["main.go"]
    assert select_context_files(tmp_path, ["./Dockerfile", "."]) == ["Dockerfile", "main.go"]


def test_sources_are_globs_where_star_does_not_cross_slash(tmp_path: Path) -> None:
    make_tree(tmp_path, dict.fromkeys(["go.mod", "go.sum", "cmd/api/main.go", "cmd/api/x/y.go", "cmd/web/main.go"], ""))

    assert select_context_files(tmp_path, ["go.*"]) == ["go.mod", "go.sum"]
    assert select_context_files(tmp_path, ["cmd/*/main.go"]) == ["cmd/api/main.go", "cmd/web/main.go"]
    assert select_context_files(tmp_path, ["/cmd/a?i"]) == ["cmd/api/main.go", "cmd/api/x/y.go"]


def test_symlinks_are_selected_as_entries(tmp_path: Path) -> None:
    make_tree(tmp_path, {"real/file": ""})
    os.symlink("real/file", tmp_path / "link")

    assert select_context_files(tmp_path, ["link", "real"]) == ["link", "real/file"]


def test_source_pattern_matching_nothing_raises(tmp_path: Path) -> None:
    make_tree(tmp_path, {"main.go": ""})

    with pytest.raises(DockerfileError) as raised:
        select_context_files(tmp_path, ["main.go", "bin/*-arm64"])

    assert "'bin/*-arm64'" in raised.value.message
    assert ".dockerignore" in (raised.value.fix or "")


def test_ignored_literal_source_is_reported_as_excluded(tmp_path: Path) -> None:
    make_tree(tmp_path, {".dockerignore": "secrets/\n", "secrets/key": ""})

    with pytest.raises(DockerfileError, match=r"excluded by \.dockerignore"):
        select_context_files(tmp_path, ["secrets/key"])
