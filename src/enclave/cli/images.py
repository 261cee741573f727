"""``enclave images``: build the offline images (nothing is pulled) and list them."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer

from enclave.cli import args
from enclave.cli.console import err, out, print_json
from enclave.cli.context import state_dir
from enclave.images.service import ImageInfo, build_service_images, connect_engine, list_images

app = typer.Typer(
    help="Offline images: the debootstrap base and the service images built on it.",
    no_args_is_help=True,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

_WHAT = {"base": "base image", "wheels": "wheelhouse"}


@app.command("build")
def build(
    wheelhouse: Annotated[
        Path | None,
        typer.Option(
            "--wheelhouse",
            help="A directory of wheels (the project's and its dependencies', e.g. from a "
            "transfer bundle) to install. Default: built from this source checkout and cached "
            "under <state dir>/cache/wheels.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the base, common and service images that are missing; skip those up to date.

    Tags carry a content digest of what went in (base image, wheels, recipe), so a second run
    with nothing changed builds nothing. Building the base rootfs needs root and debootstrap.
    Exits 5 when the Docker engine is unreachable or a build fails, 3 when a tag exists but
    was built from another recipe.
    """
    args.directory(wheelhouse, "--wheelhouse")
    console = err()
    with closing(connect_engine()) as client, console.status("checking images") as status:
        cache = state_dir() / "cache"  # once the engine answers: a failed start leaves nothing
        cache.mkdir(mode=0o700, exist_ok=True)

        def progress(what: str, name: str) -> None:
            status.update(f"building the {_WHAT.get(what, what + ' image')} {name}")

        result = build_service_images(
            client, cache_dir=cache, wheelhouse=wheelhouse, progress=progress
        )
    if as_json:
        print_json(result.as_dict())
        return
    console = out()
    width = max(len(outcome.tag) for outcome in result.images)
    for outcome in result.images:
        state = f"built in {outcome.seconds:.1f} s" if outcome.built else "up to date"
        console.print(f"{outcome.tag:<{width}}  {state}", markup=False)


@app.command("list")
def list_command(as_json: JsonOpt = False) -> None:
    """List the images carrying enclave's component label (base, common and services).

    Exits 5 when the Docker engine is unreachable.
    """
    with closing(connect_engine()) as client:
        images = list_images(client)
    if as_json:
        print_json([info.as_dict() for info in images])
        return
    _print_table(images)


def _print_table(images: list[ImageInfo]) -> None:
    console = out()
    if not images:
        console.print("no enclave images (build them with: enclave images build)", markup=False)
        return
    width = max(len("TAG"), *(len(info.tag) for info in images))
    console.print(
        f"{'TAG':<{width}}  {'COMPONENT':<10} {'DIGEST':<12} {'SIZE':>9}  CREATED", markup=False
    )
    for info in images:
        size = f"{info.size / 1e6:.0f} MB"
        console.print(
            f"{info.tag:<{width}}  {info.component:<10} {info.digest[:12]:<12} {size:>9}  "
            f"{info.created}",
            markup=False,
        )
