"""Shutdown state: the dead-man lease, kill and resume, cutting streams, controller commands."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import timedelta

import pytest

from enclave.errors import InputError
from enclave.gateway.control import ControlChannel
from enclave.gateway.denial import Denial, DenialCode
from enclave.gateway.state import LEASE_LAPSED, NEVER_LEASED, Mode, ShutdownState
from enclave.shutdown.control import ControlCommand, ControlKind, sign_control, signature_of
from enclave.spec.model import Shutdown
from support.gateway import Clock

KEY = secrets.token_bytes(32)


def mode_of(state: ShutdownState) -> Mode:
    return state.mode  # (a call, so that the type checker does not narrow across kill/resume)


def denial(state: ShutdownState) -> Denial:
    found = state.check()
    assert found is not None
    assert found.code is DenialCode.ENCLAVE_SHUTDOWN and found.status == 503
    return found


def test_a_gateway_serves_only_while_it_holds_a_lease() -> None:
    clock = Clock()
    state = ShutdownState.from_spec(Shutdown(), clock=clock)  # lease 2s
    assert state.max_lease == 2.0
    assert denial(state).message == NEVER_LEASED
    state.heartbeat()
    assert state.check() is None
    clock.advance(1.999)
    assert state.check() is None
    clock.advance(0.002)
    assert denial(state).message == LEASE_LAPSED
    state.heartbeat()
    assert state.check() is None


def test_a_heartbeat_never_grants_more_than_the_specs_lease() -> None:
    clock = Clock()
    state = ShutdownState(timedelta(seconds=3), clock=clock)
    state.heartbeat(3600)
    clock.advance(3.01)
    denial(state)
    state.heartbeat(0.5)
    clock.advance(0.6)
    denial(state)
    with pytest.raises(InputError):
        state.heartbeat(0)
    with pytest.raises(InputError):
        ShutdownState(0)


def test_kill_denies_everything_until_resume() -> None:
    clock = Clock()
    state = ShutdownState(3, clock=clock)
    state.heartbeat()
    state.kill("operator pressed the button")
    assert mode_of(state) is Mode.KILLED
    assert "operator pressed the button" in denial(state).message
    state.heartbeat()  # a lease does not undo a kill
    denial(state)
    state.resume()
    assert mode_of(state) is Mode.SERVING and state.check() is None
    state.kill("")
    state.resume()
    clock.advance(5)  # resumed, but the lease still rules
    assert denial(state).message == LEASE_LAPSED


def test_kill_cuts_every_registered_stream_and_cancels_their_tasks() -> None:
    async def scenario() -> None:
        state = ShutdownState(3)
        state.heartbeat()
        started = asyncio.Event()

        async def stream() -> None:
            started.set()
            await asyncio.sleep(60)

        tasks = [asyncio.get_running_loop().create_task(stream()) for _ in range(3)]
        guards = [state.open_stream(task=task) for task in tasks]
        finished = state.open_stream()
        finished.close()  # a stream that ended on its own is no longer tracked
        loose = state.open_stream()  # one with no task: the app polls it
        await started.wait()
        assert state.streams == 4
        cut = state.kill("drill")
        assert cut == 4 and state.streams == 0
        for guard in [*guards, loose]:
            assert guard.cancelled
            found = guard.check()
            assert found is not None and "drill" in found.message
            assert "drill" in await guard.wait()
        assert not finished.cancelled
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        late = state.open_stream()  # opened while killed: already cut
        assert late.cancelled and state.streams == 0

    asyncio.run(scenario())


def test_streams_are_cut_when_the_lease_lapses() -> None:
    clock = Clock()
    state = ShutdownState(3, clock=clock)
    state.heartbeat()
    with state.open_stream() as guard:
        clock.advance(3.5)
        assert not guard.cancelled  # noticed on the next check, or by the watchdog
        denial(state)
        assert guard.cancelled and guard.reason == LEASE_LAPSED
    assert state.streams == 0


def test_the_watchdog_cuts_streams_when_the_lease_runs_out_without_any_request() -> None:
    async def scenario() -> float:
        state = ShutdownState(0.2)
        watchdog = asyncio.get_running_loop().create_task(state.watch())
        state.heartbeat()
        guard = state.open_stream()
        began = time.monotonic()
        for _ in range(3):  # heartbeats keep it alive
            await asyncio.sleep(0.1)
            state.heartbeat()
            assert not guard.cancelled
        reason = await asyncio.wait_for(guard.wait(), 2)
        elapsed = time.monotonic() - began
        assert reason == LEASE_LAPSED
        watchdog.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watchdog
        return elapsed

    elapsed = asyncio.run(scenario())
    assert 0.45 <= elapsed < 1.0


class Wall:
    def __init__(self) -> None:
        self.ns = 1_767_225_600 * 10**9

    def __call__(self) -> int:
        return self.ns


def command(
    kind: ControlKind, wall: Wall, *, lease: float | None = None, identity: str = "controller"
) -> ControlCommand:
    wall.ns += 1_000_000  # 1 ms later each time
    return ControlCommand(kind, identity, wall.ns, lease=lease, reason="test")


def test_only_the_controllers_signed_fresh_commands_change_the_state() -> None:
    clock, wall = Clock(), Wall()
    state = ShutdownState(3, clock=clock)
    channel = ControlChannel(state, KEY, wall_clock_ns=wall)

    body, signature = sign_control(KEY, command(ControlKind.HEARTBEAT, wall, lease=3))
    assert isinstance(channel.handle(body, signature), ControlCommand)
    assert state.check() is None

    # a replayed heartbeat is refused and does not extend the lease
    clock.advance(2.5)
    replay = channel.handle(body, signature)
    assert isinstance(replay, Denial) and replay.code is DenialCode.INVALID_API_KEY
    clock.advance(0.6)
    denial(state)

    def refused(body: bytes, signature: str | None) -> DenialCode:
        result = channel.handle(body, signature)
        assert isinstance(result, Denial)
        return result.code

    fresh = command(ControlKind.HEARTBEAT, wall)
    body, signature = sign_control(KEY, fresh)
    other_key = secrets.token_bytes(32)
    assert refused(body, None) is DenialCode.INVALID_API_KEY
    assert refused(body, "v1=" + "0" * 64) is DenialCode.INVALID_API_KEY
    assert refused(body, sign_control(other_key, fresh)[1]) is DenialCode.INVALID_API_KEY
    tampered = body.replace(b'"heartbeat"', b'"resume"')
    assert refused(tampered, signature) is DenialCode.INVALID_API_KEY
    impostor = sign_control(KEY, command(ControlKind.RESUME, wall, identity="alice"))
    assert refused(*impostor) is DenialCode.FORBIDDEN
    assert refused(b"x" * 5000, signature) is DenialCode.REQUEST_TOO_LARGE
    junk = b"[1, 2]"
    assert refused(junk, signature_of(KEY, junk)) is DenialCode.INVALID_REQUEST
    denial(state)  # none of that changed anything

    # a heartbeat issued long ago is stale
    old = ControlCommand(ControlKind.HEARTBEAT, "controller", wall.ns - 10 * 10**9)
    assert refused(*sign_control(KEY, old)) is DenialCode.INVALID_API_KEY


def test_kill_is_obeyed_even_when_replayed_resume_is_not() -> None:
    clock, wall = Clock(), Wall()
    state = ShutdownState(3, clock=clock)
    channel = ControlChannel(state, KEY, wall_clock_ns=wall)
    channel.handle(*sign_control(KEY, command(ControlKind.HEARTBEAT, wall)))
    kill = sign_control(KEY, command(ControlKind.KILL, wall))
    resume = sign_control(KEY, command(ControlKind.RESUME, wall))
    assert isinstance(channel.handle(*kill), ControlCommand)
    assert mode_of(state) is Mode.KILLED
    assert isinstance(channel.handle(*resume), ControlCommand)
    assert mode_of(state) is Mode.SERVING
    assert isinstance(channel.handle(*kill), ControlCommand)  # replayed kill: still obeyed
    assert mode_of(state) is Mode.KILLED
    again = channel.handle(*resume)  # replayed resume: refused
    assert isinstance(again, Denial) and mode_of(state) is Mode.KILLED


def test_a_heartbeats_lease_counts_from_when_it_was_issued() -> None:
    clock, wall = Clock(), Wall()
    state = ShutdownState(3, clock=clock)
    channel = ControlChannel(state, KEY, wall_clock_ns=wall, max_skew=2.0)
    delayed = command(ControlKind.HEARTBEAT, wall, lease=3)
    wall.ns += int(1.5e9)  # it arrives 1.5 s after it was sent
    assert isinstance(channel.handle(*sign_control(KEY, delayed)), ControlCommand)
    assert state.lease_remaining == pytest.approx(1.5, abs=0.01)


def test_a_control_key_must_be_long_enough() -> None:
    with pytest.raises(InputError):
        ControlChannel(ShutdownState(3), b"short")
    with pytest.raises(InputError):
        sign_control(b"short", ControlCommand(ControlKind.KILL, "controller", 1))
