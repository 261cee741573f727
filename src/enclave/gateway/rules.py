"""The rule screen: prohibited-use rules read from a policy file, precompiled for speed.

``policies/usage/screens.yaml`` holds, for every prohibited use of the usage catalog, regular
expressions (``patterns``) and word-set ``indicators``; its header documents the format. The
file is the policy: nothing about what to look for is written in code. Loading refuses a file
that misses a catalog prohibited use, names an unknown one, holds an invalid or unbounded
regular expression, or a rule that does not match its own ``examples``; every problem is
reported with file, line and field path, like a spec.

How a text is screened, fast:

1. invisible characters are removed and the text is lowercased;
2. the set of distinct words is looked up in a cache mapping each word to the term words it can
   stand for (exact, or a ``prefix*``);
3. a rule stays in play only if its terms can be spelled from those words (every word of a
   phrase present; enough distinct terms for every group of an indicator; one anchor of a
   pattern); most texts stop here;
4. otherwise the words of the rules still in play are located, phrases are joined, and each hit
   is credited to the indicators and patterns that use the term;
5. an indicator matches when, within ``within`` characters, every group has ``atLeast``
   distinct terms; a pattern is run only around its anchors' hits (every match contains an
   anchor, and is at most as long as the pattern's maximum width, so that region suffices).
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from enclave.errors import Problem, SpecError
from enclave.gateway.screen import HoldbackStream, OutputScreen, Scope, Violation, strip_invisible
from enclave.spec.catalog import Strict
from enclave.spec.units import Name
from enclave.spec.yamlsrc import Document, format_path, parse_yaml

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from enclave.spec.catalog import UsageCatalog

KIND = "UsageScreens"
_WORD = re.compile(r"[^\W_]+")
_ASCII_WORD = re.compile(r"[a-z0-9]+")  # the same words in lowercased ASCII text, twice as fast
_TERM = re.compile(r"[^\W_]+\*?(?:[\s/'.-]+[^\W_]+\*?)*")
_TERM_PART = re.compile(r"([^\W_]+)(\*?)")
_UPPERCASE = re.compile(r"(?<!\\)[A-Z]")
"""An uppercase letter that is not an escape (``\\A``, ``\\W``...): it could never match."""
_MAX_TERM_WORDS = 6
_MAX_GAP = 3
"""Most separator characters allowed between the words of a phrase."""
_CACHE_LIMIT = 65_536
_MARGIN = 16
_BOTH = (Scope.PROMPT, Scope.OUTPUT)


def _check_term(value: str) -> str:
    text = value.strip()
    if not _TERM.fullmatch(text):
        raise ValueError(
            f"{value!r} is not a term: words (letters, digits) separated by spaces, hyphens or "
            "slashes, each optionally ending in '*'"
        )
    if len(_TERM_PART.findall(text)) > _MAX_TERM_WORDS:
        raise ValueError(f"{value!r}: a term has at most {_MAX_TERM_WORDS} words")
    return text.lower()


Term = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_check_term)]
Example = Annotated[str, Field(min_length=1, max_length=2000)]


class _Rule(Strict):
    id: Name
    scope: list[Scope] = Field(default_factory=lambda: list(_BOTH), min_length=1, max_length=2)
    examples: list[Example] = Field(min_length=1, max_length=32)
    """Texts this rule must match (checked on load): a rule without one is untested."""


class PatternRule(_Rule):
    regex: Annotated[str, Field(min_length=1, max_length=4000)]
    """A Python regular expression in lowercase (matched against lowercased text), with
    bounded repeats."""
    anchors: list[Term] = Field(min_length=1, max_length=200)
    """Terms one of which every match contains (the regex runs only around them)."""


class Group(Strict):
    at_least: int = Field(1, alias="atLeast", ge=1, le=50)
    of: list[Term] = Field(min_length=1, max_length=500)

    @model_validator(mode="after")
    def _reachable(self) -> Group:
        if self.at_least > len(set(self.of)):
            raise ValueError(f"atLeast {self.at_least} but only {len(set(self.of))} terms")
        return self


class IndicatorRule(_Rule):
    within: int = Field(ge=1, le=8192)
    """Characters from the first to the last word of one match."""
    groups: list[Group] = Field(alias="all", min_length=1, max_length=8)


class UseScreens(Strict):
    patterns: list[PatternRule] = Field(default_factory=list, max_length=200)
    indicators: list[IndicatorRule] = Field(default_factory=list, max_length=200)

    @model_validator(mode="after")
    def _has_rules(self) -> UseScreens:
        if not self.patterns and not self.indicators:
            raise ValueError("a prohibited use needs at least one pattern or indicator")
        return self


class ScreensFile(Strict):
    """A whole ``screens.yaml``."""

    api_version: Literal["enclave.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["UsageScreens"]
    max_span: int = Field(400, alias="maxSpan", ge=16, le=8192)
    """The longest text one rule may match; streamed output is held back by the longest span."""
    screens: dict[Name, UseScreens] = Field(min_length=1, max_length=256)


# -- compiled form ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WordSpec:
    text: str
    prefix: bool


@dataclass(frozen=True, slots=True)
class _Pattern:
    use: str
    rule: str
    regex: re.Pattern[str]
    width: int
    finder: re.Pattern[str]
    """``regex`` without a leading ``\\b``: it matches wherever ``regex`` does, and more, but
    the regex engine finds its candidates several times faster; ``regex`` confirms them."""


@dataclass(frozen=True, slots=True)
class _Indicator:
    use: str
    rule: str
    within: int
    needs: tuple[int, ...]  # atLeast per group


class _Matcher:
    """Every rule of one scope, compiled."""

    def __init__(
        self,
        scope: Scope,
        patterns: Sequence[tuple[_Pattern, Sequence[str]]],
        indicators: Sequence[tuple[_Indicator, Sequence[Sequence[str]]]],
    ) -> None:
        self.scope = scope
        self._specs: list[_WordSpec] = []
        self._spec_ids: dict[_WordSpec, int] = {}
        self._terms: list[tuple[int, ...]] = []
        self._term_ids: dict[tuple[int, ...], int] = {}
        # per term: (pattern index) and (indicator index, group index)
        self._term_patterns: list[list[int]] = []
        self._term_groups: list[list[tuple[int, int]]] = []
        self.patterns = [p for p, _ in patterns]
        self.indicators = [i for i, _ in indicators]
        for index, (_, anchors) in enumerate(patterns):
            for term in anchors:
                self._term_patterns[self._term(term)].append(index)
        for index, (_, groups) in enumerate(indicators):
            for group_index, terms in enumerate(groups):
                for term in terms:
                    credits = self._term_groups[self._term(term)]
                    if (index, group_index) not in credits:
                        credits.append((index, group_index))
        self._exact: dict[str, list[int]] = {}
        self._prefixes: dict[int, dict[str, list[int]]] = {}
        for spec_id, spec in enumerate(self._specs):
            if spec.prefix:
                by_length = self._prefixes.setdefault(len(spec.text), {})
                by_length.setdefault(spec.text, []).append(spec_id)
            else:
                self._exact.setdefault(spec.text, []).append(spec_id)
        self._starts: dict[int, list[int]] = {}
        self._spec_terms: list[list[int]] = [[] for _ in self._specs]
        self._term_words = [frozenset(words) for words in self._terms]
        for term_id, words in enumerate(self._terms):
            self._starts.setdefault(words[0], []).append(term_id)
            for spec_id in set(words):
                self._spec_terms[spec_id].append(term_id)
        self._cache: dict[str, frozenset[int]] = {}
        self.span = max(
            [p.width for p in self.patterns] + [i.within for i in self.indicators] + [1]
        )

    def _term(self, term: str) -> int:
        words: list[int] = []
        for text, star in _TERM_PART.findall(term):
            spec = _WordSpec(text, bool(star))
            spec_id = self._spec_ids.get(spec)
            if spec_id is None:
                spec_id = self._spec_ids[spec] = len(self._specs)
                self._specs.append(spec)
            words.append(spec_id)
        key = tuple(words)
        term_id = self._term_ids.get(key)
        if term_id is None:
            term_id = self._term_ids[key] = len(self._terms)
            self._terms.append(key)
            self._term_patterns.append([])
            self._term_groups.append([])
        return term_id

    def _word_specs(self, word: str) -> frozenset[int]:
        found = self._cache.get(word)
        if found is None:
            ids = list(self._exact.get(word, ()))
            for length, prefixes in self._prefixes.items():
                if len(word) >= length:
                    ids.extend(prefixes.get(word[:length], ()))
            found = frozenset(ids)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = found
        return found

    def scan(self, text: str) -> Violation | None:
        lowered = strip_invisible(text).lower()
        word_specs: dict[str, frozenset[int]] = {}
        present: set[int] = set()
        words = (_ASCII_WORD if lowered.isascii() else _WORD).findall(lowered)
        for word in set(words):
            specs = self._word_specs(word)
            if specs:
                word_specs[word] = specs
                present |= specs
        if not present:
            return None
        relevant, live_patterns, live_indicators = self._in_play(present)
        if not relevant:
            return None
        relevant_specs = {spec for term_id in relevant for spec in self._terms[term_id]}
        tokens = _locate(lowered, word_specs, relevant_specs)
        pattern_hits: dict[int, list[tuple[int, int]]] = {}
        indicator_hits: dict[int, list[tuple[int, int, int, int]]] = {}
        for start, end, term_id in self._hits(lowered, tokens, relevant):
            for index in live_patterns.intersection(self._term_patterns[term_id]):
                pattern_hits.setdefault(index, []).append((start, end))
            for index, group in self._term_groups[term_id]:
                if index in live_indicators:
                    indicator_hits.setdefault(index, []).append((start, end, group, term_id))
        for index in sorted(indicator_hits):
            indicator = self.indicators[index]
            if _window_holds(indicator, indicator_hits[index]):
                return Violation(indicator.use, indicator.rule, self.scope)
        for index in sorted(pattern_hits):
            pattern = self.patterns[index]
            if _pattern_found(pattern, lowered, pattern_hits[index]):
                return Violation(pattern.use, pattern.rule, self.scope)
        return None

    def _in_play(self, present: set[int]) -> tuple[set[int], set[int], set[int]]:
        """The terms spelled from ``present`` words, of the rules that could still match,
        and those rules: ``(terms, patterns, indicators)``."""
        possible: set[int] = set()
        term_words = self._term_words
        for spec in present:
            for term_id in self._spec_terms[spec]:
                if term_id not in possible and term_words[term_id] <= present:
                    possible.add(term_id)
        counts: Counter[tuple[int, int]] = Counter()
        patterns: set[int] = set()
        for term_id in possible:
            patterns.update(self._term_patterns[term_id])
            counts.update(self._term_groups[term_id])
        indicators = {
            index
            for index, indicator in enumerate(self.indicators)
            if all(counts[(index, g)] >= need for g, need in enumerate(indicator.needs))
        }
        terms = {
            term_id
            for term_id in possible
            if patterns.intersection(self._term_patterns[term_id])
            or any(index in indicators for index, _ in self._term_groups[term_id])
        }
        return terms, patterns, indicators

    def _hits(
        self, text: str, tokens: list[tuple[int, int, frozenset[int]]], relevant: set[int]
    ) -> Iterable[tuple[int, int, int]]:
        terms = self._terms
        for i, (start, end, specs) in enumerate(tokens):
            for spec in specs:
                for term_id in self._starts.get(spec, ()):
                    if term_id not in relevant:
                        continue
                    words = terms[term_id]
                    last = end
                    for offset in range(1, len(words)):
                        k = i + offset
                        if k >= len(tokens):
                            break
                        next_start, next_end, next_specs = tokens[k]
                        gap = text[last:next_start]
                        if (
                            words[offset] not in next_specs
                            or not 0 < len(gap) <= _MAX_GAP
                            or _WORD.search(gap)
                        ):
                            break
                        last = next_end
                    else:
                        yield start, last, term_id


def _locate(
    text: str, word_specs: dict[str, frozenset[int]], relevant: set[int]
) -> list[tuple[int, int, frozenset[int]]]:
    """Every occurrence, as a whole word, of the words that can spell a relevant term."""
    tokens: list[tuple[int, int, frozenset[int]]] = []
    size = len(text)
    for word, specs in word_specs.items():
        useful = specs.intersection(relevant)
        if not useful:
            continue
        length = len(word)
        at = text.find(word)
        while at != -1:
            end = at + length
            if (at == 0 or not text[at - 1].isalnum()) and (end == size or not text[end].isalnum()):
                tokens.append((at, end, useful))
            at = text.find(word, at + 1)
    tokens.sort(key=lambda token: token[0])
    return tokens


def _window_holds(indicator: _Indicator, hits: list[tuple[int, int, int, int]]) -> bool:
    """Whether some window of ``within`` characters holds enough distinct terms of each group."""
    needs = indicator.needs
    if len(hits) < sum(needs):
        return False
    hits.sort()
    seen: Counter[tuple[int, int]] = Counter()
    distinct = [0] * len(needs)
    left = 0
    for right, (_start, end, group, term) in enumerate(hits):
        if seen[(group, term)] == 0:
            distinct[group] += 1
        seen[(group, term)] += 1
        while left <= right and end - hits[left][0] > indicator.within:
            _, _, old_group, old_term = hits[left]
            seen[(old_group, old_term)] -= 1
            if seen[(old_group, old_term)] == 0:
                distinct[old_group] -= 1
            left += 1
        if all(have >= need for have, need in zip(distinct, needs, strict=True)):
            return True
    return False


def _pattern_found(pattern: _Pattern, text: str, hits: list[tuple[int, int]]) -> bool:
    """Search around each anchor hit (regions merged); confirm a match against the full text."""
    hits.sort()
    width = pattern.width
    regions: list[list[int]] = []
    for start, end in hits:
        # a little more than the widest match: room for lookarounds at the edges
        low, high = max(0, start - width - _MARGIN), min(len(text), end + width + _MARGIN)
        if regions and low <= regions[-1][1]:
            regions[-1][1] = max(regions[-1][1], high)
        else:
            regions.append([low, high])
    regex, finder = pattern.regex, pattern.finder
    for low, high in regions:
        pos = low
        while pos <= high:
            found = finder.search(text, pos, high)
            if found is None:
                break
            # the finder may lack a leading \b, and the region's end is not the text's end
            # (\b or a lookahead may differ there): confirm on the whole text
            if regex.match(text, found.start()) is not None:
                return True
            pos = found.start() + 1
    return False


# -- loading ------------------------------------------------------------------------------


def _max_width(regex: str) -> int | None:
    """The longest match ``regex`` can have; None when unbounded or unknown."""
    try:
        parser: Any = importlib.import_module("re._parser")
        high = int(parser.parse(regex).getwidth()[1])
    except (ImportError, AttributeError, re.error, ValueError, TypeError):
        return None
    return None if high >= int(parser.MAXREPEAT) else high


def _problems(exc: ValidationError, doc: Document) -> list[Problem]:
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        is_key = bool(loc) and loc[-1] == "[key]"
        path = loc[:-1] if is_key else loc
        if error["type"] == "missing":
            mark = doc.locate(path[:-1])
            problems.append(
                Problem(doc.filename, mark.line, mark.column, format_path(path), "required")
            )
            continue
        ctx = error.get("ctx") or {}
        message = str(ctx["error"]) if "error" in ctx else error["msg"]
        key = is_key or error["type"] == "extra_forbidden"
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(doc.problem(path, message, key=key))
    return problems


class RuleScreen:
    """A :class:`~enclave.gateway.screen.Screen` driven by a screens policy file."""

    def __init__(self, prompt: _Matcher, output: _Matcher, uses: Iterable[str]) -> None:
        self._prompt = prompt
        self._output = output
        self.uses = tuple(sorted(uses))
        self.span = output.span
        """Output characters held back while streaming (the longest output rule's span)."""

    @classmethod
    def from_file(cls, path: Path | str, catalog: UsageCatalog) -> RuleScreen:
        """Load ``path``; :class:`~enclave.errors.SpecError` lists every problem, located."""
        source = Path(path)
        try:
            raw = source.read_bytes()
        except OSError as exc:
            reason = "file not found" if isinstance(exc, FileNotFoundError) else exc.strerror
            raise SpecError([Problem(str(path), 0, 0, "", f"cannot read: {reason}")]) from None
        return cls.from_text(raw, catalog, filename=str(path))

    @classmethod
    def from_text(
        cls, raw: bytes | str, catalog: UsageCatalog, *, filename: str = "<screens>"
    ) -> RuleScreen:
        data = raw.encode("utf-8") if isinstance(raw, str) else raw
        doc = parse_yaml(data, filename)
        try:
            screens = ScreensFile.model_validate(doc.data)
        except ValidationError as exc:
            raise SpecError(_problems(exc, doc)) from None
        return _build(doc, screens, catalog)

    def check_prompt(self, text: str) -> Violation | None:
        return self._prompt.scan(text)

    def check_output(self, text: str) -> Violation | None:
        return self._output.scan(text)

    def output_screen(self) -> OutputScreen:
        return HoldbackStream(self._output.scan, self.span)


def _coverage(doc: Document, screens: ScreensFile, catalog: UsageCatalog) -> list[Problem]:
    """Every prohibited use of the catalog has rules, and only those."""
    problems: list[Problem] = []
    known = catalog.prohibited_ids
    for use in screens.screens:
        if use not in known:
            problems.append(
                doc.problem(
                    ("screens", use),
                    f"unknown prohibited use {use!r} (catalog: {', '.join(sorted(known))})",
                    key=True,
                )
            )
    missing = [use for use in known if use not in screens.screens]
    if missing:
        problems.append(
            doc.problem(
                ("screens",),
                f"no rules for the prohibited use(s) {', '.join(missing)}: every prohibited "
                "use in the catalog must be screened",
                key=True,
            )
        )
    return problems


def _build(doc: Document, screens: ScreensFile, catalog: UsageCatalog) -> RuleScreen:
    problems = _coverage(doc, screens, catalog)
    patterns: list[tuple[_Pattern, list[str], list[Scope], list[str], tuple[Any, ...]]] = []
    indicators: list[
        tuple[_Indicator, list[list[str]], list[Scope], list[str], tuple[Any, ...]]
    ] = []
    for use, rules in screens.screens.items():
        seen: set[str] = set()
        base: tuple[Any, ...] = ("screens", use)
        for kind, items in (("patterns", rules.patterns), ("indicators", rules.indicators)):
            for i, rule in enumerate(items):
                where = (*base, kind, i)
                if rule.id in seen:
                    problems.append(doc.problem((*where, "id"), f"duplicate rule id {rule.id!r}"))
                seen.add(rule.id)
        for i, pattern in enumerate(rules.patterns):
            where = (*base, "patterns", i)
            compiled = _compile_pattern(
                doc, where, use=use, rule=pattern, max_span=screens.max_span, problems=problems
            )
            if compiled is not None:
                patterns.append((compiled, pattern.anchors, pattern.scope, pattern.examples, where))
        for i, indicator in enumerate(rules.indicators):
            where = (*base, "indicators", i)
            if indicator.within > screens.max_span:
                problems.append(
                    doc.problem(
                        (*where, "within"),
                        f"within {indicator.within} exceeds maxSpan {screens.max_span}",
                    )
                )
                continue
            needs = tuple(g.at_least for g in indicator.groups)
            compiled_indicator = _Indicator(use, indicator.id, indicator.within, needs)
            groups = [list(g.of) for g in indicator.groups]
            indicators.append(
                (compiled_indicator, groups, indicator.scope, indicator.examples, where)
            )
    if not problems:
        problems += _check_examples(doc, patterns, indicators)
    if problems:
        raise SpecError(problems)

    def matcher(scope: Scope) -> _Matcher:
        return _Matcher(
            scope,
            [(p, anchors) for p, anchors, scopes, _, _ in patterns if scope in scopes],
            [(i, groups) for i, groups, scopes, _, _ in indicators if scope in scopes],
        )

    return RuleScreen(matcher(Scope.PROMPT), matcher(Scope.OUTPUT), screens.screens)


def _compile_pattern(
    doc: Document,
    where: tuple[Any, ...],
    *,
    use: str,
    rule: PatternRule,
    max_span: int,
    problems: list[Problem],
) -> _Pattern | None:
    if _UPPERCASE.search(rule.regex):
        problems.append(
            doc.problem(
                (*where, "regex"),
                "write the pattern in lowercase: it is matched against the lowercased text",
            )
        )
        return None
    try:
        regex = re.compile(rule.regex)
    except re.error as exc:
        problems.append(doc.problem((*where, "regex"), f"invalid regular expression: {exc}"))
        return None
    width = _max_width(rule.regex)
    if width is None:
        problems.append(
            doc.problem(
                (*where, "regex"),
                "the pattern's matches are unbounded: use bounded repeats like {0,40} "
                "instead of * or +",
            )
        )
        return None
    if width > max_span:
        problems.append(
            doc.problem(
                (*where, "regex"),
                f"the pattern can match {width} characters, more than maxSpan {max_span}",
            )
        )
        return None
    finder = regex
    if rule.regex.startswith("\\b"):
        try:
            finder = re.compile(rule.regex[2:])
        except re.error:
            finder = regex
    return _Pattern(use, rule.id, regex, width, finder)


def _check_examples(
    doc: Document,
    patterns: list[tuple[_Pattern, list[str], list[Scope], list[str], tuple[Any, ...]]],
    indicators: list[tuple[_Indicator, list[list[str]], list[Scope], list[str], tuple[Any, ...]]],
) -> list[Problem]:
    """Each rule, alone, must match each of its examples."""
    problems: list[Problem] = []
    for pattern, anchors, _, examples, where in patterns:
        alone = _Matcher(Scope.PROMPT, [(pattern, anchors)], [])
        problems += _misses(doc, alone, examples, where)
    for indicator, groups, _, examples, where in indicators:
        alone = _Matcher(Scope.PROMPT, [], [(indicator, groups)])
        problems += _misses(doc, alone, examples, where)
    return problems


def _misses(
    doc: Document, matcher: _Matcher, examples: list[str], where: tuple[Any, ...]
) -> list[Problem]:
    return [
        doc.problem((*where, "examples", k), "the rule does not match its own example")
        for k, example in enumerate(examples)
        if matcher.scan(example) is None
    ]
