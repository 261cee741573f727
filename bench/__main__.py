"""Run every benchmark and print a Markdown table."""

from __future__ import annotations

from bench import spec_load


def main() -> None:
    spec_load.main()


if __name__ == "__main__":
    main()
