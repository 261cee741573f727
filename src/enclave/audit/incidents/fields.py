"""Checked reads of JSON values (record details, index entries).

Each raises ``KeyError``, ``TypeError`` or ``ValueError`` when the value is missing or malformed;
callers turn that into the error that fits what they were reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(key)
    return value


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(key)
    return value


def _mapping(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data[key]
    if not isinstance(value, Mapping):
        raise TypeError(key)
    return value


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TypeError(key)
    return float(value)


def _seqs(value: object) -> list[int]:
    if not isinstance(value, list | tuple):
        raise TypeError("evidence")
    for seq in value:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise TypeError("evidence")
    return list(value)
