"""``enclave monitor`` without a live enclave: drift classification on reports the real engine
judged from recorded facts, the accepted result on disk, the audit records (a real log, verified),
the metrics as Prometheus scrapes them, the scheduled loop, the CLI's exit codes, and the
controller's ``POST /drift`` route on a real controller over fakes of the kill's effects.

The one fake is the collection: ``check_enclave`` needs Docker, Vault and an enclave that is up
(tests/integration/test_compliance_monitor.py runs the real one), so here a run judges the
recorded facts of ``tests/support/compliance_facts.json`` with the shipped baseline.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from enclave.audit import AuditLog, Ed25519Signer, verify_log
from enclave.audit.reader import iter_records
from enclave.audit.record import AuditRecord, Decision
from enclave.cli.main import main
from enclave.compliance import (
    Facts,
    Report,
    Severity,
    Status,
    default_baseline,
    evaluate,
    load_baseline,
)
from enclave.compliance.baseline import Baseline
from enclave.compliance.drift import (
    Accepted,
    Drifted,
    diff,
    drift_reason,
    drifts,
    load_accepted,
    save_accepted,
)
from enclave.compliance.metrics import MonitorMetrics, serve_metrics
from enclave.compliance.monitor import (
    ControllerDrift,
    Monitor,
    MonitorJournal,
    MonitorSettings,
    hold_monitor_lock,
    monitor_dir,
)
from enclave.compliance.runner import CheckSettings
from enclave.errors import ConflictError, InputError, IntegrityError, ServiceError
from enclave.shutdown.api import ControllerClient, create_api
from enclave.shutdown.controller import Controller, ControllerSettings
from enclave.shutdown.heartbeat import HeartbeatSettings
from enclave.shutdown.journal import Journal
from enclave.shutdown.state import Mode, StateMachine, TriggerKind
from support.compliance import compliant_facts, instance
from support.kill_effects import KillEffects

SENTINEL = "s3cr3t-evidence-value-never-recorded"
BEAT = HeartbeatSettings(interval=0.05, lease=0.5, timeout=0.2)


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    return load_baseline(default_baseline())


def judged(baseline: Baseline, facts: Facts) -> Report:
    return evaluate(baseline, facts, enclave="demo")


def privileged_model(facts: Facts) -> Facts:
    """The model container turned privileged (CTR-01 fails on it)."""
    changed = copy.deepcopy(facts)
    instance(changed, "container", "model")["privileged"] = True
    return changed


def by_key(report: Report) -> dict[tuple[str, str], Status]:
    return {(r.check.id, r.target): r.status for r in report.results}


# -- drift --------------------------------------------------------------------------------------

WORSE = {Status.FAIL, Status.ERROR}


@pytest.mark.parametrize("was", [None, *Status])
@pytest.mark.parametrize("now", list(Status))
def test_what_drifts_is_the_docstring_table(was: Status | None, now: Status) -> None:
    expected = (now is Status.FAIL and was is not Status.FAIL) or (
        now is Status.ERROR and was not in WORSE
    )
    assert drifts(was, now) is expected


def test_a_check_that_starts_failing_is_drift_and_the_reverse_is_resolved(
    baseline: Baseline,
) -> None:
    good = judged(baseline, compliant_facts())
    bad = judged(baseline, privileged_model(compliant_facts()))
    model = "container enclave-demo-model-assistant"
    assert by_key(good)[("CTR-01", model)] is Status.PASS
    assert by_key(bad)[("CTR-01", model)] is Status.FAIL

    found = diff(Accepted.of(good, "first-run"), bad)
    assert [(d.check, d.target, d.was, d.now) for d in found.drifted] == [
        ("CTR-01", model, Status.PASS, Status.FAIL)
    ]
    assert str(found.drifted[0]) == f"CTR-01 ({model}: pass -> fail)"
    assert (found.resolved, found.gone, found.baseline_changed) == (0, 0, False)

    back = diff(Accepted.of(bad, "accept"), good)
    assert back.drifted == () and back.resolved == 1


def test_unjudgeable_results_and_new_targets_drift_but_accepted_failures_do_not(
    baseline: Baseline,
) -> None:
    facts = compliant_facts()
    accepted = Accepted.of(judged(baseline, facts), "first-run")

    no_vault = copy.deepcopy(facts)
    no_vault.errors["vault"] = "vault: the embedded Vault is not running"
    report = judged(baseline, no_vault)
    vault_results = [
        r for r in report.results if r.check.target.value == "vault" or r.check.id == "AUD-03"
    ]  # AUD-03 compares the audit log's key with Vault's transit key
    assert vault_results and all(r.status is Status.ERROR for r in vault_results)
    found = diff(accepted, report)
    assert {(d.check, d.now) for d in found.drifted} == {
        (r.check.id, Status.ERROR) for r in vault_results
    }
    ranks = [d.severity.rank for d in found.drifted]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) > 1  # worst first

    # the same unjudged results, accepted: no drift; then failing instead of erroring: drift
    assert diff(Accepted.of(report, "accept"), report).drifted == ()

    # a new container that fails a check nobody accepted
    extra = copy.deepcopy(facts)
    model = copy.deepcopy(instance(extra, "container", "model"))
    model["name"] = "enclave-demo-model-intruder"
    model["privileged"] = True
    extra.instances["container"].append(("container enclave-demo-model-intruder", model))
    extra.values["containers"].append(model)
    found = diff(accepted, judged(baseline, extra))
    assert ("CTR-01", "container enclave-demo-model-intruder", None) in {
        (d.check, d.target, d.was) for d in found.drifted
    }

    # a container that went away is counted, not drift
    fewer = copy.deepcopy(facts)
    fewer.instances["container"] = [
        (label, v) for label, v in fewer.instances["container"] if "model" not in label
    ]
    fewer.values["containers"] = [v for _, v in fewer.instances["container"]]
    gone = diff(accepted, judged(baseline, fewer))
    assert gone.gone > 0
    assert all("model-assistant" not in d.target for d in gone.drifted)


def test_the_drift_reason_is_bounded_and_says_how_many_are_left_out() -> None:
    items = tuple(
        Drifted(f"CTR-{n:02d}", f"container c{n}", Severity(sev), Status.PASS, Status.FAIL)
        for n, sev in enumerate(["low", "critical", "high"] * 40)
    )
    reason = drift_reason("demo", items, limit=300)
    assert len(reason) <= 300
    assert reason.startswith("compliance drift in enclave demo: 120 result(s): CTR-00")
    assert reason.endswith("more)")
    assert drift_reason("demo", items[:1]) == (
        "compliance drift in enclave demo: 1 result(s): CTR-00 (container c0: pass -> fail)"
    )


# -- the accepted result -------------------------------------------------------------------------


def test_the_accepted_result_is_stored_owner_only_and_read_back(
    tmp_path: Path, baseline: Baseline
) -> None:
    report = judged(baseline, compliant_facts())
    path = tmp_path / "compliance" / "accepted.json"
    assert load_accepted(path) is None
    saved = save_accepted(path, Accepted.of(report, "first-run"))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    loaded = load_accepted(path)
    assert loaded == saved and loaded is not None
    assert loaded.statuses == by_key(report)
    assert loaded.sha256 == saved.sha256 != ""
    assert loaded.baseline_sha256 == report.baseline_sha256
    assert loaded.counts() == report.counts()
    text = path.read_text()
    lines = [line.strip().rstrip(",") for line in text.splitlines()]
    assert '["CTR-01", "container enclave-demo-model-assistant", "pass"]' in lines


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"format": "other"}', b'{"format": "enclave-compliance-accepted/v1"}'],
)
def test_a_damaged_accepted_result_is_an_integrity_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "accepted.json"
    path.write_bytes(content)
    with pytest.raises(IntegrityError, match=r"is damaged .*--accept'$"):
        load_accepted(path)


# -- runs -----------------------------------------------------------------------------------------


class Reports:
    """The check function: each call judges the facts it is given now (mutable)."""

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.facts = compliant_facts()
        self.calls = 0
        self.fail_with: Exception | None = None

    def __call__(self, settings: CheckSettings) -> Report:
        self.calls += 1
        if self.fail_with is not None:
            raise self.fail_with
        return judged(self.baseline, self.facts)


class Controllerish:
    """A drift reporter answering as the controller does, or failing as an unreachable one."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.error: Exception | None = None

    def report(self, reason: str) -> dict[str, Any]:
        self.reasons.append(reason)
        if self.error is not None:
            raise self.error
        return {"on_drift": "alert", "mode": "serving"}


class Rig:
    def __init__(self, tmp_path: Path, baseline: Baseline) -> None:
        self.state = tmp_path / "state"
        (self.state / "enclaves" / "demo").mkdir(parents=True)
        self.reports = Reports(baseline)
        self.controller = Controllerish()
        self.metrics = MonitorMetrics("demo")
        self.monitor = Monitor(
            MonitorSettings(CheckSettings("demo", self.state), interval=0.01),
            check=self.reports,
            reporter=self.controller,
            metrics=self.metrics,
        )

    @property
    def root(self) -> Path:
        return monitor_dir(self.state, "demo")

    def records(self) -> list[AuditRecord]:
        return list(iter_records(self.root / "audit"))

    def metric(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.metrics.render().decode()):
            for sample in family.samples:
                if sample.name == name and sample.labels == {"enclave": "demo", **labels}:
                    return float(sample.value)
        raise AssertionError(f"no sample {name} {labels}")


@pytest.fixture
def rig(tmp_path: Path, baseline: Baseline) -> Rig:
    return Rig(tmp_path, baseline)


def test_the_first_run_is_accepted_and_later_runs_compare_with_it(rig: Rig) -> None:
    first = rig.monitor.run_once()
    assert first.accepted_now == "first-run" and first.outcome == "ok"
    assert "first run: accepted as the baseline" in first.summary()
    assert [(r.action, r.decision) for r in rig.records()] == [
        ("compliance.accept", Decision.INFO),
        ("compliance.run", Decision.INFO),
    ]
    accepted = load_accepted(rig.root / "accepted.json")
    assert accepted is not None and accepted.how == "first-run"

    second = rig.monitor.run_once()
    assert second.accepted_now == "" and second.drifted == () and second.outcome == "ok"
    assert rig.controller.reasons == []
    assert rig.metric("enclave_monitor_runs_total", outcome="ok") == 2
    assert rig.metric("enclave_monitor_drifted_results") == 0


def test_drift_is_reported_recorded_and_counted_on_every_run_until_accepted(rig: Rig) -> None:
    rig.monitor.run_once()
    instance(rig.reports.facts, "container", "model")["privileged"] = True

    for n in (1, 2):
        outcome = rig.monitor.run_once()
        assert outcome.outcome == "drift"
        assert [d.check for d in outcome.drifted] == ["CTR-01"]
        assert len(rig.controller.reasons) == n
    reason = rig.controller.reasons[-1]
    assert reason == (
        "compliance drift in enclave demo: 1 result(s): "
        "CTR-01 (container enclave-demo-model-assistant: pass -> fail)"
    )
    record = rig.records()[-1]
    assert (record.action, record.decision, record.actor) == (
        "compliance.run",
        Decision.DENY,
        "compliance-monitor",
    )
    details = record.details
    assert details is not None
    assert details["drift_total"] == 1
    assert details["drift"] == [
        {
            "check": "CTR-01",
            "target": "container enclave-demo-model-assistant",
            "severity": "critical",
            "was": "pass",
            "now": "fail",
        }
    ]
    assert details["counts"] == outcome.counts and details["counts"]["fail"] >= 1
    assert details["controller"] == {"on_drift": "alert", "mode": "serving"}
    accepted = load_accepted(rig.root / "accepted.json")
    assert accepted is not None and details["accepted"]["sha256"] == accepted.sha256
    assert "DRIFT" in record.reason and "CTR-01" in record.reason
    assert rig.metric("enclave_monitor_runs_total", outcome="drift") == 2
    assert rig.metric("enclave_monitor_drifted_results") == 1
    assert rig.metric("enclave_monitor_results", status="fail") == details["counts"]["fail"]

    # accepting the drift makes it the baseline; the next run is clean
    accepted_now = rig.monitor.run_once(accept=True)
    assert accepted_now.accepted_now == "accept"
    accept = rig.records()[-1]
    assert accept.action == "compliance.accept" and accept.details is not None
    assert accept.details["drift_accepted_total"] == 1
    assert accept.details["previous"]["how"] == "first-run"
    assert rig.monitor.run_once().outcome == "ok"
    assert len(rig.controller.reasons) == 2

    assert verify_log(rig.root / "audit").intact


def test_records_hold_check_ids_and_statuses_never_evidence(rig: Rig) -> None:
    rig.monitor.run_once()
    # a secret-looking value in the model container's environment: SEC-01 fails, and the
    # report's evidence holds what the collector found
    instance(rig.reports.facts, "container", "model")["env_secrets"] = [SENTINEL]
    report = rig.reports(rig.monitor.settings.check)
    assert SENTINEL in json.dumps(report.as_dict())
    outcome = rig.monitor.run_once()
    assert "SEC-01" in {d.check for d in outcome.drifted}
    assert SENTINEL not in json.dumps(outcome.as_dict()) + outcome.summary()
    assert SENTINEL not in "".join(rig.controller.reasons)
    files = [p for p in rig.root.rglob("*") if p.is_file()]
    assert rig.root / "accepted.json" in files and len(files) > 4
    for path in files:
        assert SENTINEL.encode() not in path.read_bytes(), path
    assert verify_log(rig.root / "audit").intact


def test_an_unreachable_controller_is_reported_not_ignored(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.monitor.run_once()
    rig.monitor.reporter = ControllerDrift(ControllerClient(rig.state / "nope.sock"))
    instance(rig.reports.facts, "container", "model")["privileged"] = True
    outcome = rig.monitor.run_once()
    assert outcome.outcome == "drift"
    assert outcome.controller_error.startswith("no shutdown controller answers at ")
    assert "drift NOT reported to the controller: no shutdown controller" in outcome.summary()
    details = rig.records()[-1].details
    assert details is not None and details["controller"] == {"error": outcome.controller_error}
    assert rig.metric("enclave_monitor_controller_errors_total") == 1
    assert any(r.levelname == "ERROR" and "NOT reported" in r.getMessage() for r in caplog.records)


def test_a_refusing_controller_is_an_error_too(tmp_path: Path) -> None:
    class Refusing(ControllerClient):
        def drift(self, reason: str) -> tuple[int, dict[str, Any]]:
            return 400, {"error": {"code": "invalid_request", "message": "no"}}

    with pytest.raises(ServiceError, match=r"refused the drift report: no \(invalid_request"):
        ControllerDrift(Refusing(tmp_path / "api.sock")).report("drift")


def test_a_failed_run_is_recorded_and_counted(rig: Rig) -> None:
    rig.reports.fail_with = InputError("baseline.yaml:3:1: checks: field required")
    outcome = rig.monitor.run_once()
    assert (outcome.outcome, outcome.error_code) == ("error", 2)
    assert outcome.summary() == (
        "enclave demo: the compliance run failed: baseline.yaml:3:1: checks: field required"
    )
    record = rig.records()[-1]
    assert record.decision is Decision.ERROR and record.details is not None
    assert record.details["error"] == "baseline.yaml:3:1: checks: field required"
    assert rig.metric("enclave_monitor_runs_total", outcome="error") == 1
    assert not (rig.root / "accepted.json").exists()  # a failed run accepts nothing


def test_a_damaged_accepted_result_fails_runs_until_a_new_one_is_accepted(rig: Rig) -> None:
    rig.monitor.run_once()
    (rig.root / "accepted.json").write_text("{}")
    outcome = rig.monitor.run_once()
    assert outcome.outcome == "error" and outcome.error_code == IntegrityError.exit_code
    assert rig.monitor.run_once(accept=True).accepted_now == "accept"
    assert rig.monitor.run_once().outcome == "ok"


def test_an_accepted_result_that_cannot_be_stored_fails_the_run_not_the_monitor(
    rig: Rig,
) -> None:
    (rig.root / ".accepted.json.tmp").mkdir(parents=True)  # in the way of the atomic write
    outcome = rig.monitor.run_once()
    assert outcome.outcome == "error" and outcome.error_code == ServiceError.exit_code
    assert outcome.error.startswith(f"cannot write {rig.root / 'accepted.json'}")
    assert rig.records()[-1].decision is Decision.ERROR


def test_an_unwritable_log_is_reported_in_the_outcome(rig: Rig) -> None:
    rig.root.mkdir(mode=0o700, parents=True)
    signer = Ed25519Signer.from_file(rig.root / "other.key", create=True)
    with AuditLog.open(rig.root / "audit", enclave="demo", signer=signer):
        rig.monitor.journal = MonitorJournal(rig.root, "demo", wait=0.1)
        outcome = rig.monitor.run_once()
    assert "the audit log is open for writing elsewhere" in outcome.audit_error
    assert outcome.as_dict()["audit_error"] == outcome.audit_error


def test_the_schedule_runs_until_stopped(rig: Rig) -> None:
    stop = threading.Event()
    seen: list[str] = []

    def on_run(outcome: Any) -> None:
        seen.append(outcome.outcome)
        if len(seen) == 3:
            stop.set()

    assert rig.monitor.run(stop, on_run=on_run) == 3
    assert seen == ["ok", "ok", "ok"] and rig.reports.calls == 3
    assert rig.metric("enclave_monitor_runs_total", outcome="ok") == 3
    assert rig.metric("enclave_monitor_last_run_timestamp_seconds") > 1.7e9


def test_one_scheduled_monitor_per_enclave(tmp_path: Path) -> None:
    with (
        hold_monitor_lock(tmp_path, "demo"),
        pytest.raises(ConflictError, match="another 'enclave monitor demo' is running"),
        hold_monitor_lock(tmp_path, "demo"),
    ):
        pass


def test_metrics_are_served_over_http_on_loopback(rig: Rig) -> None:
    rig.monitor.run_once()
    server = serve_metrics(rig.metrics, "127.0.0.1", 0)
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.port > 0
        answer = httpx.get(server.url, timeout=5, trust_env=False)
    finally:
        server.close()
    assert answer.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(answer.text)}
    assert {
        "enclave_monitor_runs",
        "enclave_monitor_run_duration_seconds",
        "enclave_monitor_last_run_timestamp_seconds",
        "enclave_monitor_results",
        "enclave_monitor_drifted_results",
        "enclave_monitor_controller_errors",
    } <= families.keys()
    (duration,) = families["enclave_monitor_run_duration_seconds"].samples
    assert duration.value > 0


# -- the CLI ------------------------------------------------------------------------------------


@pytest.fixture
def cli_state(
    tmp_path: Path, baseline: Baseline, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, Reports]]:
    state = tmp_path / "state"
    (state / "enclaves" / "demo").mkdir(parents=True)
    reports = Reports(baseline)
    monkeypatch.setattr("enclave.compliance.monitor.check_enclave", reports)
    yield state, reports


def run_cli(capsys: pytest.CaptureFixture[str], state: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--state-dir", str(state), "monitor", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_once_exit_codes_follow_drift_and_the_controller(
    cli_state: tuple[Path, Reports], capsys: pytest.CaptureFixture[str]
) -> None:
    state, reports = cli_state
    code, out, _ = run_cli(capsys, state, "demo", "--once")
    assert code == 0 and "first run: accepted as the baseline" in out
    code, out, _ = run_cli(capsys, state, "demo", "--once", "--json")
    assert code == 0 and json.loads(out)["outcome"] == "ok"

    instance(reports.facts, "container", "model")["privileged"] = True
    code, out, err = run_cli(capsys, state, "demo", "--once")
    assert code == 5  # drift, and no controller to tell
    assert "DRIFT" in out and "drift NOT reported" in out
    assert "NOT reported" in err and "Traceback" not in err

    code, out, _ = run_cli(capsys, state, "demo", "--accept", "--json")
    assert code == 0 and json.loads(out)["accepted_now"] == "accept"
    assert run_cli(capsys, state, "demo", "--once")[0] == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["ghost", "--once"], 4, "enclave ghost: nothing under "),
        (["demo", "--interval", "soon"], 2, "--interval: invalid duration 'soon'"),
        (["demo", "--once", "--accept"], 2, "give --once or --accept, not both"),
        (["demo", "--once", "--interval", "5m"], 2, "--interval is for a scheduled monitor"),
        (["demo", "--metrics-address", "localhost:9"], 2, "'localhost' is not an IP address"),
        (["demo", "--metrics-address", "1.2.3.4:99999"], 2, "invalid address"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(
    cli_state: tuple[Path, Reports],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    state, reports = cli_state
    got, _, err = run_cli(capsys, state, *args)
    assert got == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert reports.calls == 0


def test_cli_once_refuses_while_a_scheduled_monitor_runs(
    cli_state: tuple[Path, Reports], capsys: pytest.CaptureFixture[str]
) -> None:
    state, _ = cli_state
    with hold_monitor_lock(state, "demo"):
        code, _, err = run_cli(capsys, state, "demo", "--once")
        assert code == 3 and "another 'enclave monitor demo' is running" in err
        # accepting works while it runs
        assert run_cli(capsys, state, "demo", "--accept")[0] == 0


# -- the controller's POST /drift -------------------------------------------------------------


def drift_api(
    tmp_path: Path, *, kills: bool, body: Callable[[httpx.AsyncClient, Controller], Any]
) -> list[AuditRecord]:
    home = tmp_path / "controller"
    signer = Ed25519Signer.from_file(home / "audit.key", create=True)
    effects = KillEffects()

    async def scenario() -> None:
        with AuditLog.open(home / "audit", enclave="demo", signer=signer) as log:
            controller = Controller(
                "demo",
                ["http://gateway"],  # never called: the kill's deny step is a fake here
                b"k" * 32,
                ControllerSettings(heartbeat=BEAT, drift_kills=kills),
                machine=StateMachine(home / "state.json", required=2, exclude_trigger=True),
                journal=Journal(log),
                effects=effects,
            )
            transport = httpx.ASGITransport(app=create_api(controller))
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
                await body(api, controller)

    asyncio.run(scenario())
    assert effects.calls == (["deny", "stop_models", "detach", "revoke"] if kills else [])
    return [r for r in iter_records(home / "audit") if r.action == "shutdown.drift"]


def test_drift_route_with_on_drift_alert_records_and_keeps_serving(tmp_path: Path) -> None:
    async def body(api: httpx.AsyncClient, controller: Controller) -> None:
        for bad in ({}, {"reason": "  "}, {"reason": 7}):
            refused = await api.post("/drift", json=bad)
            assert refused.status_code == 400
            assert refused.json()["error"]["code"] == "invalid_request"
        answer = await api.post("/drift", json={"reason": "CTR-01 (container x: pass -> fail)"})
        assert answer.status_code == 200
        assert answer.json() == {"on_drift": "alert", "mode": "serving"}
        assert controller.mode is Mode.SERVING

    (record,) = drift_api(tmp_path, kills=False, body=body)
    assert record.reason == "CTR-01 (container x: pass -> fail)"
    assert record.details == {"on_drift": "alert", "mode": "serving"}


def test_drift_route_with_on_drift_kill_kills_once(tmp_path: Path) -> None:
    async def body(api: httpx.AsyncClient, controller: Controller) -> None:
        answer = (await api.post("/drift", json={"reason": "AIS-08 (spec: pass -> fail)"})).json()
        assert answer["on_drift"] == "kill" and answer["accepted"] is True
        assert answer["mode"] == "killed" and answer["incident"]
        assert [s["ok"] for s in answer["steps"]] == [True] * 4
        trigger = controller.machine.state.trigger
        assert trigger is not None and trigger.kind is TriggerKind.DRIFT
        assert trigger.principal is None and trigger.reason == "AIS-08 (spec: pass -> fail)"
        again = (await api.post("/drift", json={"reason": "still drifted"})).json()
        assert again["on_drift"] == "kill" and again["accepted"] is False
        assert again["mode"] == "killed"

    records = drift_api(tmp_path, kills=True, body=body)
    assert [r.details["on_drift"] if r.details else None for r in records] == ["kill", "kill"]
