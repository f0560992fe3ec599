"""All PostgreSQL access of deskmail: one store object over a connection pool."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from datetime import datetime
from typing import Any, Callable, ContextManager, Iterator, Mapping, Protocol, Sequence, TypeVar

import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from deskmail.workers import sql
from deskmail.workers.constants import State
from deskmail.workers.database import open_pool
from deskmail.workers.errors import DataRefused, StoreError, StoreUnavailable
from deskmail.workers.records import (Admission, Attempt, AttemptOutcome, Claim, ConsoleJob, ConsoleSession,
                                      ConsoleUser, Gauge, GlobalLimits, Heartbeat, Mail, MoveBatch, Project, Requeue)

__all__ = ["Store", "open_pool"]
MOVED = {"queued": "resumed", "suspended": "suspended", "sent": "closed"}
MAX_SEQ = 2**63 - 1  # a bound on seq that every mail is within
MOVE_ATTEMPTS = 3  # times a bulk batch is taken again when a row changed under its lock
log = logging.getLogger(__name__)
T = TypeVar("T")
MIGRATION_LOCK = 7_305_417_201  # pg_advisory_lock key: one migrator at a time
Conn = psycopg.Connection[DictRow]  # open_pool's connections make dict rows


class Pool(Protocol):
    """Where the store's connections come from: open_pool's pool, or one connection (a health check)."""

    def connection(self, *, deadline: float | None = ...) -> ContextManager[Conn]:
        """A connection for one block; calls fail after `deadline` seconds without an answer."""

    def close(self) -> None:
        """Close the connections."""


def patiently(call: Callable[[], T], cap: float = 5.0) -> T:
    """Run a store call until PostgreSQL answers it (the store logs the outage once, not per call)."""
    delay = 0.2
    while True:
        try:
            return call()
        except StoreUnavailable:
            time.sleep(delay)
            delay = min(cap, delay * 2)


class Health:
    """Says once that PostgreSQL is unreachable, and once that it is back, however many calls fail."""

    def __init__(self) -> None:
        self.down = False
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> None:
        """Note a failed call; logs only the first of a run."""
        with self._lock:
            first, self.down = not self.down, True
        if first:
            log.error("PostgreSQL unreachable (%s); waiting for it, mail is kept", _first_line(exc))

    def succeeded(self) -> None:
        """Note a call that worked; logs only the first after an outage."""
        if self.down:
            with self._lock:
                back, self.down = self.down, False
            if back:
                log.warning("PostgreSQL reachable again")


class Store:
    """deskmail's data access; every method is one short transaction."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.q = sql.queries()
        self.health = Health()

    @contextlib.contextmanager
    def _conn(self, **options: Any) -> Iterator[Conn]:
        """A pooled connection; driver errors become StoreError here and nowhere else (see _translated)."""
        with _translated(self.health), self.pool.connection(**options) as conn:
            yield conn
        self.health.succeeded()

    @contextlib.contextmanager
    def atomic(self) -> Iterator["Store"]:
        """A store whose every method runs in one transaction, committed when the block ends."""
        with self._conn() as conn, conn.transaction():
            yield _InTransaction(self, conn)

    def _all(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._conn() as conn:
            cur = conn.execute(self.q[name], params or {})
            return cur.fetchall() if cur.description else []

    def _one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        rows = self._all(name, params)
        return rows[0] if rows else None

    def _single(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The row of a query that always answers one (an aggregate, a function call)."""
        row = self._one(name, params)
        if row is None:
            raise StoreError(f"query {name} answered no row")
        return row

    def _rowcount(self, name: str, params: dict[str, Any]) -> int:
        with self._conn() as conn:
            return conn.execute(self.q[name], params).rowcount

    @contextlib.contextmanager
    def control_notices(self) -> Iterator[Callable[[str, float], bool]]:
        """Listen for answers to control requests (NOTIFY on commit); yields wait(request_id, seconds),
        which returns True when that request's answer or progress changed, False when the time ran out."""
        with _translated(self.health), self.pool.connection(deadline=None) as conn:
            conn.execute(self.q["listen_control"])
            try:
                yield lambda request_id, seconds: _notified(conn, str(request_id), seconds)
            finally:
                conn.execute(self.q["unlisten_control"])

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, in order, under an advisory lock; return their names."""
        applied: list[str] = []
        with self._conn(deadline=None) as conn, conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS deskmail_migrations "
                         "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r["name"] for r in conn.execute("SELECT name FROM deskmail_migrations").fetchall()}
            for name, text in sql.migrations():
                if name not in done:
                    conn.execute(text)
                    conn.execute("INSERT INTO deskmail_migrations (name) VALUES (%s)", (name,))
                    applied.append(name)
        return applied

    # -- admission ----------------------------------------------------------------------------

    def admit(self, event: dict[str, Any], *, priority: int, recipients: int) -> Admission:
        """Record one event and decide queued or backlog (idempotent on event_id)."""
        return self.admit_many([(event, priority, recipients)])[0]

    def admit_many(self, items: list[tuple[dict[str, Any], int, int]]) -> list[Admission]:
        """Record (event, priority, recipients) items and decide each in one transaction; in order."""
        rows = [{"event_id": e["event_id"], "project": e["project"], "kind": e["kind"], "priority": priority,
                 "event": e, "subject": e["subject"][:200], "recipients": recipients,
                 "created_at": e.get("created_at")} for e, priority, recipients in items]
        decided = {str(r["event_id"]): Admission.from_row(r) for r in self._all("admit", {"rows": Jsonb(rows)})}
        return [decided[str(e["event_id"])] for e, _, _ in items]

    def admit_with_attachments(self, items: list[tuple[dict[str, Any], int, int]],
                               blobs: Mapping[str, bytes]) -> list[Admission]:
        """`admit_many` for events whose attachments refer to blobs ({sha256: bytes}): in one transaction the
        blobs are stored once per hash, the events admitted, and each mail linked to its blobs (idempotent)."""
        rows = [{"event_id": e["event_id"], "project": e["project"], "kind": e["kind"], "priority": priority,
                 "event": e, "subject": e["subject"][:200], "recipients": recipients,
                 "created_at": e.get("created_at")} for e, priority, recipients in items]
        with self._conn() as conn, conn.transaction():
            for digest in sorted(blobs):  # one order for every admission: two never wait on each other's rows
                conn.execute(self.q["store_attachment_blob"], {"sha256": digest, "size": len(blobs[digest]),
                                                               "content": blobs[digest]})
            decided = {str(r["event_id"]): Admission.from_row(r)
                       for r in conn.execute(self.q["admit"], {"rows": Jsonb(rows)}).fetchall()}
            for event, _, _ in items:
                hashes = sorted({a["sha256"] for a in event.get("attachments") or ()})
                if hashes:
                    conn.execute(self.q["link_mail_attachments"], {"event_id": event["event_id"], "hashes": hashes})
        return [decided[str(e["event_id"])] for e, _, _ in items]

    def claim(self, event_ids: list[str], worker: str, lease: float, service: str) -> list[Claim]:
        """Lease to `worker` for `lease` seconds those of these mails that are queued and sent through
        `service` (the others are taken, done, or belong to another service now)."""
        rows = self._all("claim", {"ids": [str(e) for e in event_ids], "worker": worker, "lease": lease,
                                   "service": service})
        return [Claim.from_row(r) for r in rows]

    def reroute(self, event_ids: list[str], service: str) -> list[Requeue]:
        """Move queued mails whose project sends through another service than `service` to that service."""
        rows = self._all("reroute", {"ids": [str(e) for e in event_ids], "service": service})
        return [Requeue.from_row(r) for r in rows]

    def renew_leases(self, held: list[tuple[uuid.UUID, uuid.UUID]], lease: float) -> set[uuid.UUID]:
        """Extend the leases still held by these (event id, token) pairs; returns the ids renewed."""
        if not held:
            return set()
        rows = self._all("renew_leases", {"ids": [e for e, _ in held], "tokens": [t for _, t in held],
                                          "lease": lease})
        return {r["event_id"] for r in rows}

    def record_outcomes(self, done: list[tuple[Claim, AttemptOutcome]], worker: str) -> set[uuid.UUID]:
        """Write attempts' outcomes in one round trip; returns the ids whose mail took theirs (lease held)."""
        if not done:
            return set()
        return {r["event_id"] for r in self._all("record_outcomes", {"rows": _outcome_rows(done), "worker": worker,
                                                                     "plain": plain(done)})}

    def record_and_enter(self, done: list[tuple[Claim, AttemptOutcome]], entering: Sequence[Claim],
                         worker: str) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
        """Write outcomes and note that the `entering` mails are about to be handed over, in one round trip
        (no mail in both); returns the ids whose mail took its outcome, and those whose lease still holds
        among `entering` (the others must not be sent)."""
        ordered = sorted(entering, key=lambda c: c.event_id)
        row = self._one("record_and_enter", {"rows": _outcome_rows(done), "worker": worker, "plain": plain(done),
                                             "ids": [c.event_id for c in ordered],
                                             "tokens": [c.lease_token for c in ordered]})
        assert row is not None
        return set(row["recorded"]), set(row["entered"])

    def attempts_of(self, event_id: uuid.UUID | str) -> list[Attempt]:
        """Every delivery attempt of a mail, oldest first."""
        return [Attempt.from_row(r) for r in self._all("list_attempts", {"event_id": event_id})]

    def pause_project(self, project: str, reason: str) -> None:
        """Pause a project's sending unless it is paused already."""
        self._all("pause_project", {"project": project, "reason": reason})

    def record_config_error(self, project: str, detail: str) -> None:
        """Show a configuration error on the project's status (the next successful send clears it)."""
        self._all("record_config_error", {"project": project, "detail": detail[:2000]})

    def attachment_contents(self, event: dict[str, Any]) -> dict[str, bytes]:
        """{sha256: bytes} of the blobs an admitted event's attachments refer to; no query without attachments."""
        hashes = sorted({a["sha256"] for a in event.get("attachments") or () if "sha256" in a})
        if not hashes:
            return {}
        return {r["sha256"]: bytes(r["content"]) for r in self._all("attachment_contents", {"hashes": hashes})}

    def delete_unused_attachments(self, grace: float, retention: float, limit: int = 1000) -> int:
        """Delete up to `limit` blobs no mail that can still be sent (or retried within `retention` seconds)
        refers to and no admission used in the last `grace` seconds; returns how many (for the scheduler)."""
        return self._rowcount("delete_unused_attachments", {"grace": grace, "retention": retention, "limit": limit})

    # -- reading ------------------------------------------------------------------------------

    def get_mail(self, event_id: uuid.UUID | str) -> Mail | None:
        """One ledger entry, or None."""
        row = self._one("get_mail", {"event_id": event_id})
        return Mail.from_row(row) if row else None

    def get_project(self, key: str) -> Project | None:
        """A project's row, or None."""
        row = self._one("get_project", {"key": key})
        return Project.from_row(row) if row else None

    def list_projects(self) -> list[Project]:
        """Every project, by key."""
        return [Project.from_row(r) for r in self._all("list_projects")]

    def save_settings(self, key: str, service: str, settings: dict, secrets: bytes | None, time_zone: str,
                      limits: dict[str, int | None] | None) -> None:
        """Save a project's settings (secrets already encrypted); bumps its settings version."""
        limits = limits or {}
        self._all("save_settings", {
            "key": key, "mail_service": service, "settings": Jsonb(settings), "secrets": secrets,
            "time_zone": time_zone, "has_limits": bool(limits), "per_day": limits.get("per_day"),
            "recipients_per_mail": limits.get("recipients_per_mail"),
        })

    def replace_secrets(self, key: str, old: bytes, new: bytes) -> bool:
        """Swap a project's sealed secrets if they are still `old` (key rotation)."""
        return self._rowcount("replace_secrets", {"key": key, "old": old, "new": new}) == 1

    def global_limits(self) -> GlobalLimits:
        """The global limits row."""
        return GlobalLimits.from_row(self._one("get_global_limits") or {})

    def set_global_limits(self, **limits: int | None) -> None:
        """Set MAIL_LIMIT_PER_DAY_SMTP (per_day) and/or RECIPIENTS_LIMIT_PER_MAIL_SMTP (recipients_per_mail)."""
        self._all("set_global_limits", {
            "set_per_day": "per_day" in limits, "per_day": limits.get("per_day"),
            "set_recipients": "recipients_per_mail" in limits,
            "recipients_per_mail": limits.get("recipients_per_mail"),
        })

    def list_state(self, state: str, *, project: str | None = None, reason: str | None = None,
                   after: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """One page of backlog or suspended mails in arrival order, after seq `after`."""
        return self._all("list_state", {"state": state, "project": project, "reason": reason,
                                        "after": after, "limit": limit})

    # -- admin control ------------------------------------------------------------------------

    def move_batch(self, ids: list[str] | None, project: str | None, from_state: str, to_state: str,
                   detail: str, limit: int = 5000, through: int | None = None,
                   since: str | None = None) -> MoveBatch:
        """Move one batch of mails between states in one transaction (one statement, see move_batch in the SQL).

        To `queued`: resume (backlog, suspended), retry (failed) or resend (ambiguous); mails that
        hold no unit take one of today (an admin override of the limit); they are returned for the
        caller to hand to the broker at once. To `suspended`: suspend. To `sent`: close an ambiguous
        mail the admin checked was delivered. `ids=None` takes the next `limit` mails in from_state
        (of the project, if given) whose seq is at most `through` and that did not change after `since`,
        records first, and answers with counts only; given ids are taken all (the caller pages them), with
        an outcome per id (an id given twice, in any letter case, counts once).
        """
        if ids is not None:
            ids = list(dict.fromkeys(str(uuid.UUID(str(i))) for i in ids))
        done, given = MOVED[to_state], None if ids is None else [uuid.UUID(i) for i in ids]
        params = {"ids": given, "project": project, "state": from_state, "to": to_state, "detail": detail,
                  "limit": limit, "through": MAX_SEQ if through is None else through, "since": since}
        with self._conn() as conn, conn.transaction():
            for _ in range(MOVE_ATTEMPTS):
                with conn.transaction():
                    rows = conn.execute(self.q["move_batch"], params).fetchall()
                    moved = [r for r in rows if r["event_id"] is not None]
                    if rows[0]["picked"] == len(moved):
                        break
                    raise psycopg.Rollback()  # a locked row changed under its lock and kept its state: again
            else:
                raise StoreError(f"a batch of {from_state} mails kept changing under its locks; tried {MOVE_ATTEMPTS} "
                                 "times")
            outcomes = None
            if given is not None:
                taken = {r["event_id"] for r in moved}
                left = conn.execute(self.q["selected_states"], {"ids": [g for g in given if g not in taken]})
                outcomes = _outcomes(left.fetchall(), [str(i) for i in ids or ()], project, from_state, done, taken)
        counts: dict[str, int] = {done: len(moved)} if moved else {}
        for value in (outcomes or {}).values():
            if value != done:
                counts[value] = counts.get(value, 0) + 1
        return MoveBatch(rows[0]["picked"] if given is None else len(given), counts, outcomes,
                         [Requeue(r["event_id"], r["priority"], r["mail_service"]) for r in moved],
                         frozenset(r["project"] for r in moved if r["project"]))

    def move(self, ids: list[str] | None, project: str | None, from_state: str, to_state: str,
             detail: str) -> dict[str, int]:
        """Move selected mails (or all of from_state) in batches; how many ended how. Resumed mails are
        not handed to the broker here but made due, for the scheduler to hand on."""
        counts: dict[str, int] = {}
        while True:
            batch = self.move_batch(ids, project, from_state, to_state, detail)
            if batch.moved and to_state == "queued":
                self._all("make_due", {"ids": [m.event_id for m in batch.moved]})
            for key, n in batch.counts.items():
                counts[key] = counts.get(key, 0) + n
            if ids is not None or not batch.examined:
                return counts

    def unpause(self, project: str | None) -> None:
        """Unpause a project, or every project (project None)."""
        self._all("unpause_project" if project else "unpause_all", {"project": project})

    def count_in_state(self, state: str, project: str | None) -> int:
        """How many mails are in `state` (of the project, if given)."""
        return int(self._single("count_in_state", {"state": state, "project": project})["n"])

    def project_known(self, project: str) -> bool:
        """True when the project has a row or any mail."""
        return bool(self._single("project_known", {"project": project})["known"])

    def set_pause(self, project: str, reason: str | None) -> bool:
        """Pause (reason) or unpause (None) a project; False if nothing changed."""
        if reason is None:
            return self._rowcount("unpause_project", {"project": project}) == 1
        return self._rowcount("pause_project", {"project": project, "reason": reason}) == 1

    def set_project_limits(self, project: str, **limits: int | None) -> bool:
        """Set a project's per_day and/or recipients_per_mail; False for an unknown project."""
        return self._rowcount("set_project_limits", {
            "project": project, "set_per_day": "per_day" in limits, "per_day": limits.get("per_day"),
            "set_recipients": "recipients_per_mail" in limits,
            "recipients_per_mail": limits.get("recipients_per_mail")}) == 1

    def auto_resume(self, now: datetime, project: str | None = None, batch: int = 1000) -> dict[str, int]:
        """Drain the backlog of auto-resume projects within the limits; {project: mails made due}."""
        out: dict[str, int] = {}
        for row in self._all("auto_resume_candidates", {"project": project}):
            out[row["key"]] = self._single("auto_resume", {"project": row["key"], "now": now, "max": batch})["resumed"]
        return out

    def set_auto_resume(self, project: str, enabled: bool) -> bool:
        """Turn a project's auto resume on or off; False for an unknown project."""
        return self._rowcount("set_auto_resume", {"project": project, "enabled": enabled}) == 1

    def control_answer(self, request_id: str) -> dict | None:
        """The recorded answer to a control request, or None."""
        row = self._one("control_answer", {"request_id": request_id})
        return row["answer"] if row else None

    def claim_control_request(self, request_id: str, action: str) -> bool:
        """Take a request id for applying it now; False if it was applied before (use inside atomic())."""
        return self._one("claim_control_request", {"request_id": request_id, "action": action}) is not None

    def record_control(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        """Record the answer to a claimed control request and its audit entry, and notify the waiting
        command when the transaction commits (use inside atomic())."""
        with self._conn() as conn, conn.transaction():
            conn.execute(self.q["answer_control_request"], {"request_id": message["request_id"],
                                                           "answer": Jsonb(answer)})
            self._audit(conn, message, answer)
            conn.execute(self.q["notify_control"], {"request_id": str(message["request_id"])})

    def control_progress(self, request_id: str, progress: dict[str, Any]) -> None:
        """Record how far a running request got, notifying the waiting command on commit (no audit yet)."""
        with self._conn() as conn, conn.transaction():
            conn.execute(self.q["answer_control_request"], {"request_id": request_id, "answer": Jsonb(progress)})
            conn.execute(self.q["notify_control"], {"request_id": str(request_id)})

    def accept_control_work(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        """Record a bulk action as accepted (its answer so far, and the work left for whoever goes on with it),
        notifying the waiting command on commit (use inside atomic())."""
        work = {k: v for k, v in message.items() if k != "signature"}
        with self._conn() as conn, conn.transaction():
            conn.execute(self.q["accept_control_work"], {"request_id": message["request_id"], "answer": Jsonb(answer),
                                                        "work": Jsonb(work)})
            conn.execute(self.q["notify_control"], {"request_id": str(message["request_id"])})

    def stalled_control_work(self, seconds: float, limit: int = 10) -> list[dict[str, Any]]:
        """The work of accepted bulk actions still running without progress for `seconds`, oldest first; taking
        one counts as progress (one that keeps failing goes behind the others)."""
        return [r["work"] for r in self._all("stalled_control_work", {"seconds": seconds, "limit": limit})]

    def bulk_selection(self, state: str, project: str | None) -> tuple[int, int, str]:
        """(how many mails are in `state`, of the project if given; the newest one's seq; the database's time
        now, ISO): a bulk action's selection."""
        row = self._single("bulk_selection", {"state": state, "project": project})
        return int(row["n"]), int(row["through"]), row["since"].isoformat()

    def lock_control_progress(self, request_id: str) -> dict[str, Any] | None:
        """A claimed request's answer so far, locked until the transaction ends (use inside atomic())."""
        row = self._one("lock_control_progress", {"request_id": request_id})
        return row["answer"] if row else None

    def keep_moved_ids(self, request_id: str, ids: list[uuid.UUID]) -> None:
        """Keep the ids a bulk action moved, for its command to page through."""
        if ids:
            self._all("keep_moved_ids", {"request_id": request_id, "ids": ids})

    def moved_ids(self, request_id: str, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """One page of the ids a bulk action kept: rows of n and event_id."""
        return self._all("list_moved_ids", {"request_id": request_id, "after": after, "limit": limit})

    def record_control_sent(self, message: dict[str, Any]) -> None:
        """Remember a request a command publishes, so that it can be listed while nobody answered it."""
        self._all("record_control_sent", {
            "request_id": message["request_id"], "action": message["action"], "project": message.get("project"),
            "requested_by": message["requested_by"], "requested_at": message["requested_at"]})

    def control_pending(self, max_age: float) -> list[dict[str, Any]]:
        """Requests published but neither answered, refused nor expired, oldest first."""
        return self._all("list_control_pending", {"max_age": max_age})

    def cancel_control(self, request_id: str, cancelled_by: str) -> dict[str, Any] | None:
        """Take a pending request's id with a `cancelled` answer, audited, so no worker applies it later.

        Returns the answer it has now: the cancellation, or the answer it already had; None if no
        command sent it.
        """
        with self.atomic() as tx:
            sent = tx._one("get_control_sent", {"request_id": request_id})
            if sent is None:
                return None
            if not tx.claim_control_request(request_id, sent["action"]):
                return tx.control_answer(request_id)
            answer = {"ok": False, "cancelled": True, "touched": 0,
                      "error": f"cancelled by {cancelled_by} before a control worker applied it"}
            tx.record_control({"request_id": request_id, "action": sent["action"], "project": sent["project"],
                               "requested_by": cancelled_by, "cancels": sent["action"]}, answer)
            return answer

    def add_control_test(self, message: dict[str, Any], project: str, service: str) -> None:
        """Keep what a Test action is to test, for the transport worker that runs it."""
        self._all("add_control_test", {
            "request_id": message["request_id"], "project": project, "mail_service": service,
            "to": message.get("to"), "attach": bool(message.get("attach")),
            "settings": Jsonb(message["settings"]) if message.get("settings") else None,
            "sealed_secrets": message.get("sealed_secrets"),
            "message": Jsonb({k: v for k, v in message.items() if k not in ("signature", "sealed_secrets")})})

    def take_control_test(self, request_id: str, worker: str) -> dict[str, Any] | None:
        """The Test action of this request, taken by `worker`; None if there is none or it was taken."""
        return self._one("take_control_test", {"request_id": request_id, "worker": worker})

    def list_rejected(self, project: str | None = None, after: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """One page of rejected events in arrival order, of every project (unknown ones too)."""
        return self._all("list_rejected", {"project": project, "after": after, "limit": limit})

    def record_control_refusal(self, message: dict[str, Any], reason: str) -> None:
        """Keep a refused control message's reason and audit entry; its request id stays free."""
        with self._conn() as conn, conn.transaction():
            conn.execute(self.q["record_control_refusal"], {"request_id": message.get("request_id"),
                                                           "reason": reason})
            self._audit(conn, message, {"ok": False, "error": reason, "touched": 0, "refused": True})
            if message.get("request_id"):
                conn.execute(self.q["notify_control"], {"request_id": str(message["request_id"])})

    def control_refusal(self, request_id: str) -> str | None:
        """Why the newest message carrying this request id was refused, or None."""
        row = self._one("control_refusal", {"request_id": request_id})
        return row["reason"] if row else None

    def _audit(self, conn: Conn, message: dict[str, Any], answer: dict[str, Any]) -> None:
        params = {k: ("(sealed)" if k == "sealed_secrets" else v) for k, v in message.items()
                  if k not in ("signature", "requested_by")}
        # A per-id action sent without a project is audited under the one project its mails belong to.
        projects = answer.get("projects") or []
        project = message.get("project") if isinstance(message.get("project"), str) else \
            (projects[0] if len(projects) == 1 else None)
        conn.execute(self.q["record_audit"], {
            "actor": str(message.get("requested_by", "?"))[:200], "action": str(message.get("action", "?"))[:64],
            "project": project,
            "params": Jsonb(params), "touched": answer.get("touched", 0), "result": Jsonb(answer)})

    def keep_rejected(self, event_id: uuid.UUID, reason: str, detail: str, excerpt: str, size: int,
                      project: str | None = None, kind: str | None = None) -> None:
        """Keep a message that cannot be admitted as `rejected`: reason, detail, an excerpt and its size."""
        self._all("keep_rejected", {"event_id": event_id, "project": project and project[:64],
                                    "kind": kind and kind[:32], "reason": reason, "detail": detail[:4000],
                                    "raw": excerpt, "raw_size": size})

    def reachable(self) -> bool:
        """True when PostgreSQL answers (tells a failing statement from a database that is away)."""
        try:
            return self._one("reachable") is not None
        except StoreError:
            return False

    def audit(self, project: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit entries."""
        return self._all("list_audit", {"project": project, "limit": limit})

    def project_counts(self, project: str) -> dict[str, int]:
        """How many mails of a project are in each state."""
        return {r["state"]: r["n"] for r in self._all("project_counts", {"project": project})}

    def counts(self) -> dict[str, dict[str, int]]:
        """{project: {state: n}} over the whole ledger."""
        out: dict[str, dict[str, int]] = {}
        for r in self._all("count_by_project_state"):
            out.setdefault(r["project"] or "(none)", {})[r["state"]] = r["n"]
        return out

    def sent_today(self, scope: str, time_zone: str) -> int:
        """Quota units taken today in a scope (a project key, or '*' for global)."""
        row = self._one("sent_today", {"scope": scope, "time_zone": time_zone})
        return int(row["sent"]) if row else 0

    # -- admin console ------------------------------------------------------------------------

    def console_mail_page(self, state: str, filters: dict[str, str | None], after: int = 0,
                          limit: int = 50) -> list[dict[str, Any]]:
        """One page of mails in `state` matching the console's filters (project, reason, kind, text)."""
        return self._all("console_mail_page", {"state": state, **_filters(filters), "after": after, "limit": limit})

    def console_mail_count(self, state: str, filters: dict[str, str | None]) -> dict[str, int]:
        """{project: n} of the mails in `state` matching the filters."""
        return {r["project"]: r["n"] for r in self._all("console_mail_count", {"state": state, **_filters(filters)})}

    def console_selection_count(self, ids: list[str], state: str) -> dict[str, int]:
        """{project: n} of the given mails that are still in `state`."""
        rows = self._all("console_selection_count", {"ids": [uuid.UUID(str(i)) for i in ids], "state": state})
        return {r["project"]: r["n"] for r in rows}

    def console_mail_reasons(self, state: str) -> list[str]:
        """The reasons mails in `state` have, for the filter's choices."""
        return [r["reason"] for r in self._all("console_mail_reasons", {"state": state})]

    def console_audit(self, *, project: str | None = None, actor: str | None = None, action: str | None = None,
                      before: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Audit entries, newest first, filtered; `before` pages by id."""
        return self._all("console_audit", {"project": project, "actor": actor, "action": action,
                                           "before": before, "limit": limit})

    def console_audit_actions(self) -> list[str]:
        """Every action name the audit holds."""
        return [r["action"] for r in self._all("console_audit_actions")]

    def console_user(self, username: str) -> ConsoleUser | None:
        """A console account, or None."""
        row = self._one("console_user_get", {"username": username})
        return ConsoleUser.from_row(row) if row else None

    def console_users(self) -> list[ConsoleUser]:
        """Every console account."""
        return [ConsoleUser.from_row(r) for r in self._all("console_user_list")]

    def add_console_user(self, username: str, password_hash: str | None, role: str) -> bool:
        """Create a console account; False if the name is taken."""
        return self._rowcount("console_user_add", {"username": username, "password_hash": password_hash,
                                                   "role": role}) == 1

    def remove_console_user(self, username: str) -> bool:
        """Delete a console account and its sessions; False if there was none."""
        return self._rowcount("console_user_remove", {"username": username}) == 1

    def set_console_password(self, username: str, password_hash: str | None) -> bool:
        """Replace a console account's password, ending its sessions; False for an unknown account."""
        with self._conn() as conn, conn.transaction():
            if conn.execute(self.q["console_user_exists"], {"username": username}).fetchone() is None:
                return False
            conn.execute(self.q["console_user_passwd"], {"username": username, "password_hash": password_hash})
            return True

    def record_console_audit(self, actor: str, action: str, params: dict[str, Any], ok: bool) -> None:
        """An audit entry for a change of the console's own accounts (no control action covers those)."""
        self._all("record_audit", {"actor": actor, "action": action, "project": None, "params": Jsonb(params),
                                   "touched": 0, "result": Jsonb({"ok": ok})})

    def add_console_session(self, token_hash: bytes, username: str, csrf_token: str, via: str,
                            lifetime: float) -> None:
        """Open a console session (only the token's hash is kept)."""
        self._all("console_session_add", {"token_hash": token_hash, "username": username, "csrf_token": csrf_token,
                                          "via": via, "lifetime": lifetime})

    def console_session(self, token_hash: bytes) -> ConsoleSession | None:
        """The live session with this token hash, with the user's current role, or None."""
        row = self._one("console_session_get", {"token_hash": token_hash})
        return ConsoleSession.from_row(row) if row else None

    def remove_console_session(self, token_hash: bytes) -> None:
        """End a session (and sweep expired ones)."""
        self._all("console_session_remove", {"token_hash": token_hash})

    def record_login_attempt(self, username: str, address: str, ok: bool) -> None:
        """Remember a console login attempt; a success forgets the user's failures."""
        self._all("console_login_attempt", {"username": username, "address": address, "ok": ok})
        if ok:
            self._all("console_login_forget", {"username": username})

    def login_failures(self, username: str, address: str, window: float) -> tuple[int, int]:
        """Failed console logins within `window` seconds: (for this user, from this address)."""
        row = self._one("console_login_failures", {"username": username, "address": address, "window": window})
        return (row["by_user"], row["by_address"]) if row else (0, 0)

    def begin_oidc_login(self, state: str, nonce: str, verifier: str) -> None:
        """Remember a single sign-on login until the provider calls back."""
        self._all("console_oidc_begin", {"state": state, "nonce": nonce, "verifier": verifier})

    def finish_oidc_login(self, state: str) -> tuple[str, str] | None:
        """(nonce, verifier) of a pending login, used up; None if unknown or too old."""
        row = self._one("console_oidc_finish", {"state": state})
        return (row["nonce"], row["verifier"]) if row else None

    def add_console_job(self, job_id: uuid.UUID, kind: str, title: str, requested_by: str, project: str | None,
                        total: int = 0) -> None:
        """Record a console job as started (and forget those older than a week)."""
        self._all("console_job_sweep")
        self._all("console_job_add", {"id": job_id, "kind": kind, "title": title, "requested_by": requested_by,
                                      "project": project, "total": total})

    def console_job_progress(self, job_id: uuid.UUID, done: int, steps: list) -> None:
        """Record how far a console job got."""
        self._all("console_job_progress", {"id": job_id, "done": done, "steps": Jsonb(steps)})

    def finish_console_job(self, job_id: uuid.UUID, done: int, steps: list, ok: bool, summary: str) -> None:
        """Record a console job's end."""
        self._all("console_job_finish", {"id": job_id, "done": done, "steps": Jsonb(steps), "ok": ok,
                                         "summary": summary})

    def console_job(self, job_id: uuid.UUID | str) -> ConsoleJob | None:
        """A console job, or None."""
        row = self._one("console_job_get", {"id": job_id})
        return ConsoleJob.from_row(row) if row else None


    # -- scheduler ----------------------------------------------------------------------------

    def take_due_retries(self, limit: int = 500) -> list[Requeue]:
        """Queued mails whose retry time has come, made claimable now."""
        return [Requeue.from_row(r) for r in self._all("take_due_retries", {"limit": limit})]

    def take_stale_queued(self, stale_after: float, limit: int = 500) -> list[Requeue]:
        """Queued mails nobody has taken for a long time (a lost broker message)."""
        return [Requeue.from_row(r) for r in
                self._all("take_stale_queued", {"stale_after": stale_after, "limit": limit})]

    def take_over(self, grace: float, limit: int = 500) -> list[Requeue]:
        """Expired leases: mark them, and take over those marked `grace` seconds ago (queue them again)."""
        rows = self._all("take_over", {"grace": grace, "limit": limit})
        return [Requeue.from_row(r) for r in rows if r["state"] == "queued"]

    # -- operations ---------------------------------------------------------------------------

    def record_heartbeat(self, scheduler: str) -> None:
        """Record that the scheduler `host:pid` is alive and reaches the database."""
        self._all("record_heartbeat", {"scheduler": scheduler})

    def last_heartbeat(self, max_age: float) -> Heartbeat:
        """The newest scheduler heartbeat, and how many schedulers beat within max_age seconds."""
        return Heartbeat.from_row(self._one("last_heartbeat", {"max_age": max_age}) or {"fresh": 0})

    def applied_migrations(self) -> list[str]:
        """Names of the migrations applied to this database."""
        return [r["name"] for r in self._all("applied_migrations")]

    def services_in_use(self) -> set[str]:
        """The mail services some project with settings uses (their queues need a consumer)."""
        return {r["mail_service"] for r in self._all("services_in_use")}

    def gauges(self) -> list[Gauge]:
        """Ledger-wide gauges for a metrics scrape, read on one connection."""
        out: list[Gauge] = []
        with self._conn() as conn:
            def rows(name: str) -> list[dict[str, Any]]:
                return conn.execute(self.q[name]).fetchall()
            for r in rows("gauge_mails"):
                out.append(Gauge("mails", (("project", r["project"]), ("state", r["state"])), r["value"]))
            for r in rows("gauge_backlog"):
                out.append(Gauge(f"{r['state']}_mails", (("project", r["project"]), ("reason", r["reason"])),
                                 r["value"]))
            for r in rows("gauge_quota"):
                scope = (("scope", "global" if r["scope"] == "*" else r["scope"]),)
                out += [Gauge("quota_used", scope, r["used"]), Gauge("quota_limit", scope, r["lim"])]
            for r in rows("gauge_paused"):
                out.append(Gauge("project_paused_seconds", (("project", r["project"]), ("reason", r["reason"])),
                                 r["value"]))
            for r in rows("gauge_config_errors"):
                out.append(Gauge("project_config_error_seconds", (("project", r["project"]),), r["value"]))
            for r in rows("gauge_oldest_waiting"):
                out.append(Gauge("oldest_waiting_seconds", (("project", r["project"]),), r["value"]))
        return out


class _InTransaction(Store):
    """The store's methods on one connection inside an open transaction (see Store.atomic)."""

    def __init__(self, parent: Store, conn: Conn) -> None:
        self.pool, self.q, self.health, self._held = parent.pool, parent.q, parent.health, conn

    @contextlib.contextmanager
    def _conn(self, **options: Any) -> Iterator[Conn]:
        with _translated(self.health):
            yield self._held


@contextlib.contextmanager
def _translated(health: Health) -> Iterator[None]:
    """Driver errors as deskmail's: lost or refused connections and transactions that lost a deadlock
    become StoreUnavailable (try again later; only the first say PostgreSQL is unreachable), data
    PostgreSQL cannot hold DataRefused (trying again cannot help), anything else StoreError."""
    try:
        yield
    except (psycopg.DataError, psycopg.errors.ProgramLimitExceeded, UnicodeEncodeError) as exc:
        raise DataRefused(f"PostgreSQL refused the data: {_first_line(exc)}") from exc
    except psycopg.errors.TransactionRollback as exc:  # a deadlock or serialization failure: PostgreSQL is up
        raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__} (lost to a concurrent transaction)") from exc
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        health.failed(exc)
        raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {_first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise StoreError(f"PostgreSQL: {type(exc).__name__}: {_first_line(exc)}") from exc
    except TimeoutError as exc:  # psycopg_pool.PoolTimeout
        health.failed(exc)
        raise StoreUnavailable(f"PostgreSQL: no connection available: {exc}") from exc


def _outcomes(rows: list[dict[str, Any]], ids: list[str], project: str | None, state: str, done: str,
              moved: set[uuid.UUID]) -> dict[str, str]:
    """What happened to each given id: `done` for the moved ones, else why not (`rows`: where the others are)."""
    found = {r["event_id"]: r for r in rows}
    out: dict[str, str] = {}
    for key in ids:
        row = found.get(uuid.UUID(key))
        if uuid.UUID(key) in moved:
            out[key] = done
        elif row is None:
            out[key] = "unknown id"
        elif project and row["project"] != project:
            out[key] = f"belongs to project {row['project']}"
        else:
            out[key] = f"not {state} (it is {row['state']})"
    return out


def _notified(conn: Conn, request_id: str, seconds: float) -> bool:
    """Wait up to `seconds` for a notice about request_id (notices about other requests are skipped)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for notice in conn.notifies(timeout=left, stop_after=1):
            if notice.payload == request_id:
                return True
    return False


def _filters(filters: dict[str, str | None]) -> dict[str, str | None]:
    """The console's list filters, empty ones as NULL."""
    return {k: (filters.get(k) or None) for k in ("project", "reason", "kind", "text")}


def plain(done: list[tuple[Claim, AttemptOutcome]]) -> bool:
    """Whether deskmail_record_outcomes may write these outcomes set-wise: all plain deliveries (the mail
    sent, nothing to refund, no configuration error to show, no pause) and no mail twice."""
    return len({c.event_id for c, _ in done}) == len(done) and all(
        o.state == State.SENT and not o.refund and o.config_error is None and o.pause is None for _, o in done)


def _outcome_rows(done: list[tuple[Claim, AttemptOutcome]]) -> Jsonb:
    """Outcomes as the SQL's jsonb_to_recordset reads them, in event id order (one lock order everywhere)."""
    return Jsonb([{"event_id": str(c.event_id), "token": str(c.lease_token), "attempt": c.attempt,
                   "started": c.claimed_at.isoformat(), "outcome": o.label, "state": o.state, "reason": o.reason,
                   "detail": _clean(o.detail), "refused": _cleaned(o.refused) or None,
                   "deferred": list(o.deferred) or None, "message_id": o.message_id, "delay": o.delay,
                   "refund": o.refund, "config_error": o.config_error and _clean(o.config_error), "pause": o.pause}
                  for c, o in sorted(done, key=lambda d: d[0].event_id)])


def _cleaned(refused: dict[str, str]) -> dict[str, str]:
    return {_clean(str(k), 320): _clean(str(v), 500) for k, v in refused.items()}


def _clean(text: str, limit: int = 2000) -> str:
    """Peer text as the ledger can hold it: no NUL, no lone surrogate, bounded."""
    return text[:limit].replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

