"""Run every benchmark and print Markdown tables (``make bench``)."""

from __future__ import annotations

from bench import audit_log, spec_load


def main() -> None:
    spec_load.main()
    print()
    audit_log.main()


if __name__ == "__main__":
    main()
