"""The emergency shutdown controller: the host process with authority over an enclave.

- :mod:`~enclave.shutdown.control`: the signed command format it shares with the gateways
  (this package sits below the gateway: the gateway imports the wire format from here, never
  the reverse);
- :mod:`~enclave.shutdown.heartbeat`: the heartbeat that keeps the gateways serving;
- :mod:`~enclave.shutdown.state`: the persisted ``serving -> killing -> killed -> resuming``
  state machine and the resume quorum;
- :mod:`~enclave.shutdown.actions`: the kill's ordered, timed, retried steps;
- :mod:`~enclave.shutdown.authority`: who may kill or resume (API tokens checked against
  Vault, roles from the spec), and the controller's own Vault client;
- :mod:`~enclave.shutdown.workload`: the containers the kill stops and the resume restarts;
- :mod:`~enclave.shutdown.triggers`: the gateway's audit stream and the violation rate;
- :mod:`~enclave.shutdown.journal`: the controller's own audit log and its incidents;
- :mod:`~enclave.shutdown.controller`: all of it together;
- :mod:`~enclave.shutdown.api`: its API on a unix socket, and the CLI's client of it.
"""

from __future__ import annotations
