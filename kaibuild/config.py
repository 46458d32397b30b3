"""Loads kaibuild.toml into validated target specs.

A workspace uses its own kaibuild.toml if it has one; otherwise the layout
file at the root of this repository (the KAI layout) serves it. Errors name
the file, the line and the key.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toml

from kaibuild.address import Address
from kaibuild.errors import ConfigError
from kaibuild.platform import Platform, parse_platforms

CONFIG_NAME = "kaibuild.toml"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / CONFIG_NAME
# Placeholders a rule fills in per action, so the loader must leave them be.
LATE_PLACEHOLDERS = frozenset({"os", "arch", "variant", "platform", "module"})
_TOP_LEVEL = {"workspace", "registry", "vars", "lists", "target"}
_TARGET_COMMON = {"address", "kind", "for_each", "manual"}


@dataclass(frozen=True)
class TargetSpec:
    address: Address
    kind: str
    settings: dict[str, Any]
    where: str  # "file:line" of the [[target]] that declared it
    manual: bool = False  # left out of //... patterns (as Bazel's "manual" tag); built when named


@dataclass
class Config:
    path: Path
    workspace: Path
    default_platforms: list[Platform]
    dist_dir: str
    mirrors: dict[str, str]
    targets: dict[Address, TargetSpec] = field(default_factory=dict)


def find_config(workspace: Path) -> Path:
    own = workspace / CONFIG_NAME
    if own.is_file():
        return own
    override = os.environ.get("KAIBUILD_DEFAULT_CONFIG")
    if override:
        return Path(override)
    if not DEFAULT_CONFIG.is_file():  # a non-editable install: the default sits in kaibuild's repository, not here
        raise ConfigError(f"no {CONFIG_NAME} in {workspace}, and this kaibuild install has no default one",
                          where=str(own),
                          fix=f"copy kaibuild's own {CONFIG_NAME} (the root of its repository) into the workspace, "
                              f"set KAIBUILD_DEFAULT_CONFIG to it, or install kaibuild with 'pip install -e <its clone>'")
    return DEFAULT_CONFIG


def load_config(workspace: Path, schemas: dict[str, dict[str, type | tuple[type, ...]]]) -> Config:
    """Read and validate the config that serves `workspace`.

    `schemas` maps each registered rule kind to its settings and their types.
    """
    path = find_config(workspace)
    text = _read(path)
    try:
        data = toml.loads(text)
    except toml.TomlDecodeError as exc:
        raise ConfigError(f"TOML syntax error: {exc.msg}", where=f"{path}:{exc.lineno}",
                          fix="correct the TOML syntax at that line") from None
    locate = _Locator(path, text)
    for key in data:
        if key not in _TOP_LEVEL:
            raise ConfigError(f"unknown section [{key}]", where=locate(key),
                              fix=f"use one of: {', '.join(sorted(_TOP_LEVEL))}")
    _check_keys(data, "workspace", {"default_platforms", "dist_dir"}, locate)
    _check_keys(data, "registry", {"mirrors"}, locate)
    ws = data.get("workspace", {})
    platforms = ws.get("default_platforms", ["linux/amd64"])
    if not isinstance(platforms, list) or not platforms:
        raise ConfigError("default_platforms must be a non-empty list of strings",
                          where=locate("workspace", "default_platforms"), fix='e.g. default_platforms = ["linux/amd64"]')
    try:
        default_platforms = parse_platforms(",".join(map(str, platforms)))
    except ConfigError as exc:
        raise ConfigError(exc.message, where=locate("workspace", "default_platforms"), fix=exc.fix) from None
    variables = {k: str(v) for k, v in data.get("vars", {}).items()}
    lists = data.get("lists", {})
    config = Config(
        path=path, workspace=workspace,
        default_platforms=default_platforms,
        dist_dir=str(ws.get("dist_dir", "dist")),
        mirrors=_mirrors(data.get("registry", {}).get("mirrors", {}), locate),
    )
    for index, raw in enumerate(data.get("target", [])):
        for spec in _expand_target(raw, index, variables, lists, schemas, locate):
            if spec.address in config.targets:
                raise ConfigError(f"target {spec.address} is declared twice", where=spec.where,
                                  fix=f"rename one of them (the other is at {config.targets[spec.address].where})")
            config.targets[spec.address] = spec
    return config


def _check_keys(data: dict[str, Any], table: str, known: set[str], locate: _Locator) -> None:
    for key in data.get(table, {}):
        if key not in known:
            raise ConfigError(f"unknown setting {key!r} in [{table}]", where=locate(table, key),
                              fix=f"[{table}] settings are: {', '.join(sorted(known))}")


def parse_mirrors(text: str) -> dict[str, str]:
    """KAIBUILD_REGISTRY_MIRRORS: "docker.io=127.0.0.1:5000,nvcr.io=host/prefix"."""
    mirrors: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        registry, sep, mirror = item.partition("=")
        if not sep or not registry.strip() or not mirror.strip():
            raise ConfigError(f"invalid registry mirror {item!r}", where="KAIBUILD_REGISTRY_MIRRORS",
                              fix="write REGISTRY=MIRROR[/PREFIX] pairs separated by commas, e.g. docker.io=127.0.0.1:5000")
        mirrors[registry.strip()] = mirror.strip().rstrip("/")
    return mirrors


def _mirrors(raw: Any, locate: _Locator) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ConfigError("mirrors must be a table of registry = \"mirror\" strings",
                          where=locate("registry", "mirrors"), fix='e.g. mirrors = { "docker.io" = "127.0.0.1:5000" }')
    mirrors = {k: v.rstrip("/") for k, v in raw.items()}
    mirrors.update(parse_mirrors(os.environ.get("KAIBUILD_REGISTRY_MIRRORS", "")))
    return mirrors


def _expand_target(raw: dict[str, Any], index: int, variables: dict[str, str], lists: dict[str, Any],
                   schemas: dict[str, dict[str, Any]], locate: _Locator) -> list[TargetSpec]:
    where = locate.target(index)
    kind = raw.get("kind")
    if kind not in schemas:
        raise ConfigError(f"unknown rule kind {kind!r}", where=locate.target(index, "kind"),
                          fix=f"kind must be one of: {', '.join(sorted(schemas))}")
    if "address" not in raw:
        raise ConfigError("target has no address", where=where, fix='add address = "//path:name"')
    schema = schemas[kind]
    for key, value in raw.items():
        if key in _TARGET_COMMON:
            continue
        if key not in schema:
            raise ConfigError(f"unknown setting {key!r} for a {kind} target", where=locate.target(index, key),
                              fix=f"{kind} settings are: {', '.join(sorted(schema))}")
        if not isinstance(value, schema[key]):
            raise ConfigError(f"setting {key!r} has the wrong type ({type(value).__name__})",
                              where=locate.target(index, key), fix=f"it must be {_type_name(schema[key])}")
    items: list[dict[str, str]] = [{}]
    if "for_each" in raw:
        for_each = raw["for_each"]
        if not (isinstance(for_each, dict) and len(for_each) == 1):
            raise ConfigError("for_each must name one list, e.g. for_each = { service = \"services\" }",
                              where=locate.target(index, "for_each"))
        (name, list_name), = for_each.items()
        values = lists.get(list_name)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"for_each refers to list {list_name!r}, which is missing or empty",
                              where=locate.target(index, "for_each"), fix=f"add [lists] {list_name} = [\"...\"]")
        items = [{name: str(v)} for v in values]
    # A target's own plain settings are placeholders too, ahead of [vars]: a
    # download's {version} is its own version, not the services' version.
    own = {k: v for k, v in raw.items() if k not in _TARGET_COMMON and isinstance(v, str) and "{" not in v}
    specs = []
    for item in items:
        scope = {**variables, **own, **item}
        settings = {k: _substitute(v, scope, locate.target(index, k)) for k, v in raw.items() if k not in _TARGET_COMMON}
        address_text = _substitute(raw["address"], scope, locate.target(index, "address"))
        try:
            address = Address.parse(address_text)
        except ConfigError as exc:
            raise ConfigError(exc.message, where=locate.target(index, "address"), fix=exc.fix) from None
        manual = raw.get("manual", False)
        if not isinstance(manual, bool):
            raise ConfigError("manual must be true or false", where=locate.target(index, "manual"))
        specs.append(TargetSpec(address=address, kind=kind, settings=settings, where=where, manual=manual))
    return specs


def _substitute(value: Any, scope: dict[str, str], where: str) -> Any:
    """Fill {name} placeholders from the scope ([vars], own settings, for_each); keep the late ones."""
    if isinstance(value, list):
        return [_substitute(v, scope, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, scope, where) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    out = []
    for literal, name, _spec, _conv in string.Formatter().parse(value):
        out.append(literal)
        if name is None:
            continue
        if name in scope:
            out.append(scope[name])
        elif name in LATE_PLACEHOLDERS:
            out.append("{" + name + "}")
        else:
            raise ConfigError(f"unknown placeholder {{{name}}} in {value!r}", where=where,
                              fix=f"define it under [vars], or use one of: {', '.join(sorted(set(scope) | LATE_PLACEHOLDERS))}")
    return "".join(out)


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", bool: "true or false", int: "an integer", list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", where=str(path),
                          fix="create a kaibuild.toml in the workspace, or run kaibuild from its repository") from None


class _Locator:
    """Finds the line of a table or key in the TOML text, for error messages."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()

    def __call__(self, table: str, key: str | None = None) -> str:
        return self._find(re.compile(rf"^\s*\[\s*{re.escape(table)}\s*\]"), 0, key)

    def target(self, index: int, key: str | None = None) -> str:
        return self._find(re.compile(r"^\s*\[\[\s*target\s*\]\]"), index, key)

    def _find(self, header: re.Pattern[str], occurrence: int, key: str | None) -> str:
        seen, start = -1, None
        for number, line in enumerate(self.lines, 1):
            if header.match(line):
                seen += 1
                if seen == occurrence:
                    start = number
                    break
        if start is None:
            return str(self.path)
        if key:
            key_line = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*[=.]")
            for number in range(start + 1, len(self.lines) + 1):
                line = self.lines[number - 1]
                if re.match(r"^\s*\[", line):
                    break
                if key_line.match(line):
                    return f"{self.path}:{number} ({key})"
        return f"{self.path}:{start}"
