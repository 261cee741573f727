"""Turning what the engine, the host, the spec and the logs say into facts (plain data).

Each function here takes what one source returned (a ``docker inspect``, ``docker info``,
a loaded spec, a directory) and returns a JSON-able dict with snake_case keys: the fact
model the baseline's rules are written against (see :mod:`enclave.compliance.facts` for the
whole list). The normalisers are pure; the readers only read. Facts never hold a secret: the
secret scanner reports *where* it found one, not what.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enclave import controlproc, lifecycle
from enclave.audit.reader import iter_records, record_time
from enclave.audit.verify import verify_log
from enclave.backends import firewall
from enclave.backends.base import LABEL_COMPONENT, LABEL_NAME
from enclave.backends.docker import http_json
from enclave.errors import EnclaveError, InputError, SpecError
from enclave.spec import load_spec
from enclave.spec.yamlsrc import parse_yaml

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from enclave.compliance.scan import SecretScanner
    from enclave.spec import LoadedSpec

__all__ = [
    "SYSCTLS",
    "audit_facts",
    "container_facts",
    "daemon_facts",
    "drill_facts",
    "firewall_facts",
    "gateway_facts",
    "host_facts",
    "network_facts",
    "spec_facts",
]

SYSCTLS = (
    "kernel.randomize_va_space",
    "kernel.kptr_restrict",
    "kernel.dmesg_restrict",
    "kernel.unprivileged_bpf_disabled",
    "kernel.yama.ptrace_scope",
    "fs.protected_symlinks",
    "fs.protected_hardlinks",
    "fs.suid_dumpable",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.accept_redirects",
    "net.ipv4.conf.all.send_redirects",
    "net.ipv4.conf.all.accept_source_route",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.all.log_martians",
)
"""Kernel settings the host facts carry, as ``host.sysctl.<name with _ for .>``."""

DRILL_ACTION = "drill.result"
NOT_STOPPING = frozenset({"resume"})
"""A drill's latencies that do not measure stopping the enclave."""
_WEIGHTS_DIR = "/weights"


def _mode(path: Path) -> tuple[str, int, int] | None:
    try:
        found = path.lstat()
    except OSError:
        return None
    return f"{stat.S_IMODE(found.st_mode):04o}", found.st_uid, found.st_gid


def _age(then: datetime | None, now: datetime) -> float | None:
    return None if then is None else round((now - then).total_seconds(), 3)


# -- containers ---------------------------------------------------------------------------------


def _uid(user: str) -> int:
    """The uid a ``User`` setting names: 0 for root or nothing, -1 for a user name."""
    name = user.split(":", 1)[0].strip()
    if name in {"", "root"}:
        return 0
    return int(name) if name.isdigit() else -1


def _seccomp(options: Iterable[str]) -> str:
    for option in options:
        key, _, value = option.replace(":", "=", 1).partition("=")
        if key == "seccomp":
            return "unconfined" if value == "unconfined" else "custom"
    return "default"


def _ports(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    settings = attrs.get("NetworkSettings") or {}
    bindings = settings.get("Ports") or (attrs.get("HostConfig") or {}).get("PortBindings") or {}
    found = []
    for container_port, hosts in sorted(bindings.items()):
        for binding in hosts or ():
            port = str(binding.get("HostPort") or "")
            found.append(
                {
                    "container_port": str(container_port),
                    "host_ip": str(binding.get("HostIp") or ""),
                    "host_port": int(port) if port.isdigit() else 0,
                }
            )
    return found


def _flag_value(args: list[str], flag: str) -> str:
    with contextlib.suppress(ValueError, IndexError):
        return args[args.index(flag) + 1]
    return ""


def _image_facts(
    ref: str, image_id: str, images: Mapping[str, Mapping[str, Any]], scanner: SecretScanner
) -> dict[str, Any]:
    running = images.get(image_id) or {}
    current = images.get(ref) or {}
    labels = (running.get("Config") or {}).get("Labels") or {}
    recipe = str(labels.get("enclave.dev/recipe-digest") or "")
    tag = ref.rpartition(":")[2] if ":" in ref.rpartition("/")[2] else ""
    history = [str(h.get("CreatedBy") or "") for h in running.get("History") or ()]
    env = [str(e) for e in (running.get("Config") or {}).get("Env") or ()]
    secrets = [
        f"history[{i}]: {kind}" for i, line in enumerate(history) if (kind := scanner.kind(line))
    ]
    for entry in env:
        name, _, value = entry.partition("=")
        if kind := scanner.kind(value, name=name):
            secrets.append(f"env {name}: {kind}")
    return {
        "ref": ref,
        "id": image_id,
        "found": bool(running),
        "pinned_by_digest": "@sha256:" in ref,
        "repo_digests": sorted(str(d) for d in running.get("RepoDigests") or ()),
        "recipe_digest": recipe,
        "tag": tag,
        "tag_is_recipe_digest": bool(tag) and len(tag) >= 12 and recipe.startswith(tag),
        "tag_current": bool(current) and current.get("Id") == image_id,
        "secrets": secrets,
    }


def _weights(
    mounts: list[dict[str, Any]], args: list[str], spec_digest: str
) -> dict[str, Any] | None:
    mount = next((m for m in mounts if m["destination"].startswith(_WEIGHTS_DIR)), None)
    if mount is None:
        return None
    expected = spec_digest or _flag_value(args, "--sha256")
    source = Path(mount["source"])
    try:
        actual = lifecycle.weights_digest(source) if source.exists() else ""
        problem = "" if source.exists() else f"{source} does not exist"
    except OSError as exc:
        actual, problem = "", f"{source}: {exc.strerror}"
    return {
        "source": mount["source"],
        "target": mount["destination"],
        "read_only": not mount["rw"],
        "expected_sha256": expected,
        "actual_sha256": actual,
        "problem": problem,
    }


def container_facts(
    attrs: Mapping[str, Any],
    images: Mapping[str, Mapping[str, Any]],
    scanner: SecretScanner,
    spec_weights: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One container's facts from its ``docker inspect`` (``images``: inspects by id/ref)."""
    host = attrs.get("HostConfig") or {}
    config = attrs.get("Config") or {}
    state = attrs.get("State") or {}
    labels = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
    options = [str(o) for o in host.get("SecurityOpt") or ()]
    user = str(config.get("User") or "")
    args = [*(config.get("Entrypoint") or ()), *(config.get("Cmd") or ())]
    args = [str(a) for a in args]
    mounts = [
        {
            "type": str(m.get("Type") or ""),
            "source": str(m.get("Source") or ""),
            "destination": str(m.get("Destination") or ""),
            "rw": bool(m.get("RW")),
            "propagation": str(m.get("Propagation") or ""),
        }
        for m in attrs.get("Mounts") or ()
    ]
    env_secrets = []
    for entry in config.get("Env") or ():
        name, _, value = str(entry).partition("=")
        if kind := scanner.kind(value, name=name):
            env_secrets.append(f"{name}: {kind}")
    arg_secrets = [f"argv[{i}]: {kind}" for i, a in enumerate(args) if (kind := scanner.kind(a))]
    label_secrets = [
        f"{k}: {kind}" for k, v in sorted(labels.items()) if (kind := scanner.kind(v, name=k))
    ]
    log = host.get("LogConfig") or {}
    model = labels.get("enclave.dev/model", "")
    ref, image_id = str(config.get("Image") or ""), str(attrs.get("Image") or "")
    facts: dict[str, Any] = {
        "name": str(attrs.get("Name") or "").lstrip("/"),
        "id": str(attrs.get("Id") or ""),
        "enclave": labels.get(LABEL_NAME, ""),
        "component": labels.get(LABEL_COMPONENT, ""),
        "model": model,
        "status": str(state.get("Status") or ""),
        "running": bool(state.get("Running")),
        "health": str((state.get("Health") or {}).get("Status") or ""),
        "restart_count": int(attrs.get("RestartCount") or 0),
        "privileged": bool(host.get("Privileged")),
        "cap_add": sorted(str(c) for c in host.get("CapAdd") or ()),
        "cap_drop": sorted(str(c) for c in host.get("CapDrop") or ()),
        "security_opt": options,
        "no_new_privileges": any(
            o in {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
            for o in options
        ),
        "seccomp": _seccomp(options),
        "apparmor_profile": str(attrs.get("AppArmorProfile") or ""),
        "user": user,
        "uid": _uid(user),
        "runs_as_root": _uid(user) == 0,
        "read_only_rootfs": bool(host.get("ReadonlyRootfs")),
        "pid_mode": str(host.get("PidMode") or ""),
        "ipc_mode": str(host.get("IpcMode") or ""),
        "uts_mode": str(host.get("UTSMode") or ""),
        "userns_mode": str(host.get("UsernsMode") or ""),
        "network_mode": str(host.get("NetworkMode") or ""),
        "cgroupns_mode": str(host.get("CgroupnsMode") or ""),
        "memory": int(host.get("Memory") or 0),
        "memory_swap": int(host.get("MemorySwap") or 0),
        "nano_cpus": int(host.get("NanoCpus") or 0),
        "cpu_quota": int(host.get("CpuQuota") or 0),
        "pids_limit": int(host.get("PidsLimit") or 0),
        "devices": [
            f"{d.get('PathOnHost')}:{d.get('PathInContainer')}" for d in host.get("Devices") or ()
        ],
        "mounts": mounts,
        "ports": _ports(attrs),
        "publish_all_ports": bool(host.get("PublishAllPorts")),
        "networks": sorted((attrs.get("NetworkSettings") or {}).get("Networks") or {}),
        "restart_policy": str((host.get("RestartPolicy") or {}).get("Name") or ""),
        "log_driver": str(log.get("Type") or ""),
        "log_max_size": str((log.get("Config") or {}).get("max-size") or ""),
        "env_secrets": env_secrets,
        "arg_secrets": arg_secrets,
        "label_secrets": label_secrets,
        "image": _image_facts(ref, image_id, images, scanner),
    }
    weights = _weights(mounts, args, (spec_weights or {}).get(model, ""))
    facts["weights"] = weights if weights is not None else {}
    facts["has_weights"] = weights is not None
    return facts


# -- networks and firewall ----------------------------------------------------------------------


def network_facts(attrs: Mapping[str, Any], ours: Iterable[str]) -> dict[str, Any]:
    """One network's facts; ``ours``: the ids of the enclave's own containers."""
    options = {str(k): str(v) for k, v in (attrs.get("Options") or {}).items()}
    labels = attrs.get("Labels") or {}
    own = set(ours)
    network_id = str(attrs.get("Id") or "")
    try:
        bridge = firewall.bridge_name(network_id, options)
    except InputError:
        bridge = ""
    members = [
        {"name": str(info.get("Name") or cid[:12]), "ours": cid in own}
        for cid, info in sorted((attrs.get("Containers") or {}).items())
    ]
    return {
        "name": str(attrs.get("Name") or ""),
        "id": network_id,
        "role": str(labels.get(LABEL_COMPONENT) or "").removeprefix("network-"),
        "enclave": str(labels.get(LABEL_NAME) or ""),
        "driver": str(attrs.get("Driver") or ""),
        "internal": bool(attrs.get("Internal")),
        "ipv6": bool(attrs.get("EnableIPv6")),
        "attachable": bool(attrs.get("Attachable")),
        "ip_masquerade": options.get("com.docker.network.bridge.enable_ip_masquerade") != "false",
        "icc": options.get("com.docker.network.bridge.enable_icc") != "false",
        "bridge": bridge,
        "members": members,
    }


def firewall_facts(name: str, bridges: list[str], runner: firewall.Runner) -> dict[str, Any]:
    state = firewall.observe(name, runner=runner)
    return {
        "chain": state.chain,
        "present": state.present,
        "families": [f.value for f in state.families],
        "isolated_bridges": sorted(state.bridges()),
        "problems": state.missing(bridges) if bridges else ["no enclave bridge to isolate"],
    }


# -- the Docker daemon --------------------------------------------------------------------------


def local_daemon_settings(root: Path = Path("/")) -> dict[str, Any]:
    """The local dockerd's own command line (from its pid file) and ``daemon.json``: settings
    that older engines' ``docker info`` leaves out (Docker 20.10 does not report a daemon-wide
    ``no-new-privileges``). Empty where they cannot be read."""
    flags: list[str] = []
    with contextlib.suppress(OSError, ValueError):
        pid = int((root / "var/run/docker.pid").read_text(encoding="ascii").strip())
        raw = (root / f"proc/{pid}/cmdline").read_bytes()
        flags = [f for f in raw.decode(errors="replace").split("\0") if f]
    config: Any = {}
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((root / "etc/docker/daemon.json").read_text(encoding="utf-8"))
    return {"flags": flags, "config": config if isinstance(config, dict) else {}}


def _daemon_flag(local: Mapping[str, Any], name: str) -> bool:
    flags = local.get("flags") or ()
    config = local.get("config") or {}
    return f"--{name}" in flags or f"--{name}=true" in flags or config.get(name) is True


def daemon_facts(info: Mapping[str, Any], local: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The engine's security-relevant settings from ``docker info`` (+ ``DefaultBridge``), and,
    for an engine on this host, from its own command line and ``daemon.json`` (``local``)."""
    local = local or {}
    options = [str(o) for o in info.get("SecurityOptions") or ()]
    names: dict[str, dict[str, str]] = {}
    for option in options:
        parts = dict(p.split("=", 1) for p in option.split(",") if "=" in p)
        if "name" in parts:
            names[parts["name"]] = parts
    bridge = info.get("DefaultBridge") or {}
    bridge_options = bridge.get("Options") or {}
    registry = info.get("RegistryConfig") or {}
    return {
        "version": str(info.get("ServerVersion") or ""),
        "live_restore": bool(info.get("LiveRestoreEnabled")),
        "icc": str(bridge_options.get("com.docker.network.bridge.enable_icc", "true")) != "false",
        "has_default_bridge": bool(bridge),
        "no_new_privileges": "no-new-privileges" in names
        or _daemon_flag(local, "no-new-privileges"),
        "userns_remap": "userns" in names,
        "rootless": "rootless" in names,
        "seccomp": "seccomp" in names,
        "seccomp_profile": names.get("seccomp", {}).get("profile", ""),
        "security_options": options,
        "insecure_registries": sorted(str(c) for c in registry.get("InsecureRegistryCIDRs") or ()),
        "experimental": bool(info.get("ExperimentalBuild")),
        "logging_driver": str(info.get("LoggingDriver") or ""),
        "cgroup_version": str(info.get("CgroupVersion") or ""),
        "default_runtime": str(info.get("DefaultRuntime") or ""),
    }


# -- the host -----------------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].lstrip("-").isdigit() else None


def _audit_watches(etc: Path) -> list[str]:
    files = [etc / "audit" / "audit.rules"]
    rules_dir = etc / "audit" / "rules.d"
    if rules_dir.is_dir():
        files += sorted(rules_dir.glob("*.rules"))
    watches: set[str] = set()
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split()
            if len(words) >= 2 and words[0] == "-w":
                watches.add(words[1])
            for word in words:
                if word.startswith(("path=", "dir=")):
                    watches.add(word.split("=", 1)[1])
    return sorted(watches)


def _process_running(proc: Path, comm: str) -> bool:
    try:
        entries = os.scandir(proc)
    except OSError:
        return False
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if (Path(entry.path) / "comm").read_text().strip() == comm:
                    return True
    return False


def host_facts(*, root: Path, docker_socket: Path, state_dir: Path, enclave: str) -> dict[str, Any]:
    """Kernel settings, auditd, the Docker socket's and enclave's own files' permissions.

    ``root`` is ``/`` (a test passes a directory laid out like one: ``proc/sys/...``,
    ``etc/audit/...``, ``sbin/auditd``).
    """
    proc, sys, etc = root / "proc", root / "sys", root / "etc"
    sysctl = {
        key.replace(".", "_"): _read_int(proc / "sys" / key.replace(".", "/")) for key in SYSCTLS
    }
    socket_mode = _mode(docker_socket)
    socket: dict[str, Any] = {"path": str(docker_socket), "exists": socket_mode is not None}
    if socket_mode is not None:
        mode, uid, gid = socket_mode
        socket |= {
            "mode": mode,
            "owner_uid": uid,
            "group": _group_name(gid),
            "world_accessible": int(mode, 8) & 0o007 != 0,
        }
    daemons = ("/sbin/auditd", "/usr/sbin/auditd")
    private: list[str] = []
    loose: list[str] = []
    for path in (state_dir, state_dir / "vault", lifecycle.enclave_dir(state_dir, enclave)):
        found = _mode(path)
        if found is not None:
            (private if int(found[0], 8) & 0o077 == 0 else loose).append(f"{path} {found[0]}")
    for path in (state_dir / "vault" / "init.json", state_dir / "vault" / "admin.token"):
        found = _mode(path)
        if found is not None:
            (private if int(found[0], 8) & 0o077 == 0 else loose).append(f"{path} {found[0]}")
    return {
        "sysctl": sysctl,
        "auditd": {
            "installed": any((root / d.lstrip("/")).is_file() for d in daemons),
            "running": _process_running(proc, "auditd"),
            "watches": _audit_watches(etc),
        },
        "docker_socket": socket,
        "apparmor": _read_text(sys / "module" / "apparmor" / "parameters" / "enabled") == "Y",
        "selinux": (sys / "fs" / "selinux" / "enforce").exists(),
        "state_files": {"private": private, "loose": loose},
    }


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _group_name(gid: int) -> str:
    import grp  # noqa: PLC0415 - POSIX only, and only here

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# -- the spec -----------------------------------------------------------------------------------


def spec_facts(loaded: LoadedSpec) -> dict[str, Any]:
    """The spec's safeguards as facts (durations in seconds)."""
    spec = loaded.spec
    catalog = loaded.catalog
    roles = spec.rbac.roles
    principals = []
    for principal in spec.rbac.principals:
        held = [roles[r] for r in principal.roles if r in roles]
        principals.append(
            {
                "name": principal.name,
                "roles": list(principal.roles),
                "actions": sorted({a.value for role in held for a in role.actions}),
                "purposes": sorted(
                    {p for role in held if "query" in role.actions for p in role.purposes}
                ),
            }
        )
    try:
        digest = hashlib.sha256(loaded.source.read_bytes()).hexdigest()
    except OSError:
        digest = ""
    labels = dict(loaded.enclave.metadata.labels)
    owner = labels.get("owner") or labels.get("enclave.dev/owner") or ""
    return {
        "name": loaded.name,
        "source": str(loaded.source),
        "sha256": digest,
        "classification": spec.classification.value,
        "classification_rank": spec.classification.rank,
        "catalog": {
            "source": str(loaded.catalog_source),
            "prohibited": catalog.prohibited_ids,
            "purposes": [
                {
                    "id": p.id,
                    "ceiling": p.classification_ceiling.value,
                    "ceiling_rank": p.classification_ceiling.rank,
                    "requires_approval": p.requires_approval,
                }
                for p in catalog.purposes
            ],
        },
        "spec_prohibited": list(spec.usage.prohibited),
        "prohibited": loaded.prohibited,
        "approval_required": loaded.approval_required,
        "permitted": loaded.permitted,
        "principals": principals,
        "gateway": {
            "listen_host": str(spec.gateway.listen.host),
            "listen_port": spec.gateway.listen.port,
        },
        "shutdown": {
            "heartbeat_s": spec.shutdown.heartbeat.total_seconds(),
            "lease_s": spec.shutdown.lease.total_seconds(),
            "violations_per_minute": spec.shutdown.violations_per_minute,
            "resume_approvals": spec.shutdown.resume_approvals,
            "resume_excludes_trigger": spec.shutdown.resume_excludes_trigger,
            "seal_vault": spec.shutdown.seal_vault,
        },
        "audit": {
            "checkpoint_every_s": spec.audit.checkpoint_every.total_seconds(),
            "store_content": spec.audit.store_content,
        },
        "compliance": {
            "interval_s": spec.compliance.interval.total_seconds(),
            "drill_interval_s": spec.compliance.drill_interval.total_seconds(),
            "on_drift": spec.compliance.on_drift.value,
        },
        "models": [
            {
                "name": m.name,
                "runtime": m.runtime.value,
                "image": m.image or "",
                "weights_sha256": m.weights.sha256 if m.weights else "",
            }
            for m in spec.models
        ],
        "labels": labels,
        "owner": owner,
    }


# -- the gateway --------------------------------------------------------------------------------


def _bundle(state_dir: Path, name: str) -> dict[str, Any]:
    """What the gateway container enforces: the spec bundle it mounts."""
    root = lifecycle.enclave_dir(state_dir, name) / "spec"
    found: dict[str, Any] = {"path": str(root), "present": root.is_dir(), "loaded": False}
    if not root.is_dir():
        return found | {"problem": "no spec bundle"}
    candidates = sorted(p for p in root.iterdir() if p.suffix in {".yaml", ".yml"})
    if len(candidates) != 1:
        return found | {"problem": f"expected one spec file in {root}, found {len(candidates)}"}
    try:
        loaded = load_spec(candidates[0])
    except SpecError as exc:
        return found | {"problem": str(exc)}
    screens_file = loaded.catalog_source.with_name("screens.yaml")
    screened: list[str] = []
    try:
        doc = parse_yaml(screens_file.read_bytes(), str(screens_file))
        screens = doc.data.get("screens") if isinstance(doc.data, dict) else None
        screened = sorted(str(k) for k in screens or {})
    except (OSError, SpecError):
        pass
    return found | {
        "loaded": True,
        "problem": "",
        "spec_sha256": hashlib.sha256(candidates[0].read_bytes()).hexdigest(),
        "prohibited": loaded.prohibited,
        "screened": screened,
        "approval_required": loaded.approval_required,
        "classification": loaded.spec.classification.value,
    }


def gateway_facts(
    state_dir: Path, name: str, containers: list[dict[str, Any]], *, timeout: float = 2.0
) -> dict[str, Any]:
    """The gateway as it runs: its health answer, lease, and the policy bundle it enforces."""
    gateway = next((c for c in containers if c.get("component") == "gateway"), None)
    published = [p for p in (gateway or {}).get("ports", ()) if p["host_port"]]
    facts: dict[str, Any] = {
        "container": (gateway or {}).get("name", ""),
        "url": "",
        "reachable": False,
        "http_status": 0,
        "status": "",
        "mode": "",
        "lease_remaining_s": 0.0,
        "problems": [],
        "controller_running": controlproc.running(state_dir, name) is not None,
        "bundle": _bundle(state_dir, name),
    }
    if published:
        host = published[0]["host_ip"] or "127.0.0.1"
        host = "127.0.0.1" if host == "0.0.0.0" else host  # noqa: S104 - the host to ask
        url = f"http://{host}:{published[0]['host_port']}"
        status, body = http_json(url + "/healthz", timeout=timeout)
        facts |= {"url": url, "reachable": status != 0, "http_status": status}
        if isinstance(body, dict):
            facts |= {
                "status": str(body.get("status") or ""),
                "mode": str(body.get("mode") or ""),
                "lease_remaining_s": float(body.get("lease_remaining") or 0.0),
                "problems": [str(p) for p in body.get("problems") or ()],
            }
    return facts


# -- audit logs ---------------------------------------------------------------------------------


def _tree_private(root: Path) -> tuple[bool, list[str]]:
    loose = []
    for path in [root, *root.iterdir()]:
        found = _mode(path)
        if found is None:
            continue
        limit = 0o022 if path.name == "audit.pub" else 0o077
        if int(found[0], 8) & limit:
            loose.append(f"{path.name or path} {found[0]}")
    return not loose, loose


def audit_facts(log: Path, now: datetime) -> dict[str, Any]:
    """The gateway's audit log, verified: intact, signed (by which key), recent, private."""
    facts: dict[str, Any] = {"path": str(log), "exists": log.is_dir()}
    empty = {
        "intact": False,
        "finding": "no audit log",
        "records": 0,
        "checkpoints": 0,
        "unsigned_records": 0,
        "key_id": "",
        "last_checkpoint": "",
        "checkpoint_age_s": None,
        "private": False,
        "loose": [],
    }
    if not facts["exists"]:
        return facts | empty
    try:
        report = verify_log(log)
    except (InputError, OSError) as exc:
        return facts | empty | {"finding": f"malformed: {exc}"}
    last = report.last_checkpoint
    checkpoint_time = None
    if last is not None:
        with contextlib.suppress(ValueError):
            checkpoint_time = datetime.fromisoformat(last.time.replace("Z", "+00:00"))
    private, loose = _tree_private(log)
    return facts | {
        "intact": report.intact,
        "finding": str(report.finding) if report.finding else "",
        "records": report.records,
        "checkpoints": report.checkpoints,
        "unsigned_records": report.unsigned,
        "key_id": report.key_id,
        "last_checkpoint": last.time if last else "",
        "checkpoint_age_s": _age(checkpoint_time, now),
        "private": private,
        "loose": loose,
    }


def drill_facts(log: Path, now: datetime) -> dict[str, Any]:
    """The latest kill drill the controller recorded (``drill.result`` in its audit log).

    No log, or no record in it, is ``recorded: false`` with the summary "no drill recorded":
    the drill check fails then, it never passes on absence. ``max_latency_ms`` is the slowest
    step of *stopping* (every latency but ``resume``: bringing the enclave back is not part of
    stopping it, and takes as long as its containers need to start).
    """
    facts: dict[str, Any] = {
        "log": str(log),
        "log_exists": log.is_dir(),
        "log_intact": False,
        "log_finding": "",
        "recorded": False,
        "summary": "no drill recorded",
        "time": "",
        "age_s": None,
        "passed": False,
        "latencies_ms": {},
        "max_latency_ms": None,
    }
    if not facts["log_exists"]:
        return facts
    try:
        verified = verify_log(log)
        facts["log_intact"] = verified.intact
        facts["log_finding"] = str(verified.finding) if verified.finding else ""
        latest = None
        for record in iter_records(log):
            if record.action == DRILL_ACTION:
                latest = record
    except (EnclaveError, OSError) as exc:
        return facts | {"summary": f"controller audit log unreadable: {exc}"}
    if latest is None:
        return facts
    details = dict(latest.details or {})
    raw = details.get("latencies_ms")
    latencies = {
        str(k): float(v)
        for k, v in (raw.items() if isinstance(raw, dict) else ())
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    stopping = [v for k, v in latencies.items() if k not in NOT_STOPPING]
    when = record_time(latest)
    passed = details.get("passed") is True
    return facts | {
        "recorded": True,
        "summary": f"drill at {latest.time} (seq {latest.seq}) {'passed' if passed else 'FAILED'}",
        "time": latest.time,
        "age_s": _age(when, now),
        "passed": passed,
        "latencies_ms": latencies,
        "max_latency_ms": max(stopping) if stopping else None,
    }


def utc_now() -> datetime:
    return datetime.now(UTC)


def json_safe(value: Any) -> Any:
    """``value`` round-tripped through JSON (what a rule and a report both see)."""
    return json.loads(json.dumps(value, default=str))
