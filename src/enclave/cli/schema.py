"""``enclave schema``: the JSON Schema of the spec, generated from the model."""

from __future__ import annotations

from typing import Annotated

import typer

from enclave.cli.console import print_json
from enclave.spec import Enclave, EnclaveSpec


def schema(
    spec_only: Annotated[
        bool,
        typer.Option("--spec-only", help="Only the `spec` object (the CRD's spec schema)."),
    ] = False,
) -> None:
    """Print the JSON Schema of an enclave.yaml document (or of its `spec`)."""
    model = EnclaveSpec if spec_only else Enclave
    print_json(model.model_json_schema(by_alias=True, mode="validation"))
