"""Content digests and action keys.

A key is the sha256 of canonical JSON (sorted keys, no spaces), so two
processes that see the same inputs compute the same key, and cosmetic
differences in how inputs were gathered never change it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# A file modified this close to when it was hashed may change again within
# the filesystem's timestamp granularity without its stat changing (git's
# "racy clean" case), so such an entry is not trusted: the file is rehashed.
RACY_WINDOW_NS = 2_000_000_000


class FileDigests:
    """Digests of workspace files: each hashed at most once per run, and not
    at all while its (size, mtime, inode, ctime) match a trusted entry of an
    earlier run (`persist` is any mapping, e.g. a diskcache)."""

    def __init__(self, persist: MutableMapping[str, Any] | None = None) -> None:
        self._memo: dict[Path, str] = {}
        self._persist = persist
        self.hashed = 0  # files actually read this run

    def digest(self, path: Path) -> str:
        path = path.resolve()
        found = self._memo.get(path)
        if found is None:
            found = self._memo[path] = self._stat_cached(path)
        return found

    def _stat_cached(self, path: Path) -> str:
        info = path.stat()
        signature = [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]
        key = f"stat:{path}"
        if self._persist is not None:
            entry = self._persist.get(key)
            if entry and entry["sig"] == signature and info.st_mtime_ns + RACY_WINDOW_NS < entry["hashed_at"]:
                return entry["digest"]
        hashed_at = time.time_ns()
        digest = sha256_file(path)
        self.hashed += 1
        if self._persist is not None:
            self._persist[key] = {"sig": signature, "digest": digest, "hashed_at": hashed_at}
        return digest

    def tree(self, root: Path, relpaths: list[str]) -> dict[str, str]:
        """{relpath: sha256} for the given files under root."""
        return {rel: self.digest(root / rel) for rel in sorted(relpaths)}
