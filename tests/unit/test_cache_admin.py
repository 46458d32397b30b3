"""Cache administration on a real Store: stats, sizes, LRU pruning, locking (no Docker)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaibuild.cache import OutputRecord, Store
from kaibuild.cache_admin import CacheStats, admin_lock, build_lock, cache_stats, parse_size, prune
from kaibuild.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "cache")
    yield s
    s.close()


def make_record(store: Store, name: str, files: dict[str, bytes], used: float | None = None) -> str:
    """Store real files as an action's outputs, with a log; returns the action key."""
    key = hashlib.sha256(name.encode()).hexdigest()
    work = store.temp_dir("out-")
    for rel, content in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(content)
    digests, executable = store.put_tree(work)
    store.put(key, OutputRecord(files=digests, executable=executable, meta={"name": name}))
    if used is None:
        store.actions.delete(f"used:{key}")
    else:
        store.actions.set(f"used:{key}", used)
    (store.root / "logs").mkdir(exist_ok=True)
    (store.root / "logs" / f"{key}.log").write_text(f"log of {name}\n")
    return key


def digest_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def blobs(store: Store) -> set[str]:
    return {p.name for p in store.cas.rglob("*") if p.is_file()}


# Three records, least recently used first; A and C share one blob.
SHARED, A_ONLY, B_ONLY, C_ONLY = b"s" * 100, b"a" * 1000, b"b" * 200, b"c" * 300


def abc(store: Store) -> tuple[str, str, str]:
    a = make_record(store, "A", {"shared.txt": SHARED, "a.bin": A_ONLY}, used=1.0)
    b = make_record(store, "B", {"b.bin": B_ONLY}, used=2.0)
    c = make_record(store, "C", {"sub/shared.txt": SHARED, "c.bin": C_ONLY}, used=3.0)
    return a, b, c


# --- stats ---------------------------------------------------------------------

def test_stats_counts_entries_bytes_and_hit_rate(store: Store) -> None:
    a, _b, _c = abc(store)
    store.actions.set("last:node", {"key": a})  # bookkeeping keys are not entries
    store.actions.set("pin:img@linux/amd64", "sha256:x")
    store.actions.set("stats:last", {"executed": 1, "cached": 3, "time": 12.5})
    views = store.root / "views" / "vendor-x"
    views.mkdir(parents=True)
    os.link(store.blob_path(digest_of(A_ONLY)), views / "a.bin")  # hard link: no extra bytes
    (views / "own.txt").write_bytes(b"v" * 7)
    (store.root / "go-build").mkdir()
    (store.root / "go-build" / "x").write_bytes(b"g" * 11)

    stats = cache_stats(store)
    assert stats.entries == 3
    assert stats.blob_bytes == len(SHARED) + len(A_ONLY) + len(B_ONLY) + len(C_ONLY)  # shared blob once
    assert stats.other_bytes["views"] == 7
    assert stats.other_bytes["go-build"] == 11
    assert stats.other_bytes["logs"] == sum(len(f"log of {n}\n") for n in "ABC")
    assert stats.other_bytes["tmp"] == 0
    assert stats.last_run == {"executed": 1, "cached": 3, "time": 12.5}
    assert stats.hit_rate == 0.75


def test_stats_of_an_empty_cache(store: Store) -> None:
    stats = cache_stats(store)
    assert (stats.entries, stats.blob_bytes, stats.last_run, stats.hit_rate) == (0, 0, None, None)
    assert stats.other_bytes == {"views": 0, "logs": 0, "go-build": 0, "tmp": 0}


@pytest.mark.parametrize("last_run", [None, {"executed": 0, "cached": 0, "time": 1.0}, {"time": 1.0}])
def test_hit_rate_unknown(last_run: dict | None) -> None:
    assert CacheStats(0, 0, {}, last_run).hit_rate is None


# --- sizes ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "size"), [
    ("123", 123), ("0", 0), ("5B", 5), ("100k", 100 * 1024), ("100K", 100 * 1024), ("1KB", 1024), ("1kib", 1024),
    ("500M", 500 * 1024**2), ("2MB", 2 * 1024**2), ("2G", 2 * 1024**3), ("2GB", 2 * 1024**3),
    ("1.5GiB", 3 * 1024**3 // 2), (" 2 G ", 2 * 1024**3), (".5K", 512), ("1T", 1024**4),
])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "  ", "abc", "G", "-1", "1e3", "5X", "5Gi", "1.2.3", "nan", "inf", "5 G B", "1,5G"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_size(text)
    assert error.value.where == "--max-size"
    assert error.value.fix and "500M" in error.value.fix


# --- prune ---------------------------------------------------------------------

def assert_whole(store: Store, *keys: str) -> None:
    for key in keys:
        assert store.get(key) is not None, key


def test_prune_evicts_least_recently_used_and_their_orphan_blobs(store: Store) -> None:
    a, b, c = abc(store)
    store.actions.set(f"last:{a}", {"key": a})
    result = prune(store, 700)  # all is 1600 bytes; without A 600

    assert (result.removed_entries, result.removed_bytes, result.remaining_bytes) == (1, 1000, 600)
    assert store.actions.get(a) is None and store.actions.get(f"used:{a}") is None
    assert not (store.root / "logs" / f"{a}.log").exists()
    assert (store.root / "logs" / f"{b}.log").exists()
    assert blobs(store) == {digest_of(x) for x in (SHARED, B_ONLY, C_ONLY)}  # shared blob kept for C
    assert_whole(store, b, c)
    assert cache_stats(store).blob_bytes == 600


def test_prune_evicts_until_the_budget_fits(store: Store) -> None:
    a, b, c = abc(store)
    result = prune(store, 450)  # A and B must go: C alone is 400

    assert (result.removed_entries, result.removed_bytes, result.remaining_bytes) == (2, 1200, 400)
    assert store.actions.get(a) is None and store.actions.get(b) is None
    assert blobs(store) == {digest_of(SHARED), digest_of(C_ONLY)}
    assert_whole(store, c)


def test_prune_uses_recency_not_insertion_order(store: Store) -> None:
    a, b, c = abc(store)
    store.get(a)  # A is used now: the most recent
    result = prune(store, 1200)  # A+C = 1400 > 1200, so B and C go
    assert result.removed_entries == 2
    assert_whole(store, a)
    assert store.actions.get(b) is None and store.actions.get(c) is None
    assert blobs(store) == {digest_of(SHARED), digest_of(A_ONLY)}


def test_prune_treats_missing_use_time_as_oldest(store: Store) -> None:
    old = make_record(store, "old", {"x": b"x" * 50}, used=1.0)
    never = make_record(store, "never", {"y": b"y" * 50}, used=None)
    result = prune(store, 60)
    assert result.removed_entries == 1
    assert store.actions.get(never) is None
    assert_whole(store, old)


def test_prune_with_huge_budget_only_clears_tmp_and_views(store: Store) -> None:
    a, b, c = abc(store)
    bookkeeping = {f"last:{a}": {"key": a}, "pin:img@linux/amd64": "sha256:x", "stat:/w/f.go": [1, 2, "d"],
                   "stats:last": {"executed": 0, "cached": 3, "time": 1.0}}
    for key, value in bookkeeping.items():
        store.actions.set(key, value)
    locked = store.tmp / "gomod" / "pkg"  # read-only tree, like Go's module cache
    locked.mkdir(parents=True)
    (locked / "f.go").write_text("package p\n")
    os.chmod(locked / "f.go", 0o444)
    os.chmod(locked, 0o555)
    (store.tmp / "sealed").mkdir()
    (store.tmp / "sealed" / "inner").mkdir()
    os.chmod(store.tmp / "sealed", 0o000)  # not even readable
    (store.tmp / "outside").symlink_to(store.root / "go-build")  # a symlink is removed, never followed
    view = store.root / "views" / "vendor-1"
    view.mkdir(parents=True)
    os.link(store.blob_path(digest_of(B_ONLY)), view / "b.bin")
    (store.root / "go-build").mkdir()
    (store.root / "go-build" / "cache").write_bytes(b"g")
    before = blobs(store)

    result = prune(store, parse_size("10G"))

    assert (result.removed_entries, result.removed_bytes, result.remaining_bytes) == (0, 0, 1600)
    assert list(store.tmp.iterdir()) == [] and list((store.root / "views").iterdir()) == []
    assert (store.root / "go-build" / "cache").exists()
    assert blobs(store) == before
    assert all((store.root / "logs" / f"{k}.log").exists() for k in (a, b, c))
    assert {k: store.actions.get(k) for k in bookkeeping} == bookkeeping
    assert_whole(store, a, b, c)


def test_prune_removes_blobs_left_by_a_crash_and_broken_records(store: Store) -> None:
    kept = make_record(store, "kept", {"k": b"k" * 10}, used=5.0)
    broken = make_record(store, "broken", {"gone": b"g" * 20, "k": b"k" * 10}, used=9.0)
    store.blob_path(digest_of(b"g" * 20)).unlink()  # damaged cache: a record pointing to a missing blob
    orphan = store.temp_dir("crash-") / "half"
    orphan.write_bytes(b"o" * 30)
    store.put_file(orphan)  # a crash between storing outputs and writing the record

    result = prune(store, parse_size("1G"))
    assert (result.removed_entries, result.removed_bytes, result.remaining_bytes) == (1, 30, 10)
    assert store.actions.get(broken) is None
    assert blobs(store) == {digest_of(b"k" * 10)}
    assert_whole(store, kept)


def test_prune_to_zero_empties_the_cache_but_keeps_bookkeeping(store: Store) -> None:
    abc(store)
    store.actions.set("pin:img@linux/amd64", "sha256:x")
    (store.root / "go-build").mkdir()
    (store.root / "go-build" / "cache").write_bytes(b"g")

    result = prune(store, 0)
    assert (result.removed_entries, result.removed_bytes, result.remaining_bytes) == (3, 1600, 0)
    assert blobs(store) == set() and list((store.root / "go-build").iterdir()) == []
    stats = cache_stats(store)
    assert (stats.entries, stats.blob_bytes) == (0, 0)
    assert store.actions.get("pin:img@linux/amd64") == "sha256:x"
    assert not any(str(k).startswith("used:") for k in store.actions.iterkeys())


def test_prune_rejects_a_negative_budget(store: Store) -> None:
    with pytest.raises(ValueError):
        prune(store, -1)


# --- locking -------------------------------------------------------------------

HOLD_BUILD_LOCK = """
import sys
from pathlib import Path
from kaibuild.cache import Store
from kaibuild.cache_admin import build_lock
store = Store(Path(sys.argv[1]))
with build_lock(store):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_admin_lock_and_prune_wait_for_a_running_build(store: Store) -> None:
    keep = make_record(store, "keep", {"f": b"f"}, used=1.0)
    scratch = store.temp_dir("running-") / "work.o"
    scratch.write_bytes(b"in use")
    child = subprocess.Popen([sys.executable, "-c", HOLD_BUILD_LOCK, str(store.root)], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "locked"
        fd = os.open(store.root / "lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # no exclusive lock while a build runs
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # but another build may run alongside
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

        acquired = threading.Event()

        def admin() -> None:
            with admin_lock(store):
                acquired.set()

        results = []
        threads = [threading.Thread(target=admin), threading.Thread(target=lambda: results.append(prune(store, 0)))]
        for thread in threads:
            thread.start()
        assert not acquired.wait(0.5)  # blocked behind the build
        assert scratch.exists() and store.actions.get(keep) is not None  # prune has not touched anything

        child.stdin.write("done\n")
        child.stdin.flush()
        assert acquired.wait(10)
        for thread in threads:
            thread.join(10)
        assert results and results[0].removed_entries == 1
        assert not scratch.exists()
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_build_lock_waits_for_admin(store: Store) -> None:
    started = threading.Event()

    def build() -> None:
        with build_lock(store):
            started.set()

    with admin_lock(store):
        thread = threading.Thread(target=build)
        thread.start()
        assert not started.wait(0.3)
    assert started.wait(10)
    thread.join(10)
