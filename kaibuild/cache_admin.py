"""Cache administration: statistics, size parsing, locking and pruning.

Builds hold a shared lock on `<cache root>/lock` (`build_lock`); pruning holds
it exclusively (`admin_lock`), so it never runs while a build may be reading
or writing the cache, and so never removes an entry in use.

Pruning keeps the store's invariant that a record only exists while all its
blobs do: records are deleted first, their now-unreferenced blobs after, so a
crash mid-prune leaves at worst orphan blobs (removed by the next prune).
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import shutil
import stat
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from kaibuild.cache import Store
from kaibuild.errors import ConfigError

# Directories besides cas/ whose size is reported; views/ and tmp/ are
# derivable or scratch, go-build/ is Go's own cache, logs/ are action logs.
OTHER_DIRS = ("views", "logs", "go-build", "tmp")

_ACTION_KEY = re.compile(r"[0-9a-f]{64}")


# --- locking -------------------------------------------------------------------

@contextmanager
def _flock(store: Store, operation: int) -> Iterator[None]:
    store.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(store.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, operation)  # blocks until granted
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def build_lock(store: Store) -> AbstractContextManager[None]:
    """Shared lock held for the duration of a build; many builds may hold it."""
    return _flock(store, fcntl.LOCK_SH)


def admin_lock(store: Store) -> AbstractContextManager[None]:
    """Exclusive lock: waits until no build holds `build_lock`, and keeps new ones out.

    Do not call from a process that already holds `build_lock` on the same
    cache: flock locks on separate descriptors conflict, so it would wait forever.
    """
    return _flock(store, fcntl.LOCK_EX)


# --- statistics ----------------------------------------------------------------

@dataclass(frozen=True)
class CacheStats:
    entries: int  # action records
    blob_bytes: int  # bytes of all files in cas/
    other_bytes: dict[str, int]  # bytes of views/, logs/, go-build/, tmp/ each (hard links to blobs not counted again)
    last_run: dict[str, Any] | None  # "stats:last" from the executor: {"executed", "cached", "time"}

    @property
    def hit_rate(self) -> float | None:
        """cached / (executed + cached) of the last build; None if unknown or it had no actions."""
        if not isinstance(self.last_run, dict):
            return None
        try:
            executed, cached = int(self.last_run["executed"]), int(self.last_run["cached"])
        except (KeyError, TypeError, ValueError):
            return None
        total = executed + cached
        return cached / total if total > 0 else None


def _tree_bytes(root: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes of the regular files under root, each inode counted once across calls sharing `seen`."""
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:  # removed meanwhile (a running build's scratch)
                continue
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def _action_keys(store: Store) -> list[str]:
    return [k for k in store.actions.iterkeys() if isinstance(k, str) and _ACTION_KEY.fullmatch(k)]


def cache_stats(store: Store) -> CacheStats:
    """Counts and sizes; safe while a build runs (the numbers are then approximate)."""
    seen: set[tuple[int, int]] = set()
    blob_bytes = _tree_bytes(store.cas, seen)  # first, so hard-linked views count as free
    other = {name: _tree_bytes(store.root / name, seen) for name in OTHER_DIRS}
    last_run = store.actions.get("stats:last")
    return CacheStats(entries=len(_action_keys(store)), blob_bytes=blob_bytes, other_bytes=other,
                      last_run=last_run if isinstance(last_run, dict) else None)


# --- sizes ---------------------------------------------------------------------

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?\s*", re.I | re.A)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """"500M", "2G", "1.5GiB", "100k", "123" -> bytes. K/KB/KiB, M/MB/MiB... are all powers of 1024."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ConfigError(f"not a size: {text!r}", where="--max-size",
                          fix="give bytes or a number with a unit, e.g. 500M, 2G, 1.5GiB, 100k (units are powers of 1024)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    return int(Decimal(number) * 1024 ** _POWERS[unit])  # Decimal: exact, truncates fractional bytes


# --- pruning -------------------------------------------------------------------

@dataclass(frozen=True)
class PruneResult:
    removed_entries: int  # action records deleted
    removed_bytes: int  # blob bytes deleted from cas/
    remaining_bytes: int  # blob bytes left in cas/


def _make_writable(tree: Path) -> None:
    """Give the owner rwx on every directory of a tree (never following symlinks), so rmtree can empty it."""
    for dirpath, dirnames, _files in os.walk(tree):  # top-down: each directory is fixed before it is entered
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.lstat(path).st_mode | stat.S_IRWXU)


def _clear_dir(directory: Path) -> None:
    """Delete a directory's contents, keeping the directory (read-only trees included, e.g. Go's module cache)."""
    if not directory.is_dir():
        return
    for entry in list(directory.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            os.chmod(entry, entry.lstat().st_mode | stat.S_IRWXU)
            _make_writable(entry)
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def _blob_sizes(store: Store) -> dict[str, int]:
    """digest -> size of every file in cas/ (named by its digest)."""
    sizes: dict[str, int] = {}
    for shard in store.cas.iterdir():
        if shard.is_dir():
            for blob in shard.iterdir():
                sizes[blob.name] = blob.lstat().st_size
    return sizes


def _record_digests(data: Any) -> set[str] | None:
    """Digests an output record references; None if it is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    digests = set(data["files"].values())
    return digests if all(isinstance(d, str) for d in digests) else None


def _last_used(store: Store, key: str) -> float:
    used = store.actions.get(f"used:{key}")
    return float(used) if isinstance(used, int | float) else -math.inf  # never recorded: oldest


def prune(store: Store, max_bytes: int) -> PruneResult:
    """Shrink cas/ to at most max_bytes, evicting least-recently-used records first.

    Holds `admin_lock` throughout (waits for running builds to finish). Also
    clears views/ and tmp/; clears go-build/ only when max_bytes is 0.
    Records that were already broken (a blob missing, malformed) are removed too.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    with admin_lock(store):
        for name in ("views", "tmp"):
            _clear_dir(store.root / name)
        if max_bytes == 0:
            _clear_dir(store.root / "go-build")

        sizes = _blob_sizes(store)
        records: dict[str, set[str]] = {}
        doomed: list[str] = []  # records to delete, in order
        for key in _action_keys(store):
            digests = _record_digests(store.actions.get(key))
            if digests is None or not digests.issubset(sizes):
                doomed.append(key)  # unusable anyway: Store.get would miss (or fail) on it
            else:
                records[key] = digests

        refs = Counter(d for digests in records.values() for d in digests)  # each blob counted once in bytes
        referenced = sum(sizes[d] for d in refs)
        for key in sorted(records, key=lambda k: (_last_used(store, k), k)):
            if referenced <= max_bytes:
                break
            doomed.append(key)
            for digest in records.pop(key):
                refs[digest] -= 1
                if refs[digest] == 0:
                    del refs[digest]
                    referenced -= sizes[digest]

        # Records first: from here on no record points to a blob about to go.
        for key in doomed:
            store.actions.delete(key)
            store.actions.delete(f"used:{key}")
            (store.root / "logs" / f"{key}.log").unlink(missing_ok=True)
        for key in list(store.actions.iterkeys()):  # "used:" stamps whose record is long gone
            if isinstance(key, str) and key.startswith("used:") and key[5:] not in records:
                store.actions.delete(key)

        removed_bytes = 0
        for digest, size in sizes.items():
            if digest not in refs:
                store.blob_path(digest).unlink(missing_ok=True)
                removed_bytes += size
        for shard in store.cas.iterdir():
            try:
                shard.rmdir()  # only succeeds when empty
            except OSError:
                pass
        return PruneResult(removed_entries=len(doomed), removed_bytes=removed_bytes,
                           remaining_bytes=sum(sizes.values()) - removed_bytes)
