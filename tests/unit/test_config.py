from pathlib import Path

import pytest

from kaibuild.address import Address
from kaibuild.config import load_config, parse_mirrors
from kaibuild.errors import ConfigError

SCHEMAS = {"thing": {"path": str, "flag": bool, "args": dict}}


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "kaibuild.toml").write_text(text)
    return tmp_path


def test_for_each_expands_one_target_per_item(tmp_path: Path) -> None:
    ws = write(tmp_path, """
[vars]
version = "1.2"
[lists]
services = ["a", "b"]
[[target]]
address = "//services:{service}"
for_each = { service = "services" }
kind = "thing"
path = "cmd/{service}/{arch}"
args = { V = "{version}" }
""")
    config = load_config(ws, SCHEMAS)
    assert sorted(map(str, config.targets)) == ["//services:a", "//services:b"]
    spec = config.targets[Address.parse("//services:b")]
    assert spec.settings == {"path": "cmd/b/{arch}", "args": {"V": "1.2"}}


def test_unknown_setting_names_file_line_and_key(tmp_path: Path) -> None:
    ws = write(tmp_path, '[[target]]\naddress = "//a:b"\nkind = "thing"\n\npaht = "x"\n')
    with pytest.raises(ConfigError) as error:
        load_config(ws, SCHEMAS)
    assert f"{ws / 'kaibuild.toml'}:5 (paht)" in str(error.value)
    assert "path" in error.value.fix


def test_wrong_type_names_the_expected_type(tmp_path: Path) -> None:
    ws = write(tmp_path, '[[target]]\naddress = "//a:b"\nkind = "thing"\nflag = "yes"\n')
    with pytest.raises(ConfigError) as error:
        load_config(ws, SCHEMAS)
    assert ":4 (flag)" in str(error.value) and "true or false" in str(error.value)


def test_toml_syntax_error_has_a_line(tmp_path: Path) -> None:
    ws = write(tmp_path, '[workspace]\ndefault_platforms = [\n')
    with pytest.raises(ConfigError) as error:
        load_config(ws, SCHEMAS)
    assert "kaibuild.toml:" in str(error.value)


def test_unknown_placeholder_is_an_error(tmp_path: Path) -> None:
    ws = write(tmp_path, '[[target]]\naddress = "//a:b"\nkind = "thing"\npath = "{nope}"\n')
    with pytest.raises(ConfigError, match="unknown placeholder"):
        load_config(ws, SCHEMAS)


def test_a_targets_own_setting_wins_over_vars_as_a_placeholder(tmp_path: Path) -> None:
    # [vars] version is the services' version; a target with its own version means that one.
    ws = write(tmp_path, """
[vars]
version = "0.0.0"
[[target]]
address = "//a:own"
kind = "thing"
path = "https://x/v{version}/kubectl"
version = "1.35.0"
[[target]]
address = "//a:vars"
kind = "thing"
path = "registry/{version}"
""")
    schemas = {"thing": {**SCHEMAS["thing"], "version": str}}
    targets = load_config(ws, schemas).targets
    assert targets[Address.parse("//a:own")].settings["path"] == "https://x/v1.35.0/kubectl"
    assert targets[Address.parse("//a:vars")].settings["path"] == "registry/0.0.0"


def test_unknown_kind_lists_the_known_ones(tmp_path: Path) -> None:
    ws = write(tmp_path, '[[target]]\naddress = "//a:b"\nkind = "thnig"\n')
    with pytest.raises(ConfigError) as error:
        load_config(ws, SCHEMAS)
    assert ":3 (kind)" in str(error.value) and "thing" in error.value.fix


def test_duplicate_address_is_rejected(tmp_path: Path) -> None:
    ws = write(tmp_path, '[[target]]\naddress = "//a:b"\nkind = "thing"\n[[target]]\naddress = "//a:b"\nkind = "thing"\n')
    with pytest.raises(ConfigError, match="declared twice"):
        load_config(ws, SCHEMAS)


def test_default_platform_is_amd64_not_the_host(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""), SCHEMAS)
    assert [str(p) for p in config.default_platforms] == ["linux/amd64"]


def test_mirrors_from_environment_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAIBUILD_REGISTRY_MIRRORS", "docker.io=127.0.0.1:5000/hub")
    ws = write(tmp_path, '[registry]\nmirrors = { "docker.io" = "x", "nvcr.io" = "y" }\n')
    assert load_config(ws, SCHEMAS).mirrors == {"docker.io": "127.0.0.1:5000/hub", "nvcr.io": "y"}


def test_malformed_mirror_variable_is_explained() -> None:
    with pytest.raises(ConfigError, match="KAIBUILD_REGISTRY_MIRRORS"):
        parse_mirrors("docker.io")


def test_workspace_without_config_uses_the_kai_layout(tmp_path: Path) -> None:
    from kaibuild.cli import _schemas

    config = load_config(tmp_path, _schemas())
    assert Address.parse("//services:scheduler") in config.targets
    assert config.targets[Address.parse("//services:scheduler")].settings["build_args"] == {"SERVICE_NAME": "scheduler"}


def test_manual_targets_are_left_out_of_wildcards(tmp_path: Path) -> None:
    from kaibuild.cache import Store
    from kaibuild.cli import _roots
    from kaibuild.context import Context
    from kaibuild.platform import Platform

    ws = write(tmp_path, '[[target]]\naddress = "//a:auto"\nkind = "thing"\n[[target]]\naddress = "//a:by-name"\nkind = "thing"\n'
                         'manual = true\n')
    config = load_config(ws, SCHEMAS)
    assert config.targets[Address.parse("//a:by-name")].manual

    class Thing:
        def node_platform(self, settings: dict, requested: object, ctx: object) -> object:
            return requested

    ctx = Context(config, Store(tmp_path / "cache"), {"thing": Thing()})  # type: ignore[dict-item]
    amd64 = [Platform.parse("linux/amd64")]
    assert [n.id.label for n in _roots(["//..."], config, ctx, amd64)] == ["//a:auto"]
    assert [n.id.label for n in _roots(["//a:by-name"], config, ctx, amd64)] == ["//a:by-name"]


def test_typo_in_workspace_or_registry_table_is_an_error(tmp_path: Path) -> None:
    ws = write(tmp_path, '[workspace]\ndefault_platform = ["linux/arm64"]\n')
    with pytest.raises(ConfigError) as error:
        load_config(ws, SCHEMAS)
    assert ":2 (default_platform)" in str(error.value) and "default_platforms" in error.value.fix
    ws = write(tmp_path, '[registry]\nmirror = {}\n')
    with pytest.raises(ConfigError, match="unknown setting 'mirror' in \\[registry\\]"):
        load_config(ws, SCHEMAS)
