"""The emergency shutdown controller: the host process with authority over an enclave.

So far: the signed command format it shares with the gateways (:mod:`enclave.shutdown.control`)
and the heartbeat that keeps the gateways serving (:mod:`enclave.shutdown.heartbeat`,
:mod:`enclave.shutdown.controller`). This package sits below the gateway: the gateway imports
the wire format from here, never the reverse.
"""

from __future__ import annotations
