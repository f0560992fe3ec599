"""The fault suite's report: one row per fault, written to var/faults-report.md and .json."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.faults.ledger import Verdict


@dataclass
class FaultRow:
    """What one fault test expected and measured."""

    test: str
    fault: str
    expected: str
    observed: str = "(not measured: the test stopped before its measurement)"
    lost: int | None = None
    extra_copies: str = "-"
    overshoot: int | None = None
    recovery_s: float | None = None
    result: str = "?"
    figures: dict = field(default_factory=dict)


class Report:
    """Collects rows during the session; `write` renders them."""

    def __init__(self) -> None:
        self.rows: dict[str, FaultRow] = {}
        self.started = time.time()

    def row(self, test: str, fault: str, expected: str) -> FaultRow:
        """Open the row of a test (before the fault, so a crash still leaves a row)."""
        self.rows[test] = FaultRow(test, fault, expected)
        return self.rows[test]

    def measured(self, test: str, verdict: Verdict, **figures: object) -> None:
        """Fill a row from a verdict."""
        row = self.rows[test]
        row.observed = verdict.observed()
        row.lost = verdict.lost + verdict.unsettled
        row.extra_copies = f"{verdict.extra_copies} ({verdict.flagged_extra} flagged)" if verdict.flagged_extra \
            else str(verdict.extra_copies)
        row.overshoot = verdict.overshoot
        row.recovery_s = None if verdict.recovery is None else round(max(0.0, verdict.recovery), 1)
        row.figures.update(figures)

    def result(self, test: str, outcome: str) -> None:
        """The pytest outcome of a test (passed / failed / error)."""
        if test in self.rows:
            self.rows[test].result = outcome

    def write(self, directory: Path, command: str) -> None:
        """Write faults-report.md and faults-report.json into directory."""
        if not self.rows:
            return
        directory.mkdir(parents=True, exist_ok=True)
        rows = list(self.rows.values())
        meta = {"command": command, "host": platform.node(), "started": time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started)), "seconds": round(time.time() - self.started)}
        (directory / "faults-report.json").write_text(json.dumps(
            {"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2, default=str) + "\n")
        lines = [f"# Fault suite: {sum(r.result == 'passed' for r in rows)} of {len(rows)} passed", "",
                 f"`{command}` on {meta['host']}, {meta['started']}, {meta['seconds']} s.", "",
                 "| fault | expected | observed | lost | extra copies | overshoot | recovery time | result |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            recovery = "-" if r.recovery_s is None else f"{r.recovery_s} s"
            cells = [r.fault, r.expected, r.observed, _n(r.lost), r.extra_copies, _n(r.overshoot), recovery, r.result]
            lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
        (directory / "faults-report.md").write_text("\n".join(lines) + "\n")


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)
