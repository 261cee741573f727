"""The kill switch's actions: in a fixed order, each timed, retried and reported.

::

    1. gateways deny all and cut streams   a signed KILL to every gateway
    2. model containers stopped            SIGKILL through the engine, then off every network
    3. networks detached                   the gateways off the enclave's internal network
    4. vault tokens revoked                every workload token of the enclave, in one call
    5. vault sealed                        only when ``spec.shutdown.sealVault`` (break-glass)

:func:`run_kill` runs them against a :class:`KillEffects` (the real one is
:class:`EnclaveEffects`; unit tests pass fakes). Each step gets ``attempts`` tries with a short
backoff; a step that still fails is reported (:class:`StepResult` with ``ok=False``) and the
next step runs anyway: a later step failing never leaves the enclave serving, and the steps
before it are never undone. Stopping is also fail-closed by construction: from the moment the
controller starts a kill it stops heartbeating, so a gateway that missed the KILL still stops
serving when its lease lapses.

Every result carries when the step began (wall clock), how long it took and how long after the
trigger it ended (``offset``, from the moment the trigger reached the controller): the incident
timeline and the drill's latencies are read from these.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from enclave.errors import EnclaveError
from enclave.shutdown.control import ControlKind

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from enclave.shutdown.authority import ControllerVault
    from enclave.shutdown.heartbeat import GatewayLink
    from enclave.shutdown.workload import Workload

log = logging.getLogger(__name__)

__all__ = [
    "EnclaveEffects",
    "KillEffects",
    "KillSettings",
    "Step",
    "StepResult",
    "attempt",
    "run_kill",
]


class Step(StrEnum):
    """The kill actions, in the order they run."""

    DENY = "gateways deny all and cut streams"
    STOP_MODELS = "model containers stopped"
    DETACH = "networks detached"
    REVOKE = "vault tokens revoked"
    SEAL = "vault sealed"


class KillEffects(Protocol):
    """What each step does. Each returns a one-line detail, or raises when it failed."""

    async def deny(self, reason: str) -> str:
        """Tell every gateway to deny everything and cut its streams."""
        ...

    async def stop_models(self) -> str: ...

    async def detach_networks(self) -> str: ...

    async def revoke(self) -> str: ...

    async def seal(self) -> str: ...


@dataclass(frozen=True, slots=True)
class KillSettings:
    seal: bool = False
    """Also seal Vault (``spec.shutdown.sealVault``)."""
    attempts: int = 3
    backoff: float = 0.05
    """Seconds before the second try; doubled before each further one."""


@dataclass(frozen=True, slots=True)
class StepResult:
    """How one step went."""

    step: Step
    ok: bool
    attempts: int
    started: float
    """Wall-clock time (``time.time()``) the step began."""
    seconds: float
    """How long the step took, its retries included."""
    offset: float
    """Seconds from the trigger to the end of the step."""
    detail: str

    @property
    def text(self) -> str:
        """The step as one timeline line."""
        tries = f"; {self.attempts} tries" if self.attempts > 1 else ""
        return (
            f"{self.step.value}: {self.detail} (done at trigger+{self.offset * 1000:.1f} ms{tries})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step.value,
            "ok": self.ok,
            "attempts": self.attempts,
            "started": self.started,
            "seconds": round(self.seconds, 6),
            "offset": round(self.offset, 6),
            "detail": self.detail,
        }


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EnclaveError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def attempt(
    step: Step,
    call: Callable[[], Awaitable[str]],
    settings: KillSettings,
    *,
    t0: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> StepResult:
    """Run one step with its retries (``settings.attempts`` tries); never raises for the step."""
    t0 = clock() if t0 is None else t0
    started_wall = time.time()
    started = clock()
    error = ""
    for tried in range(1, settings.attempts + 1):
        try:
            detail = await call()
        except Exception as exc:
            error = _describe(exc)
            log.warning("kill: %s: attempt %d failed: %s", step.value, tried, error)
            if tried < settings.attempts:
                await asyncio.sleep(settings.backoff * 2 ** (tried - 1))
            continue
        end = clock()
        return StepResult(step, True, tried, started_wall, end - started, end - t0, detail)
    end = clock()
    return StepResult(
        step, False, settings.attempts, started_wall, end - started, end - t0, f"failed: {error}"
    )


async def run_kill(
    effects: KillEffects,
    reason: str,
    settings: KillSettings,
    *,
    t0: float | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[StepResult]:
    """Run every step in order; the results, failed ones included.

    ``t0`` is the trigger's moment on ``clock`` (default: now). ``on_step`` sees each result as
    soon as its step ends (it must not block: the controller queues them for the incident).
    """
    start = clock() if t0 is None else t0
    steps: list[tuple[Step, Callable[[], Awaitable[str]]]] = [
        (Step.DENY, lambda: effects.deny(reason)),
        (Step.STOP_MODELS, effects.stop_models),
        (Step.DETACH, effects.detach_networks),
        (Step.REVOKE, effects.revoke),
    ]
    if settings.seal:
        steps.append((Step.SEAL, effects.seal))
    results = []
    for step, call in steps:
        result = await attempt(step, call, settings, t0=start, clock=clock)
        results.append(result)
        if on_step is not None:
            on_step(result)
    return results


class EnclaveEffects:
    """The real steps: the gateways' links, the workload's engine, the controller's Vault."""

    def __init__(
        self,
        links: Sequence[GatewayLink],
        workload: Workload | None,
        vault: ControllerVault | None,
    ) -> None:
        self.links = tuple(links)
        self.workload = workload
        self.vault = vault

    async def deny(self, reason: str) -> str:
        results = await asyncio.gather(
            *(link.send(ControlKind.KILL, reason=reason) for link in self.links)
        )
        failed = [f"{r.url}: {r.error}" for r in results if not r.ok]
        if failed:
            raise EnclaveError(
                f"{len(failed)} of {len(results)} gateway(s) did not confirm: " + "; ".join(failed)
            )
        return f"{len(results)} gateway(s) confirmed"

    async def stop_models(self) -> str:
        if self.workload is None:
            return "skipped: no container backend (gateways and Vault only)"
        return await asyncio.to_thread(self.workload.stop_models)

    async def detach_networks(self) -> str:
        if self.workload is None:
            return "skipped: no container backend (gateways and Vault only)"
        return await asyncio.to_thread(self.workload.detach_gateways)

    async def revoke(self) -> str:
        if self.vault is None:
            return "skipped: no Vault client"
        return await asyncio.to_thread(self.vault.revoke_workloads)

    async def seal(self) -> str:
        if self.vault is None:
            return "skipped: no Vault client"
        return await asyncio.to_thread(self.vault.seal)
