"""The gateway's Prometheus metrics, in a registry of its own (one per app, so tests do not mix).

======================================  =========  ==========================================
metric                                  type       labels
======================================  =========  ==========================================
``enclave_gateway_requests_total``      counter    endpoint, decision (allow, deny, held,
                                                   error, shed), code
``enclave_gateway_request_seconds``     histogram  endpoint: from arrival to the last byte
``enclave_gateway_decision_seconds``    histogram  the policy decision alone
``enclave_gateway_upstream_seconds``    histogram  model: the model server's time to headers
``enclave_gateway_violations_total``    counter    use, scope (prompt, output)
``enclave_gateway_in_flight``           gauge      requests being served now
``enclave_gateway_audit_failures_total`` counter   appends that failed (the gateway refused)
======================================  =========  ==========================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    120.0,
)


class GatewayMetrics:
    """Every metric the gateway exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "enclave_gateway_requests",
            "Requests by endpoint, decision and error code.",
            ("endpoint", "decision", "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "enclave_gateway_request_seconds",
            "Time from a request's arrival to its last byte.",
            ("endpoint",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.decision_latency = Histogram(
            "enclave_gateway_decision_seconds",
            "Time the policy decision takes (authenticate to rate limit).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "enclave_gateway_upstream_seconds",
            "Time a model server takes to answer with headers.",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.violations = Counter(
            "enclave_gateway_violations",
            "Prohibited-use violations, in prompts and in outputs.",
            ("use", "scope"),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "enclave_gateway_in_flight",
            "Requests being served now.",
            registry=self.registry,
        )
        self.audit_failures = Counter(
            "enclave_gateway_audit_failures",
            "Audit appends that failed: each such request was refused.",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
