"""Provisioning's rollback journal on disk, without a Vault: what it writes, how a later
connection finishes it, and what it leaves alone (tests/integration has it against OpenBao)."""

from __future__ import annotations

import json
import stat
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from enclave.errors import VaultError, VaultUnavailableError
from enclave.vault.pending import PendingRollbacks, Undo

if TYPE_CHECKING:
    from pathlib import Path

VAULT = "https://vault.example:8200"


class FakeVault:
    """Records the undo calls it gets; refuses them while ``down``."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.down = False
        self.sys = SimpleNamespace(
            disable_secrets_engine=lambda path: self._call(f"disable {path}"),
            disable_auth_method=lambda path: self._call(f"disable auth {path}"),
        )

    def _call(self, what: str) -> None:
        if self.down:
            raise VaultUnavailableError("vault: rollback: unreachable")
        self.calls.append(what)


def steps() -> list[Undo]:
    return [
        Undo("disable-mount", "mount enclave-demo-kv", {"path": "enclave-demo-kv"}),
        Undo("disable-auth", "auth mount enclave-demo-approle", {"path": "enclave-demo-approle"}),
    ]


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_a_run_writes_its_steps_before_it_makes_anything_and_removes_them_on_success(
    tmp_path: Path,
) -> None:
    pending = PendingRollbacks.external(tmp_path / "state", VAULT)
    with pending.journal(FakeVault(), "demo") as journal:
        assert not pending.directory.exists()  # nothing yet: nothing written
        for step in steps():
            journal.record(step)
        path = pending.path("demo")
        header, *recorded = entries(path)
        assert (header["enclave"], header["vault"], header["format"]) == ("demo", VAULT, 1)
        assert [r["step"]["what"] for r in recorded] == [s.what for s in steps()]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for directory in (tmp_path / "state", pending.directory):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert pending.pending() == ["demo"]
        assert pending.finish(FakeVault()) == []  # the run holds it: left alone
        journal.close()
    assert not path.exists() and not pending.directory.exists()


def test_an_interrupted_rollback_is_finished_later_newest_first_and_only_once(
    tmp_path: Path,
) -> None:
    pending = PendingRollbacks(tmp_path / "rollbacks", VAULT)
    vault = FakeVault()
    with pending.journal(vault, "demo") as journal:
        for step in steps():
            journal.record(step)
        vault.down = True
        assert [s.what for s in journal.rollback(vault)] == [s.what for s in reversed(steps())]
    assert pending.pending() == ["demo"]
    with pending.path("demo").open("ab") as handle:  # a crash mid-append: a torn last line
        handle.write(b'{"step":{"op":"disable-mount","wh')

    assert PendingRollbacks(tmp_path / "rollbacks", "https://other:8200").finish(vault) == []
    vault.down = False
    (done,) = pending.finish(vault)
    assert done.complete and done.enclave == "demo"
    assert vault.calls == ["disable auth enclave-demo-approle", "disable enclave-demo-kv"]
    assert pending.pending() == [] and pending.finish(vault) == []


def test_a_partly_finished_rollback_retries_only_what_is_left(tmp_path: Path) -> None:
    pending = PendingRollbacks(tmp_path / "rollbacks", VAULT)
    vault = FakeVault()
    vault.sys.disable_secrets_engine = lambda path: (_ for _ in ()).throw(
        VaultUnavailableError("vault: disable: unreachable")
    )
    with pending.journal(vault, "demo") as journal:
        for step in steps():
            journal.record(step)
        assert [s.what for s in journal.rollback(vault)] == ["mount enclave-demo-kv"]
    assert {"undone": 1} in entries(pending.path("demo"))
    (still,) = pending.finish(vault)
    assert still.left == ("remove mount enclave-demo-kv",) and not still.complete

    healthy = FakeVault()
    (done,) = pending.finish(healthy)
    assert done.complete and healthy.calls == ["disable enclave-demo-kv"]


def test_a_new_run_finishes_an_earlier_one_first_or_refuses_to_start(tmp_path: Path) -> None:
    pending = PendingRollbacks(tmp_path / "rollbacks", VAULT)
    vault = FakeVault()
    with pending.journal(vault, "demo") as journal:
        journal.record(steps()[0])
    vault.down = True
    with (
        pytest.raises(VaultError, match=r"earlier failed run is still incomplete \(remove mount"),
        pending.journal(vault, "demo"),
    ):
        pass
    vault.down = False
    with pending.journal(vault, "demo") as journal:
        assert vault.calls == ["disable enclave-demo-kv"]
        assert not pending.path("demo").exists()
        journal.record(steps()[1])
        journal.close()


@pytest.mark.parametrize(
    "step",
    [
        {"op": "rm-rf", "what": "/"},
        {"op": "disable-mount", "what": "x", "args": {"path": "secret"}},
        {"op": "disable-mount", "what": "x", "args": {"path": "enclave-other-kv"}},
        {"op": "delete-policy", "what": "x", "args": {"name": "enclave_orchestrator"}},
        {"op": "delete-role", "what": "x", "args": {"mount": "approle", "role": "ops"}},
    ],
    ids=["unknown", "not-enclave", "other-enclave", "admin-policy", "other-role"],
)
def test_an_edited_journal_is_never_run(
    tmp_path: Path, step: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A journal is only ever about its own enclave's objects: an edited one (a step of
    another kind, or about anything else) is reported, kept, and not run."""
    pending = PendingRollbacks(tmp_path / "rollbacks", VAULT)
    pending.directory.mkdir()
    header = {"format": 1, "enclave": "demo", "vault": VAULT}
    good = {"step": steps()[0].as_dict()}
    text = "".join(json.dumps(e) + "\n" for e in (header, {"step": step}, good))
    pending.path("demo").write_text(text)
    vault = FakeVault()
    assert pending.finish(vault) == [] and vault.calls == []
    assert "is unreadable" in caplog.text
    assert pending.path("demo").read_text() == text
