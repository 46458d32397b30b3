"""The offline bundle: what `export-offline` writes and `import-offline` reads.

A bundle is a directory (or one `<name>.tar.zst` made from it):

  manifest.json           format, platform, versions, every file's sha256/size
  images/blobs/sha256/*   image layers, configs and manifests, each stored once
  images/<name>/          each image's own small files; import assembles
                          images/<name>.tar from them (bundle_images)
  tools/<name>            executables for the bundle's platform
  envtest/<files...>      envtest binaries (kube-apiserver, etcd, kubectl)
  downloads/<name>        other pinned downloads
  source/...              the workspace's files, vendor/ in place

A bundle crosses an air gap on removable media and is produced by someone
else, so the reading side trusts nothing: every file must be listed with its
digest, nothing unlisted may be present, images must be for the bundle's
platform, and archives are unpacked member by member with explicit checks
rather than by tarfile's extractall.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import zstandard

from kaibuild.bundle_images import BUNDLE_BLOBS, ImageEntry, ImageParts, assemble, assembled_sha256, blob_path
from kaibuild.errors import ConfigError, KaibuildError, PlatformMismatch
from kaibuild.fingerprint import sha256_file
from kaibuild.image_archive import ArchiveImage, Member, read_images
from kaibuild.platform import Platform

FORMAT = 2  # 2: image blobs stored once (bundle_images)
MANIFEST = "manifest.json"
SECTIONS = ("images", "tools", "envtest", "downloads", "source", "cache")
# versions[ENVTEST_VERSION_KEY] names the Kubernetes version of envtest/,
# which setup-envtest's layout puts in bin/k8s/<version>-<os>-<arch>/.
ENVTEST_VERSION_KEY = "envtest"
ARCHIVE_SUFFIX = ".tar.zst"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_REEXPORT = "re-export the bundle on the connected machine (kaibuild export-offline) and copy it again"


# --- paths -------------------------------------------------------------------


def _check_relpath(rel: Any, *, where: str) -> str:
    """A bundle path: relative, normalised, inside one of SECTIONS."""
    ok = (
        isinstance(rel, str)
        and rel
        and "\\" not in rel
        and "\x00" not in rel
        and not rel.startswith("/")
        and posixpath.normpath(rel) == rel
        and ".." not in rel.split("/")
    )
    if not ok:
        raise KaibuildError(f"unsafe bundle path {rel!r}: it must be relative, normalised and without '..'", where=where,
                            fix=_REEXPORT)
    section, _, rest = rel.partition("/")
    if section not in SECTIONS or not rest:
        raise KaibuildError(f"bundle path {rel!r} is not inside one of {', '.join(s + '/' for s in SECTIONS)}",
                            where=where, fix=_REEXPORT)
    return rel


def _platform(text: str, *, where: str) -> Platform:
    try:
        return Platform.parse(text)
    except ConfigError as error:
        raise KaibuildError(f"invalid platform {text!r}: {error.message}", where=where, fix=_REEXPORT) from None


def _image_platform(image: ArchiveImage) -> str:
    """The image config's platform, normalised like the bundle's (arm64/v8 == arm64)."""
    try:
        return str(Platform.parse(image.platform_text))
    except ConfigError:
        return image.platform_text or "(no platform in the image config)"


def _read_single_image(path: Path, *, where: str) -> ArchiveImage:
    try:
        images = read_images(path)
    except (tarfile.TarError, KeyError, IndexError, TypeError, AttributeError, ValueError, OSError) as error:
        raise KaibuildError(f"not a readable docker-archive image tarball ({error})", where=where, fix=_REEXPORT) from None
    if len(images) != 1:
        raise KaibuildError(f"holds {len(images)} images; a bundle image tarball holds exactly one", where=where,
                            fix="save one image for one platform per tarball")
    return images[0]


# --- writing -----------------------------------------------------------------


class BundleWriter:
    """Builds a bundle in a hidden temp dir next to `dest`; `commit` makes it
    appear at once, so a reader never sees half a bundle and a crash leaves
    `dest` as it was (plus, at worst, a `.<name>.tmp-*` directory)."""

    def __init__(self, dest: Path, platform: str, versions: dict[str, str]):
        self.dest = dest
        self.platform = str(_platform(platform, where="--platform"))
        self.versions = dict(versions)
        self._files: dict[str, dict[str, Any]] = {}
        self._images: list[ImageEntry] = []
        self._missing: list[dict[str, str]] = []
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp: Path | None = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        os.chmod(self.tmp, 0o755)  # mkdtemp's 0700 would become the bundle's mode

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # a no-op after commit

    def _root(self) -> Path:
        if self.tmp is None:
            raise RuntimeError("bundle writer already committed or aborted")
        return self.tmp

    def add_file(self, relpath: str, src: Path, *, executable: bool = False) -> None:
        root = self._root()
        rel = _check_relpath(relpath, where=str(src))
        if rel in self._files:
            raise KaibuildError(f"{rel} added to the bundle twice", where=str(src))
        if not src.is_file():
            raise KaibuildError(f"cannot add {rel} to the bundle: not a regular file", where=str(src))
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _place(src, target, executable=executable)
        # Hash what landed in the bundle, not the source: that is what verify checks.
        self._files[rel] = {"sha256": sha256_file(target), "size": target.stat().st_size, "executable": executable}

    def add_image(self, relpath: str, src: Path, reference: str, digest: str) -> None:
        """Add an image tarball as images/<name>.tar: its blobs go to the
        shared images/blobs/ (once per bundle), its other members to
        images/<name>/; import assembles the same tarball again."""
        rel = _check_relpath(relpath, where=str(src))
        if not rel.startswith("images/") or not rel.endswith(".tar") or rel.startswith(BUNDLE_BLOBS + "/"):
            raise KaibuildError(f"image path {rel!r} must be images/<name>.tar", where=str(src))
        if any(entry.path == rel for entry in self._images):
            raise KaibuildError(f"{rel} added to the bundle twice", where=str(src))
        image = _read_single_image(src, where=str(src))
        actual = _image_platform(image)
        if actual != self.platform:
            raise PlatformMismatch(f"image {reference} is {actual}, bundle is {self.platform}", where=str(src),
                                   fix=f"save the image's {self.platform} manifest (pull by its platform digest)")
        added: list[str] = []
        try:
            with ImageParts(src, rel) as parts:
                files = parts.files()
                for bundle_rel, (member, blob_digest) in files.items():
                    if blob_digest is not None and bundle_rel in self._files:
                        continue  # a blob an earlier image brought: stored once
                    self._add_member(bundle_rel, member, where=str(src))
                    added.append(bundle_rel)
                    if blob_digest is not None and self._files[bundle_rel]["sha256"] != blob_digest:
                        raise KaibuildError(f"blob {blob_digest} does not match its digest", where=str(src),
                                            fix="rebuild the image (kaibuild cache prune, then export again)")
            entry = ImageEntry(rel, reference, digest, image.os, image.architecture, image.variant, "", 0,
                               tuple(sorted(d for _, d in files.values() if d is not None)))
            members = sorted(r for r, (_, d) in files.items() if d is None)
            sha, size = assembled_sha256(self._root(), entry, members)
            if sha != sha256_file(src):
                raise KaibuildError("the image tarball is not in kaibuild's canonical form, so import could not "
                                    "rebuild it byte for byte", where=str(src),
                                    fix="rebuild it with this kaibuild (kaibuild cache prune --max-size 0), then export again")
        except BaseException:
            for bundle_rel in added:
                self._forget(bundle_rel)
            shutil.rmtree(self._root() / rel.removesuffix(".tar"), ignore_errors=True)
            raise
        self._images.append(replace(entry, sha256=sha, size=size))

    def _add_member(self, rel: str, member: Member, *, where: str) -> None:
        target = self._root() / _check_relpath(rel, where=where)
        target.parent.mkdir(parents=True, exist_ok=True)
        _size, opener = member
        with opener() as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        os.chmod(target, 0o644)
        self._files[rel] = {"sha256": sha256_file(target), "size": target.stat().st_size, "executable": False}

    def add_tree(self, prefix: str, root: Path, relpaths: Iterable[str]) -> None:
        """Add workspace files under `prefix` (source/), keeping their executable bit.

        A symlink is copied as the file it points to, only if that is inside
        `root`: following one out of the workspace could ship any file of the
        exporting machine.
        """
        real_root = root.resolve()
        for rel in sorted(set(relpaths)):
            src = root / rel
            if not src.resolve().is_relative_to(real_root):
                raise KaibuildError(f"{rel} leads outside the workspace ({src.resolve()})", where=str(src),
                                    fix="replace the symlink with the file, or leave it out of the workspace")
            executable = src.is_file() and bool(src.stat().st_mode & stat.S_IXUSR)
            self.add_file(f"{prefix.rstrip('/')}/{rel}", src, executable=executable)

    def note_missing(self, name: str, reason: str, how_to_supply: str) -> None:
        self._root()
        self._missing.append({"name": name, "reason": reason, "how_to_supply": how_to_supply})

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "platform": self.platform,
            "versions": self.versions,
            "files": dict(sorted(self._files.items())),
            "images": [entry.to_json() for entry in self._images],
            "missing": list(self._missing),
        }

    def commit(self, *, archive: bool = False) -> Path:
        root = self._root()
        # Written last: a directory without it is recognisably unfinished.
        _write_json(root / MANIFEST, self.manifest())
        if archive:
            written = archive_path(self.dest)
            check_destination(self.dest, archive=True)
            _write_archive(root, self._files, written)
            shutil.rmtree(root)
        else:
            written = self.dest
            _swap_in(root, self.dest)
        self.tmp = None
        return written

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def _forget(self, rel: str) -> None:
        self._files.pop(rel, None)
        (self._root() / rel).unlink(missing_ok=True)


def archive_path(dest: Path) -> Path:
    """`<dest>.tar.zst`; not `dest.with_suffix`, which would eat the ".0" of "bundle-1.0"."""
    return dest if dest.name.endswith(ARCHIVE_SUFFIX) else dest.with_name(dest.name + ARCHIVE_SUFFIX)


def _place(src: Path, target: Path, *, executable: bool) -> None:
    """Hard-link a read-only source (a cache blob: never changed in place),
    else copy: a link to a workspace file would let a later edit silently
    change the bundle, and chmod on a link would change the source's mode."""
    if not executable and not src.stat().st_mode & 0o222:
        try:
            os.link(src, target)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy
    shutil.copyfile(src, target)
    os.chmod(target, 0o755 if executable else 0o644)


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def check_destination(dest: Path, *, archive: bool) -> None:
    """Export may replace an earlier bundle at `dest`, never anything else."""
    target = archive_path(dest) if archive else dest
    if not (target.exists() or target.is_symlink()):
        return
    if not (_is_bundle_archive(target) if archive else _is_replaceable_bundle(target)):
        raise KaibuildError("exists and is not a kaibuild bundle; refusing to replace it", where=str(target),
                            fix="choose another output path, or remove it yourself")


def is_bundle_output(path: Path) -> bool:
    """Something export-offline wrote: a bundle, a bundle archive, or the
    `.<name>.tmp-*` it writes them in (left behind if it was killed)."""
    if path.name.startswith(".") and ".tmp-" in path.name:
        return True
    if path.is_symlink():
        return False
    if path.is_dir():
        try:
            read_manifest(path)
        except KaibuildError:
            return False
        return True
    return path.name.endswith(".tar.zst") and _is_bundle_archive(path)


def _is_bundle_archive(path: Path) -> bool:
    """A .tar.zst written by _write_archive: zstd, and manifest.json first."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, "rb") as raw:
            if raw.read(4) != _ZSTD_MAGIC:
                return False
            raw.seek(0)
            with tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(raw), mode="r|") as tar:
                first = tar.next()
                return first is not None and first.name == MANIFEST
    except (OSError, tarfile.TarError, zstandard.ZstdError):
        return False


def _is_replaceable_bundle(path: Path) -> bool:
    """Only an old bundle (or an empty dir) may be replaced: never wipe a
    directory someone pointed --output at by mistake."""
    if path.is_symlink() or not path.is_dir():
        return False
    return (path / MANIFEST).is_file() or not any(path.iterdir())


def _swap_in(new: Path, dest: Path) -> None:
    if not (dest.exists() or dest.is_symlink()):
        os.rename(new, dest)
        return
    if not _is_replaceable_bundle(dest):
        shutil.rmtree(new, ignore_errors=True)
        raise KaibuildError("exists and is not a kaibuild bundle; refusing to replace it", where=str(dest),
                            fix="choose another output path, or remove it yourself")
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, old / "bundle")
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old / "bundle", dest)  # put the previous bundle back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _write_archive(root: Path, files: dict[str, dict[str, Any]], dest: Path) -> None:
    """A reproducible tar (sorted, zero times and owners, modes from the
    manifest) compressed with zstd, written to a temp file and renamed."""
    handle, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    try:
        with open(handle, "wb") as raw:
            compressor = zstandard.ZstdCompressor(level=3, threads=-1)
            with compressor.stream_writer(raw, closefd=False) as zstd_out, \
                    tarfile.open(fileobj=zstd_out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_member(tar, root / MANIFEST, MANIFEST, executable=False)
                for rel, info in sorted(files.items()):
                    _add_member(tar, root / rel, rel, executable=bool(info["executable"]))
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _add_member(tar: tarfile.TarFile, path: Path, name: str, *, executable: bool) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o755 if executable else 0o644
    info.mtime = 0
    with open(path, "rb") as handle:
        tar.addfile(info, handle)


# --- reading and verifying -----------------------------------------------------


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """The bundle's manifest, checked for shape (not yet against the files)."""
    path = bundle_dir / MANIFEST
    where = str(path)
    if path.is_symlink() or not path.is_file():
        raise KaibuildError("missing: not a kaibuild bundle (no manifest.json)", where=where,
                            fix="point at the bundle directory or the .tar.zst export-offline wrote; else " + _REEXPORT)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise KaibuildError(f"manifest is not valid JSON ({error})", where=where, fix=_REEXPORT) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise KaibuildError(f"unsupported bundle format {found!r} (this kaibuild reads format {FORMAT})", where=where,
                            fix="import with the kaibuild version that exported it, or " + _REEXPORT)
    _check_manifest_shape(manifest, where=where)
    return manifest


def _check_manifest_shape(manifest: dict[str, Any], *, where: str) -> None:
    expected = {"platform": str, "versions": dict, "files": dict, "images": list, "missing": list}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind):
            raise KaibuildError(f"manifest field {key!r} is missing or not a {kind.__name__}", where=where, fix=_REEXPORT)
    _platform(manifest["platform"], where=where)
    for rel, info in manifest["files"].items():
        _check_relpath(rel, where=where)
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and isinstance(info.get("size"), int)
                and isinstance(info.get("executable"), bool)):
            raise KaibuildError(f"manifest entry for {rel} needs sha256, size and executable", where=where, fix=_REEXPORT)
    for entry in manifest["images"]:
        if ImageEntry.from_json(entry) is None:
            raise KaibuildError(f"malformed image entry {entry!r}", where=where, fix=_REEXPORT)


def verify_bundle(bundle_dir: Path, expected_platform: str | None = None,
                  assemble_into: Path | None = None) -> dict[str, Any]:
    """Check a bundle completely before anything of it is used; returns its manifest.

    Cheap checks (platform, unlisted files, sizes) come before hashing, so a
    wrong bundle fails fast. Each image's tarball is assembled and checked;
    with `assemble_into`, it is kept there at its entry's path for import.
    """
    manifest = read_manifest(bundle_dir)
    platform = str(_platform(manifest["platform"], where=str(bundle_dir / MANIFEST)))
    if expected_platform is not None:
        wanted = str(_platform(expected_platform, where="--platform"))
        if wanted != platform:
            raise PlatformMismatch(f"bundle is {platform}, expected {wanted}", where=str(bundle_dir),
                                   fix=f"export a bundle with --platform {wanted}")
    files: dict[str, dict[str, Any]] = manifest["files"]
    _check_no_unlisted(bundle_dir, set(files))
    for rel, info in files.items():
        _check_size(bundle_dir, rel, info["size"])
    for rel, info in files.items():
        if sha256_file(bundle_dir / rel) != info["sha256"]:
            raise KaibuildError("sha256 mismatch: the file changed after export (damaged or tampered with)",
                                where=str(bundle_dir / rel), fix=_REEXPORT)
        if rel.startswith(BUNDLE_BLOBS + "/") and rel != blob_path(info["sha256"]):
            raise KaibuildError("an image blob's name is not its sha256", where=str(bundle_dir / rel), fix=_REEXPORT)
    with tempfile.TemporaryDirectory(prefix="kaibuild-verify-") as scratch:
        for data in manifest["images"]:
            entry = ImageEntry.from_json(data)
            assert entry is not None  # read_manifest checked the shape
            _check_image(bundle_dir, entry, files, platform, assemble_into or Path(scratch))
    return manifest


def _check_image(bundle_dir: Path, entry: ImageEntry, files: dict[str, Any], platform: str, into: Path) -> None:
    manifest_where = str(bundle_dir / MANIFEST)
    members = sorted(rel for rel in files if rel.startswith(entry.member_dir + "/"))
    if not members:
        raise KaibuildError(f"image {entry.reference} has no files under {entry.member_dir}/", where=manifest_where,
                            fix=_REEXPORT)
    for hex_digest in entry.blobs:
        if blob_path(hex_digest) not in files:
            raise KaibuildError(f"image {entry.reference} needs {blob_path(hex_digest)}, which is not in the bundle",
                                where=manifest_where, fix=_REEXPORT)
    tarball = into / entry.path
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with open(tarball, "wb") as out:
        assemble(bundle_dir, entry, members, out)
    if sha256_file(tarball) != entry.sha256 or tarball.stat().st_size != entry.size:
        raise KaibuildError(f"image {entry.reference}: the tarball assembled from {entry.member_dir}/ and its blobs "
                            "does not match the manifest's sha256", where=manifest_where, fix=_REEXPORT)
    where = str(bundle_dir / entry.member_dir)
    actual = _image_platform(_read_single_image(tarball, where=where))
    recorded = str(_platform(entry.platform_text, where=manifest_where))
    if actual != recorded:
        raise PlatformMismatch(f"image is {actual}, manifest says {recorded}", where=where, fix=_REEXPORT)
    if actual != platform:
        raise PlatformMismatch(f"image is {actual}, bundle is {platform}", where=where,
                               fix=f"re-export the bundle with only {platform} images")


def _walk_entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below root (bundle-relative, lstat), symlinks not followed."""
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory, name)
            yield path.relative_to(root).as_posix(), path.lstat()


def _check_no_unlisted(bundle_dir: Path, listed: set[str]) -> None:
    for rel, info in _walk_entries(bundle_dir):
        if stat.S_ISDIR(info.st_mode):
            continue
        if rel == MANIFEST or (rel in listed and stat.S_ISREG(info.st_mode)):
            continue
        kind = "symlink" if stat.S_ISLNK(info.st_mode) else "file" if stat.S_ISREG(info.st_mode) else "special file"
        what = f"{kind} is not listed in the manifest" if rel not in listed else f"is a {kind}, not a regular file"
        raise KaibuildError(f"{what}; refusing it, it may have been injected", where=str(bundle_dir / rel),
                            fix=f"delete it if you added it yourself, else {_REEXPORT}")


def _check_size(bundle_dir: Path, rel: str, expected: int) -> None:
    path = bundle_dir / rel
    if not path.is_file():
        raise KaibuildError("missing: listed in the manifest but not in the bundle", where=str(path), fix=_REEXPORT)
    size = path.stat().st_size
    if size < expected:
        raise KaibuildError(f"truncated: size {size}, expected {expected}", where=str(path),
                            fix="copy the bundle again (the copy was cut short), or " + _REEXPORT)
    if size > expected:
        raise KaibuildError(f"wrong size: size {size}, expected {expected}", where=str(path), fix=_REEXPORT)


# --- unpacking archives -----------------------------------------------------------


def extract_archive(archive: Path, dest: Path) -> Path:
    """Unpack a bundle archive (.tar.zst, .tar, .tar.gz) into `dest`.

    It is unpacked into a fresh temp dir next to `dest` and renamed into
    place only if every member passed, so a hostile or broken archive
    leaves nothing behind. Members are written one by one: no member may
    land, or make a later member land, outside the temp dir.
    """
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise KaibuildError("exists and is not an empty directory; refusing to unpack over it", where=str(dest),
                            fix="choose a new directory to unpack into")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)
        with open(archive, "rb") as raw:
            _Extractor(tmp, archive).run(_open_tar(raw, archive))
        os.rename(tmp, dest)  # replaces dest only if it is (still) an empty directory
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, KaibuildError):
            raise KaibuildError(f"cannot unpack: {error}", where=str(archive), fix=_REEXPORT) from error
        raise
    return dest


def _open_tar(raw: IO[bytes], archive: Path) -> tarfile.TarFile:
    magic = raw.read(4)
    raw.seek(0)
    try:
        if magic == _ZSTD_MAGIC:
            stream = zstandard.ZstdDecompressor().stream_reader(raw)
            return tarfile.open(fileobj=stream, mode="r|")
        return tarfile.open(fileobj=raw, mode="r|*")  # plain, gzip, bzip2 or xz
    except tarfile.TarError as error:
        raise KaibuildError(f"not a bundle archive ({error})", where=str(archive), fix=_REEXPORT) from None


_SPECIAL = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}


class _Extractor:
    """Writes members of a streamed tar below `root`, refusing unsafe ones.

    Rules: names are relative and without '..'; no member is written through
    a symlink or over an earlier member; symlinks point inside (checked
    lexically per member and, as chains can only be judged once the tree is
    complete, by resolving all of them at the end); hard links name an
    earlier regular member; no devices or fifos.
    """

    def __init__(self, root: Path, archive: Path):
        self.root = root
        self.archive = archive
        self.regular: set[str] = set()
        self.symlinks: list[tuple[str, Path]] = []

    def refuse(self, name: str, why: str) -> KaibuildError:
        return KaibuildError(f"archive member {name!r} {why}; refusing the archive", where=str(self.archive),
                             fix="use a bundle archive written by kaibuild export-offline --archive; " + _REEXPORT)

    def run(self, tar: tarfile.TarFile) -> None:
        try:
            with tar:
                for member in tar:
                    self.member(tar, member)
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as error:
            raise KaibuildError(f"damaged archive ({error})", where=str(self.archive), fix=_REEXPORT) from None
        self.check_symlink_chains()

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = self.safe_name(member.name)
        if name is None:  # the root itself ("." or "./")
            return
        target = self.root / name
        self.check_parents(member.name, name)
        if member.isdir():
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                raise self.refuse(member.name, "is a directory over an earlier non-directory member")
            self.defence_in_depth(member)
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            return
        if target.exists() or target.is_symlink():
            raise self.refuse(member.name, "appears twice (a later member may not replace an earlier one)")
        if member.isreg():
            self.defence_in_depth(member)
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.write_file(tar, member, target)
            self.regular.add(name)
        elif member.issym():
            self.check_symlink(member)
            self.defence_in_depth(member)
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.symlink(member.linkname, target)
            self.symlinks.append((member.name, target))
        elif member.islnk():
            source = self.root / self.hardlink_target(member)
            self.defence_in_depth(member)
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.link(source, target, follow_symlinks=False)
        else:
            raise self.refuse(member.name, f"is a {_SPECIAL.get(member.type, 'special file')}")

    def safe_name(self, raw: str) -> str | None:
        if raw.startswith("/"):
            raise self.refuse(raw, "has an absolute path")
        if not raw or "\x00" in raw:
            raise self.refuse(raw, "has an empty or invalid name")
        parts = [p for p in raw.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(raw, "contains '..'")
        return "/".join(parts) or None

    def defence_in_depth(self, member: tarfile.TarInfo) -> None:
        """Python's own 'data' filter as a second opinion (3.11.4+)."""
        data_filter = getattr(tarfile, "data_filter", None)
        if data_filter is None:
            return
        try:
            data_filter(member, str(self.root))
        except tarfile.FilterError as error:
            raise self.refuse(member.name, f"is rejected by the tarfile data filter ({error})") from None

    def check_parents(self, raw: str, name: str) -> None:
        # A parent that is an archive symlink would redirect this member's
        # write; refusing that keeps every write inside the real tree.
        current = self.root
        for part in name.split("/")[:-1]:
            current = current / part
            if current.is_symlink():
                raise self.refuse(raw, f"would be written through the symlink {current.relative_to(self.root).as_posix()!r}")
            if current.exists() and not current.is_dir():
                raise self.refuse(raw, f"is below {current.relative_to(self.root).as_posix()!r}, which is not a directory")

    def check_symlink(self, member: tarfile.TarInfo) -> None:
        link = member.linkname
        if link.startswith("/"):
            raise self.refuse(member.name, f"is a symlink to the absolute path {link!r}")
        base = posixpath.dirname(self.safe_name(member.name) or "")
        resolved = posixpath.normpath(posixpath.join(base, link))
        if resolved == ".." or resolved.startswith("../"):
            raise self.refuse(member.name, f"is a symlink to {link!r}, outside the archive")

    def check_symlink_chains(self) -> None:
        real_root = self.root.resolve()
        for raw, path in self.symlinks:
            if not Path(os.path.realpath(path)).is_relative_to(real_root):
                raise self.refuse(raw, f"is a symlink that resolves outside the archive (through {os.readlink(path)!r})")

    def hardlink_target(self, member: tarfile.TarInfo) -> str:
        link = member.linkname
        if link.startswith("/"):
            raise self.refuse(member.name, f"is a hard link to the absolute path {link!r}")
        parts = [p for p in link.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(member.name, f"is a hard link to {link!r}, outside the archive")
        name = "/".join(parts)
        if name not in self.regular:
            raise self.refuse(member.name, f"is a hard link to {link!r}, which is not an earlier regular member")
        return name

    def write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        source = tar.extractfile(member)
        if source is None:
            raise self.refuse(member.name, "has no data")
        # O_EXCL + O_NOFOLLOW: never open an existing file or a symlink.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)  # no setuid, no world-writable


# --- importing ------------------------------------------------------------------


def safe_import_plan(bundle_dir: Path, workspace: Path) -> list[tuple[Path, Path]]:
    """Where import-offline copies each tool and envtest binary: (in bundle, destination).

    tools/<name> goes to <workspace>/bin/<name>; envtest/<rest> to
    <workspace>/bin/k8s/<version>-<os>-<arch>/<rest>, setup-envtest's layout.
    Call verify_bundle first; this only reads the manifest.
    """
    manifest = read_manifest(bundle_dir)
    platform = Platform.parse(manifest["platform"])
    bin_dir = workspace / "bin"
    plan: list[tuple[Path, Path]] = []
    for rel in sorted(manifest["files"]):
        section, _, rest = rel.partition("/")
        if section == "tools":
            dest = bin_dir / rest
        elif section == "envtest":
            dest = bin_dir / "k8s" / _envtest_dirname(bundle_dir, manifest, platform) / rest
        else:
            continue
        _check_inside(workspace, dest, rel)
        plan.append((bundle_dir / rel, dest))
    return plan


def _envtest_dirname(bundle_dir: Path, manifest: dict[str, Any], platform: Platform) -> str:
    version = manifest["versions"].get(ENVTEST_VERSION_KEY)
    if not isinstance(version, str) or not version or "/" in version or version in (".", ".."):
        raise KaibuildError(f"bundle has envtest/ files but versions[{ENVTEST_VERSION_KEY!r}] is {version!r}",
                            where=str(bundle_dir / MANIFEST), fix=_REEXPORT)
    return f"{version}-{platform.os}-{platform.arch}"


def _check_inside(workspace: Path, dest: Path, rel: str) -> None:
    # Lexically and after resolving symlinks: a bin/ that links elsewhere
    # would make the import write outside the workspace.
    ws = Path(os.path.abspath(workspace))
    lexical = Path(os.path.normpath(os.path.abspath(dest)))
    if not lexical.is_relative_to(ws) or not dest.resolve().is_relative_to(workspace.resolve()):
        raise KaibuildError(f"{rel} would be imported to {dest}, outside the workspace", where=str(dest),
                            fix="make sure bin/ in the workspace is a real directory, not a symlink elsewhere")
