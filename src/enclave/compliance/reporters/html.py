"""A single-file HTML report an assessor can read in any browser, offline.

Self-contained: the style sheet is inline, there is no script, no image, no font and no link
to anything outside the file, and a Content-Security-Policy ``<meta>`` forbids loading any,
so the file can be mailed, archived or opened from a USB stick and shows the same thing.
Every text that comes from a report (evidence values, targets, messages, waiver reasons,
even check titles) is HTML-escaped: evidence is whatever the inspected system said, and a
container label or a policy name is attacker-controlled text.

Layout: a header (enclave, when, how long, baseline and its digest, a verdict line), the
counts by status and by severity x status, the waivers that were considered (valid ones and
ignored ones, with why), then every result grouped by status -- fail, error, waived,
not-applicable, pass -- most severe first within each group. Every result shows its target,
evidence, remediation and control mappings, and its waiver when it has one; pass and
not-applicable results are folded (``<details>``) so the page opens on what needs attention.
"""

from __future__ import annotations

import re
from collections import Counter
from html import escape
from typing import TYPE_CHECKING

from enclave.compliance.model import Severity, Status
from enclave.compliance.reporters._text import short

if TYPE_CHECKING:
    from enclave.compliance.model import CheckResult, Report, Waiver

__all__ = ["GROUPS", "to_html"]

GROUPS: tuple[tuple[Status, str], ...] = (
    (Status.FAIL, "Failed"),
    (Status.ERROR, "Could not be judged"),
    (Status.WAIVED, "Waived"),
    (Status.NOT_APPLICABLE, "Not applicable"),
    (Status.PASS, "Passed"),
)
"""Result groups, in page order; each is a ``<section id="status-<status>">``."""
_FOLDED = frozenset({Status.PASS, Status.NOT_APPLICABLE})
_EVIDENCE_LIMIT = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_CSS = """
:root { color-scheme: light; --fail: #b3261e; --error: #8e24aa; --waived: #9a6700;
  --pass: #1e7b34; --na: #6b6b6b; --line: #d0d7de; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328;
  margin: 0 auto; max-width: 72rem; padding: 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .5rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid var(--line); padding-bottom: .25rem;
  margin-top: 2rem; }
h3 { font-size: 1rem; margin: 0; }
code, pre { font: 13px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
pre { background: var(--soft); padding: .4rem .6rem; margin: 0; white-space: pre-wrap;
  word-break: break-all; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border: 1px solid var(--line); padding: .25rem .6rem; text-align: left;
  vertical-align: top; }
th { background: var(--soft); }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0; }
dl.meta dt { font-weight: 600; }
dl.meta dd { margin: 0; }
.verdict { font-size: 1.1rem; font-weight: 600; padding: .5rem .75rem; border-left: 6px solid;
  margin: 1rem 0; }
.verdict.ok { border-color: var(--pass); background: #eef8f0; }
.verdict.bad { border-color: var(--fail); background: #fcefee; }
.result { border: 1px solid var(--line); border-left: 6px solid var(--na); margin: .6rem 0;
  padding: .5rem .75rem; }
details.result > summary { cursor: pointer; }
.result.fail { border-left-color: var(--fail); }
.result.error { border-left-color: var(--error); }
.result.waived { border-left-color: var(--waived); }
.result.pass { border-left-color: var(--pass); }
.badge { display: inline-block; font-size: .8rem; font-weight: 700; text-transform: uppercase;
  padding: 0 .4rem; border-radius: .25rem; color: #fff; background: var(--na); }
.badge.fail { background: var(--fail); }
.badge.error { background: var(--error); }
.badge.waived { background: var(--waived); }
.badge.pass { background: var(--pass); }
.sev { font-size: .8rem; font-weight: 600; border: 1px solid var(--line); border-radius: .25rem;
  padding: 0 .35rem; }
.sev.critical, .sev.high { color: var(--fail); border-color: var(--fail); }
.waiver { background: #fff8e1; border: 1px dashed var(--waived); padding: .4rem .6rem;
  margin: .4rem 0; }
.muted { color: var(--na); }
@media print { details.result { display: block; } body { max-width: none; } }
"""
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'"


def _e(text: object) -> str:
    """``text`` escaped; control characters other than tab and new line (a NUL is a parse
    error in HTML) become U+FFFD."""
    return escape(_CONTROL.sub("\ufffd", str(text)), quote=True)


def _rank(result: CheckResult) -> tuple[int, str, str]:
    return (-result.check.severity.rank, result.check.id, result.target)


def _verdict(report: Report) -> tuple[str, bool]:
    counts = report.counts()
    parts = ", ".join(f"{counts[s.value]} {s.value}" for s in Status)
    ok = counts[Status.FAIL.value] == 0 and counts[Status.ERROR.value] == 0
    head = "Nothing failed" if ok else "Attention needed"
    return f"{head}: {len(report.results)} results — {parts}", ok


def _summary(report: Report) -> list[str]:
    counts = report.counts()
    lines = [
        '<section id="summary">',
        "<h2>Summary</h2>",
        "<table>",
        "<thead><tr><th>status</th><th>results</th></tr></thead><tbody>",
        *(
            f'<tr><td><span class="badge {s.value}">{_e(s.value)}</span></td>'
            f'<td class="n">{counts[s.value]}</td></tr>'
            for s in Status
        ),
        "</tbody></table>",
        '<table id="by-severity">',
        "<thead><tr><th>severity</th>" + "".join(f"<th>{_e(s.value)}</th>" for s in Status),
        "</tr></thead><tbody>",
    ]
    cross = Counter((r.check.severity, r.status) for r in report.results)
    for severity in sorted(Severity, key=lambda s: -s.rank):
        cells = "".join(f'<td class="n">{cross[severity, s]}</td>' for s in Status)
        lines.append(f"<tr><th>{_e(severity.value)}</th>{cells}</tr>")
    lines += ["</tbody></table>", "</section>"]
    return lines


def _waiver_text(waiver: Waiver) -> str:
    scope = f" on {waiver.target}" if waiver.target else " on every target"
    return f"waived{scope} until {waiver.expires} by {waiver.approver}: {waiver.reason}"


def _waivers(report: Report) -> list[str]:
    lines = ['<section id="waivers">', "<h2>Waivers considered</h2>"]
    if not report.waivers:
        return [*lines, "<p>None.</p>", "</section>"]
    lines += [
        "<table>",
        "<thead><tr><th>check</th><th>target</th><th>in force</th><th>approver</th>"
        "<th>expires</th><th>reason</th><th>problem</th></tr></thead><tbody>",
    ]
    for waiver in report.waivers:
        used = "yes" if waiver.valid else "no (ignored)"
        lines.append(
            f'<tr class="{"valid" if waiver.valid else "ignored"}">'
            f"<td><code>{_e(waiver.check)}</code></td><td>{_e(waiver.target or '*')}</td>"
            f"<td>{used}</td><td>{_e(waiver.approver)}</td><td>{_e(waiver.expires)}</td>"
            f"<td>{_e(waiver.reason)}</td><td>{_e(waiver.problem or '-')}</td></tr>"
        )
    lines += ["</tbody></table>", "</section>"]
    return lines


def _body(result: CheckResult) -> list[str]:
    check = result.check
    lines = ['<dl class="meta">', f"<dt>target</dt><dd><code>{_e(result.target)}</code></dd>"]
    if result.message:
        lines.append(f"<dt>why</dt><dd>{_e(result.message)}</dd>")
    lines.append(f"<dt>rationale</dt><dd>{_e(' '.join(check.rationale.split()))}</dd>")
    if result.evidence:
        lines.append('<dt>evidence</dt><dd><table class="evidence"><tbody>')
        lines.extend(
            f"<tr><th><code>{_e(name)}</code></th>"
            f"<td><pre>{_e(short(value, _EVIDENCE_LIMIT))}</pre></td></tr>"
            for name, value in result.evidence.items()
        )
        lines.append("</tbody></table></dd>")
    else:
        lines.append('<dt>evidence</dt><dd class="muted">none recorded</dd>')
    lines.append(f"<dt>remediation</dt><dd>{_e(' '.join(check.remediation.split()))}</dd>")
    lines.append('<dt>controls</dt><dd><ul class="controls">')
    lines.extend(
        f"<li>{_e(family)}: {_e(', '.join(ids))}</li>"
        for family, ids in check.mappings.as_dict().items()
        if ids
    )
    lines += ["</ul></dd>", "</dl>"]
    if result.waiver is not None:
        lines.append(
            f'<div class="waiver"><strong>Waiver</strong>: {_e(_waiver_text(result.waiver))}</div>'
        )
    return lines


def _result(result: CheckResult, anchor: str) -> list[str]:
    check = result.check
    status = result.status.value
    head = (
        f'<span class="badge {status}">{_e(status)}</span> '
        f'<span class="sev {check.severity.value}">{_e(check.severity.value)}</span> '
        f"<code>{_e(check.id)}</code> {_e(check.title)} "
        f'<span class="muted">({_e(result.target)})</span>'
    )
    attributes = f'class="result {status}" id="{anchor}" data-check="{_e(check.id)}"'
    if result.status in _FOLDED:
        return [f"<details {attributes}>", f"<summary>{head}</summary>", *_body(result),
                "</details>"]  # fmt: skip
    return [f"<article {attributes}>", f"<h3>{head}</h3>", *_body(result), "</article>"]


def _groups(report: Report) -> list[str]:
    lines: list[str] = []
    numbered = list(enumerate(report.results))
    for status, title in GROUPS:
        found = sorted(
            ((n, r) for n, r in numbered if r.status is status), key=lambda item: _rank(item[1])
        )
        lines += [
            f'<section id="status-{status.value}" class="group">',
            f"<h2>{_e(title)} ({len(found)})</h2>",
        ]
        if not found:
            lines.append("<p>None.</p>")
        for n, result in found:
            lines += _result(result, f"result-{n}")
        lines.append("</section>")
    return lines


def to_html(report: Report) -> str:
    """The report as one self-contained HTML5 document (see the module docstring)."""
    verdict, ok = _verdict(report)
    title = f"Compliance report: enclave {report.enclave}"
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>Compliance report: enclave <code>{_e(report.enclave)}</code></h1>",
        '<dl class="meta">',
        f"<dt>started</dt><dd>{_e(report.started)}</dd>",
        f"<dt>duration</dt><dd>{report.seconds:.2f} s</dd>",
        f"<dt>baseline</dt><dd><code>{_e(report.baseline)}</code></dd>",
        f"<dt>baseline sha256</dt><dd><code>{_e(report.baseline_sha256)}</code></dd>",
        f"<dt>results</dt><dd>{len(report.results)}</dd>",
        "</dl>",
        f'<p class="verdict {"ok" if ok else "bad"}">{_e(verdict)}</p>',
        "</header>",
        "<main>",
        *_summary(report),
        *_waivers(report),
        *_groups(report),
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(lines) + "\n"
