"""The canonical form of image tarballs: equal members give equal bytes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from kaibuild.image_archive import canonicalize

MEMBERS = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": b"{}", "blobs/sha256/ab": b"layer"}


def write_tar(path: Path, order: list[str], *, mtime: int, prefix: str = "", with_dirs: bool = False) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        if with_dirs:
            for directory in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(prefix + directory)
                info.type, info.mtime = tarfile.DIRTYPE, mtime
                tar.addfile(info)
        for name in order:
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mtime, info.uid, info.uname, info.mode = len(MEMBERS[name]), mtime, 1000, "me", 0o600
            tar.addfile(info, io.BytesIO(MEMBERS[name]))
    return path


def test_same_members_in_another_order_with_other_metadata_give_identical_bytes(tmp_path: Path) -> None:
    one = write_tar(tmp_path / "one.tar", ["oci-layout", "index.json", "blobs/sha256/ab"], mtime=1_700_000_000)
    two = write_tar(tmp_path / "two.tar", ["blobs/sha256/ab", "oci-layout", "index.json"], mtime=5, prefix="./",
                    with_dirs=True)
    canonicalize(one, tmp_path / "one.canonical")
    canonicalize(two, tmp_path / "two.canonical")
    assert (tmp_path / "one.canonical").read_bytes() == (tmp_path / "two.canonical").read_bytes()
    with tarfile.open(tmp_path / "one.canonical") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == sorted(MEMBERS)
        assert all((m.mtime, m.uid, m.uname, m.mode) == (0, 0, "", 0o644) for m in members)
        assert {m.name: tar.extractfile(m).read() for m in members} == MEMBERS  # type: ignore[union-attr]


def test_canonical_form_is_a_fixed_point(tmp_path: Path) -> None:
    canonicalize(write_tar(tmp_path / "a.tar", list(MEMBERS), mtime=7), tmp_path / "b.tar")
    canonicalize(tmp_path / "b.tar", tmp_path / "c.tar")
    assert (tmp_path / "b.tar").read_bytes() == (tmp_path / "c.tar").read_bytes()


def test_a_symlink_member_is_refused_naming_the_tarball(tmp_path: Path) -> None:
    path = tmp_path / "legacy.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("abc/layer.tar")
        info.type, info.linkname = tarfile.SYMTYPE, "../def/layer.tar"
        tar.addfile(info)
    with pytest.raises(ValueError, match=r"legacy\.tar: member 'abc/layer.tar' is not a regular file"):
        canonicalize(path, tmp_path / "out.tar")


def test_pull_history_annotations_do_not_reach_the_canonical_form(tmp_path: Path) -> None:
    """The same image pulled through different registries must give the same tarball."""

    def index(annotations: dict[str, str]) -> bytes:
        descriptor = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "a" * 64,
                      "size": 405, "annotations": annotations}
        return json.dumps({"schemaVersion": 2, "manifests": [descriptor]}).encode()

    def tarball(name: str, annotations: dict[str, str]) -> bytes:
        raw = tmp_path / f"{name}.raw"
        with tarfile.open(raw, "w") as tar:
            data = index(annotations)
            info = tarfile.TarInfo("index.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        canonicalize(raw, tmp_path / f"{name}.tar")
        return (tmp_path / f"{name}.tar").read_bytes()

    named = {"io.containerd.image.name": "docker.io/library/builder:1"}
    one = tarball("one", {**named, "containerd.io/distribution.source.127.0.0.1": "docker.io/library/golang"})
    two = tarball("two", {**named, "containerd.io/distribution.source.docker.io": "library/other,library/golang"})
    assert one == two
    with tarfile.open(tmp_path / "one.tar") as tar:
        kept = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert kept["manifests"][0]["annotations"] == named  # the image's own name stays
    tarball("bare", {"containerd.io/distribution.source.x": "y"})
    with tarfile.open(tmp_path / "bare.tar") as tar:
        bare = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert "annotations" not in bare["manifests"][0]  # nothing left: no empty map either
