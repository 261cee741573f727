"""``enclave runtime``: train the reference model's weights and serve it outside containers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from enclave.errors import ConflictError, InputError
from enclave.runtime.model import NgramModel
from enclave.runtime.server import serve as serve_model
from enclave.runtime.weights import load_weights, reference_corpus, train, write_weights
from enclave.spec.units import check_name

app = typer.Typer(
    help="The reference model: train its weights, serve it with the OpenAI API.",
    no_args_is_help=True,
)


@app.command("train")
def train_weights(
    output: Annotated[Path, typer.Option("--output", "-o", help="Weights file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Train the reference model from the corpus enclave ships; print the file's sha256.

    Training is deterministic: the same enclave version always writes the same bytes.
    Refuses (exit 3) to overwrite an existing file unless --force is given.
    """
    exists = output.exists() or output.is_symlink()
    if exists and (output.is_symlink() or not output.is_file()):
        raise InputError(f"--output {output}: not a regular file")
    if exists and not force:
        raise ConflictError(f"{output} already exists (use --force to overwrite)")
    parent = output.parent
    if (parent.exists() or parent.is_symlink()) and not parent.is_dir():
        raise InputError(f"--output {output}: {parent} is not a directory")
    weights = train(reference_corpus())
    try:
        digest = write_weights(weights, output)
    except OSError as exc:
        raise InputError(f"--output {output}: cannot write it: {exc.strerror or exc}") from None
    typer.echo(digest)


@app.command("serve")
def serve(
    weights: Annotated[Path, typer.Option("--weights", help="Weights file (from train).")],
    sha256: Annotated[
        str, typer.Option("--sha256", help="Expected sha256 of the weights file (hex).")
    ],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free).")] = 8000,
    model_name: Annotated[
        str, typer.Option("--model-name", help="Name the model is served under.")
    ] = "assistant",
    token_delay: Annotated[
        float,
        typer.Option(
            "--token-delay",
            min=0.0,
            max=10.0,
            help="Seconds each generated token takes at least (simulates a slower model).",
        ),
    ] = 0.0,
) -> None:
    """Serve the reference model with the OpenAI API until interrupted (SIGINT/SIGTERM).

    The weights' digest is checked before anything listens: a mismatch exits 6. Prints the
    URL it serves on (useful with --port 0) on one line once it listens.
    """
    try:
        check_name(model_name)
    except ValueError as exc:
        raise InputError(f"--model-name: {exc}") from None
    model = NgramModel(load_weights(weights, sha256))

    def ready(url: str) -> None:
        typer.echo(f"serving model {model_name} on {url}")

    serve_model(
        model, model_name=model_name, host=host, port=port, token_delay=token_delay, on_ready=ready
    )
