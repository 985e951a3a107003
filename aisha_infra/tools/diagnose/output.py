"""The findings as the operator reads them: a table per target (colour on a
terminal, fixes under their finding), or JSON for machines."""

from __future__ import annotations

import json
import textwrap

from aisha_infra.tools.diagnose.diagnosis import Report

_COLOURS = {"ok": "\033[32m", "warn": "\033[33m", "error": "\033[31m"}
_RESET = "\033[0m"


def render_text(reports: list[Report], colour: bool = False, width: int = 100) -> str:
    lines = []
    for report in reports:
        target = report.target
        heading = f"https://{target.domain}:{target.port}"
        if target.name and target.name != target.domain:
            heading = f"{target.name}: {heading}"
        lines.append(f"{heading} via {report.address or '?'}")
        if report.chain:
            lines.append(f"  certificates sent ({report.protocol or 'protocol unknown'}), in order:")
            for index, cert in enumerate(report.chain):
                lines.append(f"    {index}. subject {cert['subject']}")
                lines.append(f"       issuer  {cert['issuer']}")
                lines.append(f"       valid   {cert['not_before'][:10]} .. {cert['not_after'][:10]}")
        check_width = max((len(f.check) for f in report.findings), default=5)
        indent = " " * (2 + 5 + 2 + check_width + 2)
        for finding in report.findings:
            label = f"{finding.severity:<5}"
            if colour:
                label = f"{_COLOURS[finding.severity]}{label}{_RESET}"
            lead = f"  {label}  {finding.check:<{check_width}}  "
            lines += _wrap(finding.message, lead, indent, width)
            if finding.fix:
                lines += _wrap(finding.fix, indent + "fix: ", indent + "     ", width)
        errors = sum(f.severity == "error" for f in report.findings)
        warnings = sum(f.severity == "warn" for f in report.findings)
        lines.append(f"  => {errors} error(s), {warnings} warning(s)")
        lines.append("")
    return "\n".join(lines)


def _wrap(text: str, first: str, rest: str, width: int) -> list[str]:
    """`text` wrapped to `width`; `first` leads the first line, `rest` the others
    (same visible length: `first` may hold colour codes)."""
    lines = []
    for paragraph in text.splitlines() or [""]:
        # Commands and paths stay whole, even when longer than the line.
        lines += textwrap.wrap(
            paragraph, max(width - len(rest), 40), break_long_words=False, break_on_hyphens=False
        ) or [""]
    return [(first if i == 0 else rest) + line for i, line in enumerate(lines)]


def render_json(reports: list[Report]) -> str:
    return json.dumps(
        {"ok": not any(r.failed for r in reports), "targets": [r.as_dict() for r in reports]}, indent=2
    )
