"""kaibuild: builds a Go monorepo's container images per platform, incrementally and offline."""

__version__ = "0.1.0"
