"""Offline, end to end on real engines: export a bundle from engine A with its
registry, import it into an empty engine B that cannot reach any registry,
and build there with --offline. Also the bundle's tamper checks at the CLI
and the offline field cases (C1, C4-C7)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from kaibuild.bundle import verify_bundle
from kaibuild.config import DEFAULT_CONFIG
from kaibuild.image_archive import elf_arch, read_images
from tests.conftest import Run, copy_kai_mini_from, kaibuild

pytestmark = pytest.mark.docker
SCHEDULER_IMG = "//services:scheduler [linux/amd64]"
# Tests bundle mockgen and setup-envtest (the others take minutes to
# compile); the real KAI run in the README's status section exports them all.
_SLOW_TOOLS = ("//tools:controller-gen", "//tools:addlicense", "//tools:kustomize")
NO_REGISTRY = {"KAIBUILD_REGISTRY_MIRRORS": "docker.io=127.0.0.1:9/x,nvcr.io=127.0.0.1:9/x,registry.access.redhat.com=127.0.0.1:9/x"}


def fake_elf(arch: str) -> bytes:
    machine = {"amd64": 62, "arm64": 183}[arch]
    return b"\x7fELF\x02\x01\x01" + b"\x00" * 9 + (2).to_bytes(2, "little") + machine.to_bytes(2, "little") + b"\x00" * 100


def downloads_dir(root: Path, arch: str) -> Path:
    """Stand-ins for kubectl and the envtest binaries (dl.k8s.io and GitHub
    are unreachable here), supplied the documented way."""
    folder = root / f"downloads-{arch}"
    folder.mkdir()
    for name in ("kubectl-1.34.0", "kube-apiserver-1.34.0", "etcd-1.34.0", "kubectl-1.35.0"):
        (folder / f"{name}-linux-{arch}").write_bytes(fake_elf(arch))
    return folder


def bundle_config(ws: Path) -> None:
    blocks = DEFAULT_CONFIG.read_text().split("\n[[target]]")
    kept = [b for b in blocks[1:] if not any(f'address = "{t}"' in b for t in _SLOW_TOOLS)]
    (ws / "kaibuild.toml").write_text("\n[[target]]".join([blocks[0], *kept]))


@pytest.fixture(scope="module")
def exported(warm: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tests.conftest import clone_cache

    root = tmp_path_factory.mktemp("offline")
    ws = copy_kai_mini_from(warm[0], root / "kai-mini")
    bundle_config(ws)
    cache = clone_cache(warm[1], root / "cache-a")
    online = kaibuild(ws, "build", "//services:scheduler", "--platform", "linux/amd64", cache_dir=cache)
    assert online.returncode == 0, online.stderr
    env = {"KAIBUILD_DOWNLOAD_DIR": str(downloads_dir(root, "amd64")), "GOFLAGS": "-mod=vendor", "GOOS": "darwin"}  # C4
    run = kaibuild(ws, "export-offline", "--platform", "linux/amd64", "-o", str(root / "bundle"), cache_dir=cache, env=env)
    assert run.returncode == 0, run.stderr
    return {"root": root, "ws": ws, "cache": cache, "bundle": root / "bundle", "online": online, "export": run}


def test_bundle_holds_everything_for_the_platform(exported: dict, tmp_path: Path) -> None:
    bundle = exported["bundle"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["platform"] == "linux/amd64" and manifest["missing"] == []
    refs = {image["reference"] for image in manifest["images"]}
    assert {"golang:1.24.4-bullseye", "nvcr.io/nvidia/distroless/go:v3.2.1", "golang:1.22",
            "registry.access.redhat.com/ubi9/ubi-minimal", "golangci/golangci-lint:v1.64.8",
            "helmunittest/helm-unittest:3.17.2-0.8.1", "//build:builder"} <= refs
    assert all((image["os"], image["architecture"]) == ("linux", "amd64") for image in manifest["images"])
    # Each blob once: the builder's base layers are the golang image's own blobs, stored a single time.
    verify_bundle(bundle, assemble_into=tmp_path)
    by_ref = {image["reference"]: image for image in manifest["images"]}
    [golang] = read_images(tmp_path / by_ref["golang:1.24.4-bullseye"]["path"])
    golang_layers = {layer.rpartition("/")[2] for layer in golang.layers}
    assert golang_layers and golang_layers <= set(by_ref["//build:builder"]["blobs"])
    blobs_dir = bundle / "images" / "blobs" / "sha256"
    assert {p.name for p in blobs_dir.iterdir()} == {b for image in manifest["images"] for b in image["blobs"]}
    stored = sum(p.stat().st_size for p in (bundle / "images").rglob("*") if p.is_file())
    shared_bytes = sum((blobs_dir / layer).stat().st_size for layer in golang_layers)
    assert stored <= sum(image["size"] for image in manifest["images"]) - shared_bytes
    assert (bundle / "source" / "vendor" / "modules.txt").is_file() and (bundle / "source" / "go.mod").is_file()
    assert not (bundle / "source" / ".kaibuild").exists() and not (bundle / "source" / "dist").exists()
    assert elf_arch((bundle / "tools" / "mockgen").read_bytes()[:64]) == "amd64"
    assert {"kube-apiserver", "etcd", "kubectl"} <= {p.name for p in (bundle / "envtest").iterdir()}
    assert manifest["versions"]["envtest"] == "1.34.0"
    for rel, entry in manifest["files"].items():
        assert (bundle / rel).stat().st_size == entry["size"]


def test_second_export_is_incremental(exported: dict) -> None:
    env = {"KAIBUILD_DOWNLOAD_DIR": str(exported["root"] / "downloads-amd64")}
    run = kaibuild(exported["ws"], "export-offline", "--platform", "linux/amd64", "-o", str(exported["root"] / "bundle2"),
                   "--archive", cache_dir=exported["cache"], env=env)
    assert run.returncode == 0, run.stderr
    assert run.nodes("finished") == set()
    assert (exported["root"] / "bundle2.tar.zst").is_file()
    # -o NAME.tar.zst means an archive, not a directory of that name; and archives are reproducible.
    again = kaibuild(exported["ws"], "export-offline", "--platform", "linux/amd64", "-o", str(exported["root"] / "b3.tar.zst"),
                     cache_dir=exported["cache"], env=env)
    assert again.returncode == 0, again.stderr
    assert (exported["root"] / "b3.tar.zst").read_bytes() == (exported["root"] / "bundle2.tar.zst").read_bytes()


def test_import_and_offline_build_on_an_empty_engine_without_registry(exported: dict, second_engine: dict[str, str]) -> None:
    root = exported["root"]
    env = {**second_engine, **NO_REGISTRY}
    target_ws = root / "offline-ws"
    # The README's flow: the default cache, which import makes inside the (empty) workspace.
    imported = kaibuild(root, "import-offline", str(root / "bundle2.tar.zst"), "--workspace", str(target_ws),
                        "--platform", "linux/amd64", env=env)
    assert imported.returncode == 0, imported.stderr
    assert (target_ws / ".kaibuild" / "cache").is_dir() and "source copied" in imported.stderr
    assert (target_ws / "go.mod").is_file() and (target_ws / "vendor" / "modules.txt").is_file()
    assert (target_ws / "bin" / "mockgen").is_file()

    run = kaibuild(target_ws, "build", "//services:scheduler", "--offline", "--platform", "linux/amd64", env=env)
    assert run.returncode == 0, run.stderr
    # Base images and the builder come from the bundle; only the project's own code builds.
    assert run.nodes("finished") == {"//build:vendor", "//services:scheduler-bin [linux/amd64]", SCHEDULER_IMG}
    online = {e["node"]: e["digest"] for e in exported["online"].events if e["event"] in ("cached", "finished")}
    offline = {e["node"]: e["digest"] for e in run.events if e["event"] in ("cached", "finished")}
    # Reproducible: the same binary and the same image, byte for byte.
    assert offline["//services:scheduler-bin [linux/amd64]"] == online["//services:scheduler-bin [linux/amd64]"]
    assert offline[SCHEDULER_IMG] == online[SCHEDULER_IMG]

    crd = kaibuild(target_ws, "build", "//deployments:crd-upgrader", "--offline", "--platform", "linux/amd64", env=env)
    assert crd.returncode == 0, crd.stderr  # C7: the bundled kubectl replaces the curl step

    # C6: the envtest binaries for the bundle's platform sit where
    # `setup-envtest use 1.34.0 -i --bin-dir bin` (installed-only) looks.
    envtest = target_ws / "bin" / "k8s" / "1.34.0-linux-amd64"
    assert {p.name for p in envtest.iterdir()} == {"kube-apiserver", "etcd", "kubectl"}
    assert all(elf_arch(p.read_bytes()[:64]) == "amd64" for p in envtest.iterdir())
    # ...and the bundled setup-envtest finds them there in a network namespace with no network at all.
    found = subprocess.run(["unshare", "--net", "bin/setup-envtest", "use", "1.34.0", "-i", "--bin-dir", "bin", "-p", "path"],
                           cwd=target_ws, capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "bin/k8s/1.34.0-linux-amd64"


def test_offline_build_fails_fast_naming_a_url_it_would_fetch(exported: dict, tmp_path: Path) -> None:
    ws = copy_kai_mini_from(exported["ws"], tmp_path / "ws")
    config = ws / "kaibuild.toml"
    config.write_text(config.read_text().replace(
        'replace_steps = [{ contains = "dl.k8s.io/release", with = "COPY --chmod=0755 kubectl /usr/bin/kubectl" }]\n', ""))
    shutil.copytree(exported["bundle"] / "source" / "vendor", ws / "vendor")
    run = kaibuild(ws, "build", "//deployments:crd-upgrader", "--offline", "--platform", "linux/amd64",
                   cache_dir=exported["cache"], env=NO_REGISTRY)
    assert run.returncode == 2  # found while planning: nothing ran
    assert "https://dl.k8s.io/release/v1.35.0/bin/linux/amd64/kubectl" in run.stderr
    assert "--offline" in run.stderr and run.nodes("started") == set()


def test_offline_build_fails_fast_naming_an_image_the_bundle_lacks(exported: dict, tmp_path: Path) -> None:
    ws = copy_kai_mini_from(exported["ws"], tmp_path / "ws")
    dockerfile = ws / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("FROM nvcr.io/nvidia/distroless/go:v3.2.1 AS prod",
                                                         "FROM gcr.io/distroless/static:nonroot AS prod"))
    shutil.copytree(exported["bundle"] / "source" / "vendor", ws / "vendor")
    run = kaibuild(ws, "build", "//services:scheduler", "--offline", "--platform", "linux/amd64",
                   cache_dir=exported["cache"], env=NO_REGISTRY)
    assert run.returncode == 1
    [failure] = [e for e in run.events if e["event"] == "failed"]
    assert "gcr.io/distroless/static:nonroot" in failure["error"] and "--offline forbids" in failure["error"]
    assert run.summary["executed"] == 0 and run.nodes("started") == set()  # before any build step ran


def _pin_an_older_uuid(ws: Path) -> str:
    go_mod = ws / "go.mod"
    assert "github.com/google/uuid v1.6.0" in go_mod.read_text()
    go_mod.write_text(go_mod.read_text().replace("github.com/google/uuid v1.6.0", "github.com/google/uuid v1.5.0"))
    return "does not match go.mod: github.com/google/uuid@v1.5.0: is explicitly required in go.mod"


def _lose_a_vendored_module(ws: Path) -> str:
    shutil.rmtree(ws / "vendor" / "github.com" / "google")
    return "lacks a package the module imports: pkg/shared/shared.go"


@pytest.mark.parametrize("edit", [_pin_an_older_uuid, _lose_a_vendored_module], ids=["go.mod edited", "vendor/ pruned"])
def test_offline_build_refuses_a_vendor_tree_out_of_step_with_go_mod(exported: dict, tmp_path: Path,
                                                                   edit: Callable[[Path], str]) -> None:
    ws = copy_kai_mini_from(exported["ws"], tmp_path / "ws")
    shutil.copytree(exported["bundle"] / "source" / "vendor", ws / "vendor")
    expected = edit(ws)
    run = kaibuild(ws, "build", "//services:scheduler", "--offline", "--platform", "linux/amd64",
                   cache_dir=exported["cache"], env=NO_REGISTRY)
    assert run.returncode != 0
    failure = next(e for e in run.events if e["event"] == "failed")
    assert failure["node"] == "//build:vendor"
    assert expected in failure["error"], failure["error"]
    assert str(ws / "go.mod") in failure["error"] and str(ws / "vendor" / "modules.txt") in failure["error"]
    assert "//services:scheduler-bin [linux/amd64]" not in run.nodes("started")


def tree_state(root: Path) -> dict[str, str]:
    """Every path under root with its content's sha256 (or its link target, or 'dir')."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def hostile_archive(path: Path, bundle: Path) -> Path:
    """A .tar.zst that starts like a real bundle, then has a member that climbs out."""
    with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as stream, \
            tarfile.open(fileobj=stream, mode="w|") as tar:
        tar.add(bundle / "manifest.json", arcname="manifest.json")
        evil = tarfile.TarInfo("../evil")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
    return path


def packed(bundle: Path, path: Path) -> Path:
    """The bundle as `export-offline --archive` writes it: manifest.json first."""
    with open(path, "wb") as raw, zstandard.ZstdCompressor().stream_writer(raw) as stream, \
            tarfile.open(fileobj=stream, mode="w|") as tar:
        tar.add(bundle / "manifest.json", arcname="manifest.json")
        for file in sorted(p for p in bundle.rglob("*") if p.is_file() and p != bundle / "manifest.json"):
            tar.add(file, arcname=file.relative_to(bundle).as_posix())
    return path


def _flip_a_blob_byte(bundle: Path, manifest: dict) -> tuple[Path, list[str], str]:
    distroless = next(i for i in manifest["images"] if i["reference"] == "nvcr.io/nvidia/distroless/go:v3.2.1")
    victim = max((bundle / "images" / "blobs" / "sha256" / b for b in distroless["blobs"]), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return bundle, [], f"images/blobs/sha256/{victim.name}: sha256 mismatch"


def _flip_a_byte_then_pack(bundle: Path, manifest: dict) -> tuple[Path, list[str], str]:
    _, flags, expected = _flip_a_blob_byte(bundle, manifest)
    archive = packed(bundle, bundle.with_name("bundle.tar.zst"))
    return archive, flags, f"{archive}: member {expected}"  # the user's file, not kaibuild's scratch copy


def _delete_a_tool(bundle: Path, manifest: dict) -> tuple[Path, list[str], str]:
    (bundle / "tools" / "mockgen").unlink()
    return bundle, [], "tools/mockgen"


def _ask_for_another_platform(bundle: Path, manifest: dict) -> tuple[Path, list[str], str]:
    return bundle, ["--platform", "linux/arm64"], "linux/arm64"


# Each edits a copy of the bundle; returns what to import, the import flags and what the error must name.
TAMPERING = {"flipped byte": _flip_a_blob_byte, "flipped byte in an archive": _flip_a_byte_then_pack,
             "missing file": _delete_a_tool, "image for another platform": _ask_for_another_platform}


@pytest.mark.parametrize("case", [*TAMPERING, "hostile archive member"])
def test_tampered_bundle_is_refused_and_nothing_changes(exported: dict, second_engine: dict[str, str], tmp_path: Path,
                                                        case: str) -> None:
    bundle = tmp_path / "bundle"
    if case == "hostile archive member":
        bundle, (flags, expected) = hostile_archive(tmp_path / "evil.tar.zst", exported["bundle"]), ([], "'../evil'")
    else:
        shutil.copytree(exported["bundle"], bundle)
        bundle, flags, expected = TAMPERING[case](bundle, json.loads((bundle / "manifest.json").read_text()))
    # A workspace that already has the project and an older tool: import must not touch either.
    ws = copy_kai_mini_from(exported["ws"], tmp_path / "ws")
    (ws / "bin").mkdir()
    (ws / "bin" / "mockgen").write_bytes(b"an older mockgen")
    before, parent_before = tree_state(ws), sorted(p.name for p in tmp_path.iterdir())
    docker = {"PATH": "/usr/bin:/bin", **second_engine}
    images_before = subprocess.run(["docker", "images", "-aq"], capture_output=True, text=True, env=docker).stdout.split()

    run = kaibuild(tmp_path, "import-offline", str(bundle), "--workspace", str(ws), *flags, env=second_engine)

    assert run.returncode == 2, run.stderr
    assert expected in run.stderr, run.stderr
    assert tree_state(ws) == before  # not even a cache directory
    assert sorted(p.name for p in tmp_path.iterdir()) == parent_before and not (tmp_path.parent / "evil").exists()
    after = subprocess.run(["docker", "images", "-aq"], capture_output=True, text=True, env=docker).stdout.split()
    assert sorted(after) == sorted(images_before)


def test_import_into_the_checkout_repairs_its_vendor_and_refuses_one_with_another_go_mod(
        exported: dict, second_engine: dict[str, str], tmp_path: Path) -> None:
    bundle = exported["bundle"]
    ws = copy_kai_mini_from(exported["ws"], tmp_path / "ws")  # the checkout the bundle came from
    shutil.copytree(bundle / "source" / "vendor", ws / "vendor")
    shutil.rmtree(ws / "vendor" / "github.com" / "google")  # damaged since the last import
    run = kaibuild(tmp_path, "import-offline", str(bundle), "--workspace", str(ws), env=second_engine)
    assert run.returncode == 0, run.stderr
    assert "vendor/ in " in run.stderr and "replaced by the bundle's" in run.stderr
    assert tree_state(ws / "vendor") == tree_state(bundle / "source" / "vendor")
    assert not [p for p in ws.iterdir() if p.name.startswith(".kaibuild-source-")]

    other = copy_kai_mini_from(exported["ws"], tmp_path / "other")
    (other / "go.mod").write_text((other / "go.mod").read_text().replace("module example.com/kai-mini", "module example.com/other"))
    before = tree_state(other)
    refused = kaibuild(tmp_path, "import-offline", str(bundle), "--workspace", str(other), env=second_engine)
    assert refused.returncode == 2
    assert f"{other / 'go.mod'}: go.mod differs from the one the bundle was exported from" in refused.stderr
    assert tree_state(other) == before


def test_c1_partial_local_pull_does_not_leak_into_the_bundle(exported: dict, docker_env: dict, tmp_path: Path) -> None:
    # Only the arm64 half of a two-platform tag is in the local store; the
    # bundle for amd64 must still hold a complete amd64 image, or fail.
    registry = docker_env["registry"]
    subprocess.run(["docker", "pull", "--platform", "linux/arm64", f"{registry}/nvcr.io/nvidia/distroless/go:v3.2.1"],
                   capture_output=True, check=True)
    manifest = json.loads((exported["bundle"] / "manifest.json").read_text())
    entry = next(i for i in manifest["images"] if i["reference"] == "nvcr.io/nvidia/distroless/go:v3.2.1")
    verify_bundle(exported["bundle"], assemble_into=tmp_path)
    [image] = read_images(tmp_path / entry["path"])
    assert image.architecture == "amd64" and image.manifest_digest == entry["digest"]


def test_c5_go_line_newer_than_local_go_names_both_versions(exported: dict, tmp_path: Path) -> None:
    ws = copy_kai_mini_from(exported["ws"], tmp_path / "ws")
    go_mod = ws / "go.mod"
    go_mod.write_text(go_mod.read_text().replace("go 1.24.4", "go 1.99.0"))
    shutil.copytree(exported["bundle"] / "source" / "vendor", ws / "vendor")
    run: Run = kaibuild(ws, "build", "//services:scheduler", "--offline", "--platform", "linux/amd64",
                        cache_dir=exported["cache"], env=NO_REGISTRY)
    assert run.returncode != 0
    failure = next(e for e in run.events if e["event"] == "failed")
    assert "1.99.0" in failure["error"] and "1.24.4" in failure["error"]


def test_export_for_arm64_from_an_amd64_host_is_all_arm64(warm: tuple[Path, Path], tmp_path: Path,
                                                         second_engine: dict[str, str]) -> None:
    from tests.conftest import clone_cache

    ws = copy_kai_mini_from(warm[0], tmp_path / "kai-mini")
    bundle_config(ws)
    downloads = downloads_dir(tmp_path, "arm64")  # given by flag here, by KAIBUILD_DOWNLOAD_DIR elsewhere
    run = kaibuild(ws, "export-offline", "--platform", "linux/arm64", "-o", str(tmp_path / "bundle"),
                   "--download-dir", str(downloads), cache_dir=clone_cache(warm[1], tmp_path / "cache"))
    assert run.returncode == 0, run.stderr
    bundle = tmp_path / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["platform"] == "linux/arm64"
    assert "//build:builder" in {image["reference"] for image in manifest["images"]}
    verify_bundle(bundle, assemble_into=tmp_path / "assembled")
    for image in manifest["images"]:
        [found] = read_images(tmp_path / "assembled" / image["path"])
        assert found.architecture == "arm64", image["reference"]
    for folder in ("tools", "envtest"):
        for binary in (bundle / folder).iterdir():
            assert elf_arch(binary.read_bytes()[:64]) == "arm64", binary
    # Imported on this amd64 machine, it says what it is for and what building here would need.
    imported = kaibuild(tmp_path, "import-offline", str(bundle), "--workspace", str(tmp_path / "arm-ws"), env=second_engine)
    assert imported.returncode == 0, imported.stderr
    assert ("this bundle is for linux/arm64 machines and this one is linux/amd64" in imported.stderr
            and "needs a bundle exported for linux/amd64" in imported.stderr)
