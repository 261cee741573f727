"""``enclave runtime train|serve`` in-process (serving over a socket: tests/integration)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from enclave.cli.main import main
from enclave.runtime import builtin_weights

Output = pytest.CaptureFixture[str]


def run(capsys: Output, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_writes_the_weights_and_prints_their_digest(capsys: Output, tmp_path: Path) -> None:
    path = tmp_path / "models" / "reference.json"
    code, out, err = run(capsys, "runtime", "train", "--output", str(path))
    assert (code, err) == (0, "")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert out == f"{digest}\n"
    assert digest == builtin_weights().sha256

    code, _, err = run(capsys, "runtime", "train", "--output", str(path))
    assert code == 3
    assert err == f"enclave: error: {path} already exists (use --force to overwrite)\n"
    assert run(capsys, "runtime", "train", "--output", str(path), "--force")[:2] == (0, out)


def test_serve_refuses_a_digest_mismatch_before_listening(capsys: Output, tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    assert run(capsys, "runtime", "train", "-o", str(path))[0] == 0
    code, out, err = run(capsys, "runtime", "serve", "--weights", str(path), "--sha256", "1" * 64)
    assert code == 6
    assert out == ""
    assert err.startswith(f"enclave: error: weights {path}: sha256 is ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sha256", "xyz"], "--sha256: 'xyz' is not a sha256 digest"),
        (["--model-name", "Bad_Name"], "--model-name: 'Bad_Name' is not a DNS-1123 label"),
        (["--port", "70000"], "--port 70000: must be between 0 and 65535"),
    ],
)
def test_serve_rejects_bad_flags(
    capsys: Output, tmp_path: Path, argv: list[str], message: str
) -> None:
    path = tmp_path / "w.json"
    digest = run(capsys, "runtime", "train", "-o", str(path))[1].strip()
    flags = {"--weights": str(path), "--sha256": digest}
    flags.update(zip(argv[::2], argv[1::2], strict=True))
    code, _, err = run(capsys, "runtime", "serve", *[x for kv in flags.items() for x in kv])
    assert code == 2
    assert err.startswith(f"enclave: error: {message}")


def test_serve_reports_a_missing_weights_file(capsys: Output, tmp_path: Path) -> None:
    missing = tmp_path / "none.json"
    code, _, err = run(capsys, "runtime", "serve", "--weights", str(missing), "--sha256", "a" * 64)
    assert code == 2
    assert err == f"enclave: error: weights {missing}: No such file or directory\n"
