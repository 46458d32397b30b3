"""Image references: normalise like Docker does, and apply registry mirrors."""

from __future__ import annotations

from dataclasses import dataclass

from kaibuild.errors import ConfigError

DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class ImageRef:
    registry: str  # "docker.io", "nvcr.io", "127.0.0.1:5000"
    repository: str  # "library/golang", "nvidia/distroless/go"
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        rest, _, digest = text.partition("@")
        name, tag = rest, None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = rest.rsplit(":", 1)
        if not name or name != name.lower() or " " in text:
            raise ConfigError(f"invalid image reference {text!r}", fix="use NAME[:TAG][@sha256:DIGEST]")
        first, _, remainder = name.partition("/")
        if remainder and ("." in first or ":" in first or first == "localhost"):
            registry, repository = first, remainder
        else:
            registry, repository = DOCKER_HUB, name
        if registry == DOCKER_HUB and "/" not in repository:
            repository = f"library/{repository}"
        if tag is None and not digest:
            tag = "latest"
        return cls(registry, repository, tag, digest or None)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.registry, self.repository, None, digest)


def mirrored(ref: ImageRef, mirrors: dict[str, str]) -> ImageRef:
    """Where to fetch `ref` from: "docker.io=127.0.0.1:5000/hub" maps
    docker.io/library/golang to 127.0.0.1:5000/hub/library/golang."""
    mirror = mirrors.get(ref.registry)
    if not mirror:
        return ref
    host, _, prefix = mirror.partition("/")
    repository = f"{prefix}/{ref.repository}" if prefix else ref.repository
    return ImageRef(host, repository, ref.tag, ref.digest)


def local_name(ref: ImageRef, manifest_digest: str) -> str:
    """The name kaibuild gives a pinned base image in the local engine.

    Builds refer to base images by this name only, so what a build uses is
    exactly what kaibuild resolved and verified, never a tag that moved.
    """
    return f"kaibuild.local/{ref.registry}/{ref.repository}:{manifest_digest.replace(':', '-')}"
