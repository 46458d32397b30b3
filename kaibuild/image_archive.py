"""Reads image tarballs (docker-archive, which BuildKit writes with an OCI
layout inside) without a Docker engine: the image config's platform, and the
files inside, so kaibuild can check what it built is for the right platform."""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kaibuild.platform import ELF_MACHINE

_ELF_MACHINE_TO_ARCH = {v: k for k, v in ELF_MACHINE.items()}


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


def _member(tar: tarfile.TarFile, name: str) -> io.BufferedReader:
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
