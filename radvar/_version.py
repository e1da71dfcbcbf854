"""The package version, in one place (imported by ``radvar`` and by what records provenance)."""

__version__ = "0.1.0"
