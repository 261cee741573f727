from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup

from enclave import __version__
from enclave.cli.main import build_app, command_of, main
from enclave.spec import EnclaveSpec, load_spec
from support.workspace import Workspace

Output = pytest.CaptureFixture[str]


def run(capsys: Output, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version(capsys: Output) -> None:
    assert run(capsys, "--version") == (0, f"enclave {__version__}\n", "")


def test_help_lists_exit_codes(capsys: Output) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "Exit codes: 0 success" in out.replace("\n", " ")


def test_init_writes_a_valid_spec_and_refuses_to_overwrite(capsys: Output, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "init", str(tmp_path), "--name", "lab-1")
    assert code == 0
    spec = tmp_path / "enclave.yaml"
    assert f"wrote {spec}" in out
    assert load_spec(spec).name == "lab-1"
    assert stat.S_IMODE(spec.stat().st_mode) == 0o644
    spec.write_text("edited", encoding="utf-8")

    code, _, err = run(capsys, "init", str(tmp_path))
    assert code == 3
    assert "already exist(s) (use --force to overwrite)" in err
    assert spec.read_text(encoding="utf-8") == "edited"  # nothing touched

    assert run(capsys, "init", str(tmp_path), "--force")[0] == 0
    assert load_spec(spec).name == "demo"


def test_init_rejects_a_bad_name_before_writing(capsys: Output, tmp_path: Path) -> None:
    code, _, err = run(capsys, "init", str(tmp_path / "d"), "--name", "Not_A_Label")
    assert code == 2
    assert err.startswith("enclave: error: --name: 'Not_A_Label' is not a DNS-1123 label")
    assert not (tmp_path / "d").exists()


def test_validate_summarises_a_valid_spec(capsys: Output, workspace: Workspace) -> None:
    path = workspace.example()
    code, out, err = run(capsys, "validate", str(path))
    assert (code, err) == (0, "")
    assert f"valid {path}: enclave demo (cui, docker backend)" in out
    assert "purposes     logistics-planning, threat-triage*, translation" in out
    assert "prohibited   autonomous-target-selection, domestic-mass-surveillance" in out


def test_validate_reports_every_error_and_exits_2(capsys: Output, workspace: Workspace) -> None:
    good = workspace.example()
    bad = workspace.example(
        ("roles: [analyst]}", "roles: [analyts]}"), ("lease: 2s", "lease: 1s"), name="bad.yaml"
    )
    code, out, err = run(capsys, "validate", str(bad), str(good))
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{bad}:") and "unknown role 'analyts'" in lines[0]
    assert lines[1].startswith(f"{bad}:") and "spec.shutdown.lease" in lines[1]
    assert lines[2] == f"invalid {bad}: 2 error(s)"
    assert f"valid {good}" in out  # the other file is still checked


def test_validate_json(capsys: Output, workspace: Workspace) -> None:
    bad = workspace.example(("cpus: 1,", "cpus: many,"))
    code, out, err = run(capsys, "validate", "--json", str(bad))
    assert (code, err) == (2, "")
    report = json.loads(out)
    assert report["valid"] is False
    (problem,) = report["files"][0]["problems"]
    assert problem["path"] == "spec.models[0].resources.cpus"
    assert problem["line"] > 0 and problem["severity"] == "error"

    code, out, _ = run(capsys, "validate", "--json", str(workspace.example()))
    assert code == 0
    summary = json.loads(out)["files"][0]["summary"]
    assert summary["approvalRequired"] == ["threat-triage"]
    assert summary["principals"]["carol"] == ["approve", "audit-read", "kill", "resume"]


def test_usage_errors_exit_2_without_traceback(capsys: Output) -> None:
    code, _, err = run(capsys, "validate", "--bogus")
    assert code == 2
    assert "No such option" in err and "Traceback" not in err
    code, _, err = run(capsys, "validate")
    assert code == 2 and "Missing argument" in err


def test_schema_is_the_models_schema(capsys: Output) -> None:
    code, out, _ = run(capsys, "schema", "--spec-only")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(_spec_schema()))
    code, out, _ = run(capsys, "schema")
    assert json.loads(out)["properties"]["kind"]["const"] == "Enclave"


def _spec_schema() -> dict[str, object]:
    return EnclaveSpec.model_json_schema(by_alias=True)


def test_internal_errors_are_one_line(capsys: Output, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("enclave.cli.validate.load_spec", explode)
    code, _, err = run(capsys, "validate", "x.yaml")
    assert (code, err) == (70, "enclave: internal error: RuntimeError: boom\n")


def test_json_logs(capsys: Output) -> None:
    assert main(["--log-format", "json", "--log-level", "info", "schema"]) == 0
    logging.getLogger("enclave.test").info("hello", extra={"enclave_name": "demo"})
    entry = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert entry["message"] == "hello" and entry["enclave_name"] == "demo"
    assert entry["level"] == "info" and entry["logger"] == "enclave.test"


def test_only_the_command_asked_for_is_loaded() -> None:
    assert command_of(["check", "demo"]) == "check"
    assert command_of(["--state-dir", "/tmp/s", "--log-level", "info", "token", "list"]) == "token"
    assert command_of(["--debug", "audit", "verify", "--json"]) == "audit"
    for everything in ([], ["--help"], ["--version", "check"], ["nonsense"], ["--debug"]):
        assert command_of(everything) is None
    only = typer.main.get_command(build_app("check"))
    assert isinstance(only, TyperGroup)
    assert sorted(only.commands) == ["check"]
    every = typer.main.get_command(build_app())
    assert isinstance(every, TyperGroup)
    assert {"check", "token", "audit", "up", "kill", "gateway"} <= set(every.commands)
