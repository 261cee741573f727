"""Loading the compliance baseline: the shipped one, and every kind of located error."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave.compliance import default_baseline, load_baseline
from enclave.compliance.model import Severity, Target
from enclave.errors import SpecError
from support import REPO_ROOT

HEAD = "apiVersion: enclave.dev/v1alpha1\nkind: ComplianceBaseline\nchecks:\n"
GOOD = """\
  - id: TST-01
    title: A test check
    severity: high
    target: docker-container
    rationale: Because.
    rule: '!container.privileged'
    remediation: Fix it.
    mappings: {nist-800-53: [AC-6]}
"""


def write(tmp_path: Path, body: str, name: str = "a.yaml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD + body, encoding="utf-8")
    return tmp_path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_baseline(path)
    return [str(p) for p in caught.value.problems]


def test_the_shipped_baseline_loads_and_covers_the_issue() -> None:
    baseline = load_baseline(default_baseline())
    ids = baseline.ids
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)
    areas = {i.split("-")[0] for i in ids}
    assert areas == {"CTR", "NET", "SEC", "VLT", "HST", "DKR", "AIS", "AUD"}
    targets = {c.check.target for c in baseline.checks}
    assert targets == set(Target)
    for loaded in baseline.checks:
        mappings = loaded.check.mappings
        assert mappings.nist_800_53, loaded.check.id
    # CIS Docker ids where one exists, AI RMF for the safeguards, 3000.09 where it applies
    assert sum(bool(c.check.mappings.cis_docker) for c in baseline.checks) >= 30
    assert all(c.check.mappings.nist_ai_rmf for c in baseline.checks if c.check.id[:3] == "AIS")
    assert baseline.check("AIS-02").check.mappings.dodd_3000_09 == ["1.2.a", "1.2.d"]
    assert baseline.check("CTR-01").check.severity is Severity.CRITICAL


def test_the_packaged_baseline_is_the_policies_directory() -> None:
    shipped = default_baseline()
    assert shipped.resolve() == (REPO_ROOT / "policies" / "baseline").resolve()
    assert load_baseline(shipped).sha256 == load_baseline(REPO_ROOT / "policies/baseline").sha256


def test_a_good_file_loads(tmp_path: Path) -> None:
    baseline = load_baseline(write(tmp_path, GOOD))
    (check,) = baseline.checks
    assert check.check.id == "TST-01"
    assert check.rule is not None and check.rule.paths == ("container.privileged",)
    assert check.where.endswith("a.yaml:4")


def test_an_unchanged_baseline_is_compiled_once_and_a_changed_one_again(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    first = load_baseline(path)
    assert load_baseline(path) is first  # read again, not compiled again
    write(tmp_path, GOOD.replace("severity: high", "severity: low"))
    changed = load_baseline(path)
    assert changed is not first and changed.sha256 != first.sha256
    assert changed.checks[0].check.severity is Severity.LOW
    write(tmp_path, GOOD.replace("'!container.privileged'", "container.x =="))
    assert problems(path)  # a broken edit is reported, never served from the cache


def test_a_cel_syntax_error_is_located(tmp_path: Path) -> None:
    found = problems(write(tmp_path, GOOD.replace("'!container.privileged'", "container.x ==")))
    assert len(found) == 1
    assert found[0].startswith(
        f"{tmp_path / 'a.yaml'}:9:11: checks[0].rule: CEL syntax error at 1:"
    )


def test_an_unknown_fact_is_located(tmp_path: Path) -> None:
    found = problems(write(tmp_path, GOOD.replace("!container.privileged", "!contianer.x")))
    assert found == [
        f"{tmp_path / 'a.yaml'}:9:11: checks[0].rule: unknown fact 'contianer' (facts: audit, "
        "container, containers, daemon, drill, enclave, firewall, gateway, host, network, "
        "networks, spec, vault)"
    ]


def test_comprehension_variables_are_not_facts(tmp_path: Path) -> None:
    rule = "rule: container.mounts.all(m, !m.rw) && networks.exists(n, n.internal)"
    baseline = load_baseline(write(tmp_path, GOOD.replace("rule: '!container.privileged'", rule)))
    assert baseline.checks[0].rule is not None
    assert baseline.checks[0].rule.roots == {"container", "networks"}
    assert baseline.checks[0].rule.paths == ("container.mounts", "networks")


def test_schema_errors_are_located_with_their_field_path(tmp_path: Path) -> None:
    body = (
        GOOD.replace("severity: high", "severity: severe")
        .replace("    remediation: Fix it.\n", "")
        .replace("target: docker-container", "target: docker-container\n    rul: x")
    )
    found = problems(write(tmp_path, body))
    where = str(tmp_path / "a.yaml")
    assert (
        f"{where}:6:15: checks[0].severity: must be one of 'low', 'medium', 'high' or "
        in (found[0])
    )
    assert any(
        p.startswith(f"{where}:8:5: checks[0].rul: unknown field (did you mean 'rule'?)")
        for p in found
    )
    assert any(p == f"{where}:4:5: checks[0].remediation: required field is missing" for p in found)


def test_rule_and_python_are_exclusive(tmp_path: Path) -> None:
    body = GOOD.replace(
        "rule: '!container.privileged'", "python: enclave.compliance.x:y\n    rule: 'true'"
    )
    (found,) = problems(write(tmp_path, body))
    assert "give exactly one of 'rule' (CEL) or 'python' (module:function)" in found


def test_python_checks_must_live_in_the_compliance_package(tmp_path: Path) -> None:
    body = GOOD.replace("rule: '!container.privileged'", "python: os:system")
    (found,) = problems(write(tmp_path, body))
    assert found.endswith(
        "checks[0].python: python checks must live in enclave.compliance.*, not 'os'"
    )
    body = GOOD.replace("rule: '!container.privileged'", "python: enclave.compliance.pychecks:nope")
    (found,) = problems(write(tmp_path, body))
    assert "'enclave.compliance.pychecks' has no function 'nope'" in found


def test_duplicate_ids_across_files_are_located(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.yaml")
    write(tmp_path, GOOD, "b.yaml")
    (found,) = problems(tmp_path)
    assert found == (
        f"{tmp_path / 'b.yaml'}:4:9: checks[0].id: duplicate check id 'TST-01' "
        f"(first at {tmp_path / 'a.yaml'}:4)"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, GOOD.replace("'!container.privileged'", "'('"), "a.yaml")
    write(tmp_path, "  - {id: nope}\n", "b.yaml")
    (tmp_path / "c.yaml").write_text("checks: [: bad\n")
    found = problems(tmp_path)
    assert [p.split(":")[0] for p in found[:1]] == [str(tmp_path / "a.yaml")]
    assert any("b.yaml" in p for p in found) and any(
        "c.yaml" in p and "invalid YAML" in p for p in found
    )


def test_an_empty_or_missing_baseline_is_an_error(tmp_path: Path) -> None:
    assert problems(tmp_path) == [f"{tmp_path}: no *.yaml baseline file in directory"]
    assert problems(tmp_path / "nope") == [f"{tmp_path / 'nope'}: baseline not found"]
