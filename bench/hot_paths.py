"""The gateway's and the runtime's hot paths, one call at a time (no network, no processes).

* ``decide()``: one 2 KB chat request through the whole policy pipeline (token, lease, RBAC,
  purpose, size, prompt screen, rate limit) -- target well under 1 ms;
* the rule screen on 2 KB prompts (benign, near miss, flagged) -- target under 0.5 ms;
* the reference model generating 64 tokens -- target under 5 ms.

These were timed assertions in the unit tests; on a shared machine a timing is a measurement,
not a pass/fail test, so they live here. Run alone with ``PYTHONPATH=tests python -m
bench.hot_paths``.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from enclave.gateway.request import PURPOSE_HEADER, Endpoint
from enclave.gateway.rules import RuleScreen
from enclave.runtime.model import NgramModel, SamplingParams
from enclave.runtime.weights import builtin_weights
from enclave.spec import load_catalog
from support import REPO_ROOT
from support.gateway import SCREENS, Clock, bearer, build_pipeline, issue_for_spec, write_spec
from support.workspace import make_workspace

ROUNDS = 7
PER_ROUND = 300
BENIGN = "Translate into French: the convoy leaves the depot at dawn. "
CATALOG = REPO_ROOT / "policies" / "usage" / "catalog.yaml"


def _median(fn: Callable[[], object], per_round: int = PER_ROUND) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        samples.append((time.perf_counter() - start) / per_round)
    return statistics.median(samples)


def _row(measure: str, seconds: float, target: float) -> None:
    verdict = "pass" if seconds <= target else "**fail**"
    print(f"| {measure} | {seconds * 1e6:,.0f} us | <= {target * 1e6:,.0f} us | {verdict} |")


def main() -> None:
    print(f"hot paths ({platform.python_implementation()} {platform.python_version()})")
    print("| measure | median | target | verdict |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        loaded = write_spec(make_workspace(Path(tmp)))
        tokens = issue_for_spec(loaded)
        pipeline = build_pipeline(loaded, tokens, Clock())
        text = (BENIGN + "Plan fuel for every vehicle in the artillery battery. ") * 20
        body = (
            b'{"model":"assistant","messages":[{"role":"user","content":"'
            + text[:2000].encode()
            + b'"}]}'
        )
        headers = {**bearer(tokens.by_principal["grace"]), PURPOSE_HEADER: "translation"}
        assert pipeline.decide(Endpoint.CHAT, headers, body).allowed
        _row("decide(): 2 KB chat request", _median(
            lambda: pipeline.decide(Endpoint.CHAT, headers, body)), 0.001)  # fmt: skip
    screen = RuleScreen.from_file(SCREENS, load_catalog(CATALOG))
    prompt = (BENIGN * 40)[:2048]
    flagged = prompt[:1990] + " fire the interceptor battery on its own"
    for name, sample in (("benign", prompt), ("flagged", flagged)):

        def check(text: str = sample) -> object:
            return screen.check_prompt(text)

        _row(f"rule screen: 2 KB {name} prompt", _median(check), 0.0005)
    model = NgramModel(builtin_weights())
    seeds = iter(range(10**9))
    _row("reference model: 64 tokens", _median(
        lambda: model.generate("Tell me about the gateway", SamplingParams(
            max_tokens=64, seed=next(seeds))).text(), 30), 0.005)  # fmt: skip


if __name__ == "__main__":
    main()
