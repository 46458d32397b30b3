"""download: one pinned file for one platform (kubectl, envtest's etcd...).

The URL may hold {os}, {arch} and {version}; `sha256` pins the downloaded
bytes per platform ("linux/amd64" = "<hex>"), and `sha512` likewise where
that is what the publisher lists (controller-tools' envtest-releases.yaml,
the index setup-envtest reads, gives sha512). Bytes come, in this order,
from a local file in KAIBUILD_DOWNLOAD_DIR (named `<output basename>-<os>-<arch>`
or like the URL's last path segment), from `mirrors` (base URLs that replace
the URL's scheme and host), or from the URL itself; offline, only from a
local file. Network bytes are always checked against the pin before
anything is placed in the output; a local file without a pin is accepted
with a warning and its digest recorded.

The key covers the expanded URL, the pin for this platform, the archive
member and the digest of a local file if one is used, so the same pinned
bytes from a mirror or the origin share one cached output. A verified
archive is kept in the cache under its pins, so the other members of it
(envtest's three binaries) are taken from there, checked again, not
downloaded again; `cache prune` drops it, as no output record refers to it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import shutil
import string
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from kaibuild.cache import OutputRecord
from kaibuild.context import Context
from kaibuild.errors import ActionFailed, ConfigError, KaibuildError, PlatformMismatch
from kaibuild.image_archive import elf_arch
from kaibuild.platform import Platform
from kaibuild.report import ActionLog
from kaibuild.rule import Node, Rule, RunResult

DOWNLOAD_DIR_ENV = "KAIBUILD_DOWNLOAD_DIR"
TIMEOUT_SECONDS = 30
_CHUNK = 1 << 20
_HASH_LENGTHS = {"sha256": 64, "sha512": 128}
_URL_PLACEHOLDERS = ("os", "arch", "variant", "version")


@dataclass(frozen=True)
class Source:
    """One place to get the bytes from: kind is "local", "mirror", "origin" or
    "cache" (an archive another member's download kept)."""

    kind: str
    location: str  # a file path for "local", a URL otherwise
    extracted: bool = False  # a local file that already is the archive member (no pin applies)


# --- pure helpers (unit-tested) ---------------------------------------------------


def expand(template: str, platform: Platform, version: str | None, *, what: str = "url", where: str = "") -> str:
    """Fill {os}, {arch}, {variant} and {version} from the platform and the version setting."""
    values = {"os": platform.os, "arch": platform.arch, "variant": platform.variant}
    if version is not None:
        values["version"] = version
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise ConfigError(f"{what} {template!r} is malformed: {error}", where=where) from None
    for name in fields:
        if name == "version" and version is None:
            raise ConfigError(f"{what} {template!r} uses {{version}} but the target sets no version", where=where,
                              fix='add version = "..." to the target')
        if name not in values:
            raise ConfigError(f"unknown placeholder {{{name}}} in {what} {template!r}", where=where,
                              fix=f"use only {', '.join('{' + p + '}' for p in _URL_PLACEHOLDERS)}")
    return template.format(**values)


def mirror_urls(url: str, mirrors: list[str]) -> list[str]:
    """The URL with its scheme and host replaced by each mirror base, in order."""
    parts = urllib.parse.urlsplit(url)
    rest = urllib.parse.urlunsplit(("", "", parts.path, parts.query, ""))
    if not rest.startswith("/"):
        rest = "/" + rest
    return [mirror.rstrip("/") + rest for mirror in mirrors]


def url_basename(url: str) -> str:
    return posixpath.basename(urllib.parse.urlsplit(url).path)


def local_names(output: str, url: str, platform: Platform, *, archive: bool,
                version: str | None = None) -> list[tuple[str, bool]]:
    """File names a local copy may have, in order of preference, each with
    whether it is already the extracted archive member.

    `<output basename>[-<version>]-<os>-<arch>` is the output file itself
    (with the version when the target has one, so kubectl 1.35.0 for the
    crd-upgrader and envtest's kubectl 1.34.0 cannot be mistaken for each
    other); the URL's basename is what the URL serves (the archive, for an
    archive member).
    """
    middle = f"-{version}" if version else ""
    names = [(f"{posixpath.basename(output)}{middle}-{platform.os}-{platform.arch}", archive)]
    base = url_basename(url)
    if base and base != names[0][0]:
        names.append((base, False))
    return names


def plan_sources(url: str, mirrors: list[str], local: Source | None, offline: bool) -> list[Source]:
    """Where to try for the bytes, in order: a local file wins outright; then
    the mirrors and the origin, unless offline (no network at all)."""
    if local is not None:
        return [local]
    if offline:
        return []
    return [Source("mirror", m) for m in mirror_urls(url, mirrors)] + [Source("origin", url)]


def is_archive_url(url: str) -> bool:
    path = urllib.parse.urlsplit(url).path
    return path.endswith((".tar.gz", ".tgz", ".tar", ".tar.xz", ".tar.bz2"))


# --- the rule -----------------------------------------------------------------------


class DownloadRule(Rule):
    kind = "download"
    version = 1
    settings = {
        "url": str,  # may hold {os}, {arch}, {version}
        "sha256": dict,  # {"linux/amd64": "<hex>"}: of the downloaded file (the archive, with archive_member)
        "sha512": dict,  # the same, for publishers that list sha512; a platform may be pinned in either or both
        "version": str,
        "output": str,  # relative path in the output, may hold {os}/{arch}
        "executable": bool,  # default true: mode 0755 and an ELF arch check
        "archive_member": str,  # extract this member of a tar(.gz) download
        "mirrors": list,  # base URLs replacing the URL's scheme://host, tried first
        "bundle_section": str,  # offline bundle folder: "downloads" (default) or "envtest"
    }
    required = frozenset({"url", "output"})
    offline_reuses_inputs = True  # offline, the bundle's recorded inputs stand in

    def __init__(self) -> None:
        # URL -> why it failed, for this process: the members of one archive
        # (envtest's three) then wait out one timeout, not three.
        self._failed: dict[str, str] = {}

    def expand(self, node: Node, ctx: Context) -> list[Node]:
        missing = sorted(self.required - set(node.settings))
        if missing:
            raise ConfigError(f"download target {node.id.label} has no {', '.join(missing)}", where=node.where,
                              fix='e.g. url = "https://dl.k8s.io/release/v{version}/bin/{os}/{arch}/kubectl", output = "kubectl"')
        url = self._url(node)
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise ConfigError(f"url {url!r} must be http(s)", where=f"{node.where} (url)")
        for mirror in self._mirrors(node):
            if urllib.parse.urlsplit(mirror).scheme not in ("http", "https") or not urllib.parse.urlsplit(mirror).netloc:
                raise ConfigError(f"mirror {mirror!r} is not an http(s) base URL", where=f"{node.where} (mirrors)",
                                  fix='e.g. mirrors = ["http://mirror.example:8080/dl.k8s.io"]')
        self._pins(node)
        self._output(node)
        return []

    def inputs(self, node: Node, ctx: Context, deps: dict[str, OutputRecord]) -> dict[str, Any]:
        url = self._url(node)
        local = self._local(node)
        return {
            "url": url,
            "pins": self._pins(node).get(str(_platform(node)), {}),
            "member": node.settings.get("archive_member"),
            "local": ctx.digests.digest(Path(local.location)) if local else None,
        }

    def run(self, node: Node, ctx: Context, deps: dict[str, OutputRecord], inputs: dict[str, Any],
            work: Path, log: ActionLog) -> RunResult:
        platform = _platform(node)
        url, pins, member = inputs["url"], inputs["pins"], inputs["member"]
        local = self._local(node)
        sources = plan_sources(url, self._mirrors(node), local, ctx.options.offline)
        if not sources:  # offline and no local file
            raise KaibuildError(
                f"{node.id}: {url} is not available offline (no local copy) and --offline forbids the network",
                where=node.where,
                fix=f"{self.supply_hint(node)}, or export an offline bundle with network access first")
        if local is None and not pins:
            raise ActionFailed(f"no sha256 (or sha512) pinned for {platform} in {node.where}; "
                               f"refusing to use unverified bytes from {url}",
                               where=str(node.id),
                               fix=f'add "{platform}" = "<sha256 of the file>" to the target\'s sha256 table in kaibuild.toml '
                                   f"(or supply the file through {DOWNLOAD_DIR_ENV})")
        recalled = _recall_archive(ctx, pins, work, log) if member and local is None else None
        fetched, source, digests = recalled or self._fetch(node, sources, work, log)
        digest = digests["sha256"]
        if source.kind == "local":
            if digest != inputs["local"]:
                raise ActionFailed(f"local file {source.location} changed while building", where=str(node.id),
                                   fix="run the build again")
            if not pins or source.extracted:
                why = "no sha256 is pinned for it" if not pins else "the pin is of the archive, this is the extracted member"
                message = (f"kaibuild: warning: {node.id}: using local file {source.location} unverified ({why}); "
                           f"its sha256 is {digest}\n")
                sys.stderr.write(message)
                log.write(message)
        for algorithm, pin in sorted(pins.items()):
            if not source.extracted and digests[algorithm] != pin:
                raise ActionFailed(f"{algorithm} mismatch for {_describe(source)}: expected {pin}, got {digests[algorithm]}",
                                   where=str(node.id),
                                   fix="the file is not the pinned one: check the URL/version, the mirror or the local file; "
                                       "update the pin in kaibuild.toml only if the new file is trusted")
        if member and not source.extracted:
            if source.kind in ("mirror", "origin"):
                _remember_archive(ctx, fetched, digest, pins, work)  # verified: the next member needs no download
            fetched = _extract(fetched, member, work, source, node)
        executable = node.settings.get("executable", True)
        if executable:
            _check_arch(fetched, platform, source, node)
        output = self._output(node)
        out = work / "out"
        (out / output).parent.mkdir(parents=True, exist_ok=True)
        os.chmod(fetched, 0o755 if executable else 0o644)
        os.replace(fetched, out / output)  # only verified bytes ever reach out/
        return RunResult(out, {"url": url, "sha256": digest, "source": source.kind})

    def artifact(self, node: Node, record: OutputRecord) -> tuple[str, str] | None:
        output = self._output(node)
        return output, posixpath.basename(output)

    def bundle_section(self, node: Node) -> str | None:
        return str(node.settings.get("bundle_section", "downloads"))

    def supply_hint(self, node: Node) -> str:
        names = [name for name, _ in self._local_names(node)]
        files = " or ".join(names[:1] + [f"{n} (what the URL serves)" for n in names[1:]])
        return (f"put {files} in a directory given by --download-dir or {DOWNLOAD_DIR_ENV} "
                f"(it comes from {self._url(node)})")

    # --- helpers -----------------------------------------------------------------
    def _url(self, node: Node) -> str:
        return expand(node.settings["url"], _platform(node), node.settings.get("version"), where=f"{node.where} (url)")

    def _output(self, node: Node) -> str:
        path = expand(node.settings["output"], _platform(node), node.settings.get("version"), what="output",
                      where=f"{node.where} (output)")
        if not path or path.startswith("/") or ".." in Path(path).parts or path.endswith("/"):
            raise ConfigError(f"output {path!r} must be a relative file path", where=f"{node.where} (output)",
                              fix='e.g. output = "kubectl" or "bin/etcd"')
        return path

    def _mirrors(self, node: Node) -> list[str]:
        mirrors = node.settings.get("mirrors", [])
        if not all(isinstance(m, str) for m in mirrors):
            raise ConfigError("mirrors must be a list of base URL strings", where=f"{node.where} (mirrors)")
        return mirrors

    def _pins(self, node: Node) -> dict[str, dict[str, str]]:
        """{platform: {algorithm: hex}} from the sha256 and sha512 tables."""
        pins: dict[str, dict[str, str]] = {}
        for algorithm, length in _HASH_LENGTHS.items():
            for text, digest in node.settings.get(algorithm, {}).items():
                where = f"{node.where} ({algorithm}.{text})"
                try:
                    platform = Platform.parse(text)
                except ConfigError as error:
                    raise ConfigError(error.message, where=where, fix=error.fix) from None
                value = digest.lower().removeprefix(f"{algorithm}:") if isinstance(digest, str) else ""
                if not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
                    raise ConfigError(f"{algorithm} for {text} must be {length} hex digits, not {digest!r}", where=where)
                pins.setdefault(str(platform), {})[algorithm] = value
        return pins

    def _local_names(self, node: Node) -> list[tuple[str, bool]]:
        return local_names(self._output(node), self._url(node), _platform(node),
                           archive=bool(node.settings.get("archive_member")), version=node.settings.get("version"))

    def _local(self, node: Node) -> Source | None:
        """The local copy in KAIBUILD_DOWNLOAD_DIR, if there is one."""
        directory = os.environ.get(DOWNLOAD_DIR_ENV)
        if not directory:
            return None
        if not Path(directory).is_dir():
            raise ConfigError(f"{DOWNLOAD_DIR_ENV}={directory} is not a directory", where=DOWNLOAD_DIR_ENV,
                              fix="point it at the directory holding the downloads, or unset it")
        for name, extracted in self._local_names(node):
            path = Path(directory) / name
            if path.is_file():
                return Source("local", str(path.resolve()), extracted)
        return None

    def _fetch(self, node: Node, sources: list[Source], work: Path, log: ActionLog) -> tuple[Path, Source, dict[str, str]]:
        """The bytes of the first source that delivers, in a temp file under work, and their digests."""
        failures = []
        for source in sources:
            if source.location in self._failed:
                failures.append(f"{_describe(source)}: {self._failed[source.location]} (tried earlier in this run)")
                continue
            try:
                if source.kind == "local":
                    log.write(f"using local file {source.location}")
                    part, digests = _receive(partial(open, source.location, "rb"), work)
                else:
                    log.write(f"GET {source.location}")
                    request = urllib.request.Request(source.location, headers={"User-Agent": "kaibuild"})
                    part, digests = _receive(partial(urllib.request.urlopen, request, timeout=TIMEOUT_SECONDS), work)
            except (OSError, http.client.HTTPException, ValueError) as error:
                reason = _reason(error)
                log.write(f"  failed: {reason}")
                failures.append(f"{_describe(source)}: {reason}")
                if source.kind == "local":
                    raise ActionFailed(f"cannot read {source.location}: {reason}", where=str(node.id)) from None
                self._failed[source.location] = reason
                continue
            return part, source, digests
        url = sources[-1].location
        raise ActionFailed(f"could not download {url}: " + "; ".join(failures), where=str(node.id),
                           fix=f"check network access and the mirrors, or put the file in {DOWNLOAD_DIR_ENV}")


def _recall_archive(ctx: Context, pins: dict[str, str], work: Path,
                    log: ActionLog) -> tuple[Path, Source, dict[str, str]] | None:
    """A copy of the pinned archive another member's download kept in the
    cache (the three envtest binaries share one), checked again, or None."""
    for algorithm, pin in sorted(pins.items()):
        kept = ctx.store.actions.get(f"archive:{algorithm}:{pin}")
        blob = ctx.store.blob_path(kept) if isinstance(kept, str) else None
        if blob is None or not blob.is_file():
            continue
        part, found = _receive(partial(open, blob, "rb"), work)
        if all(found[a] == p for a, p in pins.items()):
            log.write(f"using the archive already downloaded for another member ({blob})")
            return part, Source("cache", str(blob)), found
        part.unlink()  # damaged since: drop it (no blob may differ from its name) and download again
        blob.unlink(missing_ok=True)
    return None


def _remember_archive(ctx: Context, archive: Path, sha256: str, pins: dict[str, str], work: Path) -> None:
    """Keep a verified archive (whose sha256 was taken as it arrived) in the
    cache, recorded under each of its pins (the blob first, the record last)."""
    handle, name = tempfile.mkstemp(prefix="archive-", dir=work)
    os.close(handle)
    shutil.copyfile(archive, name)
    digest = ctx.store.put_file(Path(name), sha256=sha256)
    for algorithm, pin in pins.items():
        ctx.store.actions.set(f"archive:{algorithm}:{pin}", digest)


def _platform(node: Node) -> Platform:
    assert node.id.platform is not None, "downloads are always for one platform"
    return node.id.platform


def _describe(source: Source) -> str:
    return f"local file {source.location}" if source.kind == "local" else f"{source.kind} {source.location}"


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _receive(open_stream: Callable[[], Any], work: Path) -> tuple[Path, dict[str, str]]:
    """A stream's bytes in a new temp file under work, hashed as they pass;
    on any failure no file is left."""
    handle, name = tempfile.mkstemp(prefix="download-", suffix=".part", dir=work)
    digests = {algorithm: hashlib.new(algorithm) for algorithm in _HASH_LENGTHS}
    try:
        with os.fdopen(handle, "wb") as sink, open_stream() as stream:
            _copy(stream, sink, digests)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name), {algorithm: h.hexdigest() for algorithm, h in digests.items()}


def _copy(stream: Any, sink: Any, digests: dict[str, Any]) -> None:
    while chunk := stream.read(_CHUNK):
        for digest in digests.values():
            digest.update(chunk)
        sink.write(chunk)


def _extract(archive: Path, member: str, work: Path, source: Source, node: Node) -> Path:
    """The member's bytes, in a temp file under work (the archive is removed)."""
    wanted = member.removeprefix("./")
    try:
        with tarfile.open(archive, "r:*") as tar:
            info = next((m for m in tar if m.name.removeprefix("./") == wanted), None)
            if info is None:
                raise ActionFailed(f"{_describe(source)} has no member {member}", where=str(node.id),
                                   fix="check archive_member (list the archive with 'tar tzf')")
            stream = tar.extractfile(info)
            if stream is None:
                raise ActionFailed(f"member {member} of {_describe(source)} is not a file", where=str(node.id))
            handle, name = tempfile.mkstemp(prefix="member-", dir=work)
            with os.fdopen(handle, "wb") as sink, stream:
                shutil.copyfileobj(stream, sink, _CHUNK)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ActionFailed(f"cannot read {_describe(source)} as a tar archive: {error}", where=str(node.id),
                           fix="archive_member needs a .tar, .tar.gz, .tar.xz or .tar.bz2 download") from None
    finally:
        archive.unlink(missing_ok=True)
    return Path(name)


def _check_arch(path: Path, platform: Platform, source: Source, node: Node) -> None:
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"#!"):
        return  # a script runs on any arch
    arch = elf_arch(head)
    if arch != platform.arch:
        raise PlatformMismatch(f"{node.id.label}: {_describe(source)} is {'an ' + arch if arch else 'not an ELF'} "
                               f"binary, expected {platform.arch} for {platform}", where=node.where,
                               fix="check the {os}/{arch} placeholders of the url, or the local file; "
                                   "set executable = false for a file that is not a program")
