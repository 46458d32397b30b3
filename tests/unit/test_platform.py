import pytest

from kaibuild.errors import ConfigError
from kaibuild.platform import Platform, parse_platforms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("x86_64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("LINUX/ARM64", "linux/arm64"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/armv7", "linux/arm/v7"),
        ("arm64/v8", "linux/arm64"),
        ("arm/v7", "linux/arm/v7"),
    ],
)
def test_aliases_normalise_to_one_platform(text: str, expected: str) -> None:
    assert str(Platform.parse(text)) == expected


def test_comma_list_is_deduplicated_in_order() -> None:
    assert [str(p) for p in parse_platforms("linux/arm64, aarch64,linux/amd64")] == ["linux/arm64", "linux/amd64"]


@pytest.mark.parametrize("text", ["linux/sparc", "windows/amd64", "a/b/c/d", ""])
def test_bad_platform_is_a_config_error_with_a_fix(text: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_platforms(text)
    assert error.value.fix


@pytest.mark.parametrize(("text", "named"), [("linux/arm64/v7", "linux/arm/v7"), ("linux/amd64/v9", "v1, v2, v3, v4"),
                                              ("linux/s390x/v2", "none")])
def test_a_variant_the_arch_does_not_have_is_refused_naming_the_real_ones(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match="unknown variant") as error:
        Platform.parse(text)
    assert error.value.fix and named in error.value.fix


def test_known_variants_are_kept() -> None:
    assert str(Platform.parse("linux/arm/v6")) == "linux/arm/v6"
    assert str(Platform.parse("linux/amd64/v3")) == "linux/amd64/v3"


def test_dirname_is_filesystem_safe() -> None:
    assert Platform.parse("linux/amd64").dirname == "linux_amd64"
