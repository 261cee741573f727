"""The HTML reporter: one self-contained page, every result shown, hostile text inert.

The page is parsed back with :mod:`html.parser` (no browser): its elements must nest, it must
load nothing and run nothing, and text the inspected system controls (container names,
evidence, waiver fields) must come back as text, never as markup.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

from enclave.compliance import Report, Status, Waiver, default_baseline, evaluate, load_baseline
from enclave.compliance.reporters import to_html
from enclave.compliance.reporters.html import GROUPS
from support.compliance import compliant_facts

BASELINE = load_baseline(default_baseline())
FAR = "2099-01-01T00:00:00Z"
HOSTILE = "x\"'><script>alert(1)</script><img src=x onerror=alert(2)>&amp;</pre>\u0000"
VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "wbr", "col", "source"})


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Page(HTMLParser):
    """Every element with its attributes and the text directly and indirectly inside it."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.doctype = ""
        self.elements: list[Element] = []
        self.open: list[Element] = []
        self.problems: list[str] = []
        self.feed(text)
        self.close()
        if self.open:
            self.problems.append(f"unclosed: {[e.tag for e in self.open]}")

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in VOID:
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1].tag != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1].tag if self.open else None}")
            return
        self.open.pop()

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element.text.append(data)

    def find(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        return [
            e
            for e in self.elements
            if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
        ]

    def text_of(self, element: Element) -> str:
        return "".join(element.text)


def _report(*, hostile: bool = False) -> Report:
    """Privileged containers (CTR-01 fails on one, is waived on the other), Vault unreachable
    (errors), an expired waiver; with ``hostile``, names and waiver fields are hostile text."""
    facts = compliant_facts()
    prefix = HOSTILE if hostile else ""
    facts.instances["container"] = [
        (f"container {prefix}{values['name']}", {**values, "privileged": True})
        for _, values in facts.instances["container"]
    ]
    facts.values["containers"] = [values for _, values in facts.instances["container"]]
    facts.errors["vault"] = f"Vault unreachable: {prefix}connection refused"
    labels = [label for label, _ in facts.instances["container"]]
    reason = f"{prefix}vendor driver needs it"
    waivers = [
        Waiver("CTR-01", labels[1], reason, f"{prefix}carol", FAR, True),
        Waiver("CTR-02", None, f"{prefix}later", "dan", "2000-01-01T00:00:00Z", False, "expired"),
    ]
    return evaluate(BASELINE, facts, enclave="demo", waivers=waivers)


@pytest.fixture(scope="module")
def report() -> Report:
    built = _report()
    counts = built.counts()
    assert all(counts[s.value] for s in Status), counts
    return built


def test_the_page_is_well_formed_and_shows_every_result_once(report: Report) -> None:
    page = Page(to_html(report))
    assert page.doctype.lower() == "doctype html" and not page.problems
    (h1,) = page.find("h1")
    assert page.text_of(h1) == "Compliance report: enclave demo"
    ids = [e.attrs["id"] for e in page.elements if "id" in e.attrs]
    assert len(ids) == len(set(ids))
    sections = [e.attrs["id"] for e in page.find("section")]
    assert sections == ["summary", "waivers", *(f"status-{s.value}" for s, _ in GROUPS)]
    results = page.find(cls="result")
    assert len(results) == len(report.results)
    assert {e.attrs["id"] for e in results} == {f"result-{n}" for n in range(len(report.results))}
    shown = Counter(next(iter(e.classes - {"result"})) for e in results)
    assert shown == Counter({k: v for k, v in report.counts().items() if v})
    # what needs attention is open; passes and not-applicable results are folded
    for element in results:
        folded = element.classes & {"pass", "not-applicable"}
        assert element.tag == ("details" if folded else "article")
    # the counts by status and by severity x status each add up to every result
    assert sum(int(page.text_of(td)) for td in page.find("td", "n")) == 2 * len(report.results)
    header = page.text_of(page.find("header")[0])
    assert report.baseline_sha256 in header and report.started in header
    assert "Attention needed" in page.text_of(page.find(cls="verdict")[0])


def test_results_carry_evidence_controls_and_are_most_severe_first(report: Report) -> None:
    page = Page(to_html(report))
    failed = page.find("section")[2]
    assert failed.attrs["id"] == "status-fail"
    articles = [e for e in page.find("article") if "fail" in e.classes]
    assert len(articles) == report.counts()["fail"]
    ctr01 = next(e for e in articles if e.attrs["data-check"] == "CTR-01")
    text = page.text_of(ctr01)
    assert "container.privileged" in text and "true" in text
    assert "nist-800-53: AC-6" in text and "cis-docker: 5.4" in text
    order = [e.attrs["data-check"] for e in articles]
    by_id = {r.check.id: r.check.severity.rank for r in report.results}
    assert [by_id[c] for c in order] == sorted((by_id[c] for c in order), reverse=True)
    errors = [e for e in page.find("article") if "error" in e.classes]
    assert errors and all("Vault unreachable" in page.text_of(e) for e in errors)


def test_waivers_are_shown_on_the_result_and_in_the_waivers_table(report: Report) -> None:
    page = Page(to_html(report))
    waived = [e for e in page.find("article") if "waived" in e.classes]
    assert len(waived) == report.counts()["waived"] == 1
    (box,) = page.find("div", "waiver")
    (result,) = [r for r in report.results if r.status is Status.WAIVED]
    assert page.text_of(box) == (
        f"Waiver: waived on {result.target} until {FAR} by carol: vendor driver needs it"
    )
    assert page.text_of(box) in page.text_of(waived[0])
    rows = page.find("tr", "valid") + page.find("tr", "ignored")
    assert len(rows) == 2
    ignored = page.text_of(page.find("tr", "ignored")[0])
    assert "CTR-02" in ignored and "expired" in ignored and "no (ignored)" in ignored


def test_the_page_loads_nothing_and_runs_nothing() -> None:
    text = to_html(_report(hostile=True))
    page = Page(text)
    assert not page.problems
    tags = {e.tag for e in page.elements}
    assert not tags & {"script", "img", "link", "iframe", "object", "embed", "base", "form"}
    for element in page.elements:
        assert not [a for a in element.attrs if a.startswith("on")], element
        for name in ("href", "src", "action"):
            assert name not in element.attrs, element
    (csp,) = [e for e in page.find("meta") if e.attrs.get("http-equiv")]
    assert csp.attrs["content"].startswith("default-src 'none'")
    # the only markup is ours: every '<' of the hostile text arrives escaped
    assert "<script" not in text and "<img" not in text
    assert "\x00" not in text  # a NUL is a parse error in HTML: shown as U+FFFD instead


def test_hostile_text_comes_back_as_text(report: Report) -> None:
    hostile = _report(hostile=True)
    page = Page(to_html(hostile))
    assert not page.problems
    everything = page.text_of(page.find("html")[0])
    # target names, the collector's message and the waiver's fields, each verbatim as text
    shown = HOSTILE.replace("\x00", "\ufffd")
    assert f"container {shown}" in everything
    assert f"Vault unreachable: {shown}connection refused" in everything
    assert f"by {shown}carol: {shown}vendor driver needs it" in everything
    assert f"{shown}later" in everything
    # and the same page structure as the harmless report
    assert len(page.find(cls="result")) == len(Page(to_html(report)).find(cls="result"))
