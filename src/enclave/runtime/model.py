"""The reference model: trigram text generation with backoff, and hashed bag-of-words embeddings.

Generation continues a prompt from its last two words. The next word is drawn from the words
that followed that pair in the corpus (trigram); if the pair was never seen, from the words
that followed the last word (bigram); if that word is unknown too, from the words that start a
sentence. Sampling uses a :class:`random.Random` seeded per request, so one request always gives
one answer: ``temperature`` 0 is greedy (ties go to the alphabetically first word), otherwise
counts are raised to ``1 / temperature`` and cut to the ``top_p`` nucleus before drawing::

    model = NgramModel(load_weights(path, digest))
    generation = model.generate("The gateway", SamplingParams(max_tokens=32, seed=7))
    text = "".join(generation)            # or iterate for one text delta per token
    generation.finish_reason               # "length" or "stop"

Stop sequences are matched on the generated text; text that could be the start of a stop
sequence is held back until it is known not to be one, so a streamed reply never shows any
part of a stop sequence.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import TYPE_CHECKING, Literal

from enclave.errors import InputError
from enclave.runtime.tokens import render, tokenize, words

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from enclave.runtime.weights import NgramWeights

__all__ = [
    "DEFAULT_SEED",
    "EMBEDDING_DIMENSIONS",
    "MAX_STOP_SEQUENCES",
    "FinishReason",
    "Generation",
    "NgramModel",
    "SamplingParams",
    "embed",
]

DEFAULT_SEED = 0
"""The seed of a request that names none: identical requests give identical output."""

EMBEDDING_DIMENSIONS = 256
MAX_STOP_SEQUENCES = 4

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to generate. Ranges follow the OpenAI API; a value outside them is an InputError."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = DEFAULT_SEED
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 0:
            raise InputError(f"max_tokens must be at least 0, not {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:  # also rejects NaN
            raise InputError(f"temperature must be between 0 and 2, not {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be greater than 0 and at most 1, not {self.top_p}")
        if len(self.stop) > MAX_STOP_SEQUENCES or not all(self.stop):
            raise InputError(f"stop takes up to {MAX_STOP_SEQUENCES} non-empty sequences")


class _Dist:
    """The words seen after one context, with their counts (sorted by word id)."""

    __slots__ = ("best", "counts", "cumulative", "ranked", "total", "words")

    def __init__(self, successors: dict[int, int]) -> None:
        self.words = tuple(sorted(successors))
        self.counts = tuple(successors[w] for w in self.words)
        self.cumulative = tuple(accumulate(self.counts))
        self.total = self.cumulative[-1]
        # most frequent first, ties by word id: the greedy choice and the top_p order
        self.ranked = tuple(sorted(range(len(self.words)), key=lambda i: -self.counts[i]))
        self.best = self.words[self.ranked[0]]


class NgramModel:
    """A trained trigram model, ready to generate and embed. Immutable; safe to share."""

    def __init__(self, weights: NgramWeights) -> None:
        self.weights = weights
        self.sha256 = weights.sha256
        """Digest of the canonical weights (the file's sha256 when loaded from a file)."""
        self.vocab = weights.vocab
        self._ids = {word.lower(): i for i, word in enumerate(weights.vocab)}
        bigrams: dict[int, dict[int, int]] = {}
        for a, b, n in weights.bigrams:
            bigrams.setdefault(a, {})[b] = n
        trigrams: dict[tuple[int, int], dict[int, int]] = {}
        for a, b, c, n in weights.trigrams:
            trigrams.setdefault((a, b), {})[c] = n
        self._bigrams = {a: _Dist(s) for a, s in bigrams.items()}
        self._trigrams = {ab: _Dist(s) for ab, s in trigrams.items()}
        unigrams = _Dist({i: n for i, n in enumerate(weights.unigrams) if n > 0})
        self._start = self._bigrams.get(self._ids.get(".", -1), unigrams)

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is, as counted in ``usage``."""
        return len(tokenize(text))

    def generate(self, prompt: str, params: SamplingParams, *, chat: bool = False) -> Generation:
        """Start generating a continuation of ``prompt``; iterate the result for text deltas.

        With ``chat`` the reply is a new text: it starts with a capital and no space.
        Otherwise it continues the prompt's text (a space first unless the prompt ends in
        whitespace).
        """
        tokens = tokenize(prompt)
        ids = [self._ids.get(token.lower()) for token in tokens[-2:]]
        context = (None, None, *ids)[-2:]
        if chat:
            previous, leading_space = None, False
        else:
            previous = tokens[-1] if tokens else None
            leading_space = bool(prompt) and not prompt[-1].isspace()
        return Generation(
            self,
            params,
            prompt_tokens=len(tokens),
            context=(context[0], context[1]),
            previous=previous,
            leading_space=leading_space,
        )

    def embed(self, text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
        """See :func:`embed`."""
        return embed(text, dimensions)

    def next_word(self, w1: int | None, w2: int | None, sampler: _Sampler) -> int:
        """The id of the word after ``w1 w2`` (ids, ``None`` for unknown), backing off."""
        dist = None
        if w1 is not None and w2 is not None:
            dist = self._trigrams.get((w1, w2))
        if dist is None and w2 is not None:
            dist = self._bigrams.get(w2)
        return sampler.pick(dist if dist is not None else self._start)


class _Sampler:
    """Draws one word from a :class:`_Dist` under a request's temperature and top_p."""

    __slots__ = ("_exponent", "_greedy", "_plain", "_rng", "_tempered", "_top_p")

    def __init__(self, params: SamplingParams) -> None:
        self._rng = random.Random(params.seed)  # noqa: S311 - reproducible sampling, not secrets
        self._greedy = params.temperature == 0.0
        self._plain = params.temperature == 1.0 and params.top_p == 1.0
        self._exponent = 1.0 / params.temperature if params.temperature else 1.0
        self._top_p = params.top_p
        self._tempered: dict[int, tuple[tuple[int, ...], list[float]]] = {}

    def pick(self, dist: _Dist) -> int:
        if self._greedy:
            return dist.best
        if self._plain:
            return dist.words[bisect_right(dist.cumulative, self._rng.random() * dist.total)]
        key = id(dist)
        cached = self._tempered.get(key)
        if cached is None:
            cached = self._tempered[key] = self._nucleus(dist)
        choices, cumulative = cached
        index = bisect_right(cumulative, self._rng.random() * cumulative[-1])
        return choices[min(index, len(choices) - 1)]

    def _nucleus(self, dist: _Dist) -> tuple[tuple[int, ...], list[float]]:
        weights = [dist.counts[i] ** self._exponent for i in dist.ranked]
        keep = len(weights)
        if self._top_p < 1.0:
            limit = self._top_p * math.fsum(weights)
            running = 0.0
            for keep, weight in enumerate(weights, start=1):  # noqa: B007 - keep is the result
                running += weight
                if running >= limit:
                    break
        return tuple(dist.words[i] for i in dist.ranked[:keep]), list(accumulate(weights[:keep]))


class Generation:
    """One generation. Iterate it (once) for the text deltas, one per generated token at
    most; afterwards :attr:`finish_reason` and :attr:`completion_tokens` are final."""

    def __init__(
        self,
        model: NgramModel,
        params: SamplingParams,
        *,
        prompt_tokens: int,
        context: tuple[int | None, int | None],
        previous: str | None,
        leading_space: bool,
    ) -> None:
        self.params = params
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self._model = model
        self._context = context
        self._previous = previous
        self._leading_space = leading_space
        self._started = False

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("a Generation can be iterated only once")
        self._started = True
        return self._run() if self.params.stop else self._run_plain()

    def text(self) -> str:
        """Generate everything and return it as one string."""
        return "".join(self)

    def _tokens(self) -> Iterator[str]:
        model, vocab = self._model, self._model.vocab
        w1, w2 = self._context
        previous, leading_space = self._previous, self._leading_space
        sampler = _Sampler(self.params)
        for _ in range(self.params.max_tokens):
            word = model.next_word(w1, w2, sampler)
            token = vocab[word]
            self.completion_tokens += 1
            yield render(token, previous, leading_space=leading_space)
            w1, w2, previous, leading_space = w2, word, token, True

    def _run_plain(self) -> Iterator[str]:
        yield from self._tokens()
        self.finish_reason = "length"

    def _run(self) -> Iterator[str]:
        stops = self.params.stop
        pending = ""
        for piece in self._tokens():
            pending += piece
            found = [i for i in (pending.find(stop) for stop in stops) if i >= 0]
            if found:
                if cut := min(found):
                    yield pending[:cut]
                self.finish_reason = "stop"
                return
            hold = _held_back(pending, stops)
            if hold < len(pending):
                yield pending[: len(pending) - hold]
                pending = pending[len(pending) - hold :]
        if pending:
            yield pending
        self.finish_reason = "length"


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that a stop sequence could still begin with."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def embed(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic embedding of ``text``: hashed bag of words, L2-normalised.

    Each lower-cased word adds +1 or -1 (by its hash) to one of 256 buckets (by its hash);
    ``dimensions`` below 256 keeps the first buckets and renormalises, as OpenAI's
    ``dimensions`` shortens an embedding. A text without words embeds to all zeros.
    """
    if not 1 <= dimensions <= EMBEDDING_DIMENSIONS:
        raise InputError(f"dimensions must be between 1 and {EMBEDDING_DIMENSIONS}")
    vector = [0.0] * EMBEDDING_DIMENSIONS
    for word in words(text):
        bucket, sign = _bucket(word)
        vector[bucket] += sign
    vector = vector[:dimensions]
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


@lru_cache(maxsize=65536)
def _bucket(word: str) -> tuple[int, float]:
    digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8, person=b"enclave-emb").digest()
    value = int.from_bytes(digest, "big")
    return value % EMBEDDING_DIMENSIONS, 1.0 if value >> 63 else -1.0
