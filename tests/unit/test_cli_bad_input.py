"""Bad input to every ``enclave`` command: one line naming what is wrong, the documented code.

Nothing here starts a service: each command fails before it would touch Docker or Vault (the
Docker entry points are replaced by a stand-in that fails the test if reached), and the only
network traffic is to a loopback port nothing listens on.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enclave.audit import ActorKind, AuditEvent, AuditLog, Decision, Ed25519Signer
from enclave.audit.incidents import IncidentRecorder, IncidentSeverity, Trigger, TriggerKind
from enclave.cli.main import main
from support.workspace import Workspace

Output = pytest.CaptureFixture[str]
NOBODY = "http://127.0.0.1:9"  # a loopback port nothing listens on
LABEL = "is not a DNS-1123 label"


@pytest.fixture(autouse=True)
def _no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that reaches for Docker here has missed a check it should have made first."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Docker must not be reached")

    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    monkeypatch.setattr("enclave.cli.enclaves.connect", refuse)
    monkeypatch.setattr("enclave.cli.images.connect_engine", refuse)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory that does not exist yet (a failed command must not create it)."""
    return tmp_path / "state"


def run(capsys: Output, state: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--state-dir", str(state), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.rstrip("\n")


def _token(tmp_path: Path, name: str = "admin.token") -> Path:
    path = tmp_path / name
    path.write_text("s.not-a-real-token\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def _external(workspace: Workspace, address: str = NOBODY) -> Path:
    return workspace.example(("address: embedded", f"address: {address}"), name="external.yaml")


# -- usage errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words", "command"),
    [
        (["validate", "--bogus"], "No such option: --bogus", "enclave validate"),
        (["validate"], "Missing argument 'files'.", "enclave validate"),
        (["audit", "tail", "x", "-n", "0"], "Invalid value for '-n' / '--count'",
         "enclave audit tail"),
        (["check", "demo", "--format", "pdf"], "Invalid value for '--format'", "enclave check"),
        ([], "Missing command.", "enclave"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_with_where_to_look(
    capsys: Output, state: Path, argv: list[str], words: str, command: str
) -> None:
    code, _, err = run(capsys, state, *argv)
    line = one_line(err)
    assert code == 2
    assert line.startswith(f"enclave: error: {words}")
    assert line.endswith(f" (see '{command} --help')")


def test_a_group_without_its_command_still_prints_its_help(capsys: Output, state: Path) -> None:
    code, _, err = run(capsys, state, "audit")
    assert code == 2
    assert "Usage: enclave audit" in err and "verify" in err


# -- enclave names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["down", "Bad_Name"],
        ["status", "../../etc"],
        ["check", "../x", "--format", "json"],
        ["monitor", "X", "--once"],
        ["controller", "status", ""],
        ["kill", "a/b", "--reason", "r", "--token-file", "t"],
        ["resume", "UPPER", "--token-file", "t"],
        ["drill", "x_y", "--token-file", "t"],
    ],
)
def test_an_enclave_name_that_is_no_dns_label_is_refused_first(
    capsys: Output, state: Path, argv: list[str]
) -> None:
    code, _, err = run(capsys, state, *argv)
    line = one_line(err)
    assert code == 2
    given = argv[2] if argv[0] == "controller" else argv[1]
    assert line.startswith(f"enclave: error: NAME: {given!r} {LABEL}")
    assert not state.exists()


# -- spec and flag values -------------------------------------------------------------------


def test_a_huge_duration_in_a_spec_is_a_located_error(capsys: Output, workspace: Workspace) -> None:
    spec = workspace.example(("heartbeat: 1s", "heartbeat: 99999999999999999999h"))
    code, _, err = run(capsys, workspace.root / "state", "validate", "-q", str(spec))
    assert code == 2
    lines = err.splitlines()
    assert lines[0].startswith(f"{spec}:")
    assert lines[0].endswith(
        "spec.shutdown.heartbeat: duration '99999999999999999999h' is longer than a year"
    )
    assert lines[1] == f"invalid {spec}: 1 error(s)"


def test_a_huge_ttl_is_an_input_error(capsys: Output, workspace: Workspace, state: Path) -> None:
    spec = str(_external(workspace))
    token = str(_token(workspace.root))
    code, _, err = run(
        capsys, state, "token", "issue", spec, "-p", "alice", "--ttl", "9" * 400 + "h",
        "--vault-token-file", token,
    )  # fmt: skip
    assert code == 2
    assert one_line(err).startswith("enclave: error: --ttl: duration '999")
    assert err.rstrip().endswith("is longer than a year")


@pytest.mark.parametrize("flag", ["--since", "--until"])
def test_audit_search_names_the_option_with_a_bad_time(
    capsys: Output, state: Path, tmp_path: Path, flag: str
) -> None:
    code, _, err = run(capsys, state, "audit", "search", str(tmp_path), flag, "garbage")
    assert code == 2
    assert one_line(err).startswith(f"enclave: error: {flag}: invalid time 'garbage'")


def test_audit_search_names_seq_and_refuses_an_empty_window(
    capsys: Output, state: Path, tmp_path: Path
) -> None:
    code, _, err = run(capsys, state, "audit", "search", str(tmp_path), "--seq", "5-2")
    assert (code, one_line(err)) == (
        2,
        "enclave: error: --seq: invalid sequence range '5-2' (use N, N-M or N-)",
    )
    code, _, err = run(
        capsys, state, "audit", "search", str(tmp_path), "--since", "2030-01-01",
        "--until", "2020-01-01",
    )  # fmt: skip
    assert (code, one_line(err)) == (
        2,
        "enclave: error: --since 2030-01-01 is later than --until 2020-01-01: nothing can match",
    )


def test_audit_tail_takes_a_count_larger_than_any_log(
    capsys: Output, state: Path, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    with AuditLog.open(log_dir, enclave="demo", signer=Ed25519Signer.generate()) as log:
        for i in range(3):
            log.append(AuditEvent(actor="alice", action="request.chat", decision=Decision.ALLOW,
                                  reason=f"step {i}"))  # fmt: skip
    code, out, err = run(capsys, state, "audit", "tail", str(log_dir), "-n", "9" * 30, "--json")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 3


# -- files that never end -------------------------------------------------------------------


def test_endless_files_are_refused_by_size_not_read_forever(
    capsys: Output, workspace: Workspace, state: Path, tmp_path: Path
) -> None:
    zero = "/dev/zero"
    code, _, err = run(capsys, state, "validate", zero)
    assert code == 2
    assert err.splitlines()[0] == f"{zero}: file is larger than 524288 bytes"

    code, _, err = run(capsys, state, "audit", "verify", str(tmp_path), "--key", zero)
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: --key {zero}: larger than 65536 bytes; not a PEM public key",
    )

    code, _, err = run(capsys, state, "runtime", "serve", "--weights", zero, "--sha256", "0" * 64)
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: weights {zero}: larger than the model allows",
    )

    spec = str(_external(workspace))
    code, _, err = run(
        capsys, state, "gateway", "serve", "--spec", spec, "--upstream",
        f"assistant={NOBODY}", "--bootstrap", zero,
    )  # fmt: skip
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: --bootstrap {zero}: more than 64 KiB; not bootstrap material",
    )
    assert not state.exists()


# -- files the commands write ---------------------------------------------------------------


def test_init_into_a_dangling_link_or_under_a_file_is_an_input_error(
    capsys: Output, state: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    code, _, err = run(capsys, state, "init", str(link))
    assert (code, one_line(err)) == (2, f"enclave: error: {link}: not a directory")

    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    code, _, err = run(capsys, state, "init", str(blocker / "sub"))
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: {blocker / 'sub' / 'enclave.yaml'}: cannot write it: Not a directory",
    )

    (tmp_path / "lab" / "enclave.yaml").mkdir(parents=True)
    code, _, err = run(capsys, state, "init", str(tmp_path / "lab"), "--force")
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: {tmp_path / 'lab' / 'enclave.yaml'}: not a regular file; "
        "enclave init writes only files",
    )
    assert not (tmp_path / "lab" / "policies").exists()


def _incident_log(tmp_path: Path) -> tuple[Path, str]:
    log_dir = tmp_path / "audit"
    with AuditLog.open(log_dir, enclave="demo", signer=Ed25519Signer.generate()) as log:
        incident = IncidentRecorder.for_log(log).open(
            IncidentSeverity.HIGH,
            Trigger(TriggerKind.VIOLATION_RATE, "shutdown-controller", "6 in 60s"),
            "violation rate",
            actor="shutdown-controller",
            actor_kind=ActorKind.COMPONENT,
        )
    return log_dir, incident.id


def test_incident_export_never_replaces_a_device_a_pipe_or_a_link(
    capsys: Output, state: Path, tmp_path: Path
) -> None:
    log_dir, incident = _incident_log(tmp_path)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    kept = tmp_path / "kept.md"
    kept.write_text("mine", encoding="utf-8")
    link = tmp_path / "link.md"
    link.symlink_to(kept)
    for target in (pipe, link):
        code, _, err = run(
            capsys, state, "incident", "export", str(log_dir), incident, "-o", str(target),
            "--force",
        )  # fmt: skip
        assert (code, one_line(err)) == (
            2,
            f"enclave: error: --output {target}: not a regular file; it is never replaced",
        )
    assert pipe.is_fifo() and link.is_symlink()
    assert kept.read_text(encoding="utf-8") == "mine"


def test_runtime_train_and_audit_export_report_an_unwritable_output(
    capsys: Output, state: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    code, _, err = run(capsys, state, "runtime", "train", "-o", str(blocker / "w.json"))
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: --output {blocker / 'w.json'}: {blocker} is not a directory",
    )
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    code, _, err = run(capsys, state, "runtime", "train", "-o", str(link))
    assert (code, one_line(err)) == (2, f"enclave: error: --output {link}: not a regular file")
    assert link.is_symlink() and not link.exists()

    log_dir, _ = _incident_log(tmp_path)
    code, _, err = run(capsys, state, "audit", "export", str(log_dir), "-o", str(blocker / "b"))
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: {blocker / 'b'}: cannot create the bundle directory: Not a directory",
    )


def test_check_refuses_an_unwritable_output_before_it_runs(
    capsys: Output, state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_run(*_args: object) -> None:
        raise AssertionError("the checks must not run")

    monkeypatch.setattr("enclave.cli.check.check_enclave", not_run)
    target = tmp_path / "missing" / "report.json"
    code, _, err = run(capsys, state, "check", "demo", "--format", "json", "-o", str(target))
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: --output {target}: {target.parent}: no such directory",
    )
    code, _, err = run(capsys, state, "check", "demo", "--format", "json", "-o", str(tmp_path))
    assert (code, one_line(err)) == (2, f"enclave: error: --output {tmp_path}: is a directory")


# -- Docker commands: their inputs are checked before the engine ----------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["images", "build", "--wheelhouse", "{missing}"],
        ["plan", "{spec}", "--wheelhouse", "{missing}"],
        ["up", "{spec}", "--wheelhouse", "{missing}"],
    ],
)
def test_a_missing_wheelhouse_is_refused_before_the_engine(
    capsys: Output, workspace: Workspace, state: Path, argv: list[str]
) -> None:
    missing = workspace.root / "wheels"
    spec = workspace.example()
    filled = [a.format(missing=missing, spec=spec) for a in argv]
    code, _, err = run(capsys, state, *filled)
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: --wheelhouse {missing}: no such directory",
    )
    assert not state.exists()


# -- the gateway, the approvals and the controller ------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--upstream", "assistant=http://"],
            "--upstream 'assistant=http://': expected MODEL=http://HOST:PORT",
        ),
        (
            ["--upstream", f"assistant={NOBODY}", "--upstream", f"assistant={NOBODY}"],
            "--upstream: model 'assistant' is given twice",
        ),
        (
            ["--upstream", f"assistant={NOBODY}", "--port", "70000"],
            "--port 70000: must be between 0 and 65535",
        ),
    ],
)
def test_gateway_serve_checks_its_flags_before_vault(
    capsys: Output, workspace: Workspace, state: Path, extra: list[str], message: str
) -> None:
    spec = str(_external(workspace))
    token = str(_token(workspace.root))
    code, _, err = run(
        capsys, state, "gateway", "serve", "--spec", spec, "--vault-token-file", token, *extra
    )
    assert (code, one_line(err)) == (2, f"enclave: error: {message}")
    assert not state.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["approve", "../../v1/models", "--gateway", NOBODY],
            "APPROVAL_ID: '../../v1/models' is not an approval id (apr-..., as listed)",
        ),
        (
            ["deny", "apr-1", "--gateway", "notaurl"],
            "--gateway 'notaurl': expected an http:// or https:// URL with a host",
        ),
        (
            ["approvals", "list", "--gateway", "http://127.0.0.1:99999"],
            "--gateway 'http://127.0.0.1:99999': the port must be 1-65535",
        ),
    ],
)
def test_approval_commands_check_the_id_and_the_url(
    capsys: Output, state: Path, tmp_path: Path, argv: list[str], message: str
) -> None:
    token = str(_token(tmp_path, "api.token"))
    code, _, err = run(capsys, state, *argv, "--token-file", token)
    assert (code, one_line(err)) == (2, f"enclave: error: {message}")


def test_an_approval_command_says_the_gateway_does_not_answer(
    capsys: Output, state: Path, tmp_path: Path
) -> None:
    token = str(_token(tmp_path, "api.token"))
    code, _, err = run(
        capsys, state, "approve", "apr-1", "--token-file", token, "--gateway", NOBODY
    )
    assert (code, one_line(err)) == (
        5,
        f"enclave: error: gateway {NOBODY}: cannot connect (ConnectError; is it running?)",
    )


@pytest.mark.parametrize(
    ("gateways", "message"),
    [
        (["notaurl"], "--gateway 'notaurl': expected an http:// or https:// URL with a host"),
        ([NOBODY, NOBODY], "--gateway: the same URL is given twice"),
    ],
)
def test_controller_run_checks_its_gateways(
    capsys: Output, workspace: Workspace, state: Path, gateways: list[str], message: str
) -> None:
    spec = str(_external(workspace))
    token = str(_token(workspace.root))
    flags = [flag for url in gateways for flag in ("--gateway", url)]
    code, _, err = run(
        capsys, state, "controller", "run", "--spec", spec, "--vault-token-file", token, *flags
    )
    assert (code, one_line(err)) == (2, f"enclave: error: {message}")
    assert not state.exists()


def test_controller_run_leaves_nothing_when_vault_is_unreachable(
    capsys: Output, workspace: Workspace, state: Path
) -> None:
    spec = str(_external(workspace))
    token = str(_token(workspace.root))
    code, _, err = run(
        capsys, state, "controller", "run", "--spec", spec, "--gateway", NOBODY,
        "--vault-token-file", token,
    )  # fmt: skip
    assert (code, one_line(err)) == (
        5,
        f"enclave: error: vault: connect: unreachable (Vault at {NOBODY})",
    )
    assert not state.exists()


def test_kill_and_drill_check_their_flags_first(
    capsys: Output, state: Path, tmp_path: Path
) -> None:
    token = str(_token(tmp_path, "api.token"))
    code, _, err = run(capsys, state, "kill", "demo", "--reason", "  ", "--token-file", token)
    assert (code, one_line(err)) == (
        2,
        "enclave: error: --reason: give the reason for the kill (it is recorded in the incident)",
    )
    missing = tmp_path / "load.token"
    code, _, err = run(
        capsys, state, "drill", "demo", "--token-file", token, "--load-token-file", str(missing)
    )
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: --load-token-file {missing}: No such file or directory",
    )
    code, _, err = run(capsys, state, "drill", "demo", "--token-file", token, "--model", "A B")
    assert code == 2
    assert one_line(err).startswith(f"enclave: error: --model: 'A B' {LABEL}")
    code, _, err = run(capsys, state, "kill", "demo", "--reason", "r", "--token-file", token)
    assert code == 5
    assert one_line(err).startswith("enclave: error: no shutdown controller answers at ")
    assert not state.exists()  # asking creates no state directory


# -- monitor, token, vault ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--interval", "9" * 30 + "h"],
            f"--interval: duration '{'9' * 30}h' is longer than a year",
        ),
        (
            ["--metrics-address", "garbage"],
            "--metrics-address: invalid address 'garbage' (use PORT, IP:PORT or [IPv6]:PORT, "
            "e.g. 127.0.0.1:9464)",
        ),
        (["--once", "--baseline", "{missing}"], "--baseline {missing}: no such file or directory"),
    ],
)
def test_monitor_checks_its_flags_before_the_enclave(
    capsys: Output, state: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    missing = tmp_path / "baseline"
    filled = [a.format(missing=missing) for a in extra]
    code, _, err = run(capsys, state, "monitor", "demo", *filled)
    assert (code, one_line(err)) == (2, "enclave: error: " + message.format(missing=missing))
    assert not state.exists()


def test_monitor_of_an_unknown_enclave_creates_no_state(capsys: Output, state: Path) -> None:
    code, _, err = run(capsys, state, "monitor", "demo", "--once")
    assert code == 4
    assert one_line(err) == (
        f"enclave: error: enclave demo: nothing under {state / 'enclaves' / 'demo'} (is it up?)"
    )
    assert not state.exists()


@pytest.mark.parametrize("token_id", ["../../x", ""])
def test_token_revoke_checks_the_id_before_vault(
    capsys: Output, workspace: Workspace, state: Path, token_id: str
) -> None:
    spec = str(_external(workspace))
    token = str(_token(workspace.root))
    code, _, err = run(
        capsys, state, "token", "revoke", spec, token_id, "--vault-token-file", token
    )
    assert (code, one_line(err)) == (
        2,
        f"enclave: error: TOKEN_ID: malformed API token id {token_id!r} "
        "(expected 12 letters and digits)",
    )


def test_a_missing_ca_bundle_is_located_in_the_spec(
    capsys: Output, workspace: Workspace, state: Path
) -> None:
    spec = workspace.example(
        ("address: embedded", "address: https://127.0.0.1:9\n    caBundle: ca.pem")
    )
    token = str(_token(workspace.root))
    code, _, err = run(capsys, state, "vault", "provision", str(spec), "--vault-token-file", token)
    line = one_line(err)
    assert code == 2
    lines = spec.read_text(encoding="utf-8").splitlines()
    row = next(i for i, text in enumerate(lines, 1) if "caBundle: ca.pem" in text)
    column = lines[row - 1].index("ca.pem") + 1
    assert line == (
        f"{spec}:{row}:{column}: spec.vault.caBundle: {workspace.root / 'ca.pem'}: no such file"
    )


def test_an_unreachable_vault_is_named(capsys: Output, workspace: Workspace, state: Path) -> None:
    spec = str(_external(workspace))
    token = str(_token(workspace.root))
    code, _, err = run(capsys, state, "vault", "teardown", spec, "--vault-token-file", token)
    assert (code, one_line(err)) == (
        5,
        f"enclave: error: vault: connect: unreachable (Vault at {NOBODY})",
    )


def test_runtime_serve_says_a_host_name_does_not_resolve(
    capsys: Output, state: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "w.json"
    code, out, _ = run(capsys, state, "runtime", "train", "-o", str(weights))
    assert code == 0
    digest = out.strip()
    code, _, err = run(
        capsys, state, "runtime", "serve", "--weights", str(weights), "--sha256", digest,
        "--host", "not a host",
    )  # fmt: skip
    line = one_line(err)
    assert code == 2
    assert line.startswith("enclave: error: cannot listen on not a host:8000: not an address of")
