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
    code = main(["build", "//services:scheduler", "--platform", "linux/sparc", "--workspace", str(tmp_path),
                 "--cache-dir", str(tmp_path / "c")])
    assert code == 2
    assert "--platform: unknown architecture 'sparc'" in capsys.readouterr().err


def test_list_shows_one_target_per_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--workspace", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "//services:scheduler\tdocker_image" in out and "//services:binder-bin\tgo_binary" in out
