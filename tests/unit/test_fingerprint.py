import os
from pathlib import Path

from kaibuild.fingerprint import RACY_WINDOW_NS, FileDigests, canonical_json, key_of, sha256_file


def test_key_ignores_dict_order_but_not_values() -> None:
    assert key_of({"a": 1, "b": [1, 2]}) == key_of({"b": [1, 2], "a": 1})
    assert key_of({"a": 1}) != key_of({"a": 2})
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_each_file_is_hashed_once_per_run(tmp_path: Path) -> None:
    f = tmp_path / "f.go"
    f.write_text("package f\n")
    digests = FileDigests()
    assert digests.digest(f) == digests.digest(f) == sha256_file(f)
    assert digests.hashed == 1


def old(path: Path) -> None:
    """Backdate a file past the racy window, as an edit made long ago."""
    stamp = path.stat().st_mtime_ns - 10 * RACY_WINDOW_NS
    os.utime(path, ns=(stamp, stamp))


def test_unchanged_stat_reuses_the_earlier_digest(tmp_path: Path) -> None:
    f = tmp_path / "f.go"
    f.write_text("package f\n")
    old(f)
    persist: dict = {}
    FileDigests(persist).digest(f)
    second = FileDigests(persist)
    assert second.digest(f) == sha256_file(f)
    assert second.hashed == 0


def test_edit_with_same_size_and_restored_mtime_is_still_seen(tmp_path: Path) -> None:
    f = tmp_path / "f.go"
    f.write_text("package a\n")
    old(f)
    persist: dict = {}
    FileDigests(persist).digest(f)
    before = f.stat()
    f.write_text("package b\n")  # same size; ctime moves even if mtime is put back
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert FileDigests(persist).digest(f) == sha256_file(f)


def test_recently_modified_file_is_rehashed_not_trusted(tmp_path: Path) -> None:
    f = tmp_path / "f.go"
    f.write_text("package a\n")  # mtime is now: within the racy window of the hash
    persist: dict = {}
    FileDigests(persist).digest(f)
    again = FileDigests(persist)
    again.digest(f)
    assert again.hashed == 1
