"""enclave: provision sandboxed, air-gapped model-serving enclaves and keep them honest."""

from __future__ import annotations

from enclave._version import __version__

__all__ = ["__version__"]
