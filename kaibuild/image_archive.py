"""Reads image tarballs (docker-archive, which BuildKit writes with an OCI
layout inside) without a Docker engine: the image config's platform, and the
files inside, so kaibuild can check what it built is for the right platform.

It also writes them in a canonical form: the same members always give the
same bytes. kaibuild stores every image tarball that way, so an offline
bundle can keep each layer once and still rebuild each image's tarball
exactly (same sha256, so the cache records that name it stay valid).
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from kaibuild.platform import ELF_MACHINE

_ELF_MACHINE_TO_ARCH = {v: k for k, v in ELF_MACHINE.items()}
BLOB_DIR = "blobs/sha256/"
_PULL_HISTORY = "containerd.io/distribution.source."
# A member: its size and how to open its content.
Member = tuple[int, Callable[[], IO[bytes]]]


@dataclass(frozen=True)
class ArchiveImage:
    config_digest: str
    manifest_digest: str | None  # from index.json, when the archive has one
    os: str
    architecture: str
    variant: str
    layers: tuple[str, ...]  # member names, lowest layer first

    @property
    def platform_text(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def read_images(path: Path) -> list[ArchiveImage]:
    """The images a docker-archive tarball holds (docker save / type=docker)."""
    with tarfile.open(path) as tar:
        manifest = json.load(_member(tar, "manifest.json"))
        index_digests = _index_manifest_digests(tar)
        images = []
        for position, entry in enumerate(manifest):
            config = json.load(_member(tar, entry["Config"]))
            images.append(ArchiveImage(
                config_digest="sha256:" + posixpath.basename(entry["Config"]).removesuffix(".json"),
                manifest_digest=index_digests[position] if position < len(index_digests) else None,
                os=config.get("os", ""),
                architecture=config.get("architecture", ""),
                variant=config.get("variant", ""),
                layers=tuple(entry["Layers"]),
            ))
        return images


def read_file(path: Path, image: ArchiveImage, file_path: str, max_links: int = 8) -> bytes | None:
    """The content of `file_path` in the image's merged filesystem, or None.

    Layers are searched from the top; a whiteout hides lower layers. Symlinks
    inside the image are followed (a bounded number of times).
    """
    wanted = posixpath.normpath("/" + file_path).lstrip("/")
    with tarfile.open(path) as tar:
        for layer_name in reversed(image.layers):
            with _open_layer(tar, layer_name) as layer:
                for member in layer:
                    name = posixpath.normpath(member.name).lstrip("./").lstrip("/")
                    directory, base = posixpath.split(name)
                    if base == f".wh.{posixpath.basename(wanted)}" and directory == posixpath.dirname(wanted):
                        return None
                    if name != wanted:
                        continue
                    if member.issym() and max_links > 0:
                        target = posixpath.join(posixpath.dirname(wanted), member.linkname)
                        return read_file(path, image, target, max_links - 1)
                    extracted = layer.extractfile(member)
                    return extracted.read() if extracted else None
    return None


def elf_arch(data: bytes) -> str | None:
    """The Go arch name of an ELF binary (from e_machine), or None if not ELF."""
    if len(data) < 20 or data[:4] != b"\x7fELF":
        return None
    byteorder = "little" if data[5] == 1 else "big"
    machine = int.from_bytes(data[18:20], byteorder)
    return _ELF_MACHINE_TO_ARCH.get(machine, f"elf-machine-{machine}")


def _member(tar: tarfile.TarFile, name: str | tarfile.TarInfo) -> io.BufferedReader:
    handle = tar.extractfile(name)
    if handle is None:
        raise ValueError(f"{name} is missing from the image archive")
    return handle  # type: ignore[return-value]


def _index_manifest_digests(tar: tarfile.TarFile) -> list[str]:
    try:
        index = json.load(_member(tar, "index.json"))
    except KeyError:
        return []
    return [m["digest"] for m in index.get("manifests", [])]


def _open_layer(tar: tarfile.TarFile, name: str) -> tarfile.TarFile:
    raw = _member(tar, name).read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    elif raw[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard  # only zstd-compressed layers need it

        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return tarfile.open(fileobj=io.BytesIO(raw))


# --- the canonical form -------------------------------------------------------------


def write_canonical(out: IO[bytes], members: Mapping[str, Member]) -> None:
    """Write a tar of `members` whose bytes depend only on their names and
    contents: sorted by name, USTAR headers with zero times, owners and
    fixed modes. Docker and containerd load it like `docker save` output."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            size, opener = members[name]
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, 0
            with opener() as content:
                tar.addfile(info, content)


def canonical_members(tar: tarfile.TarFile, where: str) -> dict[str, Member]:
    """The regular files of an image tarball, by normalised name (directories
    are implied by the names; links and devices have no place in one)."""
    members: dict[str, Member] = {}
    for member in tar.getmembers():
        name = posixpath.normpath(member.name).lstrip("/")
        if member.isdir() or name == ".":
            continue
        if not member.isreg() or name.startswith("../"):
            raise ValueError(f"{where}: member {member.name!r} is not a regular file inside the archive; "
                             "kaibuild stores images saved by Docker 25+ or BuildKit (an OCI layout)")
        members[name] = (member.size, lambda m=member: _member(tar, m))
    if "index.json" in members:
        with members["index.json"][1]() as handle:
            index = _without_pull_history(handle.read())
        members["index.json"] = (len(index), lambda: io.BytesIO(index))
    return members


def _without_pull_history(index_json: bytes) -> bytes:
    """index.json without containerd's `distribution.source` annotations:
    they record which registries and repositories this engine once pulled
    the image from, not what the image is, so the same image saved on two
    engines would otherwise give two tarballs (and two cache keys)."""
    index = json.loads(index_json)
    for descriptor in index.get("manifests", []):
        annotations = descriptor.get("annotations") or {}
        kept = {k: v for k, v in annotations.items() if not k.startswith(_PULL_HISTORY)}
        if kept:
            descriptor["annotations"] = kept
        else:
            descriptor.pop("annotations", None)
    return json.dumps(index, separators=(",", ":")).encode()


def canonicalize(src: Path, dest: Path) -> None:
    """Rewrite the image tarball at `src` in canonical form at `dest`."""
    with tarfile.open(src) as tar, open(dest, "wb") as out:
        write_canonical(out, canonical_members(tar, str(src)))
