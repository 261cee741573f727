"""The ``enclave`` command line: thin Typer commands over the library, one module per group."""

from __future__ import annotations
