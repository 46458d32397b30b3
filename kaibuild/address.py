"""Target addresses: //path:name, and the patterns //... and //path/... ."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kaibuild.errors import ConfigError

_SEGMENT = r"[A-Za-z0-9._-]+"
_ADDRESS = re.compile(rf"^//((?:{_SEGMENT}/)*{_SEGMENT})?:({_SEGMENT})$")


@dataclass(frozen=True, order=True)
class Address:
    path: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Address:
        match = _ADDRESS.match(text.strip())
        if not match:
            raise ConfigError(
                f"invalid target address {text!r}",
                fix="addresses look like //services:scheduler (use 'kaibuild list' to see them)",
            )
        return cls(match.group(1) or "", match.group(2))

    def __str__(self) -> str:
        return f"//{self.path}:{self.name}"


def matches(pattern: str, address: Address) -> bool:
    """True if a command-line pattern selects the address.

    `//...` selects everything, `//services/...` everything under services,
    `//services:scheduler` exactly one target.
    """
    pattern = pattern.strip()
    if pattern == "//...":
        return True
    if pattern.endswith("/..."):
        prefix = pattern[2:-4]
        return address.path == prefix or address.path.startswith(prefix + "/")
    return Address.parse(pattern) == address
