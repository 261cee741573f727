"""Host firewall rules that let nothing out of an enclave's bridges but replies (iptables).

Docker's ``internal`` networks only stop *forwarding*: a container on one still gets a default
route via the bridge's host-side address, and so reaches every address of the host itself (the
INPUT chain) and any service listening there. The gateway's ingress network is not internal at
all (Docker publishes no port of a container on internal networks only). These rules close both
paths: of the packets that *enter the host* from one of an enclave's bridges, only those of
connections opened from elsewhere (replies) pass. For an enclave ``demo`` on one bridge,
``iptables -S`` shows (leaving out ``-m comment --comment enclave.dev/name=demo``, which every
rule carries)::

    -N ENCLAVE-demo
    -A ENCLAVE-demo -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
    -A ENCLAVE-demo -j DROP
    -A INPUT -i br-0123456789ab -j ENCLAVE-demo
    -A DOCKER-USER -i br-0123456789ab ! -o br-0123456789ab -j ENCLAVE-demo

- ``INPUT`` sees what a container sends to the host itself, ``DOCKER-USER`` (Docker's hook at
  the top of ``FORWARD``) what it sends anywhere else: the outside world, other Docker
  networks, another enclave. Traffic that stays on its bridge (the gateway talking to a model
  server on the internal network) is not matched, and Docker's own rules decide about it.
- The chain never accepts anything: allowed packets ``RETURN`` to the rules after the jump
  (Docker's, the host's), so these rules only ever narrow what would otherwise pass. A
  published port keeps working: the request enters the bridge, the reply leaves it on an
  established connection (through Docker's DNAT, or back to ``docker-proxy`` on the host).
- All protocols are dropped (TCP, UDP, ICMP, ...), including the queries Docker's embedded DNS
  server forwards from a container's namespace on a non-internal network.
- Every rule carries the comment ``enclave.dev/name=<name>``: :func:`observe` lists exactly
  those rules and :func:`remove` deletes exactly them (and the enclave's chain).

IPv4 rules are always installed. Where ``ip6tables`` exists and the kernel has IPv6, the same
rules are installed for IPv6 as well: Docker turns IPv6 off on a container's interface when its
network has none, but a network created with IPv6 would otherwise have a way out. Where a
family has no ``DOCKER-USER`` chain (Docker manages only IPv4 by default; none at all with
``iptables: false``), the forwarding jumps go to the top of ``FORWARD`` instead; nothing
without the enclave's comment is ever created.

Install the rules after the enclave's networks exist and *before* any of its containers starts:
a connection opened before the rules exist would count as established. :func:`ensure` only
adds; if it fails half-way, :func:`remove` takes away what it added.

Commands run as ``iptables -w`` (waiting for the xtables lock) under a timeout; they need root
(or ``CAP_NET_ADMIN``). The argv builders and the parser are pure; every call takes a
``runner`` so that tests can stand in for iptables.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from enclave.errors import FirewallError, InputError
from enclave.spec.units import check_name

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "CHAIN_PREFIX",
    "DOCKER_USER",
    "LABEL_NAME",
    "CommandResult",
    "Family",
    "FirewallError",
    "FirewallState",
    "Listing",
    "Rule",
    "Runner",
    "add_argv",
    "bridge_name",
    "chain_name",
    "check_argv",
    "comment",
    "default_families",
    "delete_argv",
    "desired_rules",
    "ensure",
    "iptables_argv",
    "list_argv",
    "observe",
    "parse_listing",
    "remove",
    "run_command",
]

logger = logging.getLogger(__name__)

LABEL_NAME = "enclave.dev/name"
"""The ownership label of everything an enclave owns; here, the comment on every rule."""

CHAIN_PREFIX = "ENCLAVE-"
DOCKER_USER = "DOCKER-USER"
MAX_CHAIN_LENGTH = 28
"""iptables refuses chain names of 29 characters or more."""

LOCK_WAIT_S = 10
"""How long iptables waits for the xtables lock (``-w``) before giving up."""

COMMAND_TIMEOUT_S = 30.0
"""The most one iptables command may take, lock wait included."""

DOCKER_BRIDGE_OPTION = "com.docker.network.bridge.name"

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_NETWORK_ID = re.compile(r"^[0-9a-f]{12,64}$")
_NO_SUCH_RULE = 1
"""``iptables -C`` exits 1 when the rule (or its chain) does not exist."""


class Family(StrEnum):
    """An address family, and the iptables binary that filters it."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"

    @property
    def binary(self) -> str:
        return "iptables" if self is Family.IPV4 else "ip6tables"


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the ``filter`` table: its family, chain and spec (matches and target).

    ``spec`` is written the way ``iptables -S`` prints it, so an observed rule compares equal
    to the rule :func:`desired_rules` wants. ``insert`` says where :func:`ensure` puts it: at
    the top of the chain (``-I``) or at its end (``-A``); it takes no part in comparisons.
    """

    family: Family
    chain: str
    spec: tuple[str, ...]
    insert: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        """The rule as ``iptables -S`` prints it (shell-quoted where needed)."""
        tokens = ("-A", self.chain, *self.spec)
        return " ".join(t if t == "!" else shlex.quote(t) for t in tokens)

    def option(self, flag: str) -> str | None:
        """The value after ``flag`` (``-j``, ``-i``, ``--comment``, ...), if the spec has it."""
        for i, token in enumerate(self.spec[:-1]):
            if token == flag and (i == 0 or self.spec[i - 1] != "!"):
                return self.spec[i + 1]
        return None

    @property
    def target(self) -> str | None:
        return self.option("-j")


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What one command returned."""

    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Runs one argv and returns its result; raises :class:`FirewallError` when it cannot."""

    def __call__(self, argv: Sequence[str], /) -> CommandResult: ...


@dataclass(frozen=True, slots=True)
class Listing:
    """The ``filter`` table of one family, parsed from ``iptables -S``."""

    chains: frozenset[str]
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class FirewallState:
    """The rules of one enclave present on the host, as :func:`observe` found them.

    ``rules`` holds every rule carrying the enclave's comment and every rule of its chain (a
    rule without the comment in the chain is foreign and makes :meth:`missing` complain).
    """

    name: str
    chain: str
    families: tuple[Family, ...]
    """The families that were looked at."""
    chains: frozenset[Family]
    """The families in which the enclave's chain exists."""
    rules: tuple[Rule, ...]
    forward_chains: Mapping[Family, str] = field(default_factory=dict)
    """Per family, where forwarded traffic is filtered: DOCKER-USER, or FORWARD without it."""

    def forward_chain(self, family: Family) -> str:
        return self.forward_chains.get(family, DOCKER_USER)

    @property
    def present(self) -> bool:
        """True when anything of the enclave's firewall is on the host."""
        return bool(self.rules or self.chains)

    def bridges(self, family: Family = Family.IPV4) -> frozenset[str]:
        """The bridges whose traffic both entry points (INPUT, forwarding) send to the chain."""
        jumps: dict[str, set[str]] = {}
        for rule in self.rules:
            interface = rule.option("-i")
            if rule.family is family and rule.target == self.chain and interface:
                jumps.setdefault(interface, set()).add(rule.chain)
        entries = {"INPUT", self.forward_chain(family)}
        return frozenset(b for b, chains in jumps.items() if entries <= chains)

    def missing(self, bridges: Sequence[str]) -> list[str]:
        """What keeps these rules from isolating ``bridges``, one line each; empty when none."""
        problems: list[str] = []
        for family in self.families:
            if family not in self.chains:
                problems.append(f"{family}: chain {self.chain} is missing")
                continue
            wanted = desired_rules(self.name, bridges, family, self.forward_chain(family))
            body = [r for r in self.rules if r.family is family and r.chain == self.chain]
            if body != [r for r in wanted if r.chain == self.chain]:
                shown = "; ".join(str(r) for r in body) or "empty"
                problems.append(f"{family}: chain {self.chain} is not as installed: {shown}")
            problems += [
                f"{family}: rule missing: {rule}"
                for rule in wanted
                if rule.chain != self.chain and rule not in self.rules
            ]
        return problems

    def isolates(self, bridges: Sequence[str]) -> bool:
        """True when every family's rules are complete for every bridge in ``bridges``."""
        return not self.missing(bridges)


# -- pure builders ------------------------------------------------------------------------------


def comment(name: str) -> str:
    """The comment carried by every rule of enclave ``name``."""
    return f"{LABEL_NAME}={name}"


def chain_name(name: str) -> str:
    """The enclave's own chain: ``ENCLAVE-<name>``, or a shortened name with a hash suffix.

    Enclave names are DNS-1123 labels of up to 63 characters; iptables allows 28. A name that
    does not fit becomes ``ENCLAVE-<first 11>-<8 hex of sha256(name)>``.
    """
    _check_enclave_name(name)
    whole = CHAIN_PREFIX + name
    if len(whole) <= MAX_CHAIN_LENGTH:
        return whole
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = MAX_CHAIN_LENGTH - len(CHAIN_PREFIX) - len(digest) - 1
    return f"{CHAIN_PREFIX}{name[:keep].rstrip('-')}-{digest}"


def bridge_name(network_id: str, options: Mapping[str, str] | None = None) -> str:
    """The host interface of a Docker bridge network: ``br-<first 12 of its id>``.

    A network created with the ``com.docker.network.bridge.name`` option uses that name.
    """
    chosen = (options or {}).get(DOCKER_BRIDGE_OPTION)
    if chosen:
        return _check_bridge(chosen)
    if not _NETWORK_ID.match(network_id):
        raise InputError(f"{network_id!r} is not a Docker network id")
    return f"br-{network_id[:12]}"


def desired_rules(
    name: str,
    bridges: Sequence[str],
    family: Family = Family.IPV4,
    forward_chain: str = DOCKER_USER,
) -> list[Rule]:
    """The rules enclave ``name`` needs on ``bridges``, in the order :func:`ensure` adds them.

    The chain's two rules come first (the reply rule inserted at the top, the drop appended),
    then, per bridge, the jumps from INPUT and from ``forward_chain`` (DOCKER-USER, or FORWARD
    where the family has no DOCKER-USER), each inserted at the top of its chain so that it
    comes before any rule that would accept the traffic.
    """
    if forward_chain not in {DOCKER_USER, "FORWARD"}:
        raise InputError(f"forward_chain must be DOCKER-USER or FORWARD, not {forward_chain!r}")
    chain = chain_name(name)
    note = ("-m", "comment", "--comment", comment(name))
    rules = [
        Rule(
            family,
            chain,
            ("-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *note, "-j", "RETURN"),
            insert=True,
        ),
        Rule(family, chain, (*note, "-j", "DROP")),
    ]
    for bridge in _check_bridges(bridges):
        rules.append(Rule(family, "INPUT", ("-i", bridge, *note, "-j", chain), insert=True))
        rules.append(
            Rule(
                family,
                forward_chain,
                ("-i", bridge, "!", "-o", bridge, *note, "-j", chain),
                insert=True,
            )
        )
    return rules


def iptables_argv(family: Family, *args: str) -> list[str]:
    """``iptables -w <wait> -t filter <args>`` for ``family``."""
    return [family.binary, "-w", str(LOCK_WAIT_S), "-t", "filter", *args]


def list_argv(family: Family) -> list[str]:
    return iptables_argv(family, "-S")


def check_argv(rule: Rule) -> list[str]:
    return iptables_argv(rule.family, "-C", rule.chain, *rule.spec)


def add_argv(rule: Rule) -> list[str]:
    return iptables_argv(rule.family, "-I" if rule.insert else "-A", rule.chain, *rule.spec)


def delete_argv(rule: Rule) -> list[str]:
    return iptables_argv(rule.family, "-D", rule.chain, *rule.spec)


def parse_listing(family: Family, text: str) -> Listing:
    """Parse ``iptables -S``: chains (``-P`` built-ins and ``-N`` user chains) and rules."""
    chains: set[str] = set()
    rules: list[Rule] = []
    for line in text.splitlines():
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            raise FirewallError(f"cannot read {family.binary} -S output: {line!r}: {exc}") from None
        if len(tokens) >= 2 and tokens[0] in {"-P", "-N"}:
            chains.add(tokens[1])
        elif len(tokens) >= 2 and tokens[0] == "-A":
            rules.append(Rule(family, tokens[1], tuple(tokens[2:])))
    return Listing(frozenset(chains), tuple(rules))


def default_families() -> tuple[Family, ...]:
    """IPv4, and IPv6 where ``ip6tables`` is installed and the kernel has IPv6."""
    if shutil.which(Family.IPV6.binary) and Path("/proc/net/if_inet6").exists():
        return (Family.IPV4, Family.IPV6)
    return (Family.IPV4,)


# -- running iptables ---------------------------------------------------------------------------


def run_command(argv: Sequence[str]) -> CommandResult:
    """The default runner: ``argv`` under :data:`COMMAND_TIMEOUT_S`, output captured."""
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise FirewallError(
            f"{argv[0]} is not installed: the enclave's host firewall rules need it"
        ) from None
    except PermissionError:
        raise FirewallError(f"{argv[0]} cannot be run: permission denied") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(
            f"{argv[0]} did not finish within {COMMAND_TIMEOUT_S:g} s "
            "(is another process holding the xtables lock?)"
        ) from None
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


class _Iptables:
    """One runner, with failures turned into :class:`FirewallError`."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def run(self, argv: Sequence[str], *, ok: Iterable[int] = (0,)) -> CommandResult:
        result = self.runner(argv)
        if result.returncode not in set(ok):
            raise _failure(argv, result)
        return result

    def listing(self, family: Family) -> Listing:
        return parse_listing(family, self.run(list_argv(family)).stdout)

    def has(self, rule: Rule, listing: Listing) -> bool:
        if rule in listing.rules:
            return True
        # iptables may print an equivalent rule differently; -C compares what the kernel has
        result = self.run(check_argv(rule), ok=(0, _NO_SUCH_RULE))
        return result.returncode == 0


_ARGV_PREFIX = len(iptables_argv(Family.IPV4))
"""Leading argv tokens every command shares (binary, lock wait, table), left out of messages."""


def _failure(argv: Sequence[str], result: CommandResult) -> FirewallError:
    text = f"{result.stderr}\n{result.stdout}"
    binary = argv[0] if argv else "iptables"
    if "Permission denied" in text or "must be root" in text:
        return FirewallError(
            f"{binary} refused: permission denied (host firewall rules need root or CAP_NET_ADMIN)"
        )
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    last = lines[-1][:300] if lines else "no error output"
    command = shlex.join(argv[_ARGV_PREFIX:]) if len(argv) > _ARGV_PREFIX else shlex.join(argv)
    return FirewallError(f"{binary} {command} failed (exit {result.returncode}): {last}")


# -- the API ------------------------------------------------------------------------------------


def ensure(
    name: str,
    bridges: Sequence[str],
    *,
    runner: Runner = run_command,
    families: Sequence[Family] | None = None,
) -> list[Rule]:
    """Install enclave ``name``'s rules for ``bridges``; returns the rules it added.

    Idempotent: rules already present are left alone, so a second call returns ``[]``. Rules
    for bridges left out of ``bridges`` are not removed (:func:`remove` takes everything).
    """
    chain = chain_name(name)
    checked = _check_bridges(bridges)
    if not checked:
        raise InputError(f"enclave {name!r}: no bridge to install firewall rules for")
    iptables = _Iptables(runner)
    added: list[Rule] = []
    for family in families if families is not None else default_families():
        listing = iptables.listing(family)
        if chain not in listing.chains:
            iptables.run(iptables_argv(family, "-N", chain))
        for rule in desired_rules(name, checked, family, _forward_chain(listing)):
            if not iptables.has(rule, listing):
                iptables.run(add_argv(rule))
                added.append(rule)
                logger.debug("firewall rule added: %s %s", family.binary, rule)
    if added:
        logger.info("enclave %s: %d firewall rule(s) added", name, len(added))
    return added


def remove(
    name: str,
    *,
    runner: Runner = run_command,
    families: Sequence[Family] | None = None,
) -> list[Rule]:
    """Delete every rule carrying enclave ``name``'s comment, and its chain; returns them.

    Idempotent: with nothing installed it does nothing and returns ``[]``.
    """
    chain = chain_name(name)
    iptables = _Iptables(runner)
    removed: list[Rule] = []
    for family in families if families is not None else default_families():
        listing = iptables.listing(family)
        ours = _owned(listing, name, chain)
        # the jumps first, so that the chain is unreferenced when it is flushed and deleted
        for rule in ours:
            if rule.chain != chain:
                iptables.run(delete_argv(rule))
        removed += ours
        if chain in listing.chains:
            iptables.run(iptables_argv(family, "-F", chain))
            iptables.run(iptables_argv(family, "-X", chain))
    if removed:
        logger.info("enclave %s: %d firewall rule(s) removed", name, len(removed))
    return removed


def observe(
    name: str,
    *,
    runner: Runner = run_command,
    families: Sequence[Family] | None = None,
) -> FirewallState:
    """What of enclave ``name``'s firewall is on the host now."""
    chain = chain_name(name)
    iptables = _Iptables(runner)
    looked = tuple(families if families is not None else default_families())
    present: set[Family] = set()
    rules: list[Rule] = []
    forward: dict[Family, str] = {}
    for family in looked:
        listing = iptables.listing(family)
        if chain in listing.chains:
            present.add(family)
        rules += _owned(listing, name, chain)
        forward[family] = _forward_chain(listing)
    return FirewallState(name, chain, looked, frozenset(present), tuple(rules), forward)


# -- helpers ------------------------------------------------------------------------------------


def _owned(listing: Listing, name: str, chain: str) -> list[Rule]:
    note = comment(name)
    return [r for r in listing.rules if r.chain == chain or r.option("--comment") == note]


def _forward_chain(listing: Listing) -> str:
    """DOCKER-USER where Docker made it (it stays ahead of Docker's own rules), else FORWARD."""
    return DOCKER_USER if DOCKER_USER in listing.chains else "FORWARD"


def _check_enclave_name(name: str) -> str:
    try:
        return check_name(name)
    except ValueError as exc:
        raise InputError(f"enclave name: {exc}") from None


def _check_bridge(bridge: str) -> str:
    # '+' is iptables' interface wildcard and '!' its negation: neither may slip into a rule
    if not _IFNAME.match(bridge) or bridge in {".", ".."}:
        raise InputError(f"{bridge!r} is not a network interface name")
    return bridge


def _check_bridges(bridges: Sequence[str]) -> list[str]:
    if isinstance(bridges, str):
        raise InputError("bridges must be a list of interface names, not one string")
    return list(dict.fromkeys(_check_bridge(b) for b in bridges))
