"""The invariants every fault test holds deskmail to, measured from the ledger and the SMTP peer.

- every confirmed event ends in exactly one state, and nothing is lost;
- one copy per Message-ID, two only when the ledger flags the mail `duplicate_risk`;
- no daily limit overshot (copies the peer received against the project's per_day);
- recovery without a manual step, timed from the end of the fault.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import psycopg

from deskmail.workers.message import message_id_for

FINAL = frozenset({"sent", "failed", "backlog", "suspended", "ambiguous", "rejected"})
DOMAIN = "example.org"  # the from address of the fault tests' projects

# duplicate_risk arrives with the delivery leases; without the column every mail counts as unflagged,
# so the test reports the real failure (a second copy) rather than an SQL error.
HAS_DUPLICATE_RISK = ("SELECT EXISTS (SELECT 1 FROM information_schema.columns "
                      "WHERE table_name = 'mail' AND column_name = 'duplicate_risk')")
LEDGER = ("SELECT event_id::text, state, coalesce(reason, ''), coalesce(detail, ''), takeovers, "
          "duplicate_risk FROM mail WHERE event_id = ANY(%s::uuid[])")
LEDGER_WITHOUT_FLAG = ("SELECT event_id::text, state, coalesce(reason, ''), coalesce(detail, ''), takeovers, "
                       "false FROM mail WHERE event_id = ANY(%s::uuid[])")


@dataclass(frozen=True)
class Row:
    """What the ledger says about one event."""

    state: str
    reason: str
    detail: str
    takeovers: int
    duplicate_risk: bool


def query(url: str, statement: str, params: tuple = (), timeout: float = 60) -> list[tuple]:
    """Run one statement on a fresh connection, retrying while the database is away (faults!)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
                cur = conn.execute(statement, params)
                return cur.fetchall() if cur.description else []
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def ledger(url: str, event_ids: Iterable[str]) -> dict[str, Row]:
    """The ledger rows of these events, by event id."""
    ids = list(event_ids)
    flagged = query(url, HAS_DUPLICATE_RISK)[0][0]
    rows = query(url, LEDGER if flagged else LEDGER_WITHOUT_FLAG, (ids,))
    return {r[0]: Row(r[1], r[2], r[3], r[4], bool(r[5])) for r in rows}


def wait_settled(url: str, event_ids: Iterable[str], timeout: float) -> tuple[dict[str, Row], float | None]:
    """Poll until every event has a row in a final state; returns the rows and when (monotonic), or None."""
    ids = list(event_ids)
    deadline = time.monotonic() + timeout
    while True:
        rows = ledger(url, ids)
        if len(rows) == len(ids) and all(r.state in FINAL for r in rows.values()):
            return rows, time.monotonic()
        if time.monotonic() > deadline:
            return rows, None
        time.sleep(0.25)


def _quiet_inbox(messages, quiet: float, longest: float = 60.0) -> list:  # noqa: ANN001
    """The inbox once nothing new arrived for `quiet` seconds (at most `longest`)."""
    read = messages if callable(messages) else (lambda: list(messages))
    inbox, stable_since, deadline = read(), time.monotonic(), time.monotonic() + longest
    while time.monotonic() - stable_since < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if len(now) != len(inbox):
            inbox, stable_since = now, time.monotonic()
    return inbox


def message_ids(messages: Iterable) -> Counter:
    """Copies received by an SMTP peer, per Message-ID."""
    return Counter(str(m.message["Message-ID"]).strip() for m in messages)


@dataclass
class Verdict:
    """The invariants measured for one run; `problems` names every broken one."""

    states: Counter
    lost: int
    unsettled: int
    extra_copies: int
    flagged_extra: int
    overshoot: int
    recovery: float | None
    problems: list[str] = field(default_factory=list)

    def observed(self) -> str:
        """A short line for the report."""
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items()))
        flagged = f", {self.flagged_extra} flagged duplicate_risk" if self.flagged_extra else ""
        return f"{states}{flagged}" + (f"; {'; '.join(self.problems)}" if self.problems else "")


def judge(url: str, confirmed: Iterable[str], messages: Iterable, *, timeout: float = 90,
          fault_ended: float | None = None, per_day: int | None = None,
          allow_flagged_duplicates: bool = True, expect_states: dict[str, int] | None = None,
          rows: dict[str, Row] | None = None, quiet: float = 1.0) -> Verdict:
    """Wait for every confirmed event to settle, then measure the invariants.

    `messages` is the peer's inbox (a callable returning it, or a list), read after settling.
    A second copy is only allowed on a mail the ledger flags `duplicate_risk` (never under a
    database fault: pass allow_flagged_duplicates=False). The peer is read once it received
    nothing new for `quiet` seconds: a second exchange may still be running when the ledger says
    `sent` (make it longer than the slowest exchange).
    """
    ids = list(confirmed)
    settled_at = None
    if rows is None:
        rows, settled_at = wait_settled(url, ids, timeout)
    inbox = _quiet_inbox(messages, quiet)
    copies = message_ids(inbox)
    problems: list[str] = []
    missing = [i for i in ids if i not in rows]
    unsettled = [i for i, r in rows.items() if r.state not in FINAL]
    sent_uncopied = [i for i, r in rows.items() if r.state == "sent" and not copies.get(message_id_for(i, DOMAIN))]
    extra = flagged = 0
    for event_id in ids:
        n = copies.get(message_id_for(event_id, DOMAIN), 0)
        if n <= 1:
            continue
        row = rows.get(event_id)
        allowed = allow_flagged_duplicates and row is not None and row.duplicate_risk and n == 2
        extra += n - 1
        flagged += (n - 1) if allowed else 0
        if not allowed:
            problems.append(f"{n} copies of {event_id} ({'flagged' if row and row.duplicate_risk else 'not flagged'}"
                            f" duplicate_risk, state {row.state if row else '-'}, "
                            f"takeovers {row.takeovers if row else '-'})")
    if missing:
        problems.append(f"{len(missing)} confirmed events have no ledger row")
    if unsettled:
        states = Counter(rows[i].state for i in unsettled)
        problems.append(f"{len(unsettled)} events not in a final state: {dict(states)}")
    if sent_uncopied:
        problems.append(f"{len(sent_uncopied)} mails `sent` that the peer never received")
    # a flagged DATA-window copy is the one allowed exception; any other copy counts against the day
    overshoot = max(0, sum(copies.values()) - flagged - per_day) if per_day is not None else 0
    if overshoot:
        problems.append(f"the peer received {sum(copies.values())} mails on a day limited to {per_day}")
    states = Counter(r.state for r in rows.values())
    if expect_states is not None:
        for state, n in expect_states.items():
            if states.get(state, 0) != n:
                problems.append(f"expected {n} {state}, found {states.get(state, 0)}")
    recovery = (settled_at - fault_ended) if settled_at is not None and fault_ended is not None else None
    return Verdict(states, len(missing) + len(sent_uncopied), len(unsettled), extra, flagged, overshoot,
                   recovery, problems[:12])
