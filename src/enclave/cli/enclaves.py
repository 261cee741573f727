"""``enclave plan|up|down|status|list``: an enclave on the local Docker engine."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer

from enclave import lifecycle
from enclave.backends.docker import DockerBackend, connect
from enclave.backends.runtimes import BuiltinWeights
from enclave.cli import args
from enclave.cli.console import err, out, print_json
from enclave.cli.context import state_dir
from enclave.images.service import ensure_service_images
from enclave.runtime.weights import builtin_weights, write_weights
from enclave.spec import load_spec

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
SpecArg = Annotated[Path, typer.Argument(help="The enclave spec (enclave.yaml).")]
NameArg = Annotated[
    str, typer.Argument(help="The enclave's name (metadata.name).", callback=args.enclave_name)
]
WheelhouseOpt = Annotated[
    Path | None,
    typer.Option(
        "--wheelhouse",
        help="A directory of wheels to build the service images from (default: this checkout).",
    ),
]


def _builtin() -> BuiltinWeights:
    """The reference model's own weights, written once under the state directory."""
    path = state_dir() / "cache" / "reference-weights.json"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = write_weights(builtin_weights(), path)
    return BuiltinWeights(str(path), digest)


def plan(spec: SpecArg, wheelhouse: WheelhouseOpt = None, as_json: JsonOpt = False) -> None:
    """Show what 'enclave up' would change now, without changing anything.

    Builds missing images first (their tags name the containers' configuration).
    """
    args.directory(wheelhouse, "--wheelhouse")
    loaded = load_spec(spec)
    lifecycle.check_supported(loaded)
    with closing(connect()) as client:
        images = ensure_service_images(
            client, cache_dir=state_dir() / "cache", wheelhouse=wheelhouse
        )
        actions = lifecycle.plan(loaded, client, state_dir(), images, _builtin())
    if as_json:
        print_json({"enclave": loaded.name, "actions": [str(a) for a in actions]})
        return
    console = out()
    if not actions:
        console.print(f"enclave {loaded.name}: up to date, nothing to do", markup=False)
    for action in actions:
        console.print(f"  {action}", markup=False)


def up(spec: SpecArg, wheelhouse: WheelhouseOpt = None, as_json: JsonOpt = False) -> None:
    """Bring the enclave up on the local Docker engine (idempotent).

    Verifies weights, provisions Vault, builds images, creates networks, firewall rules and
    hardened containers, starts the shutdown controller and waits for the gateway's first
    answer. On failure, removes what this run created and exits non-zero (2 bad input, 3
    conflict, 4 an image or other object is missing (nothing is ever pulled), 5 Docker or Vault
    failed, 6 a weights digest does not match).
    """
    args.directory(wheelhouse, "--wheelhouse")
    loaded = load_spec(spec)
    console = err()
    with closing(connect()) as client, console.status(f"bringing up {loaded.name}") as status:
        result = lifecycle.up(
            loaded,
            client,
            state_dir(),
            builtin=_builtin(),
            wheelhouse=wheelhouse,
            on_step=lambda text: status.update(f"{loaded.name}: {text}"),
        )
    if as_json:
        print_json(
            {
                "enclave": result.enclave,
                "url": result.url,
                "changed": [str(d.action) for d in result.actions],
                "images": result.images,
                "audit_dir": result.audit_dir,
                "seconds": round(result.seconds, 3),
                "steps": {step: round(seconds, 3) for step, seconds in result.steps},
            }
        )
        return
    console = out()
    for done in result.actions:
        console.print(f"  {done.action}  ({done.seconds:.1f} s)", markup=False)
    verb = "up" if result.actions else "up, nothing changed"
    console.print(
        f"enclave {result.enclave} {verb} in {result.seconds:.1f} s: gateway {result.url}",
        markup=False,
    )
    console.print(f"stop it with: enclave down {result.enclave}", markup=False)


def down(
    name: NameArg,
    keep_vault: Annotated[
        bool, typer.Option("--keep-vault", help="Leave the enclave's Vault objects in place.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove the enclave's containers, networks, firewall rules, controller and Vault objects.

    The audit log is kept; its path is printed.
    """
    started = time.monotonic()
    with closing(connect()) as client:
        done, audit = lifecycle.down(name, client, state_dir(), keep_vault=keep_vault)
    seconds = time.monotonic() - started
    if as_json:
        print_json(
            {
                "enclave": name,
                "removed": [str(d.action) for d in done],
                "audit_dir": str(audit),
                "seconds": round(seconds, 3),
            }
        )
        return
    console = out()
    for item in done:
        console.print(f"  {item.action}", markup=False)
    console.print(f"enclave {name} down in {seconds:.1f} s", markup=False)
    if audit.exists():
        console.print(f"its audit log is kept at {audit}", markup=False)


def status(
    name: Annotated[
        str | None,
        typer.Argument(help="The enclave (default: all).", callback=args.optional_enclave_name),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Components, health, addresses and shutdown state of an enclave (or of all)."""
    with closing(connect()) as client:
        names = [name] if name else DockerBackend(client).list_enclaves()
        reports = [lifecycle.status(n, client, state_dir()) for n in names]
    if as_json:
        print_json([r.as_dict() for r in reports] if name is None else reports[0].as_dict())
        return
    console = out()
    for report in reports:
        gateway = report.gateway
        console.print(
            f"enclave {report.enclave}: gateway {gateway.get('url', '-')} "
            f"{gateway.get('status', 'not answering')} (mode {gateway.get('mode', '-')}), "
            f"firewall {'on' if report.firewall else 'MISSING'}, controller "
            f"{'running' if report.controller['running'] else 'not running'}",
            markup=False,
        )
        for component in report.components:
            addresses = ", ".join(f"{k} {v}" for k, v in component["addresses"].items() if v)
            published = f", published {component['published']}" if component["published"] else ""
            console.print(
                f"  {component['name']}: {component['status']} ({addresses}{published})",
                markup=False,
            )
        for problem in gateway.get("problems") or ():
            console.print(f"  problem: {problem}", markup=False)
    if not reports:
        console.print("no enclave on this engine", markup=False)


def list_enclaves(as_json: JsonOpt = False) -> None:
    """Names of the enclaves with objects on the local Docker engine."""
    with closing(connect()) as client:
        names = DockerBackend(client).list_enclaves()
    if as_json:
        print_json(names)
        return
    for name in names:
        out().print(name, markup=False)
