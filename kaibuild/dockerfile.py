"""Static analysis of a Dockerfile and its build context, following BuildKit.

`analyze_dockerfile` answers, without Docker, what `docker buildx build --target`
will need: the stages, the external images, the context paths and the URLs.
`select_context_files` turns COPY/ADD sources into the files docker sends,
after .dockerignore. kaibuild uses both to hash inputs, pre-pull images and
fail fast when offline.

Parsing is BuildKit's own Go parser (the `dockerfile` package); what it leaves
to the frontend (variable expansion, stage graph, ARG scoping) is mirrored
from moby/buildkit frontend/dockerfile (shell/lex.go, dockerfile2llb).
"""

from __future__ import annotations

import csv
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import dockerfile
from docker.utils.build import Pattern, PatternMatcher
from docker.utils.fnmatch import fnmatchcase

from kaibuild.errors import DockerfileError

__all__ = ["BaseImage", "DockerfilePlan", "analyze_dockerfile", "rewrite_from_lines", "select_context_files"]


@dataclass(frozen=True)
class BaseImage:
    ref: str  # image reference after ARG expansion, exactly as FROM (or --from) names it
    stage: str  # stage name (or its index as a string if unnamed)
    line: int  # 1-based line of the FROM (or of the COPY/RUN naming it with --from)
    platform: str | None  # FROM --platform value after expansion, None if absent


@dataclass(frozen=True)
class DockerfilePlan:
    base_images: tuple[BaseImage, ...]  # external images the needed stages use, unique by (ref, platform)
    context_sources: tuple[str, ...]  # build-context COPY/ADD (and RUN bind-mount) sources, expanded
    stages: tuple[str, ...]  # needed stages, in file order
    urls: tuple[str, ...]  # http(s) URLs fetched by ADD or named in RUN lines
    # The text of the global ARGs and of the needed stages' instructions (no
    # line numbers, no comments): what a build reads of the Dockerfile, so an
    # edit to another stage, or a comment, changes no key.
    instructions: tuple[str, ...] = ()
    # The external image each needed stage is built FROM, one per such stage
    # (not deduplicated), so a build can rewrite exactly those FROM lines.
    stage_images: tuple[BaseImage, ...] = ()


_INSTRUCTIONS = frozenset(
    "ADD ARG CMD COPY ENTRYPOINT ENV EXPOSE FROM HEALTHCHECK LABEL MAINTAINER "
    "ONBUILD RUN SHELL STOPSIGNAL USER VOLUME WORKDIR".split()
)
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_.-]*")  # BuildKit's rule for `AS <name>`
_URL = re.compile(r"https?://[^\s'\"<>|;&()`\\]+")
_REMOTE_PREFIXES = ("http://", "https://", "git@", "git://", "ssh://")
_SPECIAL_PARAMS = "@*#?-$!0"
_SCRATCH = "scratch"


# --- shell word expansion (BuildKit shell.Lex.ProcessWord) -------------------


class _ExpandError(Exception):
    """A word BuildKit's lexer rejects: unmatched quote, bad ${...}."""


class _Lexer:
    """Expands one word: quotes, escapes, $VAR and the ${VAR...} forms.

    `missing` collects variables referenced plainly ($X, ${X}) that are unset,
    so callers can tell a deliberate empty value from a forgotten ARG.
    """

    def __init__(self, word: str, env: Mapping[str, str], escape: str) -> None:
        self.word = word
        self.env = env
        self.escape = escape
        self.pos = 0
        self.missing: set[str] = set()

    def peek(self) -> str:
        return self.word[self.pos : self.pos + 1]

    def take(self) -> str:
        ch = self.peek()
        self.pos += len(ch)
        return ch

    def process(self, stop: str = "", raw_escapes: bool = False) -> str:
        out: list[str] = []
        while ch := self.peek():
            if ch == stop:
                self.pos += 1
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
            elif ch == "'":
                out.append(self.single_quoted())
            elif ch == '"':
                out.append(self.double_quoted())
            else:
                out.append(self.plain(raw_escapes))
        if stop:
            raise _ExpandError(f"missing {stop!r}")
        return "".join(out)

    def plain(self, raw_escapes: bool) -> str:
        ch = self.take()
        if ch != self.escape:
            return ch
        escaped = self.take()  # a trailing escape just vanishes
        return ch + escaped if raw_escapes else escaped

    def single_quoted(self) -> str:
        self.take()
        end = self.word.find("'", self.pos)
        if end < 0:
            raise _ExpandError("unmatched single quote")
        text, self.pos = self.word[self.pos : end], end + 1
        return text

    def double_quoted(self) -> str:
        self.take()
        out: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise _ExpandError("unmatched double quote")
            if ch == '"':
                self.take()
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            self.take()
            # Inside "..." the escape only protects ", $ and itself, as in sh.
            if ch == self.escape and self.peek() and self.peek() in ('"', "$", self.escape):
                ch = self.take()
            out.append(ch)

    def dollar(self) -> str:
        self.take()
        if self.peek() != "{":
            name = self.name()
            return self.lookup(name) if name else "$"
        self.take()
        if self.peek() in ("", "{", "}", ":"):
            raise _ExpandError("bad substitution")
        name = self.name()
        op = self.take()
        if op == "}":
            return self.lookup(name)
        if op == ":":
            op += self.take()
        if op and op[-1] in "+-?#%":
            return self.modifier(name, op)
        if op == "/":
            return self.replace(name)
        raise _ExpandError(f"unsupported modifier ({op}) in substitution")

    def name(self) -> str:
        start, ch = self.pos, self.peek()
        if ch.isdecimal():
            while self.peek().isdecimal():
                self.pos += 1
        elif ch and ch in _SPECIAL_PARAMS:
            self.pos += 1
        else:
            while (ch := self.peek()) and (ch.isalnum() or ch == "_"):
                self.pos += 1
        return self.word[start : self.pos]

    def lookup(self, name: str) -> str:
        value = self.env.get(name)
        if value is None:
            self.missing.add(name)
            return ""
        return value

    def modifier(self, name: str, op: str) -> str:
        kind = op[-1]
        word = self.process(stop="}", raw_escapes=kind in "#%")
        value = self.env.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if kind == "-":
            return word if unset else str(value)
        if kind == "+":
            return "" if unset else word
        if kind == "?":
            if unset:
                raise _ExpandError(f"{name}: {word or 'is not allowed to be unset or empty'}")
            return str(value)
        return _trim(value or "", word, suffix=kind == "%")

    def replace(self, name: str) -> str:
        every = self.peek() == "/"
        if every:
            self.take()
        pattern = self.process(stop="/", raw_escapes=True)
        replacement = self.process(stop="}", raw_escapes=True)
        regex = _shell_pattern(pattern)
        return regex.sub(lambda _: replacement, self.env.get(name, ""), count=0 if every else 1)


def _shell_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a ${VAR#...}-style pattern: `*` any string, `?` one char, `\\x` literal x."""
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            out.append(re.escape(next(chars, "")))
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _trim(value: str, word: str, *, suffix: bool) -> str:
    """${V#p} / ${V##p} / ${V%p} / ${V%%p}: drop the shortest (doubled: longest) match."""
    greedy = word[:1] == ("%" if suffix else "#")
    regex = _shell_pattern(word[1:] if greedy else word)
    cuts = range(len(value) + 1)
    if suffix:
        for i in cuts if greedy else reversed(cuts):
            if regex.fullmatch(value[i:]):
                return value[:i]
    else:
        for i in reversed(cuts) if greedy else cuts:
            if regex.fullmatch(value[:i]):
                return value[i:]
    return value


# --- reading the Dockerfile ----------------------------------------------------


@dataclass
class _Stage:
    index: int
    name: str | None  # lower-cased, as BuildKit stores it
    line: int
    ref: str  # expanded FROM image (or the name of an earlier stage)
    platform: str | None
    commands: list[Any]
    parent: _Stage | None = None  # set when FROM names an earlier stage
    deps: list[tuple[_Stage | str, int]] = field(default_factory=list)  # --from stages/images, with lines

    @property
    def label(self) -> str:
        return self.name if self.name is not None else str(self.index)


@dataclass
class _Found:
    """What the needed stages use, each in file order without repeats (dicts keep order)."""

    images: dict[tuple[str, str | None], BaseImage] = field(default_factory=dict)
    sources: dict[str, None] = field(default_factory=dict)
    urls: dict[str, None] = field(default_factory=dict)


def _read(path: Path) -> tuple[tuple[Any, ...], str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DockerfileError(
            f"cannot read Dockerfile: {exc.strerror or exc}",
            where=str(path),
            fix="check the Dockerfile path in kaibuild.toml",
        ) from None
    try:
        commands = dockerfile.parse_string(text)
    except dockerfile.GoParseError as exc:
        raise DockerfileError(
            f"Dockerfile syntax error: {exc}", where=str(path), fix="fix the Dockerfile syntax"
        ) from None
    return commands, _escape_token(text)


def _escape_token(text: str) -> str:
    """The `# escape=` parser directive; the Go parser honours it but does not report it."""
    for line in text.splitlines():
        key, sep, value = line[1:].partition("=") if line.startswith("#") else ("", "", "")
        key = key.strip().lower()
        if not sep or not key.isalnum():
            break  # directives end at the first line that is not one
        if key == "escape":
            return value.strip() or "\\"
    return "\\"


def _flags(cmd: Any) -> dict[str, str]:
    """`--name=value` flags; BuildKit flag names are case-sensitive, last one wins."""
    flags: dict[str, str] = {}
    for flag in cmd.flags:
        name, _, value = flag.removeprefix("--").partition("=")
        flags[name] = value
    return flags


def _mounts(cmd: Any) -> list[dict[str, str]]:
    """RUN --mount values as dicts (CSV, as BuildKit reads them), keys lower-cased."""
    aliases = {"src": "source", "dst": "target", "destination": "target"}
    mounts = []
    for flag in cmd.flags:
        name, _, value = flag.removeprefix("--").partition("=")
        if name != "mount":
            continue
        fields = (part.partition("=") for part in next(csv.reader([value]), []))
        mounts.append({aliases.get(k.lower(), k.lower()): v for k, sep, v in fields if sep})
    return mounts


def _arg_items(cmd: Any, where: str) -> Iterator[tuple[str, str | None]]:
    """ARG NAME[=default] ...: yields (name, raw default or None)."""
    if not cmd.value:
        raise DockerfileError("ARG requires at least one argument", where=where, fix="write ARG NAME[=default]")
    for item in cmd.value:
        key, sep, default = item.partition("=")
        if not key:
            raise DockerfileError(f"ARG {item!r} has no name", where=where, fix="write ARG NAME[=default]")
        yield key, default if sep else None


def _split_platform(spec: str, what: str) -> tuple[str, str, str]:
    parts = spec.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise DockerfileError(f"invalid {what} {spec!r}", where=what, fix='use os/arch[/variant], e.g. "linux/arm64"')
    os_name, arch, *variant = parts
    return os_name, arch, variant[0] if variant else ""


def _automatic_args(
    target_platform: str, build_platform: str, target_stage: str, build_args: Mapping[str, str]
) -> dict[str, str]:
    """BuildKit's predefined ARGs; --build-arg may override them like any other."""
    args = {"TARGETSTAGE": target_stage}
    for prefix, spec in (("TARGET", target_platform), ("BUILD", build_platform)):
        os_name, arch, variant = _split_platform(spec, f"{prefix.lower()}_platform")
        args |= {
            f"{prefix}PLATFORM": spec,
            f"{prefix}OS": os_name,
            f"{prefix}ARCH": arch,
            f"{prefix}VARIANT": variant,
        }
    return {key: build_args.get(key, value) for key, value in args.items()}


def _from_parts(cmd: Any, where: str) -> tuple[str, str | None]:
    """FROM image [AS name] -> (raw image word, lower-cased stage name)."""
    value = cmd.value
    if len(value) == 1:
        return value[0], None
    if len(value) == 3 and value[1].lower() == "as":
        name = value[2].lower()
        if not _STAGE_NAME.fullmatch(name):
            raise DockerfileError(
                f"invalid stage name {value[2]!r}",
                where=where,
                fix="stage names start with a letter and use only letters, digits, '-', '_' and '.'",
            )
        return value[0], name
    raise DockerfileError(
        "FROM requires either one or three arguments", where=where, fix="write FROM <image> [AS <name>]"
    )


def _is_remote(source: str) -> bool:
    return source.startswith(_REMOTE_PREFIXES)


def _is_http(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _tidy_url(url: str) -> str:
    """Drop punctuation a regex grabs past the end of a URL in prose or ${X:-url}."""
    url = url.rstrip(".,:")
    while url.endswith("}") and url.count("}") > url.count("{"):
        url = url[:-1]
    return url


# --- the analysis ------------------------------------------------------------------


class _Analyzer:
    def __init__(self, path: Path, build_args: Mapping[str, str], escape: str) -> None:
        self.path = path
        self.build_args = build_args
        self.escape = escape

    def where(self, line: int) -> str:
        return f"{self.path}:{line}"

    def expand(self, word: str, env: Mapping[str, str], line: int) -> tuple[str, set[str]]:
        lexer = _Lexer(word, env, self.escape)
        try:
            return lexer.process(), lexer.missing
        except _ExpandError as exc:
            raise DockerfileError(
                f"cannot expand {word!r}: {exc}", where=self.where(line), fix="fix the quoting or ${...} syntax"
            ) from None

    def expand_value(self, word: str, env: Mapping[str, str], line: int) -> str:
        return self.expand(word, env, line)[0]

    def split(self, commands: Iterable[Any]) -> tuple[list[Any], list[list[Any]]]:
        """Global ARGs (before the first FROM) and one command list per stage."""
        meta: list[Any] = []
        stages: list[list[Any]] = []
        for cmd in commands:
            kind = cmd.cmd.upper()
            if kind not in _INSTRUCTIONS:
                raise DockerfileError(
                    f"unknown instruction: {cmd.cmd}", where=self.where(cmd.start_line), fix="check the spelling"
                )
            if kind == "FROM":
                stages.append([cmd])
            elif stages:
                stages[-1].append(cmd)
            elif kind == "ARG":
                meta.append(cmd)
            else:
                raise DockerfileError(
                    f"{kind} before the first FROM",
                    where=self.where(cmd.start_line),
                    fix="only ARG may appear before the first FROM",
                )
        if not stages:
            raise DockerfileError("Dockerfile has no FROM", where=str(self.path), fix="add a FROM instruction")
        return meta, stages

    def global_args(self, meta: list[Any], auto: dict[str, str]) -> dict[str, str]:
        """ARGs visible to FROM lines; a build arg only counts if an ARG declares it."""
        args = dict(auto)
        for cmd in meta:
            for key, default in _arg_items(cmd, self.where(cmd.start_line)):
                if key in self.build_args:
                    args[key] = self.build_args[key]
                elif default is not None:
                    args[key] = self.expand_value(default, args, cmd.start_line)
        return args

    def expand_from(self, word: str, args: Mapping[str, str], line: int, what: str) -> str:
        value, missing = self.expand(word, args, line)
        if missing or not value:
            names = ", ".join(sorted(missing)) or "(none)"
            raise DockerfileError(
                f"FROM {what} {word!r} expands to {value!r}; undefined variables: {names}",
                where=self.where(line),
                fix="declare each variable with ARG NAME=default before the first FROM "
                "(build args reach FROM lines only through such an ARG)",
            )
        return value

    def stages(self, groups: list[list[Any]], args: Mapping[str, str]) -> list[_Stage]:
        stages: list[_Stage] = []
        by_name: dict[str, _Stage] = {}
        for index, (cmd, *body) in enumerate(groups):
            line = cmd.start_line
            word, name = _from_parts(cmd, self.where(line))
            platform = _flags(cmd).get("platform")
            stage = _Stage(
                index=index,
                name=name,
                line=line,
                ref=self.expand_from(word, args, line, "image"),
                platform=None if platform is None else self.expand_from(platform, args, line, "--platform"),
                commands=body,
            )
            stage.parent = by_name.get(stage.ref.lower())  # only earlier stages, as in BuildKit
            if name is not None:
                if name in by_name:
                    raise DockerfileError(
                        f"duplicate stage name {name!r}", where=self.where(line), fix="give each stage its own name"
                    )
                by_name[name] = stage
            stages.append(stage)
        for stage in stages:
            stage.deps = list(self.dependencies(stage, stages, by_name))
        return stages

    def dependencies(
        self, stage: _Stage, stages: list[_Stage], by_name: Mapping[str, _Stage]
    ) -> Iterator[tuple[_Stage | str, int]]:
        """Stages or images that COPY --from / RUN --mount=from= read."""
        for cmd in stage.commands:
            kind, line = cmd.cmd.upper(), cmd.start_line
            if kind in ("COPY", "ADD") and _flags(cmd).get("from"):
                if kind == "ADD":
                    raise DockerfileError(
                        "ADD does not support --from", where=self.where(line), fix="use COPY --from=<stage>"
                    )
                yield self.resolve_from(_flags(cmd)["from"], stages, by_name, line, by_index=True), line
            elif kind == "RUN":
                for mount in _mounts(cmd):
                    if mount.get("from"):
                        yield self.resolve_from(mount["from"], stages, by_name, line, by_index=False), line

    def resolve_from(
        self,
        ref: str,
        stages: list[_Stage],
        by_name: Mapping[str, _Stage],
        line: int,
        *,
        by_index: bool,
    ) -> _Stage | str:
        """A --from value: a stage (by name, or index for COPY) or else an image."""
        if "$" in ref:
            raise DockerfileError(
                f"--from={ref} uses a variable, which BuildKit does not expand",
                where=self.where(line),
                fix="add a stage `FROM ${VAR} AS alias` (with a global ARG) and use --from=alias",
            )
        if by_index and ref.isdecimal():
            if int(ref) >= len(stages):
                raise DockerfileError(
                    f"invalid stage index {ref}", where=self.where(line), fix=f"use 0..{len(stages) - 1} or a name"
                )
            source: _Stage | None = stages[int(ref)]
        else:
            source = by_name.get(ref.lower())
        return ref if source is None else source

    def scan(self, stage: _Stage, env: dict[str, str], args: Mapping[str, str], found: _Found) -> None:
        """Walk a stage's commands in order, tracking ARG/ENV as BuildKit's dispatcher does."""
        for cmd in stage.commands:
            kind = cmd.cmd.upper()
            if kind == "ARG":
                self.apply_arg(cmd, env, args)
            elif kind == "ENV":
                self.apply_env(cmd, env)
            elif kind in ("COPY", "ADD"):
                self.scan_copy(cmd, kind, env, found)
            elif kind == "RUN":
                self.scan_run(cmd, env, found)
            # ONBUILD triggers only run in images built FROM this one; the Go
            # binding does not split their flags, so they are left out.

    def apply_arg(self, cmd: Any, env: dict[str, str], args: Mapping[str, str]) -> None:
        # Precedence per BuildKit dispatchArg: build arg, then default, then global value.
        for key, default in _arg_items(cmd, self.where(cmd.start_line)):
            if key in self.build_args:
                env[key] = self.build_args[key]
            elif default is not None:
                env[key] = self.expand_value(default, env, cmd.start_line)
            elif key in args:
                env[key] = args[key]

    def apply_env(self, cmd: Any, env: dict[str, str]) -> None:
        if not cmd.value or len(cmd.value) % 2:
            raise DockerfileError(
                "ENV requires NAME=value pairs", where=self.where(cmd.start_line), fix="write ENV NAME=value"
            )
        pairs = zip(cmd.value[::2], cmd.value[1::2], strict=True)
        # All values see the env as it was before this ENV, like `ENV A=1 B=$A` in docker.
        line = cmd.start_line
        env.update([(self.expand_value(k, env, line), self.expand_value(v, env, line)) for k, v in pairs])

    def scan_copy(self, cmd: Any, kind: str, env: Mapping[str, str], found: _Found) -> None:
        line = cmd.start_line
        if len(cmd.value) < 2:
            raise DockerfileError(
                f"{kind} requires at least two arguments", where=self.where(line), fix=f"write {kind} <src>... <dest>"
            )
        if _flags(cmd).get("from"):
            return  # reads another stage or image, not the context
        for word in cmd.value[:-1]:
            if cmd.heredocs and word.startswith("<<"):
                continue  # inline file content
            source = self.expand_value(word, env, line)
            if kind == "COPY" and _is_remote(source):
                raise DockerfileError(
                    f"COPY source {source!r} is a URL", where=self.where(line), fix="use ADD for remote sources"
                )
            if _is_http(source):
                found.urls[source] = None
            elif not _is_remote(source):
                found.sources[source] = None

    def scan_run(self, cmd: Any, env: Mapping[str, str], found: _Found) -> None:
        line = cmd.start_line
        for mount in _mounts(cmd):
            mount_type = self.expand_value(mount.get("type", "bind"), env, line).lower()
            if mount_type == "bind" and not mount.get("from"):
                # A bind mount without from= exposes the build context to the RUN.
                found.sources[self.expand_value(mount.get("source", ""), env, line) or "."] = None
        text = "\n".join([*cmd.value, *(doc.content for doc in cmd.heredocs)])
        for url in _URL.findall(text):
            found.urls[self.expand_url(_tidy_url(url), env)] = None
        for name, value in env.items():  # ARG TOOL_URL=https://... then RUN curl $TOOL_URL
            if _URL.search(value) and re.search(rf"\$(?:{re.escape(name)}\b|\{{{re.escape(name)}\b)", text):
                for url in _URL.findall(value):
                    found.urls[_tidy_url(url)] = None

    def expand_url(self, url: str, env: Mapping[str, str]) -> str:
        """Fill in ARG/ENV values the shell will see; keep the text if any is unknown."""
        lexer = _Lexer(url, env, "\\")
        try:
            value = lexer.process()
        except _ExpandError:
            return url
        return url if lexer.missing else value


class UnknownStage(DockerfileError):
    """The target stage asked for is not in the Dockerfile (callers know which setting asked)."""


def _find_target(stages: list[_Stage], target: str | None, path: Path) -> _Stage:
    if target is None:
        return stages[-1]
    for stage in stages:
        if stage.name == target.lower():
            return stage
    names = ", ".join(stage.name for stage in stages if stage.name) or "(no stage is named)"
    raise UnknownStage(
        f"target stage {target!r} not found in {path}; available stages: {names}",
        where=str(path),
        fix="set target to one of the stage names (FROM ... AS <name>)",
    )


def _needed(target: _Stage, path: Path) -> list[_Stage]:
    """The target plus every stage it reaches via FROM or --from, in file order."""
    seen: dict[int, _Stage] = {}
    todo = [target]
    while todo:
        stage = todo.pop()
        if stage.index in seen:
            continue
        seen[stage.index] = stage
        for dep, line in stage.deps:
            if isinstance(dep, _Stage):
                _check_defined_before(dep, stage, f"{path}:{line}")
                todo.append(dep)
        if stage.parent is not None:
            todo.append(stage.parent)
    return [seen[index] for index in sorted(seen)]


def _check_defined_before(source: _Stage, user: _Stage, where: str) -> None:
    # BuildKit dispatches stages in file order, so --from can only see earlier ones.
    if source.index >= user.index:
        raise DockerfileError(
            f"stage {user.label!r} uses stage {source.label!r}, which is not defined before it",
            where=where,
            fix="move the referenced stage above the one that uses it",
        )


def _stage_image(stage: _Stage) -> BaseImage | None:
    """The external image a stage is built FROM; None for scratch or an earlier stage."""
    if stage.parent is not None or stage.ref.lower() == _SCRATCH:
        return None
    return BaseImage(ref=stage.ref, stage=stage.label, line=stage.line, platform=stage.platform)


def _record_images(stage: _Stage, found: _Found) -> None:
    image = _stage_image(stage)
    if image is not None:
        found.images.setdefault((image.ref, image.platform), image)
    for dep, line in stage.deps:
        if isinstance(dep, str):
            found.images.setdefault((dep, None), BaseImage(ref=dep, stage=stage.label, line=line, platform=None))


def _target_stage_name(groups: list[list[Any]], target: str | None) -> str:
    """TARGETSTAGE: the requested target or the last stage's name (before expansion)."""
    if target is not None:
        return target
    value = groups[-1][0].value
    return value[2].lower() if len(value) == 3 else ""


def analyze_dockerfile(
    path: Path,
    *,
    target: str | None,
    build_args: Mapping[str, str],
    target_platform: str,
    build_platform: str,
) -> DockerfilePlan:
    """What building `target` of the Dockerfile at `path` needs, as BuildKit would resolve it."""
    commands, escape = _read(path)
    analyzer = _Analyzer(path, build_args, escape)
    meta, groups = analyzer.split(commands)
    auto = _automatic_args(target_platform, build_platform, _target_stage_name(groups, target), build_args)
    args = analyzer.global_args(meta, auto)
    stages = analyzer.stages(groups, args)
    found = _Found()
    envs: dict[int, dict[str, str]] = {}
    needed = _needed(_find_target(stages, target, path), path)
    for stage in needed:
        # A stage built FROM another inherits its ARG and ENV values.
        env = dict(envs[stage.parent.index]) if stage.parent is not None else {}
        _record_images(stage, found)
        analyzer.scan(stage, env, args, found)
        envs[stage.index] = env
    return DockerfilePlan(
        base_images=tuple(found.images.values()),
        context_sources=tuple(found.sources),
        stages=tuple(stage.label for stage in needed),
        urls=tuple(found.urls),
        instructions=tuple(c.original for c in meta)
        + tuple(c.original for stage in needed for c in groups[stage.index]),
        stage_images=tuple(image for stage in needed if (image := _stage_image(stage)) is not None),
    )


def rewrite_from_lines(text: str, images: Mapping[int, str]) -> str:
    """`text` with the FROM instruction starting at each line of `images`
    naming that image instead; its flags and `AS name` are kept as written.

    A multi-line FROM becomes one line and its continuation lines are left
    blank, so every other instruction keeps its line number (BuildKit's
    errors then point at the right line of the user's file).
    """
    lines = text.split("\n")  # as BuildKit counts lines; every other byte stays as it is
    commands = {c.start_line: c for c in dockerfile.parse_string(text) if c.cmd.upper() == "FROM"}
    for line, image in images.items():
        command = commands.get(line)
        if command is None:
            raise ValueError(f"line {line} does not start a FROM instruction")
        lines[line - 1] = _from_with_image(command, image)
        for number in range(line, command.end_line):
            lines[number] = ""
    return "\n".join(lines)


def _from_with_image(cmd: Any, image: str) -> str:
    """FROM [flags] <image> [AS name], from the instruction's own text.

    The Go parser drops quotes from flags, so they are cut out of `original`
    (continuations joined): what lies between the keyword and the trailing
    image [AS name] words, which it reports verbatim.
    """
    keyword, rest = cmd.original.split(None, 1)
    for word in reversed(cmd.value):
        rest = rest.rstrip()
        if not rest.endswith(word):
            raise ValueError(f"cannot find {word!r} in {cmd.original!r}")
        rest = rest[: -len(word)]
    return " ".join([keyword, *filter(None, [rest.strip()]), image, *cmd.value[1:]])


# --- the build context ---------------------------------------------------------------


class _CasePattern(Pattern):
    def match(self, filepath: str) -> bool:
        # docker-py's Pattern.match lower-cases path and pattern; docker on Linux does not.
        return bool(fnmatchcase(filepath.replace(os.sep, "/"), self.cleaned_pattern))


class _IgnoreMatcher(PatternMatcher):
    """docker-py's .dockerignore matcher (**, !exceptions, walk), made case-sensitive."""

    def __init__(self, patterns: Sequence[str]) -> None:
        super().__init__([])
        # Same shape as PatternMatcher.__init__, which also always keeps .dockerignore.
        cased = [_CasePattern(p) for p in [*patterns, "!.dockerignore"]]
        self.patterns = [p for p in cased if p.dirs]


def _dockerignore_patterns(context_dir: Path) -> list[str]:
    """Lines of .dockerignore as docker reads them: trimmed, no blanks or # comments."""
    path = context_dir / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _context_entries(context_dir: Path) -> tuple[set[str], set[str]]:
    """(files and symlinks, directories) of the context that .dockerignore lets through."""
    files: set[str] = set()
    dirs: set[str] = set()
    for rel in _IgnoreMatcher(_dockerignore_patterns(context_dir)).walk(str(context_dir)):
        rel = rel.replace(os.sep, "/")
        full = context_dir / rel
        if full.is_symlink() or full.is_file():
            files.add(rel)
        elif full.is_dir():
            dirs.add(rel)
        # A re-included file keeps its (ignored) parent directories in the context.
        dirs.update(str(parent) for parent in PurePosixPath(rel).parents if str(parent) != ".")
    return files, dirs


def _clean(source: str) -> str:
    """Context-relative form of a source, as BuildKit's path.Join("/", src); "" is the root."""
    return posixpath.normpath("/" + source).lstrip("/")


def _has_wildcard(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _component_matches(name: str, pattern: str) -> bool:
    # Go's filepath.Match: "**" is just "*" and "[^...]" negates; docker-py spells that "[!...]".
    pattern = re.sub(r"\*+", "*", pattern).replace("[^", "[!")
    return bool(fnmatchcase(name, pattern))


def _match_source(source: str, files: set[str], dirs: set[str]) -> list[str]:
    if source == "":
        return [""]
    if not _has_wildcard(source):
        return [source] if source in files or source in dirs else []
    parts = source.split("/")
    return sorted(
        path
        for path in files | dirs
        if len(names := path.split("/")) == len(parts) and all(map(_component_matches, names, parts))
    )


def _files_below(match: str, files: set[str]) -> set[str]:
    if match in files:
        return {match}
    prefix = f"{match}/" if match else ""
    return {path for path in files if path.startswith(prefix)}


def _not_found(context_dir: Path, source: str) -> DockerfileError:
    clean = _clean(source)
    ignored = bool(clean) and not _has_wildcard(clean) and os.path.lexists(context_dir / clean)
    reason = "is excluded by .dockerignore" if ignored else "matches nothing in the build context"
    return DockerfileError(
        f"COPY/ADD source {source!r} {reason} (docker would fail with 'not found')",
        where=str(context_dir),
        fix="check the path is relative to the build context and not excluded by .dockerignore",
    )


def select_context_files(
    context_dir: Path, sources: Sequence[str], *, dockerfile_path: str = "Dockerfile"
) -> list[str]:
    """Sorted context-relative POSIX paths of the files (and symlinks) `sources` select.

    `dockerfile_path` is the Dockerfile's path inside the context; it and .dockerignore
    are left out unless a source names them exactly.
    """
    if not context_dir.is_dir():
        raise DockerfileError(
            "build context is not a directory", where=str(context_dir), fix="check the context path in kaibuild.toml"
        )
    files, dirs = _context_entries(context_dir)
    selected: set[str] = set()
    for source in sources:
        matches = _match_source(_clean(source), files, dirs)
        if not matches:
            raise _not_found(context_dir, source)
        for match in matches:
            selected |= _files_below(match, files)
    hidden = {".dockerignore", _clean(dockerfile_path)} - {_clean(source) for source in sources}
    return sorted(selected - hidden)
