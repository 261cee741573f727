"""The reference model: training, the weights file, generation and embeddings."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.errors import InputError, IntegrityError
from enclave.runtime import (
    EMBEDDING_DIMENSIONS,
    NgramModel,
    NgramWeights,
    SamplingParams,
    builtin_weights,
    embed,
    load_weights,
    reference_corpus,
    train,
    write_weights,
)

PROMPT = "The gateway"


@pytest.fixture(scope="module")
def model() -> NgramModel:
    return NgramModel(builtin_weights())


def generate(model: NgramModel, prompt: str = PROMPT, *, chat: bool = False, **kw: object) -> str:
    return model.generate(prompt, SamplingParams(**kw), chat=chat).text()  # type: ignore[arg-type]


# --- training and the weights file ------------------------------------------------------------


def test_training_is_deterministic_and_canonical() -> None:
    corpus = reference_corpus()
    first, second = train(corpus), train(corpus)
    assert first == second
    data = first.to_json_bytes()
    assert data == second.to_json_bytes()
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    doc = json.loads(data)
    assert json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n" == data
    assert doc["format"] == "enclave-ngram"
    assert doc["corpus_sha256"] == hashlib.sha256(corpus.encode()).hexdigest()
    assert train(corpus + " One more sentence.").sha256 != first.sha256


def test_the_shipped_corpus_is_a_few_kilobytes_of_prose() -> None:
    corpus = reference_corpus()
    assert 4_000 < len(corpus) < 64_000
    assert corpus.isascii()
    weights = builtin_weights()
    assert len(weights.vocab) > 300
    assert {"enclave", "translation", "logistics", "review", "safety"} <= set(weights.vocab)


def test_training_keeps_the_spelling_words_have_inside_sentences() -> None:
    weights = train("The API is small. Every API call is logged. the end.")
    assert "API" in weights.vocab
    assert "the" in weights.vocab  # sentence-initial "The" does not decide the spelling
    assert "The" not in weights.vocab


def test_training_needs_some_text() -> None:
    with pytest.raises(InputError, match="too little text"):
        train("two words")


def test_weights_round_trip_through_a_checked_file(tmp_path: Path) -> None:
    weights = builtin_weights()
    path = tmp_path / "w.json"
    digest = write_weights(weights, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() == weights.sha256
    assert path.stat().st_mode & 0o777 == 0o644
    assert load_weights(path, digest) == weights
    assert load_weights(path, digest.upper()) == weights


def test_a_wrong_digest_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    digest = write_weights(builtin_weights(), path)
    wrong = "0" * 64
    with pytest.raises(IntegrityError, match=f"sha256 is {digest}, expected {wrong}"):
        load_weights(path, wrong)
    path.write_bytes(b"not json at all")  # a tampered file: still a digest error, not a parse one
    with pytest.raises(IntegrityError, match="refusing to load"):
        load_weights(path, digest)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "malformed: not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"format":"other","version":1}', "expected format"),
    ],
)
def test_malformed_files_with_a_matching_digest_are_input_errors(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "w.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_weights(path, hashlib.sha256(content).hexdigest())


def test_bad_rows_are_reported(tmp_path: Path) -> None:
    doc = json.loads(builtin_weights().to_json_bytes())
    doc["bigrams"][0][1] = len(doc["vocab"])  # an id out of range
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path = tmp_path / "w.json"
    path.write_bytes(data)
    with pytest.raises(InputError, match="word id out of range"):
        load_weights(path, hashlib.sha256(data).hexdigest())


def test_only_the_canonical_form_loads(tmp_path: Path) -> None:
    pretty = json.dumps(json.loads(builtin_weights().to_json_bytes()), indent=2).encode()
    path = tmp_path / "w.json"
    path.write_bytes(pretty)
    with pytest.raises(InputError, match="not in canonical form"):
        load_weights(path, hashlib.sha256(pretty).hexdigest())


def test_unreadable_files_and_bad_digests_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No such file"):
        load_weights(tmp_path / "missing.json", "0" * 64)
    with pytest.raises(InputError, match="not a sha256 digest"):
        load_weights(tmp_path / "missing.json", "abc")


# --- generation -------------------------------------------------------------------------------


def test_greedy_generation_ignores_the_seed(model: NgramModel) -> None:
    outputs = {generate(model, max_tokens=32, temperature=0.0, seed=seed) for seed in range(5)}
    assert len(outputs) == 1
    assert len(outputs.pop().split()) > 10


def test_sampling_is_reproducible_under_a_seed(model: NgramModel) -> None:
    for params in (
        {"seed": 7},
        {"seed": 7, "temperature": 0.7},
        {"seed": 7, "temperature": 1.5, "top_p": 0.8},
    ):
        assert generate(model, max_tokens=48, **params) == generate(model, max_tokens=48, **params)
    outputs = {generate(model, max_tokens=48, seed=seed) for seed in range(8)}
    assert len(outputs) > 4  # different seeds take different paths


def test_the_default_seed_is_fixed(model: NgramModel) -> None:
    assert generate(model, max_tokens=24) == generate(model, max_tokens=24, seed=0)


def test_max_tokens_is_honoured(model: NgramModel) -> None:
    for max_tokens in (0, 1, 7, 64):
        generation = model.generate(PROMPT, SamplingParams(max_tokens=max_tokens))
        text = generation.text()
        assert generation.completion_tokens == max_tokens
        assert generation.finish_reason == "length"
        assert model.count_tokens(text) == max_tokens
    assert generation.prompt_tokens == 2


def test_completions_continue_the_prompt_and_chat_replies_start_a_text(model: NgramModel) -> None:
    assert generate(model, "The gateway", max_tokens=3).startswith(" ")
    assert not generate(model, "The gateway ", max_tokens=3).startswith(" ")
    reply = generate(model, "What is an enclave?", chat=True, max_tokens=5)
    assert reply[0].isupper()
    assert not reply.startswith(" ")


def test_unknown_words_back_off_to_a_sentence_start(model: NgramModel) -> None:
    unknown = generate(model, "xyzzy plugh", temperature=0.0, max_tokens=1)
    sentence_start = generate(model, "Done.", temperature=0.0, max_tokens=1)
    assert unknown.strip().lower() == sentence_start.strip().lower()
    assert sentence_start.strip()[0].isupper()  # after a full stop, a capital
    assert generate(model, "", max_tokens=4)  # an empty prompt works too


def test_stop_sequences_end_generation_before_the_stop(model: NgramModel) -> None:
    full = generate(model, max_tokens=64, temperature=0.0)
    stop = full.split()[5]  # a word the greedy reply is known to contain
    generation = model.generate(
        PROMPT, SamplingParams(max_tokens=64, temperature=0.0, stop=("never seen", stop))
    )
    text = generation.text()
    assert generation.finish_reason == "stop"
    assert text == full[: full.index(stop)]
    assert generation.completion_tokens < 64


def test_streamed_pieces_never_show_part_of_a_stop_sequence(model: NgramModel) -> None:
    full = generate(model, max_tokens=64, temperature=0.0)
    stop = full[20:31]  # spans several tokens
    pieces = list(
        model.generate(PROMPT, SamplingParams(max_tokens=64, temperature=0.0, stop=(stop,)))
    )
    assert "".join(pieces) == full[: full.index(stop)]
    assert all(piece for piece in pieces)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    stops=st.lists(st.text(alphabet=" aeinorst.,", min_size=1, max_size=6), max_size=4),
)
def test_stops_hold_for_any_sequence(model: NgramModel, seed: int, stops: list[str]) -> None:
    params = SamplingParams(max_tokens=40, seed=seed, stop=tuple(stops))
    pieces = list(model.generate(PROMPT, params))
    text = "".join(pieces)
    assert not any(stop in text for stop in stops)
    unstopped = generate(model, max_tokens=40, seed=seed)
    assert unstopped.startswith(text)


def test_a_generation_is_iterated_once(model: NgramModel) -> None:
    generation = model.generate(PROMPT, SamplingParams())
    generation.text()
    with pytest.raises(RuntimeError, match="only once"):
        list(generation)


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": -1},
        {"temperature": 2.5},
        {"temperature": math.nan},
        {"top_p": 0.0},
        {"stop": ("",)},
        {"stop": ("a", "b", "c", "d", "e")},
    ],
)
def test_sampling_params_are_checked(params: dict[str, object]) -> None:
    with pytest.raises(InputError):
        SamplingParams(**params)  # type: ignore[arg-type]


def test_generating_64_tokens_gives_at_most_64(model: NgramModel) -> None:
    """Its cost is measured by bench/hot_paths.py, not asserted here."""
    for seed in range(5):
        generation = model.generate(
            "Tell me about the gateway", SamplingParams(max_tokens=64, seed=seed)
        )
        assert generation.text()
        assert 0 < generation.completion_tokens <= 64


# --- embeddings -------------------------------------------------------------------------------


def test_embeddings_are_normalised_and_deterministic() -> None:
    vector = embed("The enclave keeps its weights read-only.")
    assert len(vector) == EMBEDDING_DIMENSIONS
    assert math.isclose(math.fsum(x * x for x in vector), 1.0)
    assert vector == embed("the ENCLAVE keeps its weights read-only")  # case and punctuation
    assert vector != embed("A different sentence about logistics.")


def test_embeddings_are_stable_across_releases() -> None:
    # the hash is keyed and fixed: a change here changes every stored embedding
    vector = embed("enclave")
    assert [(i, x) for i, x in enumerate(vector) if x] == [(65, 1.0)]


def test_embeddings_can_be_shortened() -> None:
    short = embed("translation of a field report", dimensions=16)
    assert len(short) == 16
    norm = math.fsum(x * x for x in short)
    assert norm == 0.0 or math.isclose(norm, 1.0)
    assert embed("", dimensions=8) == [0.0] * 8
    with pytest.raises(InputError):
        embed("x", dimensions=0)
    with pytest.raises(InputError):
        embed("x", dimensions=EMBEDDING_DIMENSIONS + 1)


def test_model_embed_is_the_module_function(model: NgramModel) -> None:
    assert model.embed("safety review") == embed("safety review")
    assert isinstance(model.weights, NgramWeights)
