"""docker_image: an image built with docker buildx from a Dockerfile, for one
platform, written as a docker-archive tarball whose platform is verified.

The build context is staged: only the files the Dockerfile's COPY/ADD lines
select (after .dockerignore) are copied in, plus the outputs of the targets
listed in `inputs`, at their own paths. Base images come from base_image
nodes, loaded into the engine under local names, so the build uses exactly
the pinned image for the platform and never pulls by itself. A derived copy
of the Dockerfile names them in its FROM lines (a named build context there
would make BuildKit re-compress the base's layers, moby/buildkit#4805, so
images would not share them with their base); images read by COPY --from or
RUN --mount=from= stay named build contexts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from dockerfile import parse_file

from kaibuild.address import Address
from kaibuild.cache import OutputRecord
from kaibuild.context import Context
from kaibuild.dockerfile import (
    BaseImage,
    DockerfilePlan,
    UnknownStage,
    analyze_dockerfile,
    rewrite_from_lines,
    select_context_files,
)
from kaibuild.errors import ConfigError, KaibuildError, PlatformMismatch
from kaibuild.fingerprint import key_of
from kaibuild.image_archive import elf_arch, read_file, read_images
from kaibuild.platform import Platform
from kaibuild.report import ActionLog
from kaibuild.rule import Node, Rule, RunResult
from rules.base_image import base_image_node, local_image_name

TARBALL = "image.tar"


class DockerImageRule(Rule):
    kind = "docker_image"
    version = 3  # 2: FROM names the local base image, keeping its layers; 3: canonical tarballs
    settings = {
        "dockerfile": str,  # path from the workspace root
        "context": str,  # build context directory, default the workspace root
        "stage": str,  # --target
        "build_args": dict,
        "inputs": list,  # addresses whose outputs are placed into the context
        "exec_platform": bool,  # build for the machine that runs the build (tool images)
        "verify_binary": str,  # a path in the image whose ELF arch must match the platform
        "tag": str,  # the name `docker load` gives the image, e.g. registry/local/kai-scheduler/scheduler:0.0.0
        # RUN steps to replace, e.g. one that curls kubectl, by a step using a
        # pinned download from `inputs`: [{contains = "dl.k8s.io", with = "COPY ..."}].
        # The user's Dockerfile is not edited: a patched copy is built.
        "replace_steps": list,
    }
    required = frozenset({"dockerfile"})

    def node_platform(self, settings: dict[str, Any], requested: Platform | None, ctx: Context) -> Platform | None:
        return ctx.exec_platform if settings.get("exec_platform") else requested

    def expand(self, node: Node, ctx: Context) -> list[Node]:
        plan = self._plan(node, ctx)
        created = []
        for base in plan.base_images:
            platform = _base_platform(base, node)
            dep = base_image_node(base.ref, platform, f"{node.settings['dockerfile']}:{base.line}")
            node.deps[_base_role(base, node)] = dep.id
            created.append(dep)
        for text in node.settings.get("inputs", []):
            dep = ctx.target_node(_address(text, node), _platform(node), wanted_by=node.where)
            node.deps[f"input:{dep.id.label}"] = dep.id
            created.append(dep)
        return created

    def inputs(self, node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> dict[str, Any]:
        plan = self._plan(node, ctx)
        provided = _provided_paths(deps)
        sources = [s for s in plan.context_sources if s.strip("/") not in provided]
        context = self._context_dir(node, ctx)
        files = select_context_files(context, sources) if sources else []
        return {
            "dockerfile": list(plan.instructions),
            "context_files": ctx.digests.tree(context, files),
            "build_args": self._build_args(node),
            "stage": node.settings.get("stage"),
        }

    def run(self, node: Node, ctx: Context, deps: dict[str, OutputRecord], inputs: dict[str, Any],
            work: Path, log: ActionLog) -> RunResult:
        platform = _platform(node)
        staged = work / "context"
        context = self._context_dir(node, ctx)
        for rel in inputs["context_files"]:
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(context / rel, staged / rel)
        staged.mkdir(exist_ok=True)
        build_contexts = {}
        for role, record in deps.items():
            if role.startswith("input:"):
                ctx.store.materialize(record, staged)
            elif role.startswith("base:"):
                build_contexts[record.meta["ref"]] = f"docker-image://{local_image_name(record)}"
        out = work / "out"
        out.mkdir()
        tarball = out / TARBALL
        dockerfile = self._build_dockerfile(node, ctx, deps)
        ctx.docker.build(context=staged, dockerfile=dockerfile, platform=platform,
                         dest=tarball, log=log, target=node.settings.get("stage"), build_args=inputs["build_args"],
                         build_contexts=build_contexts, network="none" if ctx.options.offline else None,
                         tag=node.settings.get("tag"), layer_cache=ctx.options.buildkit_cache)
        meta = verify_image(tarball, node, platform)
        return RunResult(out, meta)

    def restore(self, node: Node, ctx: Context, record: OutputRecord) -> None:
        """Load the image into the engine (from the store) if it is not there."""
        name = image_name(node, record)
        if not ctx.docker.has_image(name):
            ctx.docker.load_as(ctx.store.blob_path(record.files[TARBALL]), name)

    def artifact(self, node: Node, record: OutputRecord) -> tuple[str, str] | None:
        assert node.address is not None
        return TARBALL, f"{node.address.name}.tar"

    def bundle_section(self, node: Node) -> str | None:
        # Tool images (the builder) go into the bundle; images built from the
        # project's code are what the offline machine builds itself.
        return "images" if node.settings.get("exec_platform") else None

    def export_nodes(self, node: Node, ctx: Context) -> list[Node]:
        # Base images always go in: a tool image's key depends on its base's
        # record, so offline the base must be in the cache too.
        bases = [dep for dep in self.expand(node, ctx) if dep.kind == "base_image"]
        return [node, *bases] if node.settings.get("exec_platform") else bases

    # --- helpers -----------------------------------------------------------------
    def _plan(self, node: Node, ctx: Context) -> DockerfilePlan:
        try:
            plan = analyze_dockerfile(self._dockerfile(node, ctx), target=node.settings.get("stage"),
                                      build_args=self._build_args(node), target_platform=str(_platform(node)),
                                      build_platform=str(ctx.exec_platform))
        except UnknownStage as error:
            raise ConfigError(error.message, where=f"{node.where} (stage)",
                              fix="set the target's stage in kaibuild.toml to one of those names") from None
        if ctx.options.offline and plan.urls:
            raise KaibuildError(
                f"{node.id.label}: {node.settings['dockerfile']} fetches {', '.join(plan.urls)} while building, "
                "and --offline allows no network", where=node.where,
                fix="supply the file as a pinned download: add a download target to `inputs` and a `replace_steps` entry")
        return plan

    def _dockerfile(self, node: Node, ctx: Context) -> Path:
        """The Dockerfile the plan (and key) is read from: the user's, or a
        patched copy (replace_steps)."""
        dockerfile = ctx.workspace / node.settings["dockerfile"]
        if not dockerfile.is_file():
            raise ConfigError(f"Dockerfile {node.settings['dockerfile']} does not exist in {ctx.workspace}",
                              where=node.where, fix="fix the dockerfile setting of this target")
        steps = node.settings.get("replace_steps", [])
        if not steps:
            return dockerfile
        return _view(ctx, replace_steps(dockerfile, steps, _platform(node), node.where))

    def _build_dockerfile(self, node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> Path:
        """The Dockerfile to build: the plan's one with each needed stage's
        external FROM image replaced by the pinned base image's local name.

        Only the build sees the local names; the key stays on the plan's
        instructions and the base images' records."""
        source = self._dockerfile(node, ctx)
        plan = self._plan(node, ctx)
        images = {base.line: local_image_name(deps[_base_role(base, node)]) for base in plan.stage_images}
        if not images:
            return source
        return _view(ctx, rewrite_from_lines(source.read_text(encoding="utf-8-sig"), images))

    def _build_args(self, node: Node) -> dict[str, str]:
        platform = _platform(node)
        values = {"os": platform.os, "arch": platform.arch, "variant": platform.variant}
        return {k: str(v).format(**values) for k, v in node.settings.get("build_args", {}).items()}

    def _context_dir(self, node: Node, ctx: Context) -> Path:
        return ctx.workspace / node.settings.get("context", ".")


def replace_steps(dockerfile: Path, steps: list[dict[str, str]], platform: Platform, where: str) -> str:
    """The Dockerfile's text with each RUN instruction that contains a step's
    `contains` text replaced by its `with` text ({arch}, {os} filled in)."""
    lines = dockerfile.read_text().splitlines()
    commands = parse_file(str(dockerfile))
    for step in steps:
        if not isinstance(step, dict) or set(step) != {"contains", "with"}:
            raise ConfigError("each replace_steps entry must be { contains = \"...\", with = \"...\" }", where=where)
        matches = [c for c in commands if c.cmd.upper() == "RUN" and step["contains"] in c.original]
        if not matches:
            raise ConfigError(f"replace_steps: no RUN step in {dockerfile} contains {step['contains']!r}", where=where,
                              fix="update or remove this replace_steps entry")
        for command in matches:
            replacement = step["with"].format(arch=platform.arch, os=platform.os, variant=platform.variant)
            lines[command.start_line - 1] = replacement
            for number in range(command.start_line, command.end_line):
                lines[number] = ""
    return "\n".join(lines) + "\n"


def _view(ctx: Context, text: str) -> Path:
    """A derived Dockerfile in the store (views/dockerfiles/), named by its content."""
    path = ctx.store.root / "views" / "dockerfiles" / f"{key_of(text)[:32]}.Dockerfile"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def image_name(node: Node, record: OutputRecord) -> str:
    """The local engine name of a built image: unique to its content."""
    label = node.id.label.strip("/").replace(":", "/").lower()
    return f"kaibuild.local/{label}:{record.digest[:24]}"


def verify_image(tarball: Path, node: Node, platform: Platform) -> dict[str, Any]:
    """Check the tarball's image config, and a binary inside, are for `platform`."""
    images = read_images(tarball)
    if len(images) != 1:
        raise PlatformMismatch(f"{node.id.label}: the tarball holds {len(images)} images, expected one", where=node.where)
    image = images[0]
    actual = Platform.parse(image.platform_text) if image.platform_text else None
    if actual != platform:
        raise PlatformMismatch(f"image {node.id.label}: expected {platform}, but its config says {image.platform_text}",
                               where=node.where, fix="check --platform and FROM --platform lines in the Dockerfile")
    binary = node.settings.get("verify_binary")
    if binary:
        data = read_file(tarball, image, binary)
        if data is None:
            raise PlatformMismatch(f"image {node.id.label}: {binary} is not in the image", where=node.where,
                                   fix="fix the verify_binary setting, or the Dockerfile's COPY")
        arch = elf_arch(data)
        if arch != platform.arch:
            raise PlatformMismatch(
                f"image {node.id.label} for {platform}: {binary} is a {arch or 'non-ELF'} binary, expected {platform.arch}",
                where=node.where,
                fix="a Dockerfile ARG default or a wrong bin/ file overrode the target arch; build the binary for this platform")
    return {"manifest_digest": image.manifest_digest, "config_digest": image.config_digest, "platform": str(platform)}


def _provided_paths(deps: dict[str, OutputRecord]) -> set[str]:
    return {rel for role, record in deps.items() if role.startswith("input:") for rel in record.files}


def _address(text: str, node: Node) -> Address:
    try:
        return Address.parse(text)
    except ConfigError as error:
        raise ConfigError(error.message, where=node.where, fix=error.fix) from None


def _platform(node: Node) -> Platform:
    assert node.id.platform is not None, "images are always built for one platform"
    return node.id.platform


def _base_platform(base: BaseImage, node: Node) -> Platform:
    """The platform a base image is pinned for: its FROM --platform, else the image's."""
    return Platform.parse(base.platform) if base.platform else _platform(node)


def _base_role(base: BaseImage, node: Node) -> str:
    return f"base:{base.ref}@{_base_platform(base, node)}"
