"""The package version, defined once (the package root and checkpoint headers read it)."""

__version__ = "0.3.0.dev0"
