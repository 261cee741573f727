"""Run every benchmark and print Markdown tables (``make bench``)."""

from __future__ import annotations

from bench import (
    audit_log,
    compliance,
    enclave_up,
    gateway,
    hot_paths,
    images,
    monitor,
    shutdown,
    spec_load,
    vault_provision,
    vault_revoke,
)


def main() -> None:
    for bench in (
        spec_load,
        audit_log,
        vault_provision,
        vault_revoke,
        images,
        hot_paths,
        gateway,
        shutdown,
        compliance,
        monitor,
    ):
        bench.main()
        print()
    # bench.images above already built the base from nothing when asked to: not twice
    enclave_up.main(base_from_nothing_run=False)


if __name__ == "__main__":
    main()
