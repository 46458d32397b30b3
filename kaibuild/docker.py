"""The one place kaibuild talks to Docker, through python-on-whales.

Exceptions from the Docker CLI are translated here into kaibuild errors that
name the image or build and say what to do.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from kaibuild.errors import ActionFailed, KaibuildError, PlatformMismatch
from kaibuild.image_archive import canonicalize, read_images
from kaibuild.imageref import ImageRef, mirrored
from kaibuild.platform import Platform
from kaibuild.report import ActionLog

_INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}


@dataclass(frozen=True)
class ResolvedImage:
    ref: str  # as the Dockerfile names it
    source: str  # where it was fetched: the mirrored name, without tag
    index_digest: str | None  # the tag's multi-platform index, if it is one
    manifest_digest: str  # the manifest for exactly the requested platform
    platform: Platform


class DockerEngine:
    def __init__(self, mirrors: dict[str, str]):
        self.mirrors = mirrors
        self.client = DockerClient()

    # --- what the engine can do ---------------------------------------------
    @cached_property
    def info(self) -> dict:
        try:
            return json.loads(self._cli(["info", "--format", "{{json .}}"]))
        except KaibuildError as error:
            raise KaibuildError(
                "cannot reach a Docker engine", where="DOCKER_HOST",
                fix="start Docker (scripts/setup-env.sh does it here) and point DOCKER_HOST at it; "
                    f"docker said: {error.message.splitlines()[-1] if error.message else ''}",
            ) from None

    def native_platform(self) -> Platform:
        return Platform.parse(f"{self.info.get('OSType', 'linux')}/{self.info.get('Architecture', 'amd64')}")

    @property
    def containerd_store(self) -> bool:
        """True if images live in containerd's store (tarball exports work)."""
        return any("io.containerd.snapshotter" in str(v) for pair in self.info.get("DriverStatus") or [] for v in pair)

    def check_can_build(self, platforms: Iterable[Platform]) -> None:
        """Fail before any building if buildx is missing or can't run a platform (C2, C3)."""
        try:
            builder = self.client.buildx.inspect(bootstrap=True)
        except DockerException as error:
            raise KaibuildError("docker buildx is not available", where="docker CLI",
                                fix="install the buildx plugin (Debian: docker-buildx)") from error
        supported = {str(Platform.parse(p)) for node in builder.nodes for p in (node.platforms or []) if _parses(p)}
        missing = [str(p) for p in platforms if supported and str(p) not in supported]
        if missing:
            raise KaibuildError(
                f"the buildx builder {builder.name!r} cannot build for {', '.join(missing)} "
                f"(it supports {', '.join(sorted(supported))})", where="docker buildx",
                fix="install QEMU binfmt handlers (Debian: qemu-user-static) or choose another platform")
        if builder.driver not in ("docker", "docker-container", "remote", "kubernetes"):
            raise KaibuildError(f"unknown buildx driver {builder.driver!r}", where="docker buildx")

    # --- base images -----------------------------------------------------------
    def resolve(self, ref_text: str, platform: Platform) -> ResolvedImage:
        """Pin `ref_text` to the manifest for exactly `platform` in its registry (or mirror)."""
        ref = ImageRef.parse(ref_text)
        source = mirrored(ref, self.mirrors)
        raw = self._inspect_raw(str(source), ref_text)
        if raw.get("mediaType") in _INDEX_TYPES or "manifests" in raw:
            index_digest = self._digest_of(str(source))
            offered = []
            for entry in raw.get("manifests", []):
                p = entry.get("platform") or {}
                if p.get("os") in (None, "unknown"):
                    continue  # attestation manifests
                text = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
                offered.append(text)
                if _parses(text) and Platform.parse(text) == platform:
                    return ResolvedImage(ref_text, source.name, index_digest, entry["digest"], platform)
            raise PlatformMismatch(
                f"base image {ref_text} has no {platform} image: {source} offers only {', '.join(offered) or 'nothing'}",
                where=ref_text,
                fix=f"push a {platform} image for it to the registry, or build for one of: {', '.join(offered)}")
        manifest_digest = self._digest_of(str(source))
        actual = self._single_platform(f"{source.name}@{manifest_digest}")
        if actual != platform:
            raise PlatformMismatch(
                f"base image {ref_text} is a single-platform image for {actual}, not {platform}",
                where=ref_text, fix=f"use an image (or index) that has {platform}")
        return ResolvedImage(ref_text, source.name, None, manifest_digest, platform)

    def save_pinned(self, image: ResolvedImage, dest: Path, log: ActionLog) -> None:
        """Pull exactly one platform's manifest by digest and save it as a tarball.

        Saving by the platform manifest's digest (not the tag) is what makes
        the tarball hold that one platform, complete.
        """
        pinned = f"{image.source}@{image.manifest_digest}"
        log.write(f"pull {pinned} ({image.platform})")
        with _translated(f"pulling {image.ref} for {image.platform}", log):
            self.client.image.pull(pinned, platform=str(image.platform), quiet=True)
            with _canonical(dest) as raw:
                self.client.image.save(pinned, output=raw)

    # --- local image store ------------------------------------------------------
    def has_image(self, name_or_id: str) -> bool:
        return self.client.image.exists(name_or_id)

    def load_as(self, tarball: Path, name: str, log: ActionLog | None = None) -> None:
        """Load a one-image tarball and give the image `name`."""
        with _translated(f"loading {tarball.name} as {name}", log):
            loaded = self.client.image.load(tarball, quiet=True)
        if len(loaded) != 1:
            raise KaibuildError(f"{tarball} held {len(loaded)} images, expected one", where=str(tarball))
        self.tag(loaded[0], name)

    def tag(self, source: str, name: str) -> None:
        with _translated("docker tag", None):
            self.client.image.tag(source, name)

    # --- building and running ---------------------------------------------------
    def build(self, *, context: Path, dockerfile: Path, platform: Platform, dest: Path, log: ActionLog,
              target: str | None, build_args: dict[str, str], build_contexts: dict[str, str],
              network: str | None = None, tag: str | None = None, layer_cache: Path | None = None) -> None:
        """buildx build into a docker-archive tarball for exactly one platform.

        SOURCE_DATE_EPOCH=0 and rewrite-timestamp make the image reproducible,
        so an unchanged rebuild gives the same digest and downstream actions
        stay cached.
        """
        common = dict(context_path=context, file=dockerfile, platforms=[str(platform)], target=target,
                      build_args={**build_args, "SOURCE_DATE_EPOCH": "0"}, build_contexts=build_contexts,
                      network=network, provenance=False, progress="plain", stream_logs=True)
        if layer_cache is not None:  # BuildKit's own layer cache, kept in a directory (e.g. saved by CI)
            common["cache_from"] = {"type": "local", "src": str(layer_cache)} if (layer_cache / "index.json").exists() else None
            common["cache_to"] = {"type": "local", "dest": str(layer_cache), "mode": "max"}
        log.write(f"buildx build {context} -f {dockerfile} --platform {platform}" + (f" --target {target}" if target else ""))
        if self.containerd_store:
            with _translated(f"buildx build of {dockerfile}", log), _canonical(dest) as raw:
                output = {"type": "docker", "dest": str(raw), "rewrite-timestamp": "true", **({"name": tag} if tag else {})}
                for line in self.client.buildx.build(**common, output=output):
                    log.write(line.rstrip("\n"))
            return
        # The classic image store's `docker` driver refuses tarball outputs
        # (field case C3): build into the engine, then save that one image.
        iidfile = dest.with_suffix(".iid")
        with _translated(f"buildx build of {dockerfile}", log):
            for line in self.client.buildx.build(**common, load=True, metadata_file=iidfile, tags=[tag] if tag else []):
                log.write(line.rstrip("\n"))
            image_id = json.loads(iidfile.read_text())["containerimage.config.digest"]
            # By tag when there is one, so the tarball carries it as on the
            # containerd store; the check below catches a tag moved meanwhile.
            with _canonical(dest) as raw:
                self.client.image.save(tag or image_id, output=raw)
            saved = read_images(dest)
            if [image.config_digest for image in saved] != [image_id]:
                dest.unlink()
                raise KaibuildError(f"{tag} was retagged while kaibuild saved the image it had just built ({image_id})",
                                    where=str(dockerfile), fix="run the build again, one build per tag at a time")
        iidfile.unlink()

    def run(self, image: str, command: list[str], *, log: ActionLog, mounts: list[tuple[Path, str, bool]],
            env: dict[str, str], workdir: str, user: str | None = None, network: str = "none") -> None:
        volumes = [(host, container, "ro" if read_only else "rw") for host, container, read_only in mounts]
        log.write(f"run {image} {' '.join(command)}")
        with _translated(f"running {' '.join(command[:2])} in {image}", log):
            for _source, line in self.client.container.run(
                image, command, remove=True, networks=[network], workdir=workdir, user=user,
                volumes=volumes, envs=env, stream=True,
            ):
                log.write(line.decode(errors="replace").rstrip("\n"))

    # --- plumbing -----------------------------------------------------------------
    def _inspect_raw(self, source: str, ref_text: str) -> dict:
        try:
            return json.loads(self._cli(["buildx", "imagetools", "inspect", "--raw", source]))
        except KaibuildError as error:
            mirror_note = f" (mirror of {ref_text})" if source != str(ImageRef.parse(ref_text)) else ""
            reason = error.message.splitlines()[-1]
            # The registry answered, and has no such tag: a typo, not a network problem.
            fix = (f"check that {ref_text} exists (the FROM line or the target's ref may have a typo)"
                   if reason.rstrip().endswith("not found") else
                   "check the registry is reachable, or set a mirror in kaibuild.toml [registry] mirrors "
                   "or KAIBUILD_REGISTRY_MIRRORS (e.g. docker.io=127.0.0.1:5000)")
            raise KaibuildError(f"cannot resolve base image {ref_text} from {source}{mirror_note}: {reason}",
                                where=ref_text, fix=fix) from None

    def _digest_of(self, source: str) -> str:
        out = self._cli(["buildx", "imagetools", "inspect", "--format", "{{json .Manifest}}", source])
        return json.loads(out)["digest"]

    def _single_platform(self, pinned: str) -> Platform:
        out = self._cli(["buildx", "imagetools", "inspect", "--format", "{{json .Image}}", pinned])
        config = json.loads(out)
        return Platform.parse("/".join(x for x in (config.get("os"), config.get("architecture"), config.get("variant")) if x))

    def _cli(self, args: list[str]) -> str:
        """The docker CLI for what python-on-whales has no call for (imagetools --raw)."""
        from python_on_whales.utils import run as whales_run

        with _translated(f"docker {' '.join(args[:3])}", None):
            return whales_run([*self.client.client_config.docker_cmd, *args])


@contextmanager
def _translated(what: str, log: ActionLog | None) -> Iterator[None]:
    """Turn a Docker CLI failure into an ActionFailed that says what failed."""
    try:
        yield
    except DockerException as error:
        detail = (error.stderr or error.stdout or "").strip()
        if log and detail:
            log.write(detail)
        last = detail.splitlines()[-1] if detail else f"exit code {error.return_code}"
        raise ActionFailed(f"{what} failed: {last}", log_tail=log.tail() if log else detail[-4000:]) from None


@contextmanager
def _canonical(dest: Path) -> Iterator[Path]:
    """A path for Docker to write an image tarball to; on success it is
    rewritten in kaibuild's canonical form at `dest` (image_archive)."""
    raw = dest.with_name(dest.name + ".raw")
    try:
        yield raw
        try:
            canonicalize(raw, dest)
        except (ValueError, tarfile.TarError) as error:
            dest.unlink(missing_ok=True)
            raise KaibuildError(f"Docker wrote an image tarball kaibuild cannot store: {error}", where=str(dest),
                                fix="use Docker 25 or newer, whose `docker save` writes an OCI layout") from None
    finally:
        raw.unlink(missing_ok=True)


def _parses(text: str) -> bool:
    try:
        Platform.parse(text)
    except KaibuildError:
        return False
    return True
