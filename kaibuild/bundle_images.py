"""Images in an offline bundle, each blob (layer, config, manifest) stored once.

An image tarball, in kaibuild's canonical form (image_archive), is split into

  images/blobs/sha256/<hex>   its blobs, shared by every image that has them
  images/<name>/<member>      its other members: index.json, manifest.json, oci-layout

and its manifest entry lists the blobs it uses and the sha256 of the whole
tarball. Import assembles each image's tarball alone from those parts and
checks that it hashes to that sha256. So the builder image does not carry a
second copy of its base's layers, yet every image still loads by itself,
and the cache records import writes name the same bytes the exporter had.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

from kaibuild.errors import KaibuildError
from kaibuild.image_archive import BLOB_DIR, Member, canonical_members, write_canonical

BUNDLE_BLOBS = "images/blobs/sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageEntry:
    # images/<name>.tar: the tarball import assembles. It is not a file in the
    # bundle; its own members are under images/<name>/, its blobs are shared.
    path: str
    reference: str  # what the image is called, e.g. the pinned base image or the target's tag
    digest: str  # its manifest digest, as the exporter pinned or built it
    os: str
    architecture: str
    variant: str
    sha256: str  # of the assembled tarball
    size: int
    blobs: tuple[str, ...]  # hex digests, each a file images/blobs/sha256/<hex>

    @property
    def platform_text(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @property
    def member_dir(self) -> str:
        return self.path.removesuffix(".tar")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "blobs": list(self.blobs)}

    @classmethod
    def from_json(cls, data: Any) -> ImageEntry | None:
        """The entry, or None if `data` does not have the entry's shape."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            return None
        texts_ok = all(isinstance(data[n], str) for n in names - {"size", "blobs"})
        blobs = data["blobs"]
        if not (texts_ok and isinstance(data["size"], int) and isinstance(blobs, list)
                and all(isinstance(b, str) and _HEX64.fullmatch(b) for b in blobs)
                and data["path"].startswith("images/") and data["path"].endswith(".tar")):
            return None
        return cls(**{**data, "blobs": tuple(blobs)})


def blob_path(hex_digest: str) -> str:
    return f"{BUNDLE_BLOBS}/{hex_digest}"


class ImageParts:
    """An image tarball opened for splitting into bundle files."""

    def __init__(self, tarball: Path, entry_path: str):
        self.tarball = tarball
        self.member_dir = entry_path.removesuffix(".tar")
        self._tar = tarfile.open(tarball)

    def __enter__(self) -> ImageParts:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tar.close()

    def files(self) -> dict[str, tuple[Member, str | None]]:
        """Bundle path -> (member, expected sha256 or None) for every member."""
        try:
            members = canonical_members(self._tar, str(self.tarball))
        except ValueError as error:
            raise KaibuildError(str(error), where=str(self.tarball), fix="rebuild the image with this kaibuild") from None
        out: dict[str, tuple[Member, str | None]] = {}
        for name, member in members.items():
            hex_digest = name.removeprefix(BLOB_DIR)
            if name.startswith(BLOB_DIR) and _HEX64.fullmatch(hex_digest):
                out[blob_path(hex_digest)] = (member, hex_digest)
            else:
                out[f"{self.member_dir}/{name}"] = (member, None)
        return out


def assemble(bundle_dir: Path, entry: ImageEntry, member_paths: list[str], out: IO[bytes]) -> None:
    """Write the image's tarball, in canonical form, from its bundle files."""
    members: dict[str, Member] = {}
    for rel in member_paths:
        members[rel.removeprefix(entry.member_dir + "/")] = _file_member(bundle_dir / rel)
    for hex_digest in entry.blobs:
        members[BLOB_DIR + hex_digest] = _file_member(bundle_dir / blob_path(hex_digest))
    write_canonical(out, members)


def assembled_sha256(bundle_dir: Path, entry: ImageEntry, member_paths: list[str]) -> tuple[str, int]:
    """(sha256, size) of the tarball `assemble` would write, without writing it."""
    sink = _HashingSink()
    assemble(bundle_dir, entry, member_paths, sink)  # type: ignore[arg-type]
    return sink.hash.hexdigest(), sink.size


def _file_member(path: Path) -> Member:
    opener: Callable[[], IO[bytes]] = lambda: open(path, "rb")  # noqa: E731
    return path.stat().st_size, opener


class _HashingSink:
    """A write-only file that hashes what tarfile writes to it."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size
