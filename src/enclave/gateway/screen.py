"""Prohibited-use screening: the pluggable interface, and output screening while streaming.

A :class:`Screen` checks prompts before they reach a model and outputs before they reach the
client. The rule screen (:class:`enclave.gateway.rules.RuleScreen`) implements it from a policy
file; a classifier can implement it too and run beside it (:class:`CompositeScreen`).

Output is screened chunk by chunk while it streams. :class:`HoldbackStream` releases text only
once it has been screened *and* enough text follows it that no match could still begin inside
it: a match may straddle chunks, so the last ``span`` characters (the longest text one rule can
match) stay held back, together with the word being written, until more text or the end
arrives. Screening fails closed: after a violation nothing more is released, and if scanning
raises, the exception propagates before any of the text it was checking is released.

Text is screened after invisible characters (zero-width spaces and joiners, bidi controls, soft
hyphens, variation selectors, Unicode tag characters) are removed: they cannot hide a word from
a screen. Look-alike letters from other scripts are not folded: that is a classifier's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from enclave.errors import InputError
from enclave.gateway.denial import Denial, DenialCode

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class Scope(StrEnum):
    """What a rule screens."""

    PROMPT = "prompt"
    OUTPUT = "output"


@dataclass(frozen=True, slots=True)
class Violation:
    """A screened text matched a prohibited use."""

    use: str
    """The prohibited use (a catalog id)."""
    rule: str
    """Which rule of the screen matched (for the audit record; not shown to the client)."""
    scope: Scope

    def denial(self) -> Denial:
        where = "request" if self.scope is Scope.PROMPT else "model output"
        return Denial(
            DenialCode.PROHIBITED_USE,
            f"the {where} matches the prohibited use {self.use!r}",
            use=self.use,
            rule=self.rule,
        )


ScreenResult = Violation | None
"""What screening a whole text gives: the first violation found, or None."""


class OutputScreen(Protocol):
    """Screens one response's output as it streams.

    ``feed`` returns the text that may be released now (possibly empty) or the violation;
    ``finish`` (at the end of the output) returns the rest, or the violation. After a violation
    every call returns it again.
    """

    def feed(self, chunk: str) -> str | Violation: ...

    def finish(self) -> str | Violation: ...


class Screen(Protocol):
    """A prohibited-use screen. Implementations must be safe to share between requests."""

    def check_prompt(self, text: str) -> ScreenResult: ...

    def check_output(self, text: str) -> ScreenResult:
        """A whole (non-streamed) output."""
        ...

    def output_screen(self) -> OutputScreen:
        """A fresh streaming screen for one response."""
        ...


# -- invisible characters -----------------------------------------------------------------

_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x061C, 0x061C),  # arabic letter mark
    (0x115F, 0x1160),  # hangul fillers
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),  # mongolian variation selectors, vowel separator
    (0x200B, 0x200F),  # zero-width space, joiners, direction marks
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, bidi isolates
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFEFF, 0xFEFF),  # zero-width no-break space
    (0xFFA0, 0xFFA0),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE007F),  # tag characters (used to smuggle text past readers)
    (0xE0100, 0xE01EF),  # variation selectors supplement
)
INVISIBLE: dict[int, None] = {
    code: None for low, high in _INVISIBLE_RANGES for code in range(low, high + 1)
}
"""A ``str.translate`` table deleting invisible characters."""


def strip_invisible(text: str) -> str:
    """``text`` without invisible characters (ASCII text is returned as it is)."""
    return text if text.isascii() else text.translate(INVISIBLE)


def _visible_suffix_start(text: str, count: int) -> int:
    """Where the shortest suffix of ``text`` holding ``count`` visible characters begins."""
    if count <= 0:
        return len(text)
    if text.isascii():
        return max(0, len(text) - count)
    seen = 0
    i = len(text)
    while i > 0 and seen < count:
        i -= 1
        if ord(text[i]) not in INVISIBLE:
            seen += 1
    return i


_LONGEST_WORD = 256
"""A trailing "word" longer than this is screened as it stands instead of waiting for its end."""


def _complete_words_end(text: str) -> int:
    """The end of the last complete word: text after it may still be a word being written."""
    i = len(text)
    stop = max(0, i - _LONGEST_WORD)
    while i > stop and (text[i - 1].isalnum() or ord(text[i - 1]) in INVISIBLE):
        i -= 1
    if i == stop and stop > 0:
        return len(text)
    return i


class HoldbackStream:
    """Streaming output screen over any whole-text ``scan`` whose matches span <= ``span``.

    Each feed screens the released tail (``span`` characters of context) plus every complete
    word received so far, then releases what lies more than ``span`` visible characters before
    the end of the screened text.
    """

    def __init__(self, scan: Callable[[str], ScreenResult], span: int) -> None:
        if span < 1:
            raise InputError("output screen: span must be at least 1")
        self._scan = scan
        self._span = span
        self._tail = ""
        self._pending = ""
        self._screened = 0  # how much of _pending the last scan covered
        self._violation: Violation | None = None
        self._finished = False

    @property
    def held(self) -> int:
        """Characters received but not released yet."""
        return len(self._pending)

    def _fail(self, violation: Violation) -> Violation:
        self._violation = violation
        self._pending = ""
        self._tail = ""
        return violation

    def feed(self, chunk: str) -> str | Violation:
        if self._violation is not None:
            return self._violation
        if self._finished:
            raise InputError("output screen: feed after finish")
        if not chunk:
            return ""
        self._pending += chunk
        end = _complete_words_end(self._pending)
        if end <= self._screened:
            return ""
        found = self._scan(self._tail + self._pending[:end])
        if found is not None:
            return self._fail(found)
        self._screened = end
        release = _visible_suffix_start(self._pending[:end], self._span)
        if release <= 0:
            return ""
        out = self._pending[:release]
        self._pending = self._pending[release:]
        self._screened -= release
        context = self._tail + out
        self._tail = context[_visible_suffix_start(context, self._span) :]
        return out

    def finish(self) -> str | Violation:
        if self._violation is not None:
            return self._violation
        if self._finished:
            return ""
        if self._pending:
            found = self._scan(self._tail + self._pending)
            if found is not None:
                return self._fail(found)
        self._finished = True
        out, self._pending, self._tail = self._pending, "", ""
        return out


class _ChainedOutput:
    def __init__(self, screens: Sequence[OutputScreen]) -> None:
        self._screens = screens
        self._violation: Violation | None = None

    def feed(self, chunk: str) -> str | Violation:
        if self._violation is not None:
            return self._violation
        text = chunk
        for screen in self._screens:
            result = screen.feed(text) if text else ""
            if isinstance(result, Violation):
                self._violation = result
                return result
            text = result
        return text

    def finish(self) -> str | Violation:
        if self._violation is not None:
            return self._violation
        text = ""
        for screen in self._screens:
            released = screen.feed(text) if text else ""
            if isinstance(released, Violation):
                self._violation = released
                return released
            rest = screen.finish()
            if isinstance(rest, Violation):
                self._violation = rest
                return rest
            text = released + rest
        return text


class CompositeScreen:
    """Several screens in a row (e.g. the rule screen, then a classifier): all must pass.

    Output flows through them in order: text released by one is fed to the next.
    """

    def __init__(self, screens: Sequence[Screen]) -> None:
        if not screens:
            raise InputError("a composite screen needs at least one screen")
        self.screens = tuple(screens)

    def check_prompt(self, text: str) -> ScreenResult:
        for screen in self.screens:
            found = screen.check_prompt(text)
            if found is not None:
                return found
        return None

    def check_output(self, text: str) -> ScreenResult:
        for screen in self.screens:
            found = screen.check_output(text)
            if found is not None:
                return found
        return None

    def output_screen(self) -> OutputScreen:
        return _ChainedOutput([screen.output_screen() for screen in self.screens])
