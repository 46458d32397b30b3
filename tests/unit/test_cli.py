from pathlib import Path

import pytest

from kaibuild.cli import main


def test_unknown_target_exits_2_and_points_to_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "go.mod").write_text("module example.com/x\n")
    code = main(["build", "//services:nope", "--workspace", str(tmp_path), "--cache-dir", str(tmp_path / "c")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no target matches //services:nope" in err and "kaibuild list" in err


def test_bad_platform_names_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "go.mod").write_text("module example.com/x\n")
    code = main(["build", "//services:scheduler", "--platform", "linux/sparc", "--workspace", str(tmp_path),
                 "--cache-dir", str(tmp_path / "c")])
    assert code == 2
    assert "--platform: unknown architecture 'sparc'" in capsys.readouterr().err


def test_list_shows_one_target_per_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "//services:scheduler\tdocker_image" in out and "//services:binder-bin\tgo_binary" in out


def test_cache_stats_and_prune_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kaibuild.cache import OutputRecord, Store

    store = Store(tmp_path / "c")
    out = store.temp_dir("t-")
    (out / "f").write_text("x" * 1000)
    files, executable = store.put_tree(out)
    store.put("a" * 64, OutputRecord(files=files, executable=executable))
    store.actions.set("stats:last", {"executed": 1, "cached": 3})
    store.close()
    assert main(["cache", "stats", "--workspace", str(tmp_path), "--cache-dir", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert "entries:     1" in text and "1000 B" in text and "hit rate 75%" in text
    assert main(["cache", "prune", "--max-size", "0", "--workspace", str(tmp_path), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert main(["cache", "prune", "--max-size", "lots", "--workspace", str(tmp_path), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "--max-size" in capsys.readouterr().err


def test_build_outside_a_go_module_names_go_mod_and_leaves_no_cache(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["build", "//build:vendor", "--workspace", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'go.mod'}: {tmp_path} is not a Go module's root (no go.mod)" in err and "--workspace" in err
    assert list(tmp_path.iterdir()) == []  # no .kaibuild/ made


@pytest.mark.parametrize("kind", ["a regular file", "a directory of other things"])
def test_import_refuses_a_workspace_it_cannot_fill_before_reading_the_bundle(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    target = tmp_path / "ws"
    if kind == "a regular file":
        target.write_text("notes")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("notes")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    # The bundle does not even exist: the workspace is refused first, so nothing was read or written.
    code = main(["import-offline", str(tmp_path / "no-bundle"), "--workspace", str(target)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--workspace {target}" in err and "import into a new or empty directory" in err
    assert ("is not a directory" if kind == "a regular file" else "no go.mod") in err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
