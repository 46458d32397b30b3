"""base_image: an external image (a Dockerfile's FROM), pinned to the manifest
for exactly one platform and saved as a single-platform tarball.

Most nodes of this kind are made by rules that read Dockerfiles; a target
may also declare one (extra images a bundle should carry).
The pin is resolved from the registry (or its mirror) on every online run,
so a tag that moved is noticed; offline, the last recorded pin is used.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from kaibuild.cache import OutputRecord
from kaibuild.context import Context
from kaibuild.errors import KaibuildError, PlatformMismatch
from kaibuild.image_archive import read_images
from kaibuild.imageref import ImageRef, local_name, mirrored
from kaibuild.platform import Platform
from kaibuild.report import ActionLog
from kaibuild.rule import Node, NodeId, Rule, RunResult

TARBALL = "image.tar"


def base_image_node(ref: str, platform: Platform, wanted_by: str) -> Node:
    return Node(id=NodeId(f"base-image {ref}", platform), kind=BaseImageRule.kind,
                settings={"ref": ref}, where=wanted_by)


class BaseImageRule(Rule):
    kind = "base_image"
    version = 3  # 2: canonical tarballs (image_archive.canonicalize); 3: without pull-history annotations
    settings = {"ref": str}
    required = frozenset({"ref"})
    run_early = True  # resolving pins checks the registry before any long build
    offline_reuses_inputs = True  # offline, the bundle's recorded inputs stand in

    def expand(self, node: Node, ctx: Context) -> list[Node]:
        return []

    def inputs(self, node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> dict[str, Any]:
        ref, platform = node.settings["ref"], _platform(node)
        pin_key = f"pin:{ref}@{platform}"
        previous = ctx.store.actions.get(pin_key)
        if ctx.options.offline:
            if previous is None:
                raise KaibuildError(f"base image {ref} for {platform} has never been resolved, and --offline forbids the registry",
                                    where=node.where,
                                    fix=f"import an offline bundle exported for {platform} (the builder runs on this "
                                        f"machine's platform, so a build for another needs this machine's bundle too), "
                                        "or run the build once with network access")
            return {"ref": ref, "manifest_digest": previous}
        resolved = ctx.docker.resolve(ref, platform)
        if previous and previous != resolved.manifest_digest:
            sys.stderr.write(f"kaibuild: note: {ref} ({platform}) moved: {previous[:19]} -> {resolved.manifest_digest[:19]}\n")
        ctx.store.actions.set(pin_key, resolved.manifest_digest)
        # Where it was fetched from (a mirror) is not part of the key: the
        # same pinned image from anywhere is the same input.
        return {"ref": ref, "manifest_digest": resolved.manifest_digest}

    def run(self, node: Node, ctx: Context, deps: dict[str, OutputRecord], inputs: dict[str, Any],
            work: Path, log: ActionLog) -> RunResult:
        from kaibuild.docker import ResolvedImage

        platform = _platform(node)
        if ctx.options.offline:
            raise KaibuildError(f"base image {inputs['ref']} for {platform} is not in the cache, and --offline forbids pulling it",
                                where=node.where, fix="import an offline bundle exported for this platform (kaibuild import-offline)")
        out = work / "out"
        out.mkdir()
        source = mirrored(ImageRef.parse(inputs["ref"]), ctx.config.mirrors).name
        resolved = ResolvedImage(inputs["ref"], source, None, inputs["manifest_digest"], platform)
        tarball = out / TARBALL
        ctx.docker.save_pinned(resolved, tarball, log)
        images = read_images(tarball)
        image = images[0] if len(images) == 1 else None
        if image is None or (image.manifest_digest and image.manifest_digest != resolved.manifest_digest):
            raise PlatformMismatch(f"saved tarball of {resolved.ref} does not hold exactly manifest {resolved.manifest_digest}",
                                   where=node.where, fix="report this: the engine saved something else")
        if Platform.parse(image.platform_text) != platform:
            raise PlatformMismatch(f"base image {resolved.ref}: expected {platform}, the saved image is {image.platform_text}",
                                   where=node.where, fix="check the registry's image for that platform")
        return RunResult(out, {"ref": resolved.ref, "manifest_digest": resolved.manifest_digest, "platform": str(platform)})

    def restore(self, node: Node, ctx: Context, record: OutputRecord) -> None:
        """Load the pinned image into the engine under its kaibuild.local name."""
        name = local_image_name(record)
        if not ctx.docker.has_image(name):
            ctx.docker.load_as(ctx.store.blob_path(record.files[TARBALL]), name)


    def artifact(self, node: Node, record: OutputRecord) -> tuple[str, str] | None:
        return TARBALL, f"{_file_name(node)}.tar"

    def bundle_section(self, node: Node) -> str | None:
        return "images"


def _file_name(node: Node) -> str:
    """dist/bundle file name: the target's name, or the image reference made safe."""
    if node.address:
        return node.address.name
    return node.settings["ref"].replace("/", "_").replace(":", "_").replace("@", "_")


def local_image_name(record: OutputRecord) -> str:
    return local_name(ImageRef.parse(record.meta["ref"]), record.meta["manifest_digest"])


def _platform(node: Node) -> Platform:
    assert node.id.platform is not None, "base images are always for one platform"
    return node.id.platform
