"""All PostgreSQL access of deskmail: one store object over a connection pool."""

from __future__ import annotations

import contextlib
import logging
import uuid
from datetime import datetime
from typing import Any, Iterator, Mapping

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from workers import sql
from workers.errors import StoreError
from workers.records import Admission, Claim, GlobalLimits, Mail, Project, Requeue

log = logging.getLogger(__name__)
MIGRATION_LOCK = 7_305_417_201  # pg_advisory_lock key: one migrator at a time


def open_pool(database_url: str, max_size: int = 10, name: str = "deskmail") -> ConnectionPool:
    """A connection pool returning dict rows; opened lazily so nothing connects at import."""
    return ConnectionPool(
        database_url, min_size=1, max_size=max(2, max_size), name=name, open=True,
        kwargs={"row_factory": dict_row, "autocommit": True}, timeout=30,
    )


class Store:
    """deskmail's data access; every method is one short transaction."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.q = sql.queries()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; driver errors become StoreError here and nowhere else."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {type(exc).__name__}: {str(exc).strip()}") from exc
        except TimeoutError as exc:  # psycopg_pool.PoolTimeout
            raise StoreError(f"PostgreSQL: no connection available: {exc}") from exc

    def _all(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._conn() as conn:
            cur = conn.execute(self.q[name], params or {})
            return cur.fetchall() if cur.description else []

    def _one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        rows = self._all(name, params)
        return rows[0] if rows else None

    def _rowcount(self, name: str, params: dict[str, Any]) -> int:
        with self._conn() as conn:
            return conn.execute(self.q[name], params).rowcount

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, in order, under an advisory lock; return their names."""
        applied: list[str] = []
        with self._conn() as conn, conn.transaction():
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
        """Record an event and decide queued or backlog in one round trip (idempotent on event_id)."""
        row = self._one("admit", {
            "event_id": event["event_id"], "project": event["project"], "kind": event["kind"],
            "priority": priority, "event": Jsonb(event), "subject": event["subject"][:200],
            "recipients": recipients, "created_at": event.get("created_at"),
        })
        assert row is not None
        return Admission.from_row(row)

    def admit_with_attachments(self, event: dict[str, Any], blobs: Mapping[str, bytes], *, priority: int,
                               recipients: int) -> Admission:
        """`admit` for an event whose attachments refer to blobs ({sha256: bytes}): in one transaction the blobs
        are stored once per hash, the event admitted, and the mail linked to them (idempotent on event_id)."""
        with self._conn() as conn, conn.transaction():
            for digest in sorted(blobs):  # one order for every admission: two never wait on each other's rows
                conn.execute(self.q["store_attachment_blob"], {"sha256": digest, "size": len(blobs[digest]),
                                                               "content": blobs[digest]})
            row = conn.execute(self.q["admit"], {
                "event_id": event["event_id"], "project": event["project"], "kind": event["kind"],
                "priority": priority, "event": Jsonb(event), "subject": event["subject"][:200],
                "recipients": recipients, "created_at": event.get("created_at"),
            }).fetchone()
            conn.execute(self.q["link_mail_attachments"], {"event_id": event["event_id"], "hashes": sorted(blobs)})
        assert row is not None
        return Admission.from_row(row)

    def reject(self, event_id: uuid.UUID, detail: str, raw: str, event: dict | None = None) -> None:
        """Keep an invalid event as `rejected`, with the reason, where admins can see it."""
        event = event if isinstance(event, dict) else None
        project = event.get("project") if event and isinstance(event.get("project"), str) else None
        kind = event.get("kind") if event and isinstance(event.get("kind"), str) else None
        self._all("reject", {"event_id": event_id, "project": project and project[:64], "kind": kind and kind[:32],
                             "detail": detail[:4000], "raw": raw[:65536], "event": Jsonb(event) if event else None})

    # -- delivery -----------------------------------------------------------------------------

    def claim(self, event_id: uuid.UUID | str) -> Claim | None:
        """Move a queued mail to `sending` for this worker, or None if it is not (or no longer) queued."""
        row = self._one("claim", {"event_id": event_id})
        return Claim.from_row(row) if row else None

    def mark_sent(self, event_id: uuid.UUID, detail: str, refused: dict[str, str] | None,
                  message_id: str) -> None:
        """Record the server's acceptance (and recipients refused one by one); clears a config error."""
        self._all("mark_sent", {"event_id": event_id, "detail": detail[:2000], "refused": _json(refused),
                                "message_id": message_id})

    def mark_final(self, event_id: uuid.UUID, state: str, reason: str | None, detail: str,
                   refused: dict[str, str] | None = None, message_id: str | None = None) -> None:
        """Record a final outcome other than sent: failed or ambiguous."""
        self._all("mark_final", {"event_id": event_id, "state": state, "reason": reason,
                                 "detail": detail[:2000], "refused": _json(refused), "message_id": message_id})

    def mark_retry(self, event_id: uuid.UUID, detail: str, delay: float,
                   refused: dict[str, str] | None = None, deferred: list[str] | None = None) -> None:
        """Put a mail back to `queued` with its next attempt time (the scheduler re-enqueues it)."""
        self._all("mark_retry", {"event_id": event_id, "detail": detail[:2000], "delay": delay,
                                 "refused": _json(refused), "deferred": deferred})

    def mark_backlog(self, event_id: uuid.UUID, reason: str, detail: str) -> None:
        """Divert a claimed mail to the backlog (a provider's own quota was hit)."""
        self._all("mark_backlog", {"event_id": event_id, "reason": reason, "detail": detail[:2000]})

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

    def move(self, ids: list[str] | None, project: str | None, from_state: str, to_state: str,
             detail: str) -> dict[str, str]:
        """Resume (to `queued`) or suspend selected mails in one transaction; an answer per id.

        `ids=None` selects every mail in from_state (of the project, if given) and unpauses.
        Resumed mails count in their day's totals (an admin override of the limit) and become due.
        """
        with self._conn() as conn, conn.transaction():
            rows = self._lock(conn, ids, project, from_state)
            outcomes = _outcomes(rows, ids, project, from_state, "resumed" if to_state == "queued" else to_state)
            chosen = [uuid.UUID(k) for k, v in outcomes.items() if v in ("resumed", to_state)]
            if chosen and to_state == "queued":
                self._count_resumed(conn, chosen)
                conn.execute(self.q["requeue_resumed"], {"ids": chosen, "detail": detail})
            elif chosen:
                conn.execute(self.q["suspend_selected"], {"ids": chosen, "detail": detail})
            if ids is None and to_state == "queued":
                conn.execute(self.q["unpause_project"] if project else self.q["unpause_all"], {"project": project})
            return outcomes

    def _lock(self, conn: psycopg.Connection, ids: list[str] | None, project: str | None,
              state: str) -> list[dict[str, Any]]:
        if ids is None:
            return conn.execute(self.q["lock_all_in_state"], {"state": state, "project": project}).fetchall()
        return conn.execute(self.q["lock_selected"], {"ids": [uuid.UUID(str(i)) for i in ids]}).fetchall()

    def _count_resumed(self, conn: psycopg.Connection, ids: list[uuid.UUID]) -> None:
        for row in conn.execute(self.q["count_resumed_quota"], {"ids": ids}).fetchall():
            conn.execute(self.q["add_quota"], {"scope": row["project"], "day": row["day"], "n": row["n"]})
        day = conn.execute(self.q["global_day"]).fetchone()["day"]
        conn.execute(self.q["add_quota"], {"scope": "*", "day": day, "n": len(ids)})

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
            out[row["key"]] = self._one("auto_resume", {"project": row["key"], "now": now, "max": batch})["resumed"]
        return out

    def set_auto_resume(self, project: str, enabled: bool) -> bool:
        """Turn a project's auto resume on or off; False for an unknown project."""
        return self._rowcount("set_auto_resume", {"project": project, "enabled": enabled}) == 1

    def control_answer(self, request_id: str) -> dict | None:
        """The recorded answer to a control request, or None."""
        row = self._one("control_answer", {"request_id": request_id})
        return row["answer"] if row else None

    def record_control(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        """Record the answer to a control request and its audit entry."""
        with self._conn() as conn, conn.transaction():
            conn.execute(self.q["record_control"], {"request_id": message["request_id"],
                                                    "action": message["action"], "answer": Jsonb(answer)})
            params = {k: v for k, v in message.items() if k not in ("signature", "requested_by")}
            conn.execute(self.q["record_audit"], {
                "actor": message.get("requested_by", "?"), "action": message["action"],
                "project": message.get("project"), "params": Jsonb(params),
                "touched": answer.get("touched", 0), "result": Jsonb(answer)})

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

    # -- scheduler ----------------------------------------------------------------------------

    def take_due_retries(self, limit: int = 500) -> list[Requeue]:
        """Queued mails whose retry time has come, made claimable now."""
        return [Requeue.from_row(r) for r in self._all("take_due_retries", {"limit": limit})]

    def take_stale_queued(self, stale_after: float, limit: int = 500) -> list[Requeue]:
        """Queued mails nobody has taken for a long time (a lost broker message)."""
        return [Requeue.from_row(r) for r in
                self._all("take_stale_queued", {"stale_after": stale_after, "limit": limit})]

    def recover_stale_sending(self, stale_after: float, limit: int = 500) -> list[Requeue]:
        """Mails stuck in `sending` (a worker died): queue once more, ambiguous the second time."""
        rows = self._all("recover_stale_sending", {"stale_after": stale_after, "limit": limit})
        return [Requeue.from_row(r) for r in rows if r["state"] == "queued"]


def _outcomes(rows: list[dict[str, Any]], ids: list[str] | None, project: str | None, state: str,
              done: str) -> dict[str, str]:
    """What happens to each selected id: `done`, or why not."""
    found = {str(r["event_id"]): r for r in rows}
    out: dict[str, str] = {}
    for key in ([str(r["event_id"]) for r in rows] if ids is None else [str(i) for i in ids]):
        row = found.get(key)
        if row is None:
            out[key] = "unknown id"
        elif project and row["project"] != project:
            out[key] = f"belongs to project {row['project']}"
        elif row["state"] != state:
            out[key] = f"not {state} (it is {row['state']})"
        else:
            out[key] = done
    return out


def _json(value: Any) -> Jsonb | None:
    return Jsonb(value) if value else None

