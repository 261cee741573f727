"""Vault-managed secrets: the hvac adapter, the embedded OpenBao default, per-enclave identities.

This package is the only place that imports ``hvac``; callers see :mod:`enclave.errors` only.
"""

from __future__ import annotations
