from __future__ import annotations

from pathlib import Path

import pytest

from enclave.errors import Severity, SpecError
from enclave.spec import Enclave, EnclaveSpec, load_catalog, load_spec
from support.workspace import CATALOG, Workspace


def errors_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return [str(p) for p in caught.value.problems if p.severity is Severity.ERROR]


def line_of(path: Path, needle: str) -> int:
    lines = path.read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


def test_example_spec_is_valid_and_clean(workspace: Workspace) -> None:
    loaded = load_spec(workspace.example())
    assert loaded.warnings == []
    assert loaded.name == "demo"
    assert loaded.permitted == ["logistics-planning", "threat-triage", "translation"]
    assert loaded.approval_required == ["threat-triage"]
    assert loaded.prohibited == [
        "autonomous-target-selection",
        "domestic-mass-surveillance",
        "kinetic-control",
    ]
    assert str(loaded.spec.gateway.listen) == "127.0.0.1:8443"


def test_five_distinct_mistakes_are_all_reported_with_locations(workspace: Workspace) -> None:
    path = workspace.example(
        ("name: assistant", "name: Assistant"),
        ("  gateway:\n", "  gatway:\n"),
        ("purposes: [translation,", "purposes: [translaton,"),
        ("roles: [analyst]}", "roles: [analyts]}"),
        ("heartbeat: 1s ", "heartbeat: 1x "),
    )
    assert errors_of(path) == [
        f"{path}:{line_of(path, 'Assistant')}:13: spec.models[0].name: 'Assistant' is not a "
        "DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or "
        "digit, at most 63 characters)",
        f"{path}:{line_of(path, 'gatway')}:3: spec.gatway: unknown field (did you mean 'gateway'?)",
        f"{path}:{line_of(path, 'translaton')}:20: spec.rbac.roles.analyst.purposes[0]: unknown "
        "purpose 'translaton' (not in policies/usage/catalog.yaml; known: logistics-planning, "
        "software-assurance, threat-triage, training-simulation, translation)",
        f"{path}:{line_of(path, 'analyts')}:31: spec.rbac.principals[0].roles[0]: unknown role "
        "'analyts' (known: analyst, approver, safety-officer)",
        f"{path}:{line_of(path, 'heartbeat: 1x')}:16: spec.shutdown.heartbeat: invalid duration "
        "'1x' (use e.g. 500ms, 1s, 1m30s, 5m, 1h)",
    ]


MINIMAL = """\
apiVersion: enclave.dev/v1alpha1
kind: Enclave
metadata: {name: tiny}
spec:
  classification: cui
  models: [{name: m}]
"""


def test_minimal_spec_gets_careful_defaults(workspace: Workspace) -> None:
    loaded = load_spec(workspace.write(MINIMAL))
    spec = loaded.spec
    assert spec.rbac.roles == {} and spec.rbac.principals == []  # deny by default
    assert spec.gateway.listen.is_loopback
    assert spec.vault.address == "embedded"
    assert spec.audit.store_content is False
    assert spec.shutdown.resume_approvals == 2
    assert spec.shutdown.resume_excludes_trigger is True
    # every prohibited use in the catalog applies even though the spec names none
    assert loaded.prohibited == sorted(load_catalog(loaded.catalog_source).prohibited_ids)
    assert [w.path for w in loaded.warnings] == ["spec.shutdown.resumeApprovals"]


def test_missing_field_points_at_its_parent(workspace: Workspace) -> None:
    path = workspace.write(MINIMAL.replace("  classification: cui\n", ""))
    assert errors_of(path) == [f"{path}:5:3: spec.classification: required field is missing"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("runtime: reference ", "runtime: vlm ", "spec.models[0].runtime: must be one of"),
        ("runtime: reference ", "runtime: vllm ", "runtime 'vllm' needs an 'image'"),
        ("cpus: 1,", "cpus: -1,", "spec.models[0].resources.cpus: input should be greater"),
        ("memory: 1Gi", "memory: 1Mi", "spec.models[0].resources.memory: input should be"),
        ("listen: 127.0.0.1:8443", "listen: gateway:8443", "spec.gateway.listen: invalid address"),
        ("address: embedded", "address: http://vault.example", "plain http is allowed only on"),
        ("lease: 2s", "lease: 1s", "spec.shutdown.lease: lease must be longer than the heartbeat"),
        ("classification: cui", "classification: secrett", "spec.classification: must be one of"),
        ("onDrift: alert", "onDrift: panic", "spec.compliance.onDrift: must be one of"),
        ("backend: docker", "backend: podman", "spec.backend: must be one of"),
        ("actions: [approve]", "actions: [approve, fly]", "spec.rbac.roles.approver.actions[1]"),
        ("{name: bob,", "{name: alice,", "duplicate principal 'alice' (first at line"),
        ("requireApproval: [threat-triage]", "requireApproval: [kinetic-control]", "prohibited"),
        (
            "requireApproval: [threat-triage]",
            "requireApproval: [poetry]",
            "unknown purpose 'poetry'",
        ),
        ("prohibited: [domestic", "prohibited: [jaywalking, domestic", "unknown prohibited use"),
        ("apiVersion: enclave.dev/v1alpha1", "apiVersion: v1", "apiVersion: must be one of"),
        ("name: demo ", "name: demo_1 ", "metadata.name: 'demo_1' is not a DNS-1123 label"),
        ("catalog: policies/usage/catalog.yaml", "catalog: nowhere.yaml", "catalog file not found"),
    ],
)
def test_each_mistake_is_named_with_its_field(
    workspace: Workspace, old: str, new: str, expected: str
) -> None:
    path = workspace.example((old, new))
    found = errors_of(path)
    assert any(expected in e for e in found), found
    assert all(e.startswith(f"{path}:") for e in found)


def test_prohibited_use_can_never_be_a_permitted_purpose(workspace: Workspace) -> None:
    path = workspace.example(
        ("purposes: [translation,", "purposes: [kinetic-control, translation,")
    )
    (error,) = errors_of(path)
    assert error.endswith(
        "spec.rbac.roles.analyst.purposes[0]: 'kinetic-control' is a prohibited use "
        "and can never be a permitted purpose"
    )


def test_purpose_above_its_classification_ceiling(workspace: Workspace) -> None:
    path = workspace.example(
        ("classification: cui ", "classification: secret "),
        ("purposes: [translation,", "purposes: [training-simulation, translation,"),
    )
    (error,) = errors_of(path)
    assert (
        "purpose 'training-simulation' is permitted only up to 'cui'; this enclave is 'secret'"
        in error
    )


def test_duplicate_yaml_keys_are_errors(workspace: Workspace) -> None:
    path = workspace.example(("  backend: docker", "  backend: docker\n  backend: kubernetes"))
    (error,) = errors_of(path)
    first = line_of(path, "backend: docker")
    assert error == (
        f"{path}:{first + 1}:3: spec.backend: duplicate key 'backend' (first at line {first})"
    )


def test_a_duplicate_key_does_not_hide_the_other_errors(workspace: Workspace) -> None:
    path = workspace.example(
        ("  backend: docker", "  backend: docker\n  backend: kubernetes"),
        ("name: demo", "name: Demo_Enclave"),
    )
    errors = errors_of(path)
    assert len(errors) == 2, errors
    assert any("spec.backend: duplicate key 'backend'" in e for e in errors)
    assert any("metadata.name" in e for e in errors)


def test_yaml_syntax_errors_are_located(workspace: Workspace) -> None:
    path = workspace.write(MINIMAL + "  gateway: {listen: [\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:8:1: invalid YAML:")


def test_tabs_are_located(workspace: Workspace) -> None:
    path = workspace.write(MINIMAL.replace("  models", "\tmodels"))
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:6:1: invalid YAML:") and "\\t" in error


def test_anchors_and_merge_keys_work(workspace: Workspace) -> None:
    text = MINIMAL.replace(
        "  models: [{name: m}]",
        "  models:\n    - &base {name: a, resources: {cpus: 2}}\n    - {<<: *base, name: b}",
    )
    loaded = load_spec(workspace.write(text))
    assert [(m.name, m.resources.cpus) for m in loaded.spec.models] == [("a", 2.0), ("b", 2.0)]


def test_alias_bomb_is_refused_quickly(workspace: Workspace) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    (error,) = errors_of(workspace.write("\n".join(lines) + "\n"))
    assert "expands to more than" in error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "file is empty"),
        ("- just\n- a list\n", "input should be a valid dictionary"),
        ("a: 1\n---\nb: 2\n", "invalid YAML: but found another document"),
        ("a: !!python/object:os.system x\n", "unsupported YAML tag"),
        ("a: !custom x\n", "unsupported YAML tag"),
        ("? [1, 2]\n: x\n", "mapping keys must be plain strings"),
        ("a: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than"),
    ],
)
def test_malformed_documents(workspace: Workspace, text: str, message: str) -> None:
    found = errors_of(workspace.write(text))
    assert any(message in e for e in found), found


def test_non_utf8_and_missing_files(workspace: Workspace, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"a: \xe9\n")
    assert errors_of(bad) == [f"{bad}: not UTF-8 text (bad byte at offset 3)"]
    assert errors_of(tmp_path / "missing.yaml") == [f"{tmp_path / 'missing.yaml'}: file not found"]
    assert errors_of(tmp_path) == [f"{tmp_path}: is a directory, not a file"]


def test_catalog_errors_are_located_in_the_catalog(workspace: Workspace) -> None:
    catalog = workspace.root / "policies" / "usage" / "catalog.yaml"
    catalog.write_text(CATALOG.replace("id: kinetic-control", "id: translation"), encoding="utf-8")
    path = workspace.example()
    found = errors_of(path)
    assert len(found) == 1
    assert found[0].startswith(f"{catalog}:")
    assert "prohibited[2].id: duplicate id 'translation' (first at line" in found[0]


def test_reference_errors_are_found_even_when_another_section_is_broken(
    workspace: Workspace,
) -> None:
    path = workspace.example(("memory: 1Gi", "memory: lots"), ("roles: [analyst]}", "roles: [x]}"))
    found = errors_of(path)
    assert len(found) == 2
    assert "invalid size 'lots'" in found[0]
    assert "unknown role 'x'" in found[1]


def test_warnings_do_not_invalidate(workspace: Workspace) -> None:
    loaded = load_spec(
        workspace.example(("actions: [approve]", "actions: [audit-read]"))  # nobody can approve
    )
    assert [w.severity for w in loaded.warnings] == [Severity.WARNING]
    assert "no principal holds 'approve'" in loaded.warnings[0].message


def test_a_lease_longer_than_two_heartbeats_is_a_located_warning(workspace: Workspace) -> None:
    path = workspace.example(("lease: 2s", "lease: 5s"))
    loaded = load_spec(path)
    (warning,) = loaded.warnings
    assert warning.path == "spec.shutdown.lease"
    assert warning.line == line_of(path, "lease: 5s")
    assert "more than two heartbeat intervals" in warning.message
    assert load_spec(workspace.example(("lease: 2s", "lease: 1500ms"))).warnings == []


def test_spec_round_trips_through_json(workspace: Workspace) -> None:
    enclave = load_spec(workspace.example()).enclave
    dumped = enclave.model_dump(mode="json", by_alias=True)
    assert dumped["spec"]["shutdown"]["heartbeat"] == "1s"
    assert dumped["spec"]["models"][0]["resources"]["memory"] == "1Gi"
    assert Enclave.model_validate(dumped) == enclave


def test_json_schema_forbids_unknown_fields() -> None:
    schema = EnclaveSpec.model_json_schema(by_alias=True)
    assert schema["additionalProperties"] is False
    assert "requireApproval" in schema["$defs"]["Usage"]["properties"]
    assert schema["$defs"]["Shutdown"]["properties"]["heartbeat"]["type"] == "string"
