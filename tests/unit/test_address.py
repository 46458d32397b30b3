import pytest

from kaibuild.address import Address, matches
from kaibuild.errors import ConfigError


def test_parse_and_print_round_trip() -> None:
    address = Address.parse("//services:scheduler")
    assert (address.path, address.name) == ("services", "scheduler")
    assert str(address) == "//services:scheduler"


@pytest.mark.parametrize("text", ["services:scheduler", "//services", "//:", "//a b:c"])
def test_malformed_addresses_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError):
        Address.parse(text)


def test_patterns_select_the_right_targets() -> None:
    scheduler = Address.parse("//services:scheduler")
    builder = Address.parse("//build:builder")
    assert matches("//...", scheduler) and matches("//...", builder)
    assert matches("//services/...", scheduler) and not matches("//services/...", builder)
    assert matches("//services:scheduler", scheduler) and not matches("//services:binder", scheduler)
