"""Weights of the reference model: training, the canonical file format, and checked loading.

The model is a word-level trigram model. :func:`train` counts unigrams, bigrams and trigrams
over a text; the counts *are* the weights. Training is a pure function of the text, and the
weights serialise to one canonical JSON document (sorted keys, no insignificant whitespace,
ASCII only, rows in sorted order), so the same corpus always gives the same file and the same
sha256::

    weights = train(reference_corpus())
    digest = write_weights(weights, path)      # returns the file's sha256
    weights = load_weights(path, digest)       # IntegrityError if the file's digest differs

:func:`load_weights` checks the digest of the bytes on disk before it parses anything, and
accepts only the canonical form, so a loaded model's :attr:`NgramWeights.sha256` is always the
digest of the file it came from.

File format (``format: enclave-ngram``, ``version: 1``)::

    {"bigrams": [[a, b, n], ...],          word ids a, b seen together n times, sorted
     "corpus_sha256": "<hex>",             digest of the training text (provenance)
     "format": "enclave-ngram",
     "order": 3,
     "trigrams": [[a, b, c, n], ...],
     "unigrams": [n0, n1, ...],            count of each word id
     "version": 1,
     "vocab": ["a", "about", "API", ...]}  display forms; ids are positions, sorted by
                                           lower-cased form
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from itertools import pairwise
from pathlib import Path

from enclave.errors import InputError, IntegrityError
from enclave.runtime.tokens import SENTENCE_END, tokenize

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_WEIGHTS_BYTES",
    "NgramWeights",
    "builtin_weights",
    "load_weights",
    "reference_corpus",
    "train",
    "write_weights",
]

logger = logging.getLogger(__name__)

FORMAT = "enclave-ngram"
FORMAT_VERSION = 1
ORDER = 3
MAX_WEIGHTS_BYTES = 64 * 1024**2
"""Larger files are refused before they are read (the shipped corpus gives about 60 KiB)."""

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class NgramWeights:
    """Counts of a trained trigram model. Ids index :attr:`vocab`; every tuple is sorted."""

    vocab: tuple[str, ...]
    unigrams: tuple[int, ...]
    bigrams: tuple[tuple[int, int, int], ...]
    trigrams: tuple[tuple[int, int, int, int], ...]
    corpus_sha256: str

    def to_json_bytes(self) -> bytes:
        """The canonical serialisation (what :func:`write_weights` writes)."""
        document = {
            "bigrams": [list(row) for row in self.bigrams],
            "corpus_sha256": self.corpus_sha256,
            "format": FORMAT,
            "order": ORDER,
            "trigrams": [list(row) for row in self.trigrams],
            "unigrams": list(self.unigrams),
            "version": FORMAT_VERSION,
            "vocab": list(self.vocab),
        }
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return text.encode("ascii") + b"\n"

    @property
    def sha256(self) -> str:
        """Hex sha256 of :meth:`to_json_bytes`: the digest a spec pins."""
        return hashlib.sha256(self.to_json_bytes()).hexdigest()


def train(corpus_text: str) -> NgramWeights:
    """Count the unigrams, bigrams and trigrams of ``corpus_text`` (deterministic).

    Words are matched case-insensitively; each keeps the spelling it most often has inside a
    sentence (so ``API`` stays upper case and ``The`` becomes ``the``). Raises
    :class:`InputError` for a text with fewer than three tokens.
    """
    surface = tokenize(corpus_text)
    if len(surface) < ORDER:
        raise InputError("corpus: too little text to train on (need at least three tokens)")
    keys = [token.lower() for token in surface]
    spellings: dict[str, Counter[str]] = {key: Counter() for key in keys}
    for i, (key, token) in enumerate(zip(keys, surface, strict=True)):
        if i > 0 and keys[i - 1] not in SENTENCE_END:
            spellings[key][token] += 1
    ordered = sorted(spellings)
    ids = {key: i for i, key in enumerate(ordered)}
    vocab = tuple(_display(key, spellings[key]) for key in ordered)
    seq = [ids[key] for key in keys]
    unigram_counts = Counter(seq)
    bigram_counts = Counter(pairwise(seq))
    trigram_counts = Counter(zip(seq, seq[1:], seq[2:], strict=False))
    return NgramWeights(
        vocab=vocab,
        unigrams=tuple(unigram_counts[i] for i in range(len(vocab))),
        bigrams=tuple(sorted((a, b, n) for (a, b), n in bigram_counts.items())),
        trigrams=tuple(sorted((a, b, c, n) for (a, b, c), n in trigram_counts.items())),
        corpus_sha256=hashlib.sha256(corpus_text.encode("utf-8")).hexdigest(),
    )


def _display(key: str, seen: Counter[str]) -> str:
    if not seen:
        return key
    best = max(seen.values())
    return min(spelling for spelling, n in seen.items() if n == best)


def reference_corpus() -> str:
    """The text enclave ships for its reference model: every ``*.txt`` under
    ``enclave/data/corpus``, in name order, separated by blank lines."""
    corpus = files("enclave") / "data" / "corpus"
    names = sorted(entry.name for entry in corpus.iterdir() if entry.name.endswith(".txt"))
    return "\n\n".join((corpus / name).read_text(encoding="utf-8").strip() for name in names)


@cache
def builtin_weights() -> NgramWeights:
    """The reference model trained from :func:`reference_corpus` (computed once)."""
    return train(reference_corpus())


def write_weights(weights: NgramWeights, path: Path) -> str:
    """Write the canonical file atomically (mode 0644) and return its sha256."""
    data = weights.to_json_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).chmod(0o644)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def load_weights(path: Path, sha256: str) -> NgramWeights:
    """Read weights from ``path`` after checking that the file's sha256 is ``sha256``.

    Raises :class:`IntegrityError` when the digest differs (nothing is parsed then), and
    :class:`InputError` when the file cannot be read, ``sha256`` is not 64 hex digits, or the
    file is not a canonical weights document.
    """
    expected = sha256.strip().lower()
    if not _HEX64.match(expected):
        raise InputError(f"--sha256: {sha256!r} is not a sha256 digest (64 hex digits)")
    try:
        size = path.stat().st_size
        if size > MAX_WEIGHTS_BYTES:
            raise InputError(f"weights {path}: {size} bytes is larger than the model allows")
        with path.open("rb") as handle:  # bounded: a device or a pipe reports no size
            data = handle.read(MAX_WEIGHTS_BYTES + 1)
    except OSError as exc:
        raise InputError(f"weights {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_WEIGHTS_BYTES:
        raise InputError(f"weights {path}: larger than the model allows")
    actual = hashlib.sha256(data).hexdigest()
    if not hmac.compare_digest(actual, expected):
        raise IntegrityError(
            f"weights {path}: sha256 is {actual}, expected {expected}; refusing to load them"
        )
    weights = _parse(path, data)
    if weights.to_json_bytes() != data:
        raise InputError(f"weights {path}: not in canonical form (rewrite it with train)")
    logger.info("loaded weights %s (sha256 %s, %d words)", path, actual, len(weights.vocab))
    return weights


def _parse(path: Path, data: bytes) -> NgramWeights:
    reader = _Reader(path)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise reader.bad(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise reader.bad("not a JSON object")
    if doc.get("format") != FORMAT or doc.get("version") != FORMAT_VERSION:
        raise reader.bad(f"expected format {FORMAT!r} version {FORMAT_VERSION}")
    if doc.get("order") != ORDER:
        raise reader.bad(f"expected order {ORDER}")
    vocab = doc.get("vocab")
    if not isinstance(vocab, list) or not vocab or not all(isinstance(w, str) for w in vocab):
        raise reader.bad("vocab must be a non-empty list of strings")
    if len({w.lower() for w in vocab}) != len(vocab):
        raise reader.bad("vocab has duplicate words")
    reader.size = len(vocab)
    corpus = doc.get("corpus_sha256")
    if not isinstance(corpus, str) or not _HEX64.match(corpus):
        raise reader.bad("corpus_sha256 must be a sha256 digest")
    unigrams = reader.rows(doc, "unigrams")
    if len(unigrams) != len(vocab):
        raise reader.bad("unigrams must hold one count per word")
    bigrams = [reader.row(row, 2) for row in reader.rows(doc, "bigrams")]
    trigrams = [reader.row(row, 3) for row in reader.rows(doc, "trigrams")]
    return NgramWeights(
        vocab=tuple(vocab),
        unigrams=tuple(reader.count(n) for n in unigrams),
        bigrams=tuple((a, b, n) for a, b, n in bigrams),
        trigrams=tuple((a, b, c, n) for a, b, c, n in trigrams),
        corpus_sha256=corpus,
    )


class _Reader:
    """Checks the parts of a weights document, naming the file in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0

    def bad(self, why: str) -> InputError:
        return InputError(f"weights {self.path}: malformed: {why}")

    def rows(self, doc: dict[str, object], key: str) -> list[object]:
        rows = doc.get(key)
        if not isinstance(rows, list):
            raise self.bad(f"{key} must be a list")
        return rows

    def count(self, value: object) -> int:
        if type(value) is not int or value < 1:
            raise self.bad(f"count {value!r} is not a positive integer")
        return value

    def row(self, row: object, ids: int) -> list[int]:
        if not isinstance(row, list) or len(row) != ids + 1:
            raise self.bad(f"row {row!r} must hold {ids} word ids and a count")
        for word in row[:ids]:
            if type(word) is not int or not 0 <= word < self.size:
                raise self.bad(f"row {row!r} has a word id out of range")
        return [*row[:ids], self.count(row[ids])]
