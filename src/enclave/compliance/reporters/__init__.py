"""Reporters for assessors' tools, each a pure function of a :class:`~enclave.compliance.Report`.

========  ===========================  ====================================================
format    function                     read by
========  ===========================  ====================================================
junit     :func:`to_junit`             CI test dashboards (one testcase per result)
sarif     :func:`to_sarif`             code-scanning UIs (SARIF 2.1.0; rules = checks)
markdown  :func:`to_markdown`          people: counts, failures first, waivers
oscal     :func:`to_oscal`             GRC tools (OSCAL assessment-results, see its module)
html      :func:`to_html`              people: one self-contained page, no scripts
========  ===========================  ====================================================

None of them hides a result: waived results appear in every format with their waiver, and an
``error`` (could not be judged) is never shown as a pass. The terminal table and plain JSON are
in :mod:`enclave.compliance.report`.
"""

from __future__ import annotations

from enclave.compliance.reporters.html import to_html
from enclave.compliance.reporters.junit import to_junit
from enclave.compliance.reporters.markdown import to_markdown
from enclave.compliance.reporters.oscal import to_oscal
from enclave.compliance.reporters.sarif import to_sarif

__all__ = ["to_html", "to_junit", "to_markdown", "to_oscal", "to_sarif"]
