"""The JUnit, SARIF, Markdown and OSCAL reporters on a report built from recorded facts.

The report comes from the shipped baseline judged against ``compliance_facts.json`` with a
privileged gateway (a failure, and a waived one on the second container), Vault unreachable
(errors) and one ignored waiver. The OSCAL document is validated against NIST's OSCAL schema
through compliance-trestle's models (generated from it); no SARIF schema is available offline,
so SARIF's structure is checked by hand against the fields the specification requires.
"""

from __future__ import annotations

import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError
from trestle.oscal import OSCAL_VERSION as SCHEMA_VERSION
from trestle.oscal.assessment_results import Model

from enclave.cli import check as check_cli
from enclave.cli.main import main
from enclave.compliance import Report, Status, Waiver, default_baseline, evaluate, load_baseline
from enclave.compliance.model import Severity
from enclave.compliance.reporters import to_junit, to_markdown, to_oscal, to_sarif
from enclave.compliance.reporters.oscal import OSCAL_VERSION, control_id
from enclave.compliance.reporters.sarif import LEVELS
from support.compliance import compliant_facts

BASELINE = load_baseline(default_baseline())
FAR = "2099-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def report() -> Report:
    facts = compliant_facts()
    labels = [label for label, _ in facts.instances["container"]]
    for _, values in facts.instances["container"]:
        values["privileged"] = True
    facts.errors["vault"] = "Vault unreachable: connection refused"
    waivers = [
        Waiver("CTR-01", labels[1], "vendor driver | needs it", "carol", FAR, True),
        Waiver("CTR-02", None, "later", "dan", "2000-01-01T00:00:00Z", False, "expired"),
    ]
    built = evaluate(BASELINE, facts, enclave="demo", waivers=waivers)
    counts = built.counts()
    assert counts["fail"] and counts["error"] and counts["waived"] and counts["pass"]
    return built


def _failing_ids(report: Report) -> set[str]:
    return {r.check.id for r in report.results if r.status is Status.FAIL}


# --- JUnit -------------------------------------------------------------------------------------


def test_junit_has_one_testcase_per_result_and_the_right_counts(report: Report) -> None:
    root = ET.fromstring(to_junit(report))  # noqa: S314 - our own output
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    counts = report.counts()
    assert len(cases) == len(report.results) == int(suite.get("tests", "-1"))
    assert int(suite.get("failures", "-1")) == counts["fail"]
    assert int(suite.get("errors", "-1")) == counts["error"]
    assert int(suite.get("skipped", "-1")) == counts["waived"] + counts["not-applicable"]
    assert root.get("tests") == suite.get("tests")
    assert sum(1 for c in cases if c.find("failure") is not None) == counts["fail"]
    assert sum(1 for c in cases if c.find("error") is not None) == counts["error"]
    assert sum(1 for c in cases if c.find("skipped") is not None) == (
        counts["waived"] + counts["not-applicable"]
    )


def test_junit_failures_carry_evidence_and_waivers_are_skipped_with_the_waiver(
    report: Report,
) -> None:
    root = ET.fromstring(to_junit(report))  # noqa: S314 - our own output
    by_name = {c.get("name"): c for c in root.iter("testcase")}
    labels = [r.target for r in report.results if r.check.id == "CTR-01"]
    failed = by_name[f"CTR-01 {labels[0]}"].find("failure")
    assert failed is not None and "container.privileged = true" in (failed.text or "")
    assert "nist-800-53" in (failed.text or "")
    skipped = by_name[f"CTR-01 {labels[1]}"].find("skipped")
    assert skipped is not None
    assert skipped.get("message") == f"waived until {FAR} by carol: vendor driver | needs it"
    errors = [c.find("error") for c in root.iter("testcase") if c.find("error") is not None]
    assert errors and all("Vault unreachable" in (e.get("message") or "") for e in errors if e)


# --- SARIF -------------------------------------------------------------------------------------


def test_sarif_is_2_1_0_and_every_result_names_a_rule(report: Report) -> None:
    log = json.loads(to_sarif(report, [c.check for c in BASELINE.checks]))
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "enclave" and driver["version"]
    rules = driver["rules"]
    ids = [rule["id"] for rule in rules]
    assert len(ids) == len(set(ids)) == len(BASELINE.checks)
    for rule in rules:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"]
        assert "Remediation:" in rule["help"]["text"] and rule["help"]["markdown"]
        assert rule["properties"]["nist-800-53"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
    assert len(run["results"]) == len(report.results)
    for result in run["results"]:
        assert result["ruleId"] in ids
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["message"]["text"]
        (location,) = result["locations"]
        (logical,) = location["logicalLocations"]
        assert logical["name"]
    assert run["invocations"][0]["executionSuccessful"] is True


def test_sarif_levels_come_from_severity(report: Report) -> None:
    log = json.loads(to_sarif(report))
    severity = {r.check.id: r.check.severity for r in report.results}
    seen: Counter[str] = Counter()
    for result in log["runs"][0]["results"]:
        status = result["properties"]["status"]
        seen[status] += 1
        if status in ("fail", "error", "waived"):
            assert result["kind"] == "fail"
            assert result["level"] == LEVELS[severity[result["ruleId"]]]
        else:
            assert result["level"] == "none"
            assert result["kind"] == ("pass" if status == "pass" else "notApplicable")
    assert LEVELS[Severity.CRITICAL] == "error" and LEVELS[Severity.LOW] == "note"
    assert seen == Counter({k: v for k, v in report.counts().items() if v})


def test_sarif_waived_results_are_suppressed_not_hidden(report: Report) -> None:
    log = json.loads(to_sarif(report))
    waived = [r for r in log["runs"][0]["results"] if r["properties"]["status"] == "waived"]
    assert waived
    for result in waived:
        (suppression,) = result["suppressions"]
        assert suppression["status"] == "accepted" and "carol" in suppression["justification"]


# --- Markdown ----------------------------------------------------------------------------------


def test_markdown_lists_counts_every_failing_check_and_the_waivers(report: Report) -> None:
    text = to_markdown(report)
    counts = report.counts()
    for status in Status:
        assert f"| {status.value} | {counts[status.value]} |" in text
    failures = text.split("## Failures and errors")[1].split("## Waived")[0]
    for check_id in _failing_ids(report):
        assert f"### {check_id} FAIL" in failures
    assert "nist-800-53" in failures and "`container.privileged` = `true`" in failures
    # failures come before errors
    assert failures.index(" FAIL:") < failures.index(" ERROR:")
    waived = text.split("\n## Waived")[1].split("\n## ")[0]
    assert "### CTR-01 WAIVED" in waived and "by carol" in waived
    assert "| CTR-02 | * | expired |" in text
    table = text.split("\n## All results")[1].splitlines()
    rows = [line for line in table if re.match(r"^\| [A-Z]{2,5}-\d", line)]
    assert len(rows) == len(report.results)


# --- OSCAL -------------------------------------------------------------------------------------

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[45][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def test_oscal_has_the_required_assessment_results_structure(report: Report) -> None:
    document = json.loads(to_oscal(report))
    ar = document["assessment-results"]
    assert UUID.match(ar["uuid"])
    meta = ar["metadata"]
    assert meta["title"] and meta["version"] and meta["oscal-version"] == OSCAL_VERSION
    assert STAMP.match(meta["last-modified"])
    assert ar["import-ap"]["href"].startswith("file://")
    (result,) = ar["results"]
    assert UUID.match(result["uuid"]) and result["title"] and result["description"]
    assert STAMP.match(result["start"]) and STAMP.match(result["end"])
    assert result["start"] <= result["end"]
    selected = result["reviewed-controls"]["control-selections"][0]["include-controls"]
    assert {"control-id": "ac-6"} in selected
    observations = {o["uuid"]: o for o in result["observations"]}
    assert len(observations) == len(result["findings"]) == len(report.results)
    for obs in observations.values():
        assert UUID.match(obs["uuid"]) and obs["description"] and obs["methods"] == ["TEST"]
        assert STAMP.match(obs["collected"])
    states: Counter[str] = Counter()
    for finding in result["findings"]:
        assert UUID.match(finding["uuid"]) and finding["title"] and finding["description"]
        target = finding["target"]
        assert target["type"] == "objective-id" and TOKEN.match(target["target-id"])
        assert target["status"]["state"] in ("satisfied", "not-satisfied")
        states[target["status"]["state"]] += 1
        (related,) = finding["related-observations"]
        assert related["observation-uuid"] in observations
    counts = report.counts()
    assert states["not-satisfied"] == counts["fail"] + counts["error"] + counts["waived"]
    all_uuids = [
        ar["uuid"],
        result["uuid"],
        *observations,
        *(f["uuid"] for f in result["findings"]),
    ]
    assert len(set(all_uuids)) == len(all_uuids)
    assert to_oscal(report) == to_oscal(report)  # deterministic
    assert uuid.UUID(ar["uuid"]).version == 5


def test_oscal_observations_carry_the_evidence(report: Report) -> None:
    result = json.loads(to_oscal(report))["assessment-results"]["results"][0]
    observations = {o["uuid"]: o for o in result["observations"]}
    failed = [
        f for f in result["findings"]
        if {"name": "result-status", "ns": "https://enclave.dev/ns/oscal", "value": "fail"}
        in f["props"]
    ]  # fmt: skip
    assert failed
    for finding in failed:
        obs = observations[finding["related-observations"][0]["observation-uuid"]]
        assert obs["relevant-evidence"]
    errors = [
        o
        for o in observations.values()
        if {"name": "result-status", "ns": "https://enclave.dev/ns/oscal", "value": "error"}
        in o["props"]
    ]
    assert errors
    assert all("Vault unreachable" in o["relevant-evidence"][0]["description"] for o in errors)


def test_oscal_validates_against_the_oscal_schema(report: Report) -> None:
    """compliance-trestle's models are generated from NIST's OSCAL JSON schema: required
    fields, no unknown ones, UUIDs, tokens, zoned date-times, URIs and enumerations."""
    assert OSCAL_VERSION == SCHEMA_VERSION
    document = json.loads(to_oscal(report))
    parsed = Model.model_validate(document)
    results = parsed.assessment_results.results
    assert len(results) == 1 and len(results[0].findings or []) == len(report.results)
    # the validator is not a formality: one wrong field and the document is refused
    broken = json.loads(to_oscal(report))
    broken["assessment-results"]["results"][0]["findings"][0]["target"]["status"]["state"] = "ok"
    with pytest.raises(ValidationError, match="satisfied"):
        Model.model_validate(broken)


HOSTILE = 'x"><script>alert(1)</script>\u0000 \n\t-- ]]> '
"""Text a container's owner controls (its name, labels): quotes, markup, NUL, new lines."""


def hostile_report(*, privileged: bool) -> Report:
    """Every container renamed to hostile text (a leading space too) and, when ``privileged``,
    failing CTR-01 under a waiver whose every field is hostile too."""
    facts = compliant_facts()
    facts.instances["container"] = [
        (f" {HOSTILE}{n}", {**values, "name": f"{HOSTILE}{n}", "privileged": privileged})
        for n, (_, values) in enumerate(facts.instances["container"])
    ]
    facts.values["containers"] = [values for _, values in facts.instances["container"]]
    waiver = Waiver("CTR-01", None, HOSTILE, HOSTILE, FAR, True)
    return evaluate(BASELINE, facts, enclave="demo", waivers=[waiver])


def test_oscal_of_an_all_passing_run_and_of_hostile_text_validates() -> None:
    passing = evaluate(BASELINE, compliant_facts(), enclave="demo")
    assert not passing.counts()["fail"] and not passing.counts()["error"]
    hostile = hostile_report(privileged=True)
    assert hostile.counts()["waived"] == 2
    for built in (passing, hostile):
        Model.model_validate(json.loads(to_oscal(built, assessment_plan="urn:enclave:plan")))


@pytest.mark.parametrize(
    ("nist", "oscal"), [("AC-6", "ac-6"), ("AC-6(9)", "ac-6.9"), ("SI-04", "si-4"), ("x y", "x.y")]
)
def test_control_ids_take_oscal_form(nist: str, oscal: str) -> None:
    assert control_id(nist) == oscal


# --- CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def cli(report: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``enclave check`` with the report above in place of a live run."""
    monkeypatch.setattr(check_cli, "check_enclave", lambda settings: report)
    monkeypatch.setattr(check_cli, "state_dir", lambda: tmp_path / "state")
    return tmp_path


@pytest.mark.parametrize("fmt", ["junit", "sarif", "markdown", "oscal", "html"])
def test_the_cli_writes_each_format_to_a_file(cli: Path, fmt: str) -> None:
    out = cli / f"report.{fmt}"
    # Vault could not be reached: exit 5 (it takes precedence over the failures)
    assert main(["check", "demo", "--format", fmt, "--output", str(out)]) == 5
    text = out.read_text()
    if fmt == "junit":
        assert ET.fromstring(text).tag == "testsuites"  # noqa: S314 - our own output
    elif fmt == "markdown":
        assert text.startswith("# Compliance report")
    elif fmt == "html":
        assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    else:
        assert isinstance(json.loads(text), dict)


def test_the_cli_prints_to_stdout_and_refuses_output_for_the_table(
    cli: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "demo", "--format", "sarif", "--fail-on", "never"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "2.1.0"
    assert main(["check", "demo", "--output", str(cli / "t.txt")]) == 2
    assert "--output needs a file format" in capsys.readouterr().err
    assert not (cli / "t.txt").exists()
    assert main(["check", "demo", "--format", "junit", "--output", str(cli / "no/such")]) == 2
