"""Run every benchmark and print Markdown tables (``make bench``)."""

from __future__ import annotations

from bench import audit_log, gateway, images, spec_load, vault_provision, vault_revoke


def main() -> None:
    for bench in (spec_load, audit_log, vault_provision, vault_revoke, images, gateway):
        bench.main()
        print()


if __name__ == "__main__":
    main()
