"""Content digests and action keys.

A key is the sha256 of canonical JSON (sorted keys, no spaces), so two
processes that see the same inputs compute the same key, and cosmetic
differences in how inputs were gathered never change it.
"""

from __future__ import annotations

import hashlib
import json
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


class FileDigests:
    """Digests of workspace files, each file hashed at most once per run."""

    def __init__(self) -> None:
        self._memo: dict[Path, str] = {}

    def digest(self, path: Path) -> str:
        path = path.resolve()
        found = self._memo.get(path)
        if found is None:
            found = self._memo[path] = sha256_file(path)
        return found

    def tree(self, root: Path, relpaths: list[str]) -> dict[str, str]:
        """{relpath: sha256} for the given files under root."""
        return {rel: self.digest(root / rel) for rel in sorted(relpaths)}
