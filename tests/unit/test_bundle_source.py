"""What export-offline puts in source/: the files git tracks under the
workspace (wherever the repository's root is), else every file but
generated ones and bundles; and the kaibuild.toml the export used."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kaibuild.cache import Store
from kaibuild.config import Config
from kaibuild.context import Context, Options
from kaibuild.offline import export_offline
from kaibuild.platform import Platform
from kaibuild.report import RecordingReporter

AMD64 = Platform.parse("linux/amd64")


@pytest.fixture(autouse=True)
def no_go_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("rules.gotool.go_version", lambda: "go1.24.4")


def export(workspace: Path, dest: Path, *, config: Path | None = None, archive: bool = False) -> set[str]:
    """Export a bundle with no targets (source/ and the manifest only); the files under source/."""
    config = Config(path=config or workspace / "kaibuild.toml", workspace=workspace, default_platforms=[AMD64],
                    dist_dir="dist", mirrors={})
    store = Store(workspace / ".kaibuild" / "cache")
    try:
        outcome = export_offline(Context(config, store, {}, Options()), AMD64, dest, archive=archive,
                                 allow_missing=False, reporter=RecordingReporter())
    finally:
        store.close()
    assert outcome.path is not None
    if archive:
        return set()
    return {p.relative_to(dest / "source").as_posix() for p in (dest / "source").rglob("*") if p.is_file()}


def module(root: Path) -> Path:
    (root / "cmd").mkdir(parents=True)
    (root / "go.mod").write_text("module example.com/m\n")
    (root / "cmd" / "main.go").write_text("package main\n")
    (root / "kaibuild.toml").write_text("")
    return root


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_a_workspace_below_a_repository_root_takes_only_its_tracked_files(tmp_path: Path) -> None:
    ws = module(tmp_path / "repo" / "examples" / "mini")
    (tmp_path / "repo" / "README.md").write_text("the repository's, not the workspace's")
    git("init", "-q", cwd=tmp_path / "repo")
    git("add", ".", cwd=tmp_path / "repo")
    git("commit", "-qm", "x", cwd=tmp_path / "repo")
    (ws / "untracked.txt").write_text("not tracked")
    (ws / ".env.local").write_text("SECRET=1")

    files = export(ws, ws / "offline-bundle")
    assert files == {"go.mod", "cmd/main.go", "kaibuild.toml"}
    # A second export, to another name inside the workspace, does not take the first.
    assert export(ws, ws / "mybundle") == files


def test_outside_git_every_file_but_bundles_and_their_temp_dirs(tmp_path: Path) -> None:
    ws = module(tmp_path / "ws")
    (ws / ".env.local").write_text("SECRET=1")
    export(ws, ws / "first")  # an earlier bundle, under a name kaibuild does not know
    export(ws, ws / "packed", archive=True)  # and an earlier archive
    (ws / ".second.tmp-x1y2").mkdir()  # what a killed export leaves
    (ws / ".second.tmp-x1y2" / "manifest.json").write_text("{}")
    (ws / "deploy").mkdir()
    (ws / "deploy" / "manifest.json").write_text('{"not": "a bundle"}')  # a user's own manifest.json is source

    files = export(ws, ws / "second")
    assert files == {"go.mod", "cmd/main.go", "kaibuild.toml", ".env.local", "deploy/manifest.json"}


def test_a_workspace_without_its_own_config_gets_the_one_export_used(tmp_path: Path) -> None:
    ws = module(tmp_path / "ws")
    (ws / "kaibuild.toml").unlink()
    default = tmp_path / "kaibuild-default.toml"
    default.write_text("[workspace]\ndist_dir = \"dist\"\n")
    files = export(ws, tmp_path / "bundle", config=default)
    assert "kaibuild.toml" in files
    assert (tmp_path / "bundle" / "source" / "kaibuild.toml").read_text() == default.read_text()
