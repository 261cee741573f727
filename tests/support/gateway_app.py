"""Helpers for the gateway app's tests: the real runtime as upstream, a screen that bans a word."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from enclave.gateway.rules import RuleScreen
from enclave.gateway.screen import HoldbackStream, OutputScreen, Scope, ScreenResult, Violation


@dataclass
class BannedWordScreen:
    """The rule screen for prompts and outputs, plus one word banned in outputs (settable)."""

    rules: RuleScreen
    word: str | None = None
    use: str = "kinetic-control"

    def _scan(self, text: str) -> ScreenResult:
        if self.word and re.search(rf"\b{re.escape(self.word)}\b", text, re.IGNORECASE):
            return Violation(self.use, "test-banned-word", Scope.OUTPUT)
        return self.rules.check_output(text)

    def check_prompt(self, text: str) -> ScreenResult:
        return self.rules.check_prompt(text)

    def check_output(self, text: str) -> ScreenResult:
        return self._scan(text)

    def output_screen(self) -> OutputScreen:
        # a short hold-back (the banned word's), so that a cut visibly comes mid-stream; the
        # rule screen's own outputs rules still run on every scan
        return HoldbackStream(self._scan, 32)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
