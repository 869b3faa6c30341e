"""The package version, defined once (the package root and checkpoint headers read it)."""

__version__ = "0.2.0"
