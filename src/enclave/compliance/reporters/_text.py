"""Small text helpers the reporters share."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from enclave.compliance.model import CheckResult

__all__ = ["evidence_lines", "mapping_text", "short"]

MAX_VALUE = 2000
"""A longer evidence value is cut (with ``...``): reports stay readable; JSON keeps it all."""


def short(value: Any, limit: int = MAX_VALUE) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def evidence_lines(result: CheckResult) -> list[str]:
    """``name = value`` per evidence item, the message first when there is one."""
    lines = [f"why: {result.message}"] if result.message else []
    lines.extend(f"{name} = {short(value)}" for name, value in result.evidence.items())
    return lines


def mapping_text(result: CheckResult) -> str:
    """``nist-800-53 AC-6, CM-7; cis-docker 5.4`` (families without ids left out)."""
    return "; ".join(
        f"{family} {', '.join(ids)}"
        for family, ids in result.check.mappings.as_dict().items()
        if ids
    )
