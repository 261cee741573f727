"""The host firewall rules without root: names, rules, argv, and ensure/remove/observe driven
through a stand-in for iptables that keeps a filter table in memory."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from enclave.backends import firewall
from enclave.backends.firewall import (
    CommandResult,
    Family,
    FirewallError,
    Rule,
    add_argv,
    bridge_name,
    chain_name,
    check_argv,
    comment,
    delete_argv,
    desired_rules,
    iptables_argv,
    list_argv,
    parse_listing,
)
from enclave.errors import EnclaveError, InputError, ServiceError

V4, V6 = Family.IPV4, Family.IPV6
BR_INT, BR_ING = "br-0123456789ab", "br-ba9876543210"
BOTH = (V4, V6)

DOCKER_V4 = """\
-P INPUT ACCEPT
-P FORWARD DROP
-P OUTPUT ACCEPT
-N DOCKER
-N DOCKER-USER
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A DOCKER-USER -j RETURN
"""
"""What a host running Docker shows for IPv4 (trimmed)."""

BARE_V6 = """\
-P INPUT ACCEPT
-P FORWARD ACCEPT
-P OUTPUT ACCEPT
"""
"""IPv6, where Docker manages nothing: no DOCKER-USER."""


def _canonical(spec: Sequence[str]) -> tuple[str, ...]:
    """How the fake kernel compares rules: the two spellings of a ctstate list are one."""
    out = list(spec)
    for i, token in enumerate(out[:-1]):
        if token == "--ctstate":
            out[i + 1] = ",".join(sorted(out[i + 1].split(",")))
    return tuple(out)


@dataclass
class Table:
    chains: dict[str, list[tuple[str, ...]]]
    policies: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Table:
        table = cls({}, {})
        for line in text.splitlines():
            tokens = shlex.split(line)
            if tokens[0] == "-P":
                table.policies[tokens[1]] = tokens[2]
                table.chains[tokens[1]] = []
            elif tokens[0] == "-N":
                table.chains[tokens[1]] = []
            else:
                table.chains[tokens[1]].append(tuple(tokens[2:]))
        return table


@dataclass
class FakeIptables:
    """An in-memory filter table per family that answers iptables argv like the real one."""

    tables: dict[Family, Table] = field(
        default_factory=lambda: {V4: Table.parse(DOCKER_V4), V6: Table.parse(BARE_V6)}
    )
    calls: list[list[str]] = field(default_factory=list)
    ctstate_spelling: str = "RELATED,ESTABLISHED"
    """How ``-S`` prints the conntrack states (iptables versions differ)."""

    def __call__(self, argv: Sequence[str], /) -> CommandResult:  # noqa: PLR0911 - one per op
        argv = list(argv)
        self.calls.append(argv)
        family = V4 if argv[0] == "iptables" else V6
        assert argv[1:5] == ["-w", str(firewall.LOCK_WAIT_S), "-t", "filter"], argv
        op, rest = argv[5], argv[6:]
        table = self.tables[family]
        if op == "-S":
            return CommandResult(0, self.listing(table), "")
        chain, spec = rest[0], tuple(rest[1:])
        if op == "-N":
            if chain in table.chains:
                return CommandResult(1, "", "iptables: Chain already exists.\n")
            table.chains[chain] = []
            return CommandResult(0, "", "")
        if chain not in table.chains:
            return CommandResult(
                1, "", f"iptables: No chain/target/match by that name ({chain}).\n"
            )
        rules = table.chains[chain]
        found = [i for i, r in enumerate(rules) if _canonical(r) == _canonical(spec)]
        if op == "-C":
            return CommandResult(0 if found else 1, "", "" if found else "Bad rule\n")
        if op in {"-A", "-I"}:
            target = spec[spec.index("-j") + 1]
            if target not in table.chains and target not in {"ACCEPT", "DROP", "RETURN"}:
                return CommandResult(2, "", f"Couldn't load target `{target}'\n")
            rules.insert(0 if op == "-I" else len(rules), spec)
            return CommandResult(0, "", "")
        if op == "-D":
            if not found:
                return CommandResult(1, "", "iptables: Bad rule.\n")
            del rules[found[0]]
            return CommandResult(0, "", "")
        if op == "-F":
            rules.clear()
            return CommandResult(0, "", "")
        if op == "-X":
            referenced = any(
                r[r.index("-j") + 1] == chain for rs in table.chains.values() for r in rs
            )
            if rules or referenced:
                return CommandResult(1, "", "iptables: Too many links.\n")
            del table.chains[chain]
            return CommandResult(0, "", "")
        raise AssertionError(f"unexpected argv {argv}")

    def listing(self, table: Table) -> str:
        lines = [f"-P {c} {p}" for c, p in table.policies.items()]
        lines += [f"-N {c}" for c in table.chains if c not in table.policies]
        for chain, rules in table.chains.items():
            for spec in rules:
                shown = [self.ctstate_spelling if t == "RELATED,ESTABLISHED" else t for t in spec]
                # iptables quotes comments in -S output
                text = " ".join(f'"{t}"' if t.startswith("enclave.dev/") else t for t in shown)
                lines.append(f"-A {chain} {text}")
        return "\n".join(lines) + "\n"

    def rules(self, family: Family, chain: str) -> list[str]:
        return [" ".join(spec) for spec in self.tables[family].chains.get(chain, [])]

    def ops(self) -> list[str]:
        return [call[5] for call in self.calls]


# -- names ------------------------------------------------------------------------------------


def test_chain_name_is_the_enclave_name_when_it_fits() -> None:
    assert chain_name("demo") == "ENCLAVE-demo"
    twenty = "a" * 20
    assert chain_name(twenty) == f"ENCLAVE-{twenty}"
    assert len(chain_name(twenty)) == firewall.MAX_CHAIN_LENGTH


@pytest.mark.parametrize(
    "name", ["a" * 21, "b" * 63, "translation-enclave-east-1", "x-" * 20 + "y"]
)
def test_long_names_are_shortened_with_a_hash(name: str) -> None:
    chain = chain_name(name)
    assert len(chain) <= firewall.MAX_CHAIN_LENGTH
    assert re.fullmatch(r"ENCLAVE-[a-z0-9-]*[a-z0-9]-[0-9a-f]{8}", chain), chain
    assert chain == chain_name(name)
    assert chain.startswith(f"ENCLAVE-{name[:5]}")


def test_names_sharing_a_long_prefix_get_different_chains() -> None:
    base = "shared-prefix-for-both"
    assert chain_name(base + "-one") != chain_name(base + "-two")


@pytest.mark.parametrize("bad", ["", "Demo", "-demo", "demo_1", "a" * 64, "de mo", 'x" -j ACCEPT'])
def test_invalid_enclave_names_are_input_errors(bad: str) -> None:
    with pytest.raises(InputError):
        chain_name(bad)
    with pytest.raises(InputError):
        desired_rules(bad, [BR_INT])


def test_comment_is_the_ownership_label() -> None:
    assert comment("demo") == "enclave.dev/name=demo"


def test_bridge_name_of_a_docker_network() -> None:
    network_id = "0123456789ab" + "c" * 52
    assert bridge_name(network_id) == BR_INT
    assert bridge_name(network_id, {firewall.DOCKER_BRIDGE_OPTION: "encl0"}) == "encl0"
    assert bridge_name(network_id, {"other": "x"}) == BR_INT
    with pytest.raises(InputError):
        bridge_name("not-an-id")
    with pytest.raises(InputError):
        bridge_name(network_id, {firewall.DOCKER_BRIDGE_OPTION: "br+"})


# -- rules and argv -----------------------------------------------------------------------------


def test_desired_rules_for_one_bridge() -> None:
    note = "-m comment --comment enclave.dev/name=demo"
    assert [str(r) for r in desired_rules("demo", [BR_INT])] == [
        f"-A ENCLAVE-demo -m conntrack --ctstate RELATED,ESTABLISHED {note} -j RETURN",
        f"-A ENCLAVE-demo {note} -j DROP",
        f"-A INPUT -i {BR_INT} {note} -j ENCLAVE-demo",
        f"-A DOCKER-USER -i {BR_INT} ! -o {BR_INT} {note} -j ENCLAVE-demo",
    ]
    assert [r.insert for r in desired_rules("demo", [BR_INT])] == [True, False, True, True]


def test_every_rule_carries_the_comment_and_none_accepts() -> None:
    rules = desired_rules("demo", [BR_INT, BR_ING], V6, "FORWARD")
    assert len(rules) == 6
    assert {r.family for r in rules} == {V6}
    assert all(r.option("--comment") == "enclave.dev/name=demo" for r in rules)
    assert {r.target for r in rules} == {"RETURN", "DROP", "ENCLAVE-demo"}
    assert {r.chain for r in rules} == {"ENCLAVE-demo", "INPUT", "FORWARD"}


def test_forwarding_jumps_leave_traffic_within_the_bridge_alone() -> None:
    jump = desired_rules("demo", [BR_INT])[-1]
    assert jump.option("-i") == BR_INT
    assert jump.option("-o") is None  # negated: "! -o"
    assert jump.spec[2:5] == ("!", "-o", BR_INT)


def test_duplicate_bridges_give_one_set_of_jumps() -> None:
    assert desired_rules("demo", [BR_INT, BR_INT]) == desired_rules("demo", [BR_INT])


@pytest.mark.parametrize("bad", ["", "br+", "br-0123456789abc", "eth 0", "br!", "..", "a/b"])
def test_bad_bridge_names_never_reach_a_rule(bad: str) -> None:
    with pytest.raises(InputError):
        desired_rules("demo", [bad])


def test_bridges_must_be_a_list() -> None:
    with pytest.raises(InputError, match="list"):
        desired_rules("demo", BR_INT)


def test_forward_chain_is_docker_user_or_forward() -> None:
    with pytest.raises(InputError):
        desired_rules("demo", [BR_INT], V4, "INPUT")


def test_argv_builders() -> None:
    prefix = ["iptables", "-w", str(firewall.LOCK_WAIT_S), "-t", "filter"]
    assert iptables_argv(V4, "-N", "X") == [*prefix, "-N", "X"]
    assert list_argv(V6) == ["ip6tables", *prefix[1:], "-S"]
    established, drop, jump, _ = desired_rules("demo", [BR_INT])
    assert add_argv(established) == [*prefix, "-I", "ENCLAVE-demo", *established.spec]
    assert add_argv(drop) == [*prefix, "-A", "ENCLAVE-demo", *drop.spec]
    assert check_argv(jump) == [*prefix, "-C", "INPUT", *jump.spec]
    assert delete_argv(jump) == [*prefix, "-D", "INPUT", *jump.spec]


def test_parse_listing_reads_chains_and_quoted_comments() -> None:
    text = DOCKER_V4 + (
        '-N ENCLAVE-demo\n-A ENCLAVE-demo -m comment --comment "enclave.dev/name=demo" -j DROP\n'
    )
    listing = parse_listing(V4, text)
    assert {"INPUT", "FORWARD", "OUTPUT", "DOCKER", "DOCKER-USER", "ENCLAVE-demo"} == set(
        listing.chains
    )
    assert Rule(V4, "ENCLAVE-demo", desired_rules("demo", [BR_INT])[1].spec) in listing.rules
    assert Rule(V4, "FORWARD", ("-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT")) in (
        listing.rules
    )
    with pytest.raises(FirewallError, match="cannot read"):
        parse_listing(V4, '-A X -m comment --comment "unterminated\n')


# -- ensure, remove, observe --------------------------------------------------------------------


def test_ensure_installs_the_rules_in_a_safe_order() -> None:
    fake = FakeIptables()
    added = firewall.ensure("demo", [BR_INT, BR_ING], runner=fake, families=BOTH)
    assert len(added) == 2 * (2 + 2 * 2)
    note = "-m comment --comment enclave.dev/name=demo"
    assert fake.rules(V4, "ENCLAVE-demo") == [
        f"-m conntrack --ctstate RELATED,ESTABLISHED {note} -j RETURN",
        f"{note} -j DROP",
    ]
    # the jumps come first in INPUT and DOCKER-USER, ahead of Docker's RETURN
    assert fake.rules(V4, "DOCKER-USER")[-1] == "-j RETURN"
    assert len(fake.rules(V4, "DOCKER-USER")) == 3
    assert fake.rules(V4, "INPUT") == [
        f"-i {BR_ING} {note} -j ENCLAVE-demo",
        f"-i {BR_INT} {note} -j ENCLAVE-demo",
    ]
    # the chain is complete before anything jumps to it
    ops = [(c[0], c[5], c[6] if len(c) > 6 else "") for c in fake.calls if c[5] in {"-A", "-I"}]
    assert ops[:2] == [("iptables", "-I", "ENCLAVE-demo"), ("iptables", "-A", "ENCLAVE-demo")]


def test_without_docker_user_the_forwarding_jumps_go_into_forward() -> None:
    fake = FakeIptables()
    firewall.ensure("demo", [BR_INT], runner=fake, families=BOTH)
    assert "DOCKER-USER" not in fake.tables[V6].chains  # nothing unlabelled is created
    assert fake.rules(V6, "FORWARD") == [
        f"-i {BR_INT} ! -o {BR_INT} -m comment --comment enclave.dev/name=demo -j ENCLAVE-demo"
    ]


def test_a_second_ensure_adds_nothing() -> None:
    fake = FakeIptables()
    firewall.ensure("demo", [BR_INT], runner=fake, families=BOTH)
    before = {f: {c: list(r) for c, r in t.chains.items()} for f, t in fake.tables.items()}
    fake.calls.clear()
    assert firewall.ensure("demo", [BR_INT], runner=fake, families=BOTH) == []
    assert fake.ops() == ["-S", "-S"]  # every rule found in the listing: no -C needed
    after = {f: {c: list(r) for c, r in t.chains.items()} for f, t in fake.tables.items()}
    assert after == before


def test_ensure_asks_iptables_when_the_listing_spells_a_rule_differently() -> None:
    fake = FakeIptables(ctstate_spelling="ESTABLISHED,RELATED")
    firewall.ensure("demo", [BR_INT], runner=fake, families=(V4,))
    fake.calls.clear()
    assert firewall.ensure("demo", [BR_INT], runner=fake, families=(V4,)) == []
    assert fake.ops() == ["-S", "-C"]
    assert len(fake.rules(V4, "ENCLAVE-demo")) == 2


def test_ensure_repairs_a_partial_chain_in_order() -> None:
    fake = FakeIptables()
    firewall.ensure("demo", [BR_INT], runner=fake, families=(V4,))
    established = fake.tables[V4].chains["ENCLAVE-demo"].pop(0)
    fake.tables[V4].chains["INPUT"].clear()
    added = firewall.ensure("demo", [BR_INT], runner=fake, families=(V4,))
    assert [r.chain for r in added] == ["ENCLAVE-demo", "INPUT"]
    assert fake.tables[V4].chains["ENCLAVE-demo"][0] == established
    assert fake.rules(V4, "ENCLAVE-demo")[-1].endswith("-j DROP")


def test_ensure_adds_jumps_for_a_new_bridge_only() -> None:
    fake = FakeIptables()
    firewall.ensure("demo", [BR_INT], runner=fake, families=(V4,))
    added = firewall.ensure("demo", [BR_INT, BR_ING], runner=fake, families=(V4,))
    assert {r.option("-i") for r in added} == {BR_ING}
    assert len(added) == 2


def test_ensure_needs_a_bridge() -> None:
    fake = FakeIptables()
    with pytest.raises(InputError, match="no bridge"):
        firewall.ensure("demo", [], runner=fake, families=(V4,))
    assert fake.calls == []


def test_remove_takes_exactly_the_enclaves_rules() -> None:
    fake = FakeIptables()
    docker_before = fake.listing(fake.tables[V4])
    firewall.ensure("other", [BR_ING], runner=fake, families=BOTH)
    with_other = {f: fake.listing(t) for f, t in fake.tables.items()}
    added = firewall.ensure("demo", [BR_INT, BR_ING], runner=fake, families=BOTH)

    removed = firewall.remove("demo", runner=fake, families=BOTH)
    assert sorted(map(str, removed)) == sorted(map(str, added))
    assert {f: fake.listing(t) for f, t in fake.tables.items()} == with_other
    assert firewall.observe("other", runner=fake, families=BOTH).isolates([BR_ING])

    firewall.remove("other", runner=fake, families=BOTH)
    assert fake.listing(fake.tables[V4]) == docker_before
    assert fake.listing(fake.tables[V6]) == BARE_V6


def test_remove_is_idempotent() -> None:
    fake = FakeIptables()
    assert firewall.remove("demo", runner=fake, families=BOTH) == []
    assert fake.ops() == ["-S", "-S"]
    firewall.ensure("demo", [BR_INT], runner=fake, families=BOTH)
    assert firewall.remove("demo", runner=fake, families=BOTH)
    fake.calls.clear()
    assert firewall.remove("demo", runner=fake, families=BOTH) == []
    assert fake.ops() == ["-S", "-S"]


def test_remove_flushes_a_foreign_rule_inside_the_enclaves_chain() -> None:
    fake = FakeIptables()
    firewall.ensure("demo", [BR_INT], runner=fake, families=(V4,))
    fake.tables[V4].chains["ENCLAVE-demo"].insert(0, ("-j", "ACCEPT"))
    removed = firewall.remove("demo", runner=fake, families=(V4,))
    assert Rule(V4, "ENCLAVE-demo", ("-j", "ACCEPT")) in removed
    assert "ENCLAVE-demo" not in fake.tables[V4].chains


def test_observe_reports_what_is_present() -> None:
    fake = FakeIptables()
    empty = firewall.observe("demo", runner=fake, families=BOTH)
    assert not empty.present
    assert empty.missing([BR_INT]) == [
        "ipv4: chain ENCLAVE-demo is missing",
        "ipv6: chain ENCLAVE-demo is missing",
    ]

    firewall.ensure("demo", [BR_INT, BR_ING], runner=fake, families=BOTH)
    state = firewall.observe("demo", runner=fake, families=BOTH)
    assert state.present
    assert state.chains == frozenset(BOTH)
    assert state.forward_chain(V4) == "DOCKER-USER"
    assert state.forward_chain(V6) == "FORWARD"
    assert state.bridges(V4) == state.bridges(V6) == {BR_INT, BR_ING}
    assert state.isolates([BR_INT, BR_ING])
    assert len(state.rules) == 12
    assert not state.isolates([BR_INT, "br-aaaaaaaaaaaa"])


def test_observe_notices_a_missing_jump_and_a_foreign_rule() -> None:
    fake = FakeIptables()
    firewall.ensure("demo", [BR_INT], runner=fake, families=(V4,))
    fake.tables[V4].chains["DOCKER-USER"].pop(0)
    state = firewall.observe("demo", runner=fake, families=(V4,))
    assert state.bridges() == frozenset()
    assert state.missing([BR_INT]) == [
        f"ipv4: rule missing: -A DOCKER-USER -i {BR_INT} ! -o {BR_INT} "
        "-m comment --comment enclave.dev/name=demo -j ENCLAVE-demo"
    ]

    firewall.ensure("demo", [BR_INT], runner=fake, families=(V4,))
    fake.tables[V4].chains["ENCLAVE-demo"].insert(0, ("-j", "ACCEPT"))
    problems = firewall.observe("demo", runner=fake, families=(V4,)).missing([BR_INT])
    assert len(problems) == 1
    assert "chain ENCLAVE-demo is not as installed: -A ENCLAVE-demo -j ACCEPT;" in problems[0]


# -- failures -----------------------------------------------------------------------------------


def _answering(returncode: int, stderr: str) -> firewall.Runner:
    def runner(argv: Sequence[str], /) -> CommandResult:
        return CommandResult(returncode, "", stderr)

    return runner


def test_permission_denied_says_root_is_needed() -> None:
    runner = _answering(
        4,
        "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: "
        "Permission denied (you must be root)\n",
    )
    with pytest.raises(FirewallError) as caught:
        firewall.ensure("demo", [BR_INT], runner=runner, families=(V4,))
    message = str(caught.value)
    assert message == (
        "iptables refused: permission denied (host firewall rules need root or CAP_NET_ADMIN)"
    )
    assert "\n" not in message
    assert isinstance(caught.value, ServiceError)
    assert caught.value.exit_code == 5


def test_other_failures_name_the_command_and_iptables_last_line() -> None:
    fake = FakeIptables()

    def runner(argv: Sequence[str], /) -> CommandResult:
        if argv[5] == "-N":
            return CommandResult(
                2, "", "warning: something\niptables: Memory allocation problem.\n"
            )
        return fake(argv)

    with pytest.raises(FirewallError) as caught:
        firewall.ensure("demo", [BR_INT], runner=runner, families=(V4,))
    assert str(caught.value) == (
        "iptables -N ENCLAVE-demo failed (exit 2): iptables: Memory allocation problem."
    )


def test_check_errors_other_than_absent_are_failures() -> None:
    fake = FakeIptables(ctstate_spelling="ESTABLISHED,RELATED")

    def runner(argv: Sequence[str], /) -> CommandResult:
        if argv[5] == "-C":
            return CommandResult(2, "", "iptables: unknown option\n")
        return fake(argv)

    with pytest.raises(FirewallError, match="exit 2"):
        firewall.ensure("demo", [BR_INT], runner=runner, families=(V4,))


def test_missing_binary_is_one_clear_line() -> None:
    with pytest.raises(FirewallError) as caught:
        firewall.run_command(["/nonexistent/iptables", "-S"])
    assert str(caught.value) == (
        "/nonexistent/iptables is not installed: the enclave's host firewall rules need it"
    )
    assert isinstance(caught.value, EnclaveError)


def test_a_hung_command_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(firewall, "COMMAND_TIMEOUT_S", 0.1)
    with pytest.raises(FirewallError, match=r"did not finish within 0.1 s"):
        firewall.run_command(["sleep", "5"])


def test_run_command_returns_the_result() -> None:
    result = firewall.run_command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert result == CommandResult(3, "out\n", "err\n")


def test_default_families(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enclave.backends.firewall.shutil.which", lambda _name: None)
    assert firewall.default_families() == (V4,)
    monkeypatch.setattr("enclave.backends.firewall.shutil.which", lambda name: f"/sbin/{name}")
    expected = (V4, V6) if Path("/proc/net/if_inet6").exists() else (V4,)
    assert firewall.default_families() == expected


def test_binaries() -> None:
    assert (V4.binary, V6.binary) == ("iptables", "ip6tables")
