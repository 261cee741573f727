"""Lifecycle guards that need no engine: a killed enclave is never brought back by ``up``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave.errors import ConflictError
from enclave.lifecycle import refuse_if_killed, weights_digest


def write_state(state_dir: Path, name: str, text: str) -> None:
    path = state_dir / "enclaves" / name / "controller" / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)


def test_up_is_refused_while_the_kill_switch_holds(tmp_path: Path) -> None:
    refuse_if_killed("fresh", tmp_path)  # never killed: no state file
    write_state(tmp_path, "ok", json.dumps({"mode": "serving"}))
    refuse_if_killed("ok", tmp_path)
    for name, text in (
        ("dead", json.dumps({"mode": "killed"})),
        ("dying", json.dumps({"mode": "killing"})),
        ("back", json.dumps({"mode": "resuming"})),
        ("torn", "{not json"),
    ):
        write_state(tmp_path, name, text)
        with pytest.raises(ConflictError, match=f"enclave resume {name}"):
            refuse_if_killed(name, tmp_path)


def test_a_weights_directory_digest_is_sha256sum_sorted(tmp_path: Path) -> None:
    (tmp_path / "w" / "sub").mkdir(parents=True)
    (tmp_path / "w" / "b.bin").write_bytes(b"b")
    (tmp_path / "w" / "sub" / "a.bin").write_bytes(b"a")
    one = weights_digest(tmp_path / "w")
    (tmp_path / "w" / "sub" / "a.bin").write_bytes(b"A")
    assert weights_digest(tmp_path / "w") != one
    (tmp_path / "f").write_bytes(b"x")
    assert weights_digest(tmp_path / "f") == (
        "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    )
