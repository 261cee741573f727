"""Value types of the spec: names, durations, sizes, addresses, digests, image references.

Each type parses the human form used in ``enclave.yaml`` (``500ms``, ``1Gi``, ``127.0.0.1:8443``)
and serialises back to it, so a spec round-trips through ``model_dump(mode="json")``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|k|K|M|G|T)?$")
_SIZE_UNITS = {
    None: 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_REF = re.compile(
    rf"^(?:(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?::\d+)?/)?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
    r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
MAX_DURATION = timedelta(days=366)


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        # pydantic turns only ValueError into a located validation error, not TypeError
        raise ValueError(f"expected {what} as a string, got {type(value).__name__} {value!r}")  # noqa: TRY004
    return value


def check_name(value: str) -> str:
    """Accept a DNS-1123 label (what Kubernetes and Docker both accept as a name)."""
    if not DNS1123_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def parse_duration(value: object) -> timedelta:
    """Parse ``500ms``, ``1s``, ``1m30s``, ``2h``, ``1d`` into a positive timedelta."""
    text = _require_str(value, "a duration like 500ms, 1s, 5m or 1h").strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"invalid duration {text!r} (use e.g. 500ms, 1s, 1m30s, 5m, 1h)")
    if total > MAX_DURATION.total_seconds():  # before timedelta(), which overflows on huge ones
        raise ValueError(f"duration {text!r} is longer than a year")
    result = timedelta(seconds=total)
    if result <= timedelta(0):
        raise ValueError(f"duration {text!r} must be greater than zero")
    if result > MAX_DURATION:
        raise ValueError(f"duration {text!r} is longer than a year")
    return result


def format_duration(value: timedelta) -> str:
    """The shortest exact human form of ``value`` (inverse of :func:`parse_duration`)."""
    ms = round(value.total_seconds() * 1000)
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"


def parse_size(value: object) -> int:
    """Parse a byte size: ``1024``, ``512Mi``, ``1Gi`` (binary) or ``1G`` (decimal)."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        text = _require_str(value, "a size like 512Mi or 1Gi").strip()
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"invalid size {text!r} (use e.g. 512Mi, 1Gi, 2G)")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size <= 0:
        raise ValueError(f"size {text!r} must be greater than zero")
    if size > 1024**5:
        raise ValueError(f"size {text!r} is larger than 1Pi")
    return size


def format_size(value: int) -> str:
    """The shortest exact binary form of ``value`` (``1073741824`` -> ``1Gi``)."""
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        factor = _SIZE_UNITS[unit]
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


@dataclass(frozen=True, slots=True)
class HostPort:
    """An IP literal and a TCP port. Host names are refused: a listener binds an address."""

    host: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    @property
    def is_loopback(self) -> bool:
        return self.host.is_loopback

    def __str__(self) -> str:
        if self.host.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_host_port(value: object) -> HostPort:
    """Parse ``127.0.0.1:8443`` or ``[::1]:8443``."""
    if isinstance(value, HostPort):
        return value
    text = _require_str(value, "an address like 127.0.0.1:8443").strip()
    hint = "use IP:PORT, e.g. 127.0.0.1:8443 or [::1]:8443"
    if text.startswith("["):
        host_text, sep, port_text = text[1:].partition("]:")
    else:
        host_text, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"invalid address {text!r} ({hint})")
    try:
        host = ipaddress.ip_address(host_text)
    except ValueError:
        raise ValueError(f"invalid address {text!r}: {host_text!r} is not an IP ({hint})") from None
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid address {text!r}: port must be 1-65535")
    return HostPort(host, port)


def check_sha256(value: str) -> str:
    digest = value.removeprefix("sha256:")
    if not _SHA256.match(digest):
        raise ValueError(f"{value!r} is not a sha256 digest (64 lowercase hex characters)")
    return digest


def check_image(value: str) -> str:
    if len(value) > 255 or not _IMAGE_REF.match(value):
        raise ValueError(f"{value!r} is not a valid image reference (e.g. enclave/runtime:0.1)")
    return value


def _string_schema(pattern: str, example: str) -> dict[str, Any]:
    return {"type": "string", "pattern": pattern, "examples": [example]}


Name = Annotated[
    str,
    AfterValidator(check_name),
    WithJsonSchema({"type": "string", "pattern": DNS1123_LABEL.pattern, "maxLength": 63}),
]
"""A DNS-1123 label: the name of an enclave, model, role, principal, purpose or prohibited use."""

Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(_string_schema(r"^(\d+(\.\d+)?(ms|s|m|h|d))+$", "1s")),
]
"""A positive duration written ``500ms``, ``1s``, ``1m30s``, ``2h`` or ``1d``."""

ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str),
    WithJsonSchema(_string_schema(r"^\d+(Ki|Mi|Gi|Ti|k|K|M|G|T)?$", "1Gi")),
]
"""A byte size written ``512Mi``, ``1Gi`` (binary) or ``1G`` (decimal)."""

Address = Annotated[
    HostPort,
    PlainValidator(parse_host_port),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(_string_schema(r"^(\[[0-9a-fA-F:.]+\]|[0-9.]+):\d{1,5}$", "127.0.0.1:8443")),
]
"""An ``IP:PORT`` listen address."""

Sha256 = Annotated[
    str,
    AfterValidator(check_sha256),
    WithJsonSchema(_string_schema(r"^(sha256:)?[0-9a-f]{64}$", "0" * 64)),
]
ImageRef = Annotated[
    str,
    AfterValidator(check_image),
    WithJsonSchema({"type": "string", "maxLength": 255, "examples": ["enclave/runtime:0.1"]}),
]
