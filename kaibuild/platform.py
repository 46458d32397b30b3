"""Target platforms (os/arch[/variant]), normalised so aliases share one key."""

from __future__ import annotations

from dataclasses import dataclass

from kaibuild.errors import ConfigError

_ARCH_ALIASES = {
    "x86_64": "amd64", "x86-64": "amd64", "x64": "amd64", "amd64": "amd64",
    "aarch64": "arm64", "arm64": "arm64",
    "armhf": "arm", "arm": "arm", "i386": "386", "386": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}
# Variants that are the only (or default) one of their arch, so "arm64/v8"
# and "arm64" name the same platform.
_DEFAULT_VARIANT = {"arm64": "v8", "amd64": "v1"}
# The variants each arch has (OCI image spec); others have none.
_VARIANTS = {"arm64": ("v8", "v8.1", "v8.2", "v8.3", "v8.4", "v8.5", "v9"), "arm": ("v5", "v6", "v7", "v8"),
             "amd64": ("v1", "v2", "v3", "v4")}
# ELF e_machine values (and word size) per Go arch, for checking binaries.
ELF_MACHINE = {"amd64": 62, "arm64": 183, "arm": 40, "386": 3, "ppc64le": 21, "s390x": 22, "riscv64": 243}


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    arch: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = [p for p in text.strip().lower().split("/") if p]
        if (len(parts) in (1, 2) and parts[0] in _ARCH_ALIASES) or parts[:1] == ["armv7"]:
            parts = ["linux", *parts]  # a bare arch like "arm64" or "arm64/v8" means linux
        if len(parts) not in (2, 3):
            raise ConfigError(f"invalid platform {text!r}", fix="write it as os/arch[/variant], e.g. linux/amd64")
        os_, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else ""
        if arch == "armv7" or arch == "armv6":
            arch, variant = "arm", arch[3:]
        if arch not in _ARCH_ALIASES:
            raise ConfigError(
                f"unknown architecture {parts[1]!r} in platform {text!r}",
                fix="use one of amd64 (x86_64), arm64 (aarch64), arm/v7, ppc64le, s390x, riscv64",
            )
        arch = _ARCH_ALIASES[arch]
        if variant and variant not in _VARIANTS.get(arch, ()):
            known = ", ".join(_VARIANTS.get(arch, ())) or "none"
            hint = "; 32-bit ARM is linux/arm/v7" if arch == "arm64" else ""
            raise ConfigError(f"unknown variant {variant!r} for {arch} in platform {text!r}",
                              fix=f"{arch}'s variants: {known} (or leave it out){hint}")
        if arch == "arm" and not variant:
            variant = "v7"
        if _DEFAULT_VARIANT.get(arch) == variant:
            variant = ""
        if os_ != "linux":
            raise ConfigError(f"unsupported OS {os_!r} in platform {text!r}", fix="container images here are linux/<arch>")
        return cls(os_, arch, variant)

    def __str__(self) -> str:
        return f"{self.os}/{self.arch}/{self.variant}" if self.variant else f"{self.os}/{self.arch}"

    @property
    def dirname(self) -> str:
        """Directory name for outputs: dist/linux_amd64/."""
        return str(self).replace("/", "_")


def parse_platforms(text: str) -> list[Platform]:
    """A comma list like "linux/amd64,aarch64", deduplicated in order."""
    result: list[Platform] = []
    for item in text.split(","):
        if item.strip():
            platform = Platform.parse(item)
            if platform not in result:
                result.append(platform)
    if not result:
        raise ConfigError("no platform given", fix="pass --platform linux/amd64 (or a comma list)")
    return result
