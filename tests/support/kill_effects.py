"""A stand-in for the kill's engine and Vault steps, for the controller's unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from enclave.errors import DockerError


@dataclass
class KillEffects:
    """The kill's steps, recorded by name; ``failures[name]`` tries of a step fail first.

    ``deny`` reaches the gateways through ``inner`` (the controller's real effects) when one is
    given, else it is recorded like the others.
    """

    calls: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    inner: Any = None

    async def _do(self, name: str) -> str:
        self.calls.append(name)
        if self.failures.get(name, 0) > 0:
            self.failures[name] -= 1
            raise DockerError(f"{name}: the engine said no")
        return f"{name} done"

    async def deny(self, reason: str) -> str:
        if self.inner is None:
            return await self._do("deny")
        self.calls.append("deny")
        return str(await self.inner.deny(reason))

    async def stop_models(self) -> str:
        return await self._do("stop_models")

    async def detach_networks(self) -> str:
        return await self._do("detach")

    async def revoke(self) -> str:
        return await self._do("revoke")

    async def seal(self) -> str:
        return await self._do("seal")
