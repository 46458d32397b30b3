"""The action cache and the content-addressed output store.

Layout under the cache directory:
  cas/sha256/ab/<digest>  every output file, by content, read-only
  actions/                diskcache: action key -> output record; also
                          "used:<key>" (last use, for pruning), "last:<node>"
                          (last key material, for explain), "pin:<image>"
                          (base image pins), "stat:<path>" (file digests)
  tmp/                    work space of running actions (same filesystem,
                          so finished files are renamed into cas/)

An output record is written only after all its files are complete in cas/,
so a crash leaves at worst unreferenced blobs, never a record that points to
missing or partial outputs. A record whose blobs went missing anyway (a
pruned or damaged cache) reads as a miss, and the action runs again.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache

from kaibuild.fingerprint import key_of, sha256_file


@dataclass(frozen=True)
class OutputRecord:
    """What an action produced: files by relative path, plus small metadata.

    `meta` holds content facts only (an image's manifest digest, its
    platform), never timings, so `digest` identifies the output itself.
    """

    files: dict[str, str] = field(default_factory=dict)  # relpath -> sha256
    executable: frozenset[str] = frozenset()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return key_of({"files": self.files, "executable": sorted(self.executable), "meta": self.meta})

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, "executable": sorted(self.executable), "meta": self.meta}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputRecord:
        return cls(files=dict(data["files"]), executable=frozenset(data["executable"]), meta=dict(data["meta"]))


class Store:
    def __init__(self, root: Path):
        self.root = root
        self.cas = root / "cas" / "sha256"
        self.tmp = root / "tmp"
        for directory in (self.cas, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)
        self.actions = diskcache.Cache(str(root / "actions"))

    def close(self) -> None:
        self.actions.close()

    # --- blobs ---------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.cas / digest[:2] / digest

    def put_file(self, src: Path, *, sha256: str | None = None) -> str:
        """Move a finished file from tmp/ into the store; returns its sha256
        (`sha256` when the caller hashed these very bytes as it wrote them)."""
        digest = sha256 or sha256_file(src)
        dest = self.blob_path(digest)
        if dest.exists():
            src.unlink()
        else:
            dest.parent.mkdir(exist_ok=True)
            os.chmod(src, 0o444)
            os.replace(src, dest)  # atomic: a blob is either absent or whole
        return digest

    def put_tree(self, root: Path) -> tuple[dict[str, str], frozenset[str]]:
        """Store every file under root; returns {relpath: digest} and executables."""
        files: dict[str, str] = {}
        executable: set[str] = set()
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(root).as_posix()
            if path.stat().st_mode & stat.S_IXUSR:
                executable.add(rel)
            files[rel] = self.put_file(path)
        return files, frozenset(executable)

    def temp_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))

    # --- records -------------------------------------------------------------
    def get(self, key: str) -> OutputRecord | None:
        data = self.actions.get(key)
        if data is None:
            return None
        record = OutputRecord.from_json(data)
        if not all(self.blob_path(d).is_file() for d in record.files.values()):
            return None  # outputs lost since: treat as a miss so the action reruns
        self.actions.set(f"used:{key}", time.time())  # for least-recently-used pruning
        return record

    def put(self, key: str, record: OutputRecord) -> None:
        missing = [rel for rel, d in record.files.items() if not self.blob_path(d).is_file()]
        if missing:
            raise RuntimeError(f"refusing to record action {key[:12]} with missing outputs: {missing[:3]}")
        self.actions.set(key, record.to_json())
        self.actions.set(f"used:{key}", time.time())

    # --- use of outputs --------------------------------------------------------
    def materialize(self, record: OutputRecord, dest: Path, *, prefix: str = "") -> None:
        """Place a record's files (those under `prefix`) below dest.

        Read-only files are hard-linked from the store (cheap for vendor
        trees); executables are copied so they can carry their own mode.
        """
        for rel, digest in record.files.items():
            if prefix and not rel.startswith(prefix):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            blob = self.blob_path(digest)
            if rel in record.executable:
                shutil.copyfile(blob, target)
                os.chmod(target, 0o755)
            else:
                try:
                    os.link(blob, target)
                except OSError:  # another filesystem: copy instead
                    shutil.copyfile(blob, target)

    def export_file(self, digest: str, dest: Path, *, executable: bool = False) -> None:
        """Copy one blob to a user-visible path atomically (temp, then rename)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(handle)
        try:
            shutil.copyfile(self.blob_path(digest), tmp_name)
            os.chmod(tmp_name, 0o755 if executable else 0o644)
            os.replace(tmp_name, dest)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
