"""The download rule, against a local HTTP server (no Docker, no outside network)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kaibuild.address import Address
from kaibuild.cache import Store
from kaibuild.config import Config, TargetSpec
from kaibuild.context import Context, Options
from kaibuild.errors import ConfigError
from kaibuild.executor import Result, execute
from kaibuild.graph import build_graph
from kaibuild.platform import Platform
from kaibuild.report import RecordingReporter
from rules.download import (
    DownloadRule,
    Source,
    expand,
    local_names,
    mirror_urls,
    plan_sources,
)

AMD64 = Platform.parse("linux/amd64")
ARM64 = Platform.parse("linux/arm64")
TARGET = "//tools:kubectl"


def fake_elf(machine: int, size: int = 256) -> bytes:
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")
    return header + bytes(size - len(header))


ELF_AMD64 = fake_elf(62)
ELF_ARM64 = fake_elf(183)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a bounded local HTTP server ---------------------------------------------------


class Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        requests = self.requests

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def put(self, rel: str, data: bytes) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return f"{self.base}/{rel}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "www").mkdir()
    srv = Server(tmp_path / "www")
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=10)


@pytest.fixture(autouse=True)
def no_download_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAIBUILD_DOWNLOAD_DIR", raising=False)


# --- running the rule through the real engine ------------------------------------------


def make(tmp_path: Path, settings: dict[str, Any], *, offline: bool = False) -> Context:
    config = Config(path=tmp_path / "kaibuild.toml", workspace=tmp_path, default_platforms=[AMD64],
                    dist_dir="dist", mirrors={})
    config.targets[Address.parse(TARGET)] = TargetSpec(Address.parse(TARGET), "download", settings, "kaibuild.toml:7")
    return Context(config, Store(tmp_path / "cache"), {"download": DownloadRule()}, Options(offline=offline))


def build(ctx: Context, platform: Platform = AMD64) -> tuple[Result, RecordingReporter]:
    reporter = RecordingReporter()
    node = ctx.target_node(Address.parse(TARGET), platform)
    result = execute(build_graph([node], ctx), ctx, reporter)
    return result, reporter


def failure(ctx: Context, platform: Platform = AMD64) -> str:
    """Build expecting a failure; the error text the reporter got."""
    messages: list[str] = []

    class Catching(RecordingReporter):
        def failed(self, node: Any, error: Exception, log_tail: str, log_path: Any) -> None:
            messages.append(f"{type(error).__name__}: {error}")
            super().failed(node, error, log_tail, log_path)

    node = ctx.target_node(Address.parse(TARGET), platform)
    reporter = Catching()
    result = execute(build_graph([node], ctx), ctx, reporter)
    assert not result.ok and not result.records
    assert len(messages) == 1
    return messages[0]


def output_bytes(ctx: Context, result: Result, rel: str, platform: Platform = AMD64) -> bytes:
    record = result.records[ctx.target_node(Address.parse(TARGET), platform).id]
    return ctx.store.blob_path(record.files[rel]).read_bytes()


def record_of(ctx: Context, result: Result, platform: Platform = AMD64) -> Any:
    return result.records[ctx.target_node(Address.parse(TARGET), platform).id]


def cache_blobs(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache" / "cas").rglob("*") if p.is_file()]


def leftovers(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "cache" / "tmp").iterdir())


# --- pure functions ----------------------------------------------------------------------


def test_expand_fills_platform_and_version() -> None:
    url = "https://dl.k8s.io/release/v{version}/bin/{os}/{arch}/kubectl"
    assert expand(url, ARM64, "1.34.0") == "https://dl.k8s.io/release/v1.34.0/bin/linux/arm64/kubectl"
    assert expand("etcd-{os}-{arch}", AMD64, None, what="output") == "etcd-linux-amd64"


def test_expand_rejects_missing_version_and_unknown_placeholders() -> None:
    with pytest.raises(ConfigError, match="sets no version"):
        expand("https://x/v{version}/f", AMD64, None)
    with pytest.raises(ConfigError, match=r"unknown placeholder \{flavour\}"):
        expand("https://x/{flavour}/f", AMD64, "1")


def test_mirror_urls_replace_scheme_and_host_only() -> None:
    url = "https://dl.k8s.io/release/v1.34.0/bin/linux/amd64/kubectl?x=1"
    assert mirror_urls(url, ["http://m1:8080/k8s/", "https://m2"]) == [
        "http://m1:8080/k8s/release/v1.34.0/bin/linux/amd64/kubectl?x=1",
        "https://m2/release/v1.34.0/bin/linux/amd64/kubectl?x=1",
    ]
    assert mirror_urls(url, []) == []


def test_local_names() -> None:
    url = "https://x/envtest-v1.34.0-linux-amd64.tar.gz"
    assert local_names("bin/etcd", url, AMD64, archive=True) == [
        ("etcd-linux-amd64", True), ("envtest-v1.34.0-linux-amd64.tar.gz", False)]
    assert local_names("kubectl", "https://x/bin/linux/arm64/kubectl", ARM64, archive=False) == [
        ("kubectl-linux-arm64", False), ("kubectl", False)]
    # With a version, two kubectl versions (crd-upgrader's, envtest's) cannot take each other's file.
    assert local_names("kubectl", "https://x/v1.35.0/bin/linux/amd64/kubectl", AMD64, archive=False, version="1.35.0")[0] \
        == ("kubectl-1.35.0-linux-amd64", False)
    assert local_names("kubectl", "https://x/envtest-v1.34.0-linux-amd64.tar.gz", AMD64, archive=True, version="1.34.0") == [
        ("kubectl-1.34.0-linux-amd64", True), ("envtest-v1.34.0-linux-amd64.tar.gz", False)]


def test_plan_sources_order() -> None:
    url = "https://origin.example/a/f"
    local = Source("local", "/d/f")
    assert plan_sources(url, ["http://m"], local, offline=False) == [local]
    assert plan_sources(url, ["http://m"], local, offline=True) == [local]
    assert plan_sources(url, ["http://m"], None, offline=True) == []
    assert plan_sources(url, ["http://m", "http://n/p"], None, offline=False) == [
        Source("mirror", "http://m/a/f"), Source("mirror", "http://n/p/a/f"), Source("origin", url)]


def test_inputs_depend_on_pin_and_local_file_not_mirrors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"url": "https://origin.example/{os}/{arch}/kubectl", "output": "kubectl",
            "sha256": {"linux/amd64": sha(ELF_AMD64)}}
    rule = DownloadRule()

    def inputs(settings: dict[str, Any]) -> dict[str, Any]:
        ctx = make(tmp_path, settings)
        node = ctx.target_node(Address.parse(TARGET), AMD64)
        rule.expand(node, ctx)
        return rule.inputs(node, ctx, {})

    plain = inputs(base)
    assert plain == {"url": "https://origin.example/linux/amd64/kubectl", "pins": {"sha256": sha(ELF_AMD64)},
                     "member": None, "local": None}
    assert inputs(base | {"mirrors": ["http://mirror.example"]}) == plain
    assert inputs(base | {"sha256": {"linux/amd64": sha(b"other")}}) != plain
    assert inputs(base | {"sha256": {"x86_64": sha(ELF_AMD64)}}) == plain  # platform aliases match
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setenv("KAIBUILD_DOWNLOAD_DIR", str(downloads))
    (downloads / "kubectl-linux-amd64").write_bytes(ELF_AMD64)
    with_local = inputs(base)
    assert with_local["local"] == sha(ELF_AMD64)
    (downloads / "kubectl-linux-amd64").write_bytes(ELF_AMD64 + b"\0")
    assert inputs(base)["local"] not in (None, with_local["local"])


def test_bad_pin_is_a_config_error(tmp_path: Path) -> None:
    ctx = make(tmp_path, {"url": "https://x/kubectl", "output": "kubectl", "sha256": {"linux/amd64": "abc"}})
    with pytest.raises(ConfigError, match="64 hex digits"):
        build(ctx)


# --- downloads -----------------------------------------------------------------------------


def test_origin_download_with_correct_pin(tmp_path: Path, server: Server) -> None:
    server.put("release/v1.34.0/bin/linux/amd64/kubectl", ELF_AMD64)
    settings = {"url": server.base + "/release/v{version}/bin/{os}/{arch}/kubectl", "version": "1.34.0",
                "output": "kubectl", "sha256": {"linux/amd64": sha(ELF_AMD64)}}
    ctx = make(tmp_path, settings)
    result, _ = build(ctx)
    assert result.ok
    record = record_of(ctx, result)
    assert output_bytes(ctx, result, "kubectl") == ELF_AMD64
    assert "kubectl" in record.executable
    assert record.meta == {"url": server.base + "/release/v1.34.0/bin/linux/amd64/kubectl",
                           "sha256": sha(ELF_AMD64), "source": "origin"}
    rule = ctx.rules["download"]
    assert rule.artifact(ctx.target_node(Address.parse(TARGET), AMD64), record) == ("kubectl", "kubectl")
    assert server.requests == ["/release/v1.34.0/bin/linux/amd64/kubectl"]
    # a second run is served from the cache: no request
    again, reporter = build(make(tmp_path, settings))
    assert again.ok and ("cached", f"{TARGET} [linux/amd64]") in reporter.events
    assert len(server.requests) == 1
    assert leftovers(tmp_path) == []


def test_mirror_is_preferred_and_a_failing_mirror_falls_through(tmp_path: Path, server: Server) -> None:
    server.put("origin/bin/kubectl", ELF_AMD64)
    server.put("mirror/origin/bin/kubectl", ELF_AMD64)
    settings = {"url": server.base + "/origin/bin/kubectl", "output": "kubectl",
                "sha256": {"linux/amd64": sha(ELF_AMD64)},
                "mirrors": [server.base + "/broken", server.base + "/mirror"]}
    ctx = make(tmp_path, settings)
    result, _ = build(ctx)
    assert result.ok
    assert record_of(ctx, result).meta["source"] == "mirror"
    assert server.requests == ["/broken/origin/bin/kubectl", "/mirror/origin/bin/kubectl"]  # never the origin


def test_same_pinned_bytes_from_mirror_or_origin_share_the_key(tmp_path: Path, server: Server) -> None:
    server.put("origin/kubectl", ELF_AMD64)
    settings = {"url": server.base + "/origin/kubectl", "output": "kubectl",
                "sha256": {"linux/amd64": sha(ELF_AMD64)}, "mirrors": [server.base + "/mirror"]}
    result, _ = build(make(tmp_path, settings))  # the mirror 404s: from the origin
    assert result.ok
    (server.root / "origin" / "kubectl").unlink()
    server.put("mirror/origin/kubectl", ELF_AMD64)
    requests = len(server.requests)
    again, reporter = build(make(tmp_path, settings))
    assert again.ok and ("cached", f"{TARGET} [linux/amd64]") in reporter.events
    assert len(server.requests) == requests


def test_sha512_pin_alone_verifies_the_download(tmp_path: Path, server: Server) -> None:
    """controller-tools publishes sha512 for envtest archives: that pin is enough."""
    url = server.put("envtest.tar.gz", ELF_AMD64)
    good = hashlib.sha512(ELF_AMD64).hexdigest()
    ok = make(tmp_path / "ok", {"url": url, "output": "kubectl", "sha512": {"linux/amd64": good}})
    result, _ = build(ok)
    assert result.ok and record_of(ok, result).meta["sha256"] == sha(ELF_AMD64)
    bad_pin = hashlib.sha512(b"other").hexdigest()
    bad = make(tmp_path / "bad", {"url": url, "output": "kubectl", "sha512": {"linux/amd64": bad_pin},
                                  "sha256": {"linux/amd64": sha(ELF_AMD64)}})
    message = failure(bad)  # the sha256 matches, the sha512 does not: both are checked
    assert "sha512 mismatch" in message and bad_pin in message and hashlib.sha512(ELF_AMD64).hexdigest() in message
    assert cache_blobs(tmp_path / "bad") == [] and leftovers(tmp_path / "bad") == []


def test_sha512_pin_of_the_wrong_length_is_a_config_error(tmp_path: Path) -> None:
    ctx = make(tmp_path, {"url": "https://x/kubectl", "output": "kubectl", "sha512": {"linux/amd64": "ab" * 32}})
    with pytest.raises(ConfigError, match="sha512 for linux/amd64 must be 128 hex digits"):
        build(ctx)


def test_sha256_mismatch_fails_and_leaves_nothing(tmp_path: Path, server: Server) -> None:
    url = server.put("kubectl", ELF_AMD64)
    pin = sha(b"something else")
    ctx = make(tmp_path, {"url": url, "output": "kubectl", "sha256": {"linux/amd64": pin}})
    message = failure(ctx)
    assert message.startswith("ActionFailed")
    assert url in message and pin in message and sha(ELF_AMD64) in message
    assert cache_blobs(tmp_path) == []
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "dist").exists()


def test_unreachable_sources_fail_naming_each(tmp_path: Path, server: Server) -> None:
    url = server.base + "/nowhere/kubectl"
    ctx = make(tmp_path, {"url": url, "output": "kubectl", "sha256": {"linux/amd64": sha(ELF_AMD64)},
                          "mirrors": [server.base + "/mirror"]})
    message = failure(ctx)
    assert f"could not download {url}" in message and "HTTP 404" in message and "/mirror/nowhere/kubectl" in message
    assert cache_blobs(tmp_path) == [] and leftovers(tmp_path) == []


def test_missing_pin_for_network_source_is_refused(tmp_path: Path, server: Server) -> None:
    url = server.put("bin/linux/arm64/kubectl", ELF_ARM64)
    ctx = make(tmp_path, {"url": server.base + "/bin/{os}/{arch}/kubectl", "output": "kubectl",
                          "sha256": {"linux/amd64": sha(ELF_AMD64)}})
    message = failure(ctx, ARM64)
    assert "no sha256 (or sha512) pinned for linux/arm64 in kaibuild.toml:7" in message
    assert url in message and "kaibuild.toml" in message.split("fix:")[1]
    assert server.requests == []  # refused before any download
    assert cache_blobs(tmp_path) == []


def test_local_file_is_used_offline_without_network(tmp_path: Path, server: Server,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "kubectl-linux-amd64").write_bytes(ELF_AMD64)
    monkeypatch.setenv("KAIBUILD_DOWNLOAD_DIR", str(downloads))
    settings = {"url": server.base + "/bin/{os}/{arch}/kubectl", "output": "bin/kubectl",
                "sha256": {"linux/amd64": sha(ELF_AMD64)}, "mirrors": [server.base + "/mirror"]}
    ctx = make(tmp_path, settings, offline=True)
    result, _ = build(ctx)
    assert result.ok
    assert output_bytes(ctx, result, "bin/kubectl") == ELF_AMD64
    assert record_of(ctx, result).meta["source"] == "local"
    assert server.requests == []


def test_local_file_named_like_the_url_and_unpinned_is_accepted_with_a_warning(
        tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "kubectl").write_bytes(ELF_ARM64)
    monkeypatch.setenv("KAIBUILD_DOWNLOAD_DIR", str(downloads))
    ctx = make(tmp_path, {"url": server.base + "/bin/{os}/{arch}/kubectl", "output": "kubectl"}, offline=True)
    result, _ = build(ctx, ARM64)
    assert result.ok
    assert record_of(ctx, result, ARM64).meta == {"url": server.base + "/bin/linux/arm64/kubectl",
                                                  "sha256": sha(ELF_ARM64), "source": "local"}
    err = capsys.readouterr().err
    assert "warning" in err and sha(ELF_ARM64) in err
    assert server.requests == []


def test_local_file_with_wrong_digest_fails_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "kubectl-linux-amd64").write_bytes(ELF_AMD64 + b"tampered")
    monkeypatch.setenv("KAIBUILD_DOWNLOAD_DIR", str(downloads))
    ctx = make(tmp_path, {"url": "https://dl.k8s.io/kubectl", "output": "kubectl",
                          "sha256": {"linux/amd64": sha(ELF_AMD64)}}, offline=True)
    message = failure(ctx)
    assert str(downloads / "kubectl-linux-amd64") in message and "mismatch" in message
    assert cache_blobs(tmp_path) == []


def test_offline_without_local_file_fails_naming_the_url(tmp_path: Path, server: Server) -> None:
    url = server.put("bin/linux/amd64/kubectl", ELF_AMD64)
    ctx = make(tmp_path, {"url": server.base + "/bin/{os}/{arch}/kubectl", "output": "kubectl",
                          "sha256": {"linux/amd64": sha(ELF_AMD64)}, "mirrors": [server.base]}, offline=True)
    message = failure(ctx)
    assert message.startswith("KaibuildError")
    assert url in message and TARGET in message and "KAIBUILD_DOWNLOAD_DIR" in message and "offline bundle" in message
    assert server.requests == []


def envtest_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("kubebuilder/bin/etcd", ELF_AMD64), ("kubebuilder/bin/kube-apiserver", fake_elf(62, 300))):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_archive_member_is_extracted(tmp_path: Path, server: Server) -> None:
    archive = envtest_archive()
    server.put("envtest-v1.34.0-linux-amd64.tar.gz", archive)
    settings = {"url": server.base + "/envtest-v{version}-{os}-{arch}.tar.gz", "version": "1.34.0",
                "output": "bin/etcd", "archive_member": "kubebuilder/bin/etcd",
                "sha256": {"linux/amd64": sha(archive)}}
    ctx = make(tmp_path, settings)
    result, _ = build(ctx)
    assert result.ok
    record = record_of(ctx, result)
    assert list(record.files) == ["bin/etcd"]
    assert output_bytes(ctx, result, "bin/etcd") == ELF_AMD64
    assert record.meta["sha256"] == sha(archive)
    rule = ctx.rules["download"]
    assert rule.artifact(ctx.target_node(Address.parse(TARGET), AMD64), record) == ("bin/etcd", "etcd")


def test_members_of_one_archive_download_it_once_and_a_damaged_kept_copy_is_fetched_again(
        tmp_path: Path, server: Server) -> None:
    archive = envtest_archive()
    url = server.put("envtest.tar.gz", archive)
    ctx = make(tmp_path, {})
    members = {"//envtest:etcd": "kubebuilder/bin/etcd", "//envtest:kube-apiserver": "kubebuilder/bin/kube-apiserver"}
    for address, member in members.items():
        settings = {"url": url, "output": member.rpartition("/")[2], "archive_member": member,
                    "sha512": {"linux/amd64": hashlib.sha512(archive).hexdigest()}}
        ctx.config.targets[Address.parse(address)] = TargetSpec(Address.parse(address), "download", settings, "kaibuild.toml:9")
    nodes = [ctx.target_node(Address.parse(address), AMD64) for address in members]
    result = execute(build_graph(nodes, ctx), ctx, RecordingReporter())
    assert result.ok and server.requests == ["/envtest.tar.gz"]
    etcd, apiserver = (result.records[node.id] for node in nodes)
    assert ctx.store.blob_path(etcd.files["etcd"]).read_bytes() == ELF_AMD64
    assert ctx.store.blob_path(apiserver.files["kube-apiserver"]).read_bytes() == fake_elf(62, 300)

    # The kept archive is a cache blob like any other; if it rots, the next member downloads again.
    kept = ctx.store.blob_path(sha(archive))
    kept.chmod(0o644)
    kept.write_bytes(b"rotten")
    ctx.config.targets[Address.parse("//envtest:etcd")].settings["output"] = "etcd-again"  # a new key
    again = execute(build_graph(nodes[:1], ctx), ctx, RecordingReporter())
    assert again.ok and server.requests == ["/envtest.tar.gz"] * 2
    assert ctx.store.blob_path(again.records[nodes[0].id].files["etcd-again"]).read_bytes() == ELF_AMD64
    assert kept.read_bytes() == archive  # replaced by the verified download


def test_an_archive_that_cannot_be_fetched_is_tried_once_per_run_for_all_its_members(
        tmp_path: Path, server: Server) -> None:
    url = f"{server.base}/gone/envtest.tar.gz"  # 404
    ctx = make(tmp_path, {})
    addresses = ["//envtest:etcd", "//envtest:kube-apiserver"]
    for address in addresses:
        settings = {"url": url, "output": address.rpartition(":")[2], "archive_member": f"bin/{address.rpartition(':')[2]}",
                    "sha256": {"linux/amd64": "0" * 64}}
        ctx.config.targets[Address.parse(address)] = TargetSpec(Address.parse(address), "download", settings, "kaibuild.toml:9")
    messages: list[str] = []

    class Catching(RecordingReporter):
        def failed(self, node: Any, error: Exception, log_tail: str, log_path: Any) -> None:
            messages.append(str(error))

    nodes = [ctx.target_node(Address.parse(address), AMD64) for address in addresses]
    result = execute(build_graph(nodes, ctx), ctx, Catching(), keep_going=True)
    assert not result.ok and len(messages) == 2
    assert server.requests == ["/gone/envtest.tar.gz"]
    assert "404" in messages[0] and "404" in messages[1] and "tried earlier in this run" in messages[1]


def test_missing_archive_member_fails(tmp_path: Path, server: Server) -> None:
    archive = envtest_archive()
    url = server.put("envtest.tar.gz", archive)
    ctx = make(tmp_path, {"url": url, "output": "etcd", "archive_member": "kubebuilder/bin/etcdctl",
                          "sha256": {"linux/amd64": sha(archive)}})
    message = failure(ctx)
    assert "kubebuilder/bin/etcdctl" in message and url in message


def test_wrong_elf_arch_is_a_platform_mismatch(tmp_path: Path, server: Server) -> None:
    url = server.put("bin/linux/arm64/kubectl", ELF_AMD64)  # an amd64 binary under the arm64 path
    ctx = make(tmp_path, {"url": server.base + "/bin/{os}/{arch}/kubectl", "output": "kubectl",
                          "sha256": {"linux/arm64": sha(ELF_AMD64)}})
    message = failure(ctx, ARM64)
    assert message.startswith("PlatformMismatch") and "amd64" in message and "arm64" in message and url in message
    assert cache_blobs(tmp_path) == []


def test_non_executable_skips_the_elf_check(tmp_path: Path, server: Server) -> None:
    url = server.put("crds.yaml", b"kind: CustomResourceDefinition\n")
    ctx = make(tmp_path, {"url": url, "output": "crds.yaml", "executable": False,
                          "sha256": {"linux/amd64": sha(b"kind: CustomResourceDefinition\n")}})
    result, _ = build(ctx)
    assert result.ok and record_of(ctx, result).executable == frozenset()


def test_export_names_each_missing_download_with_the_file_to_supply(tmp_path: Path, server: Server,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from kaibuild.bundle import read_manifest
    from kaibuild.offline import export_offline

    monkeypatch.setattr("rules.gotool.go_version", lambda: "go1.24.4")  # no Go needed for this bundle
    ctx = make(tmp_path, {"url": server.base + "/v{version}/{os}/kubectl", "output": "kubectl", "version": "1.35.0"})
    hint = (f"put kubectl-1.35.0-linux-amd64 or kubectl (what the URL serves) in a directory given by "
            f"--download-dir or KAIBUILD_DOWNLOAD_DIR (it comes from {server.base}/v1.35.0/linux/kubectl)")
    refused = export_offline(ctx, AMD64, tmp_path / "bundle", archive=False, allow_missing=False,
                             reporter=RecordingReporter())
    assert refused.path is None and refused.missing == {"//tools:kubectl [linux/amd64]": hint}
    assert not (tmp_path / "bundle").exists()
    written = export_offline(ctx, AMD64, tmp_path / "bundle", archive=False, allow_missing=True,
                             reporter=RecordingReporter())
    assert written.path is not None
    manifest = read_manifest(written.path)
    assert manifest["missing"][0]["how_to_supply"] == f"on the connected machine, {hint}, then export again"
    assert manifest["versions"]["//tools:kubectl"] == "1.35.0"


# --- the shipped kaibuild.toml's pinned downloads ----------------------------------------


def shipped_downloads() -> dict[str, Any]:
    from kaibuild.config import DEFAULT_CONFIG, load_config
    from rules import all_rules

    schemas = {kind: rule.settings for kind, rule in all_rules().items()}
    config = load_config(DEFAULT_CONFIG.parent, schemas)
    return {str(a): spec for a, spec in config.targets.items() if spec.kind == "download"}


def test_every_shipped_download_is_pinned_for_both_linux_platforms() -> None:
    downloads = shipped_downloads()
    assert {"//downloads:kubectl", "//envtest:etcd"} <= set(downloads)
    rule = DownloadRule()
    for address, spec in downloads.items():
        node = type("N", (), {"settings": spec.settings, "where": spec.where})()
        assert set(rule._pins(node)) == {"linux/amd64", "linux/arm64"}, address  # type: ignore[arg-type]


def kubectl_client_tarball(kubectl: bytes) -> bytes:
    """A stand-in laid out like dl.k8s.io's kubernetes-client-<os>-<arch>.tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("kubernetes/client/bin/kubectl")
        info.size, info.mode = len(kubectl), 0o755
        tar.addfile(info, io.BytesIO(kubectl))
    return buffer.getvalue()


def test_shipped_kubectl_target_extracts_from_the_client_tarball_and_checks_the_published_sha512(
        tmp_path: Path, server: Server) -> None:
    settings = dict(shipped_downloads()["//downloads:kubectl"].settings)
    settings["mirrors"] = [server.base + "/mirror"]
    tarball = kubectl_client_tarball(ELF_AMD64)
    server.put("mirror/v1.35.0/kubernetes-client-linux-amd64.tar.gz", tarball)
    # The stand-in is not the published tarball: the real pin refuses it.
    message = failure(make(tmp_path / "real-pin", settings))
    assert "sha512 mismatch" in message and "expected a1469924" in message
    assert server.requests == ["/mirror/v1.35.0/kubernetes-client-linux-amd64.tar.gz"]
    # With the stand-in's own sha512 pinned, the member the config names is what comes out.
    settings["sha512"] = {"linux/amd64": hashlib.sha512(tarball).hexdigest()}
    ctx = make(tmp_path / "own-pin", settings)
    result, _ = build(ctx)
    assert result.ok and output_bytes(ctx, result, "kubectl") == ELF_AMD64
