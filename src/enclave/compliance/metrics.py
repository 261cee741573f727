"""The compliance monitor's Prometheus metrics and their HTTP endpoint.

**Metrics** (:class:`MonitorMetrics`, every series labelled ``enclave``):

============================================  =======  ==========================================
metric                                        type     meaning
============================================  =======  ==========================================
``enclave_monitor_runs_total``                counter  runs, by ``outcome``: ok, drift, error
``enclave_monitor_run_duration_seconds``      gauge    the last run's duration
``enclave_monitor_last_run_timestamp_seconds`` gauge   when the last run ended (Unix time)
``enclave_monitor_results``                   gauge    the last run's results by ``status``
``enclave_monitor_drifted_results``           gauge    results drifted in the last run
``enclave_monitor_controller_errors_total``   counter  drift reports the controller did not take
============================================  =======  ==========================================
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import start_http_server

from enclave.compliance.model import Status
from enclave.errors import ServiceError

if TYPE_CHECKING:
    from collections.abc import Callable

    from enclave.compliance.monitor import RunOutcome

__all__ = ["MetricsServer", "MonitorMetrics", "serve_metrics"]


class MonitorMetrics:
    """Every metric the monitor exports, in a registry of its own."""

    def __init__(self, enclave: str, registry: CollectorRegistry | None = None) -> None:
        self.enclave = enclave
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        labels = ("enclave",)
        self.runs = Counter(
            "enclave_monitor_runs",
            "Compliance runs, by outcome (ok, drift, error).",
            (*labels, "outcome"),
            registry=self.registry,
        )
        self.duration = Gauge(
            "enclave_monitor_run_duration_seconds",
            "Duration of the last compliance run.",
            labels,
            registry=self.registry,
        )
        self.last_run = Gauge(
            "enclave_monitor_last_run_timestamp_seconds",
            "When the last compliance run ended (Unix time).",
            labels,
            registry=self.registry,
        )
        self.results = Gauge(
            "enclave_monitor_results",
            "Results of the last run (one per check and target), by status.",
            (*labels, "status"),
            registry=self.registry,
        )
        self.drifted = Gauge(
            "enclave_monitor_drifted_results",
            "Results of the last run that drifted from the accepted result.",
            labels,
            registry=self.registry,
        )
        self.controller_errors = Counter(
            "enclave_monitor_controller_errors",
            "Drift reports the shutdown controller did not take (unreachable or refused).",
            labels,
            registry=self.registry,
        )
        for outcome in ("ok", "drift", "error"):
            self.runs.labels(enclave, outcome)
        self.controller_errors.labels(enclave)

    def observe(self, outcome: RunOutcome, *, ended: float | None = None) -> None:
        name = self.enclave
        self.runs.labels(name, outcome.outcome).inc()
        self.duration.labels(name).set(outcome.seconds)
        self.last_run.labels(name).set(time.time() if ended is None else ended)
        if not outcome.error:
            for status in Status:
                self.results.labels(name, status.value).set(outcome.counts.get(status.value, 0))
            self.drifted.labels(name).set(0 if outcome.accepted_now else len(outcome.drifted))
        if outcome.controller_error:
            self.controller_errors.labels(name).inc()

    def render(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)


@dataclass(slots=True)
class MetricsServer:
    """The metrics' HTTP endpoint (``/metrics``), served from a thread until closed."""

    host: str
    port: int
    _close: Callable[[], None]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._close()


def serve_metrics(metrics: MonitorMetrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` on ``host:port`` (port 0: any free one)."""
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ServiceError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None

    def close() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return MetricsServer(host, int(server.server_port), close)
