"""Backends: where an enclave's components run (Docker on one host; Kubernetes later).

``firewall`` holds the host firewall rules that keep an enclave's Docker bridges from opening
any connection out.
"""

from __future__ import annotations
