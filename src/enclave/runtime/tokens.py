"""Word-level tokens of the reference model: splitting text, and joining tokens back into text.

A token is a word (letters and digits, with inner apostrophes or hyphens: ``read-only``,
``don't``) or a single punctuation character. Whitespace is not a token; :func:`render` puts it
back with the usual English rules (no space before ``.,;:!?)``, none after ``(``, a capital
letter at the start of a sentence).
"""

from __future__ import annotations

import re

__all__ = ["SENTENCE_END", "render", "tokenize", "words"]

_TOKEN = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*|[^\w\s]|_", re.UNICODE)
_WORD = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*", re.UNICODE)

SENTENCE_END = frozenset({".", "!", "?"})
"""Tokens after which the next word starts a sentence."""

_NO_SPACE_BEFORE = frozenset({".", ",", ";", ":", "!", "?", ")", "]", "}", "%"})
_NO_SPACE_AFTER = frozenset({"(", "[", "{"})


def tokenize(text: str) -> list[str]:
    """Split ``text`` into tokens, keeping their case."""
    return _TOKEN.findall(text)


def words(text: str) -> list[str]:
    """The lower-cased words of ``text`` (punctuation dropped): what embeddings are made of."""
    return [word.lower() for word in _WORD.findall(text)]


def render(token: str, previous: str | None, *, leading_space: bool) -> str:
    """The text of ``token`` when it follows ``previous`` (``None``: nothing before it).

    ``leading_space`` is whether a space may separate it from what came before at all (false
    for the first token of a chat reply, or after a prompt that already ends in whitespace).
    """
    if previous is None or previous in SENTENCE_END:
        token = token[:1].upper() + token[1:]
    if (
        not leading_space
        or previous is None
        or token in _NO_SPACE_BEFORE
        or previous in _NO_SPACE_AFTER
    ):
        return token
    return " " + token
