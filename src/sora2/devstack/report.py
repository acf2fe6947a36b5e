"""What `sora2 doctor` found, as a table a person reads or JSON a program reads."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from collections.abc import Sequence
from typing import Literal

Status = Literal["ok", "warn", "fail"]

_LABELS: dict[Status, str] = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}
_COLOURS: dict[Status, str] = {"ok": "32", "warn": "33", "fail": "31;1"}
_CHECK_WIDTH = 16
_TEXT_WIDTH = 72


@dataclasses.dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked, how it went, and for a problem, the fix."""

    check: str
    status: Status
    detail: str
    fix: str = ""


def has_problems(findings: Sequence[Finding]) -> bool:
    return any(item.status == "fail" for item in findings)


def render_table(findings: Sequence[Finding], *, colour: bool) -> str:
    lines = [f"  {'':4}  {'CHECK':<{_CHECK_WIDTH}}  FINDING"]
    for item in findings:
        label = f"{_LABELS[item.status]:<4}"
        if colour:
            label = f"\x1b[{_COLOURS[item.status]}m{label}\x1b[0m"
        detail = textwrap.wrap(item.detail, _TEXT_WIDTH) or [""]
        indent = " " * (_CHECK_WIDTH + 10)
        lines.append(f"  {label}  {item.check:<{_CHECK_WIDTH}}  {detail[0]}")
        lines.extend(indent + part for part in detail[1:])
        if item.fix and item.status != "ok":
            fix = textwrap.wrap(f"fix: {item.fix}", _TEXT_WIDTH, subsequent_indent="     ")
            lines.extend(indent + part for part in fix)
    lines.append("")
    lines.append(_summary(findings))
    return "\n".join(lines)


def render_json(findings: Sequence[Finding]) -> str:
    return json.dumps(
        {"ok": not has_problems(findings), "findings": [dataclasses.asdict(f) for f in findings]},
        indent=2,
    )


def _summary(findings: Sequence[Finding]) -> str:
    failures = sum(item.status == "fail" for item in findings)
    warnings = sum(item.status == "warn" for item in findings)
    if failures:
        return (
            f"{failures} problem(s), {warnings} warning(s): apply the fixes above, then run again."
        )
    if warnings:
        return f"No problems; {warnings} warning(s) worth a look."
    return "All good."
