"""What a check found: one Finding per check, with its severity and, for a problem,
the fix. The common currency of the checks here and of the operator tools."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    """One result: `check` is a stable id (e.g. "tls.incomplete_chain"), `severity`
    one of ok/warn/error, `fix` what to do (empty when nothing is wrong)."""

    check: str
    severity: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def explain(self) -> str:
        return f"{self.message} Fix: {self.fix}" if self.fix else self.message


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def first_error(findings: list[Finding]) -> Finding | None:
    return next(iter(errors(findings)), None)
