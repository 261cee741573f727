"""The shutdown controller, as ``enclave controller run`` runs it: the first piece of it.

It runs as a *host* process, outside the enclave's data plane: the kill switch will need the
Docker API (stop model containers, detach networks), and a Docker socket inside a container
would hand that container the whole host. It has its own Vault identity (AppRole ``controller``
on the enclave's control mount), which the entry point logs in with, keeps renewed
(:class:`~enclave.vault.renew.TokenRenewer`) and reads the control key with.

What it does now:

- heartbeats every gateway it is given (:class:`~enclave.shutdown.heartbeat.Heartbeater`) at
  ``spec.shutdown.heartbeat``, each beat granting ``spec.shutdown.lease``, until it is stopped.
  Killing this process therefore stops every gateway from serving within one lease: the
  gateways' dead-man switch (:mod:`enclave.gateway.state`).

What it does not do yet (issue 7): the persisted state machine ``serving -> killing -> killed
-> resuming -> serving`` (a restarted controller heartbeats again at once; it keeps no state);
the triggers (``enclave kill``, the policy-violation rate, lost heartbeats, compliance drift);
the ordered kill actions (gateways deny and cut streams, model containers stopped, networks
detached, Vault leases revoked, incident opened) and the resume quorum; drills. Gateways are
given as URLs rather than found through the backend. Those belong on this class: its
:class:`~enclave.shutdown.heartbeat.GatewayLink` objects already send any command kind, and a
killed state will simply stop the heartbeat and send ``kill`` over the same links.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from enclave.shutdown.heartbeat import GatewayLink, Heartbeater, HeartbeatSettings, LinkStats

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Sequence

log = logging.getLogger(__name__)


class Controller:
    """One enclave's controller: its gateways' links and their heartbeat."""

    def __init__(
        self, enclave: str, gateways: Sequence[str], key: bytes, settings: HeartbeatSettings
    ) -> None:
        self.enclave = enclave
        self.settings = settings
        self.links = [
            GatewayLink(url, key, identity=settings.identity, timeout=settings.request_timeout)
            for url in dict.fromkeys(gateways)  # each gateway once, in the order given
        ]
        self.heartbeater = Heartbeater(self.links, settings)

    @property
    def stats(self) -> dict[str, LinkStats]:
        return self.heartbeater.stats

    async def run(self, stop: asyncio.Event) -> None:
        """Heartbeat until ``stop`` is set; the links are closed afterwards."""
        log.info("controller of enclave %s running", self.enclave)
        try:
            await self.heartbeater.run(stop)
        finally:
            for link in self.links:
                await link.aclose()
            log.info("controller of enclave %s stopped", self.enclave)
