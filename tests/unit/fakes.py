"""In-memory fakes of deskmail's I/O ports: the store (ledger, projects, quota, control requests) and a transport.

FakeStore keeps the observable rules of the SQL that admission, control and delivery rely on
(workers/sql/queries.sql and the functions of workers/sql/migrations): quota taken unit by unit and never
over a limit, in each project's day and the global day; backlog reasons and details; leases held by a
token, only whose holder writes the outcome; refunds; bulk moves with an outcome per id; auto resume.
tests/integration/test_fake_store.py runs the same scenarios against the real Store and this fake and
compares what they show, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence
from zoneinfo import ZoneInfo

from deskmail.workers.config import Config
from deskmail.workers.constants import MailService
from deskmail.workers.delivery import Deliverer
from deskmail.workers.errors import DataRefused
from deskmail.workers.gate import GroupWrites
from deskmail.workers.leases import LeaseKeeper
from deskmail.workers.records import Admission, Attempt, AttemptOutcome, Claim, Mail, MoveBatch, Project, Requeue
from deskmail.workers.secrets import SecretBox
from deskmail.workers.settings import SettingsService
from deskmail.workers.store import MOVED, _outcome_rows
from deskmail.workers.transports import phase
from deskmail.workers.transports.base import Delivered, Envelope, Outcome, Transport, TransportFailure

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


class Clock:
    """The fake's now(): fixed at `start` until advanced, or (start None) the real time, strictly increasing
    like PostgreSQL's now() from one transaction to the next."""

    def __init__(self, start: datetime | None = NOW) -> None:
        self.start, self.offset, self.last = start, timedelta(0), datetime.min.replace(tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        if self.start is not None:
            return self.start + self.offset
        self.last = max(datetime.now(timezone.utc) + self.offset, self.last + timedelta(microseconds=1))
        return self.last

    def advance(self, seconds: float) -> None:
        """Move now() forward."""
        self.offset += timedelta(seconds=seconds)


@dataclass
class MailRow:
    """One row of the mail table (the ledger, which is also the backlog)."""

    event_id: uuid.UUID
    seq: int
    state: str
    received_at: datetime
    project: str | None = None
    kind: str | None = None
    priority: int = 1
    reason: str | None = None
    detail: str | None = None
    event: dict | None = None
    subject: str | None = None
    recipients: int | None = None
    mail_service: str | None = None
    message_id: str | None = None
    attempts: int = 0
    takeovers: int = 0
    refused: dict | None = None
    deferred: list[str] | None = None
    next_attempt_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    claimed_at: datetime | None = None
    sent_at: datetime | None = None
    lease_token: uuid.UUID | None = None
    lease_until: datetime | None = None
    claimed_by: str | None = None
    takeover_marked_at: datetime | None = None
    phase: str | None = None
    duplicate_risk: bool = False
    quota_day: date | None = None
    global_quota_day: date | None = None
    lifetime_from: datetime | None = None
    raw: str | None = None
    raw_size: int | None = None


@dataclass
class ProjectRow:
    """One row of the projects table."""

    key: str
    updated_at: datetime
    mail_service: str | None = None
    settings: dict | None = None
    secrets: bytes | None = None
    settings_version: int = 0
    time_zone: str = "UTC"
    per_day: int | None = None
    recipients_per_mail: int | None = None
    paused_reason: str | None = None
    paused_at: datetime | None = None
    auto_resume: bool = False
    config_error: str | None = None
    config_error_at: datetime | None = None


@dataclass
class Tables:
    """Everything the fake holds; copied whole by atomic() so a failed block leaves nothing behind."""

    mails: dict[uuid.UUID, MailRow] = field(default_factory=dict)
    projects: dict[str, ProjectRow] = field(default_factory=dict)
    global_limits: dict[str, Any] = field(default_factory=lambda: {"per_day": None, "recipients_per_mail": None,
                                                                   "time_zone": "UTC"})
    quota: dict[tuple[str, date], int] = field(default_factory=dict)
    attempts: dict[tuple[uuid.UUID, int], dict[str, Any]] = field(default_factory=dict)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[tuple[str | None, str]] = field(default_factory=list)
    moved: list[tuple[str, int, uuid.UUID]] = field(default_factory=list)
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    links: set[tuple[uuid.UUID, str]] = field(default_factory=set)
    seq: int = 0


def _port(method: Callable) -> Callable:
    """A store call: one at a time (the lease renewer runs in a thread), and a scripted fault first if any."""
    @functools.wraps(method)
    def call(self: "FakeStore", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls[method.__name__] = self.calls.get(method.__name__, 0) + 1
            faults = self._faults.get(method.__name__)
            if faults:
                raise faults.pop(0)
            return method(self, *args, **kwargs)
    return call


def _json(value: Any) -> Any:
    """What a value becomes through a jsonb column (a fresh copy; tuples as lists)."""
    return json.loads(json.dumps(value))


def _rid(request_id: Any) -> str:
    return str(uuid.UUID(str(request_id)))


def _literal(text: str | None) -> str:
    """PostgreSQL's format('%L', text)."""
    if text is None:
        return "NULL"
    quoted = "'" + text.replace("'", "''") + "'"
    return "E" + quoted.replace("\\", "\\\\") if "\\" in text else quoted


def _lowest_limit(*limits: int | None) -> int | None:
    """nullif(least(nullif(a, 0), nullif(b, 0)), 0): the tighter of the set limits, None when none is."""
    set_ = [n for n in limits if n]
    return min(set_) if set_ else None


class FakeStore:
    """The store's methods that admission, control and delivery call (and a few reads for tests), in memory.

    `clock` is its now() (a Clock by default); `refuses(event)` true makes admitting that event fail as
    PostgreSQL refusing its data does; `fail(name, *errors)` makes the next calls of a method raise.
    """

    def __init__(self, clock: Callable[[], datetime] | None = None,
                 refuses: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.clock = clock or Clock()
        self.refuses = refuses
        self.db = Tables()
        self.calls: dict[str, int] = {}
        self._faults: dict[str, list[BaseException]] = {}
        self._lock = threading.RLock()

    def fail(self, name: str, *errors: BaseException) -> None:
        """Make the next len(errors) calls of method `name` raise these errors, in order."""
        self._faults.setdefault(name, []).extend(errors)

    @contextlib.contextmanager
    def atomic(self) -> Iterator["FakeStore"]:
        """This store, its calls in one transaction: all of the block's changes, or none if it raises."""
        with self._lock:
            saved = copy.deepcopy(self.db)
            try:
                yield self
            except BaseException:
                self.db = saved
                raise

    # -- time and quota (deskmail_take_quota, deskmail_refund) ---------------------------------

    def _day(self, time_zone: str, at: datetime | None = None) -> date:
        return (at or self.clock()).astimezone(ZoneInfo(time_zone)).date()

    def _take(self, scope: str, day: date, limit: int | None) -> bool:
        sent = self.db.quota.get((scope, day))
        if sent is not None and limit and sent + 1 > limit:
            return False
        self.db.quota[(scope, day)] = (sent or 0) + 1
        return True

    def _give_back(self, scope: str, day: date) -> None:
        if (scope, day) in self.db.quota:
            self.db.quota[(scope, day)] = max(self.db.quota[(scope, day)] - 1, 0)

    def _refund(self, row: MailRow) -> None:
        if row.quota_day is not None and row.project is not None:
            self._give_back(row.project, row.quota_day)
        if row.global_quota_day is not None:
            self._give_back("*", row.global_quota_day)
        row.quota_day = row.global_quota_day = None

    def _new_row(self, event_id: uuid.UUID, state: str, **values: Any) -> MailRow:
        self.db.seq += 1
        now = self.clock()
        row = MailRow(event_id, self.db.seq, state, now, updated_at=now, **values)
        self.db.mails[event_id] = row
        return row

    def _settings_row(self, project: str | None) -> ProjectRow | None:
        """The project's row when it has settings, else the `default` project's when that has them."""
        for key in (project, "default"):
            row = self.db.projects.get(key) if key is not None else None
            if row is not None and row.settings is not None:
                return row
        return None

    # -- admission (deskmail_admit) ------------------------------------------------------------

    @_port
    def admit_many(self, items: list[tuple[dict[str, Any], int, int]]) -> list[Admission]:
        """Record (event, priority, recipients) items and decide each, all in one transaction; in order."""
        with self.atomic():
            return [self._admit(event, priority, recipients) for event, priority, recipients in items]

    @_port
    def admit_with_attachments(self, items: list[tuple[dict[str, Any], int, int]],
                               blobs: Mapping[str, bytes]) -> list[Admission]:
        """admit_many, storing the blobs once per hash and linking each mail to those it refers to."""
        with self.atomic():
            self.db.blobs.update(blobs)
            admitted = [self._admit(event, priority, recipients) for event, priority, recipients in items]
            for event, _, _ in items:
                for attachment in event.get("attachments") or ():
                    self.db.links.add((uuid.UUID(str(event["event_id"])), attachment["sha256"]))
            return admitted

    def _admit(self, event: dict[str, Any], priority: int, recipients: int) -> Admission:
        if self.refuses is not None and self.refuses(event):
            raise DataRefused("PostgreSQL refused the data: (fake) this event's data")
        event_id = uuid.UUID(str(event["event_id"]))
        old = self.db.mails.get(event_id)
        if old is not None:
            return Admission(old.state, old.reason, old.detail, old.mail_service, False)
        project = event["project"]
        proj = self.db.projects.get(project)
        state, reason, detail = "queued", None, None
        if proj is None or proj.settings is None:
            default = self.db.projects.get("default")
            service = default.mail_service if default is not None and default.settings is not None else None
            if service is None:
                state, reason = "rejected", "unknown_project"
                detail = f"project: no settings for {_literal(project)} and no default project"
            elif proj is None:
                proj = self.db.projects[project] = ProjectRow(project, self.clock())
        else:
            service = proj.mail_service
        pday = gday = None
        if state == "queued":
            assert proj is not None
            glob = self.db.global_limits
            pday, gday = self._day(proj.time_zone), self._day(glob["time_zone"])
            rlim = _lowest_limit(proj.recipients_per_mail, glob["recipients_per_mail"])
            if rlim is not None and recipients > rlim:
                state, reason, detail = "backlog", "too_many_recipients", f"too many recipients, {recipients} > {rlim}"
            elif proj.paused_reason is not None:
                state, reason, detail = "backlog", "project_paused", f"project paused ({proj.paused_reason})"
            elif not self._take(project, pday, proj.per_day):
                state, reason, detail = "backlog", "daily_limit", f"daily limit of {proj.per_day} reached"
            elif not self._take("*", gday, glob["per_day"]):
                self.db.quota[(project, pday)] -= 1
                state, reason = "backlog", "global_daily_limit"
                detail = f"global daily limit of {glob['per_day']} reached (MAIL_LIMIT_PER_DAY_SMTP)"
        created = event.get("created_at")
        self._new_row(event_id, state, project=project, kind=event["kind"], priority=priority, reason=reason,
                      detail=detail, mail_service=service, event=_json(event), subject=event["subject"][:200],
                      recipients=recipients, created_at=datetime.fromisoformat(created) if created else None,
                      quota_day=pday if state == "queued" else None, global_quota_day=gday if state == "queued"
                      else None)
        if reason in ("daily_limit", "global_daily_limit") and proj is not None and proj.paused_reason is None:
            proj.paused_reason, proj.paused_at, proj.updated_at = reason, self.clock(), self.clock()
        return Admission(state, reason, detail, service, True)

    @_port
    def keep_rejected(self, event_id: uuid.UUID, reason: str, detail: str, excerpt: str, size: int,
                      project: str | None = None, kind: str | None = None) -> None:
        """Keep a message that cannot be admitted as `rejected` (once per id)."""
        if event_id not in self.db.mails:
            self._new_row(event_id, "rejected", project=project and project[:64], kind=kind and kind[:32],
                          reason=reason, detail=detail[:4000], raw=excerpt, raw_size=size)

    @_port
    def reachable(self) -> bool:
        """The fake is always there (script a fault on another method to play an outage)."""
        return True

    # -- delivery ------------------------------------------------------------------------------

    @_port
    def claim(self, event_ids: list[str], worker: str, lease: float, service: str) -> list[Claim]:
        """Lease to `worker` those of these mails that are queued, due, and sent through `service`."""
        try:
            ids = sorted({uuid.UUID(str(e)) for e in event_ids})
        except ValueError as exc:
            raise DataRefused(f"PostgreSQL refused the data: {exc}") from exc
        now, claims = self.clock(), []
        for event_id in ids:
            row = self.db.mails.get(event_id)
            settings = self._settings_row(row.project) if row is not None else None
            if row is None or row.state != "queued" or settings is None or settings.mail_service != service:
                continue
            if row.next_attempt_at is not None and row.next_attempt_at > now:
                continue
            row.state, row.attempts, row.claimed_at, row.claimed_by = "sending", row.attempts + 1, now, worker
            row.lease_token, row.lease_until = uuid.uuid4(), now + timedelta(seconds=lease)
            row.takeover_marked_at = None
            row.duplicate_risk = row.duplicate_risk or row.phase == "lost_in_data"
            row.phase, row.updated_at = None, now
            claims.append(Claim(row.event_id, row.project or "", row.kind or "", row.priority, _json(row.event),
                                row.message_id, row.attempts, row.lease_token, now,
                                row.lifetime_from or row.received_at, row.deferred and list(row.deferred),
                                settings.key, settings.settings_version))
        return claims

    @_port
    def reroute(self, event_ids: list[str], service: str) -> list[Requeue]:
        """Move queued mails whose project now sends through another service to that service."""
        out = []
        for event_id in {uuid.UUID(str(e)) for e in event_ids}:
            row = self.db.mails.get(event_id)
            settings = self._settings_row(row.project) if row is not None else None
            if row is not None and row.state == "queued" and settings is not None \
                    and settings.mail_service != service:
                row.mail_service, row.updated_at = settings.mail_service, self.clock()
                out.append(Requeue(row.event_id, row.priority, row.mail_service))
        return out

    @_port
    def renew_leases(self, held: list[tuple[uuid.UUID, uuid.UUID]], lease: float) -> set[uuid.UUID]:
        """Extend the leases still held by these (event id, token) pairs."""
        renewed = set()
        for event_id, token in held:
            row = self.db.mails.get(event_id)
            if row is not None and row.state == "sending" and row.lease_token == token:
                row.lease_until, row.takeover_marked_at = self.clock() + timedelta(seconds=lease), None
                renewed.add(event_id)
        return renewed

    @_port
    def record_outcomes(self, done: list[tuple[Claim, AttemptOutcome]], worker: str) -> set[uuid.UUID]:
        """Write attempts' outcomes; the ids whose mail took theirs (lease still held)."""
        with self.atomic():
            return self._record_all(done, worker)

    @_port
    def record_and_enter(self, done: list[tuple[Claim, AttemptOutcome]], entering: Sequence[Claim],
                         worker: str) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
        """Write outcomes and mark the entering mails as in DATA where their lease still holds."""
        with self.atomic():
            recorded = self._record_all(done, worker)
            entered = set()
            for claim in entering:
                row = self.db.mails.get(claim.event_id)
                if row is not None and row.lease_token == claim.lease_token and row.state == "sending":
                    row.phase = "data"
                    entered.add(claim.event_id)
            return recorded, entered

    def _record_all(self, done: list[tuple[Claim, AttemptOutcome]], worker: str) -> set[uuid.UUID]:
        rows = _outcome_rows(done).obj if done else []  # what the SQL reads: same cleaning, same order
        return {uuid.UUID(r["event_id"]) for r in rows if self._record(r, worker)}

    def _record(self, r: dict[str, Any], worker: str) -> bool:
        """deskmail_record_outcome."""
        event_id, now = uuid.UUID(r["event_id"]), self.clock()
        row = self.db.mails.get(event_id)
        if row is None:
            return False
        attempt = self.db.attempts.get((event_id, r["attempt"]))
        if attempt is None:
            self.db.attempts[(event_id, r["attempt"])] = {
                "attempt": r["attempt"], "worker": worker, "started_at": datetime.fromisoformat(r["started"]),
                "ended_at": now, "phase": row.phase, "outcome": r["outcome"], "detail": r["detail"]}
        elif attempt["outcome"] == "lost":
            attempt.update(outcome=r["outcome"], detail=r["detail"], ended_at=now, worker=worker)
        if row.lease_token != uuid.UUID(r["token"]):
            return False
        if row.state not in ("sending", "queued") or (row.state == "queued" and r["state"] == "queued"):
            return True  # written before, or a takeover that sends it again anyway
        if r["refund"]:
            self._refund(row)
        queued = r["state"] == "queued"
        row.state, row.reason, row.detail = r["state"], r["reason"], r["detail"]
        row.refused = r["refused"] if r["refused"] is not None else row.refused
        row.deferred = (r["deferred"] if r["deferred"] is not None else row.deferred) if queued else None
        row.message_id = r["message_id"] if r["message_id"] is not None else row.message_id
        row.next_attempt_at = now + timedelta(seconds=r["delay"]) if queued else None
        row.sent_at = now if r["state"] == "sent" else row.sent_at
        row.phase = None if queued else row.phase
        row.lease_until = row.takeover_marked_at = None
        row.updated_at = now
        project = self.db.projects.get(row.project or "")
        if project is not None:
            if r["state"] == "sent":
                project.config_error = project.config_error_at = None
            elif r["config_error"] is not None:
                project.config_error, project.config_error_at = r["config_error"], now
            if r["pause"] is not None and project.paused_reason is None:
                project.paused_reason, project.paused_at, project.updated_at = r["pause"], now, now
        return True

    @_port
    def attachment_contents(self, event: dict[str, Any]) -> dict[str, bytes]:
        """{sha256: bytes} of the blobs the event's attachments refer to."""
        hashes = {a["sha256"] for a in event.get("attachments") or () if "sha256" in a}
        return {h: self.db.blobs[h] for h in hashes if h in self.db.blobs}

    @_port
    def take_due_retries(self, limit: int = 500) -> list[Requeue]:
        """Queued mails whose retry time has come, made claimable now."""
        now = self.clock()
        due = sorted((r for r in self.db.mails.values()
                      if r.state == "queued" and r.next_attempt_at is not None and r.next_attempt_at <= now),
                     key=lambda r: (r.next_attempt_at, -r.priority, r.seq))[:limit]
        for row in due:
            row.next_attempt_at, row.updated_at = None, now
        return [Requeue(r.event_id, r.priority, r.mail_service) for r in due]

    @_port
    def take_over(self, grace: float, limit: int = 500) -> list[Requeue]:
        """deskmail_take_over: mark expired leases; take over those marked `grace` seconds ago."""
        now, out = self.clock(), []
        sending = [r for r in self.db.mails.values() if r.state == "sending" and r.lease_until is not None
                   and r.lease_until < now]
        for row in [r for r in sending if r.takeover_marked_at is None][:limit]:
            row.takeover_marked_at = now
        for row in [r for r in sending if r.takeover_marked_at is not None
                    and r.takeover_marked_at < now - timedelta(seconds=grace)][:limit]:
            if row.phase == "data" and row.duplicate_risk:
                state, reason = "ambiguous", "no_final_reply"
                detail = ("a worker was lost inside the DATA window a second time; the mail may or may not "
                          "have been delivered (no third copy is sent)")
            elif row.phase == "data":
                state, reason = "queued", None
                detail = ("a worker was lost inside the DATA window; sent again with the same Message-ID "
                          "(the receiver may get two copies)")
            elif row.takeovers >= 4:
                state, reason = "failed", "workers_lost"
                detail = "five workers were lost while sending this mail; not tried again"
            else:
                state, reason = "queued", None
                detail = "a worker was lost before DATA; sent again (no copy can have left)"
            self.db.attempts.setdefault((row.event_id, row.attempts), {
                "attempt": row.attempts, "worker": row.claimed_by or "?", "started_at": row.claimed_at or now,
                "ended_at": now, "phase": row.phase, "outcome": "lost", "detail": "lease expired: " + detail})
            if state == "failed" and not row.duplicate_risk:
                self._refund(row)
            row.phase = "lost_in_data" if row.phase == "data" and state == "queued" else None
            row.state, row.reason, row.detail, row.takeovers = state, reason, detail, row.takeovers + 1
            row.lease_until = row.takeover_marked_at = row.next_attempt_at = None
            row.updated_at = now
            if state == "queued":
                out.append(Requeue(row.event_id, row.priority, row.mail_service))
        return out

    # -- projects and limits -------------------------------------------------------------------

    @_port
    def save_settings(self, key: str, service: str, settings: dict, secrets: bytes | None, time_zone: str,
                      limits: dict[str, int | None] | None) -> None:
        """Save a project's settings; bumps its settings version; limits only when given."""
        limits, now = limits or {}, self.clock()
        row = self.db.projects.get(key)
        if row is None:
            row = self.db.projects[key] = ProjectRow(key, now, per_day=limits.get("per_day"),
                                                     recipients_per_mail=limits.get("recipients_per_mail"))
        elif limits:
            row.per_day, row.recipients_per_mail = limits.get("per_day"), limits.get("recipients_per_mail")
        row.mail_service, row.settings, row.secrets, row.time_zone = service, _json(settings), secrets, time_zone
        row.settings_version += 1
        row.config_error = row.config_error_at = None
        row.updated_at = now

    @_port
    def get_project(self, key: str) -> Project | None:
        """A project's row, or None."""
        row = self.db.projects.get(key)
        return Project.from_row(dataclasses.asdict(row)) if row is not None else None

    @_port
    def list_projects(self) -> list[Project]:
        """Every project, by key."""
        return [Project.from_row(dataclasses.asdict(self.db.projects[k])) for k in sorted(self.db.projects)]

    @_port
    def replace_secrets(self, key: str, old: bytes, new: bytes) -> bool:
        """Swap a project's sealed secrets if they are still `old`."""
        row = self.db.projects.get(key)
        if row is None or row.secrets != old:
            return False
        row.secrets = new
        return True

    @_port
    def set_global_limits(self, **limits: int | None) -> None:
        """Set the global per_day and/or recipients_per_mail."""
        self.db.global_limits.update({k: v for k, v in limits.items() if k in ("per_day", "recipients_per_mail")})

    @_port
    def set_project_limits(self, project: str, **limits: int | None) -> bool:
        """Set a project's per_day and/or recipients_per_mail; False for an unknown project."""
        row = self.db.projects.get(project)
        if row is None:
            return False
        for name in ("per_day", "recipients_per_mail"):
            if name in limits:
                setattr(row, name, limits[name])
        row.updated_at = self.clock()
        return True

    @_port
    def set_auto_resume(self, project: str, enabled: bool) -> bool:
        """Turn a project's auto resume on or off; False for an unknown project."""
        row = self.db.projects.get(project)
        if row is None:
            return False
        row.auto_resume, row.updated_at = enabled, self.clock()
        return True

    @_port
    def set_pause(self, project: str, reason: str | None) -> bool:
        """Pause (reason) or unpause (None) a project; False if nothing changed."""
        row = self.db.projects.get(project)
        if row is None or (row.paused_reason is None) == (reason is None):
            return False
        row.paused_reason, row.paused_at, row.updated_at = reason, reason and self.clock(), self.clock()
        return True

    @_port
    def unpause(self, project: str | None) -> None:
        """Unpause a project, or every project (None)."""
        for row in self.db.projects.values():
            if (project is None or row.key == project) and row.paused_reason is not None:
                row.paused_reason = row.paused_at = None
                row.updated_at = self.clock()

    @_port
    def auto_resume(self, now: datetime, project: str | None = None, batch: int = 1000) -> dict[str, int]:
        """Drain the backlog of auto-resume projects within the limits; {project: mails made due}."""
        keys = sorted(k for k, row in self.db.projects.items() if row.auto_resume and project in (None, k)
                      and any(m.project == k and m.state == "backlog" for m in self.db.mails.values()))
        return {key: self._auto_resume(key, now, batch) for key in keys}

    def _auto_resume(self, key: str, now: datetime, most: int) -> int:
        """deskmail_auto_resume: oldest first, records before notifications, as long as both limits allow."""
        proj, glob = self.db.projects[key], self.db.global_limits
        rlim = _lowest_limit(proj.recipients_per_mail, glob["recipients_per_mail"])
        pday, gday = self._day(proj.time_zone, now), self._day(glob["time_zone"], now)

        def waiting() -> list[MailRow]:
            return sorted((m for m in self.db.mails.values() if m.project == key and m.state == "backlog"
                           and (rlim is None or (m.recipients is not None and m.recipients <= rlim))),
                          key=lambda m: (-m.priority, m.seq))
        resumed = 0
        for row in waiting()[:most]:
            if not self._take(key, pday, proj.per_day):
                break
            if not self._take("*", gday, glob["per_day"]):
                self.db.quota[(key, pday)] -= 1
                break
            row.state, row.reason, row.detail, row.next_attempt_at = "queued", None, "auto resumed", self.clock()
            row.quota_day, row.global_quota_day, row.updated_at = pday, gday, self.clock()
            resumed += 1
        if not waiting() and proj.paused_reason is not None:
            proj.paused_reason = proj.paused_at = None
            proj.updated_at = self.clock()
        return resumed

    # -- admin control -------------------------------------------------------------------------

    @_port
    def project_known(self, project: str) -> bool:
        """True when the project has a row or any mail."""
        return project in self.db.projects or any(m.project == project for m in self.db.mails.values())

    @_port
    def count_in_state(self, state: str, project: str | None) -> int:
        """How many mails are in `state` (of the project, if given)."""
        return sum(m.state == state and project in (None, m.project) for m in self.db.mails.values())

    @_port
    def move_batch(self, ids: list[str] | None, project: str | None, from_state: str, to_state: str,
                   detail: str, limit: int = 5000, through: int | None = None,
                   since: str | None = None) -> MoveBatch:
        """Move one batch of mails between states, as Store.move_batch (an outcome per given id; without ids,
        the oldest of the state up to seq `through`, records first)."""
        done = MOVED[to_state]
        with self.atomic():
            if ids is None:
                rows = sorted((m for m in self.db.mails.values()
                               if m.state == from_state and project in (None, m.project)
                               and (through is None or m.seq <= through)
                               and (since is None or m.updated_at is None
                                    or m.updated_at <= datetime.fromisoformat(since))),
                              key=lambda m: (-m.priority, m.seq))[:limit]
                outcomes, taken = None, rows
            else:
                wanted = {uuid.UUID(str(i)) for i in ids}
                rows = sorted((m for m in self.db.mails.values() if m.event_id in wanted),
                              key=lambda m: (-m.priority, m.seq))
                outcomes = self._outcomes(rows, ids, project, from_state, done)
                taken = [m for m in rows if outcomes.get(str(m.event_id)) == done]
            self._move(taken, to_state, detail)
        counts: dict[str, int] = {done: len(taken)} if taken else {}
        for value in (outcomes or {}).values():
            if value != done:
                counts[value] = counts.get(value, 0) + 1
        return MoveBatch(len(rows) if ids is None else len(ids), counts, outcomes,
                         [Requeue(m.event_id, m.priority, m.mail_service) for m in taken],
                         frozenset(m.project for m in taken if m.project))

    @staticmethod
    def _outcomes(rows: list[MailRow], ids: list[str], project: str | None, state: str,
                  done: str) -> dict[str, str]:
        found = {str(m.event_id): m for m in rows}
        out: dict[str, str] = {}
        for key in map(str, ids):
            row = found.get(key)
            if row is None:
                out[key] = "unknown id"
            elif project and row.project != project:
                out[key] = f"belongs to project {row.project}"
            elif row.state != state:
                out[key] = f"not {state} (it is {row.state})"
            else:
                out[key] = done
        return out

    def _move(self, rows: list[MailRow], to_state: str, detail: str) -> None:
        """requeue_resumed, suspend_selected or close_ambiguous on these rows."""
        now = self.clock()
        gday = self._day(self.db.global_limits["time_zone"])
        for row in rows:
            if to_state == "queued":  # a mail holding no unit takes one of today, whatever the limit
                proj = self.db.projects.get(row.project or "")
                day = self._day(proj.time_zone if proj is not None else "UTC")
                if row.quota_day is None:
                    self.db.quota[(row.project or "", day)] = self.db.quota.get((row.project or "", day), 0) + 1
                if row.global_quota_day is None:
                    self.db.quota[("*", gday)] = self.db.quota.get(("*", gday), 0) + 1
                row.duplicate_risk = row.duplicate_risk or row.state == "ambiguous"
                row.state, row.reason, row.next_attempt_at, row.lifetime_from, row.deferred = \
                    "queued", None, None, now, None
                row.quota_day, row.global_quota_day = row.quota_day or day, row.global_quota_day or gday
            elif to_state == "suspended":
                row.state = "suspended"
            else:
                row.state, row.reason, row.sent_at = "sent", "closed_by_admin", row.sent_at or now
            row.detail, row.updated_at = detail, now

    @_port
    def bulk_selection(self, state: str, project: str | None) -> tuple[int, int, str]:
        """(how many mails are in `state`, of the project if given; the newest one's seq; the time now)."""
        seqs = [m.seq for m in self.db.mails.values() if m.state == state and project in (None, m.project)]
        return len(seqs), max(seqs, default=0), self.clock().isoformat()

    @_port
    def accept_control_work(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        """Record a bulk action as accepted: its answer so far and the work left."""
        row = self.db.requests.get(_rid(message["request_id"]))
        if row is not None:
            row.update(answer=_json(answer), answered_at=self.clock(),
                       work=_json({k: v for k, v in message.items() if k != "signature"}))

    @_port
    def stalled_control_work(self, seconds: float, limit: int = 10) -> list[dict[str, Any]]:
        """The work of accepted bulk actions without progress for `seconds`, oldest first."""
        since = self.clock() - timedelta(seconds=seconds)
        stalled = sorted((r for r in self.db.requests.values() if r.get("work") is not None
                          and r["answer"].get("running") and r["answered_at"] < since),
                         key=lambda r: r["answered_at"])[:limit]
        for row in stalled:
            row["answered_at"] = self.clock()  # taking one counts as progress
        return [_json(r["work"]) for r in stalled]

    @_port
    def claim_control_request(self, request_id: str, action: str) -> bool:
        """Take a request id for applying it now; False if it was taken before."""
        rid = _rid(request_id)
        if rid in self.db.requests:
            return False
        self.db.requests[rid] = {"action": action, "answer": {}}
        return True

    @_port
    def control_answer(self, request_id: str) -> dict | None:
        """The recorded answer to a control request, or None."""
        return self._answer(request_id)

    @_port
    def lock_control_progress(self, request_id: str) -> dict[str, Any] | None:
        """A claimed request's answer so far."""
        return self._answer(request_id)

    @_port
    def control_progress(self, request_id: str, progress: dict[str, Any]) -> None:
        """Record how far a running request got."""
        self._set_answer(request_id, progress)

    @_port
    def record_control(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        """Record the answer to a claimed request and its audit entry."""
        self._set_answer(message["request_id"], answer)
        self._audit(message, answer)

    def _answer(self, request_id: str) -> dict[str, Any] | None:
        row = self.db.requests.get(_rid(request_id))
        return _json(row["answer"]) if row is not None else None

    def _set_answer(self, request_id: str, answer: dict[str, Any]) -> None:
        """As answer_control_request: a request answered for good (not `running`) has no work left."""
        row = self.db.requests.get(_rid(request_id))
        if row is not None:
            row.update(answer=_json(answer), answered_at=self.clock())
            if not answer.get("running"):
                row["work"] = None

    @_port
    def record_control_refusal(self, message: dict[str, Any], reason: str) -> None:
        """Keep a refused control message's reason and audit entry; its request id stays free."""
        self.db.refusals.append((message.get("request_id"), reason))
        self._audit(message, {"ok": False, "error": reason, "touched": 0, "refused": True})

    @_port
    def control_refusal(self, request_id: str) -> str | None:
        """Why the newest message carrying this request id was refused, or None."""
        reasons = [r for rid, r in self.db.refusals if rid is not None and _rid(rid) == _rid(request_id)]
        return reasons[-1] if reasons else None

    def _audit(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        params = {k: ("(sealed)" if k == "sealed_secrets" else v) for k, v in message.items()
                  if k not in ("signature", "requested_by")}
        projects = answer.get("projects") or []
        project = message.get("project") if isinstance(message.get("project"), str) else \
            (projects[0] if len(projects) == 1 else None)
        self.db.audit.append({"id": len(self.db.audit) + 1, "at": self.clock(),
                              "actor": str(message.get("requested_by", "?"))[:200],
                              "action": str(message.get("action", "?"))[:64], "project": project,
                              "params": _json(params), "touched": answer.get("touched", 0), "result": _json(answer)})

    @_port
    def audit(self, project: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit entries."""
        return [dict(a) for a in reversed(self.db.audit) if project in (None, a["project"])][:limit]

    @_port
    def keep_moved_ids(self, request_id: str, ids: list[uuid.UUID]) -> None:
        """Keep the ids a bulk action moved."""
        for event_id in ids:
            self.db.moved.append((_rid(request_id), len(self.db.moved) + 1, event_id))

    @_port
    def add_control_test(self, message: dict[str, Any], project: str, service: str) -> None:
        """Keep what a Test action is to test."""
        self.db.tests[_rid(message["request_id"])] = {"project": project, "mail_service": service,
                                                      "message": _json(message)}

    # -- reading -------------------------------------------------------------------------------

    @_port
    def get_mail(self, event_id: uuid.UUID | str) -> Mail | None:
        """One ledger entry, or None."""
        row = self.db.mails.get(uuid.UUID(str(event_id)))
        return Mail.from_row(dataclasses.asdict(row)) if row is not None else None

    @_port
    def attempts_of(self, event_id: uuid.UUID | str) -> list[Attempt]:
        """Every delivery attempt of a mail, oldest first."""
        key = uuid.UUID(str(event_id))
        return [Attempt.from_row(a) for (e, _), a in sorted(self.db.attempts.items()) if e == key]

    @_port
    def sent_today(self, scope: str, time_zone: str) -> int:
        """Quota units taken today in a scope (a project key, or '*')."""
        return self.db.quota.get((scope, self._day(time_zone)), 0)

    @_port
    def project_counts(self, project: str) -> dict[str, int]:
        """How many mails of a project are in each state."""
        counts: dict[str, int] = {}
        for m in self.db.mails.values():
            if m.project == project:
                counts[m.state] = counts.get(m.state, 0) + 1
        return counts

    @_port
    def list_state(self, state: str, *, project: str | None = None, reason: str | None = None,
                   after: int = 0, limit: int = 50) -> list[dict[str, Any]]:
        """One page of mails in a state in arrival order, after seq `after`."""
        rows = sorted((m for m in self.db.mails.values() if m.state == state and m.seq > after
                       and project in (None, m.project) and reason in (None, m.reason)), key=lambda m: m.seq)
        return [{k: getattr(m, k) for k in ("seq", "event_id", "project", "kind", "recipients", "subject", "reason",
                                            "detail", "received_at")} for m in rows[:limit]]


class Before:
    """A transport answer given before the message is handed over (connection refused, a 5xx to RCPT)."""

    def __init__(self, failure: TransportFailure) -> None:
        self.failure = failure


Answer = Delivered | TransportFailure | Before


class FakeTransport(Transport):
    """A mail service that answers as scripted, one answer per send (the last one repeats).

    Like every transport it calls phase.before_data() right before handing the message over; `envelopes`
    holds the messages handed over. `on_data(envelope)` runs after the hand-over, before the answer
    (what happens elsewhere while a server takes its time); `on_connect(envelope)` before the hand-over.
    """

    service = MailService.SMTP

    def __init__(self, *answers: Answer, on_connect: Callable[[Envelope], None] | None = None,
                 on_data: Callable[[Envelope], None] | None = None) -> None:
        self.answers = list(answers) or [Delivered("250 2.0.0 OK")]
        self.on_connect, self.on_data = on_connect, on_data
        self.envelopes: list[Envelope] = []

    def send(self, settings: Any, envelope: Envelope) -> Delivered:
        """Hand the message over after the phase hook allowed it, then answer as scripted."""
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if self.on_connect is not None:
            self.on_connect(envelope)
        if isinstance(answer, Before):
            raise answer.failure
        phase.before_data()
        self.envelopes.append(envelope)
        if self.on_data is not None:
            self.on_data(envelope)
        if isinstance(answer, TransportFailure):
            raise answer
        return answer


class Handed:
    """The broker's side of handing mail on (an Enqueue): what each transport message carried."""

    def __init__(self) -> None:
        self.messages: list[tuple[MailService, list[str], int]] = []

    def __call__(self, service: MailService, ids: list[str], priority: int) -> None:
        self.messages.append((service, list(ids), priority))

    @property
    def ids(self) -> list[str]:
        """Every event id handed on, in order."""
        return [i for _, ids, _ in self.messages for i in ids]


def event(project: str = "alpha", *, to: tuple[str, ...] = ("user@example.com",), kind: str = "notification",
          **extra: Any) -> dict[str, Any]:
    """A valid event as a producer publishes it."""
    return {"event_id": str(uuid.uuid4()), "project": project, "kind": kind, "to": list(to),
            "subject": extra.pop("subject", "Ticket #42 updated"), "text": extra.pop("text", "Hello.\n"), **extra}


def configure(store: Any, project: str = "alpha", *, service: str = "smtp", per_day: int | None = None,
              recipients: int | None = None, time_zone: str = "UTC") -> None:
    """Give a project mail settings (no secrets) and, when given, limits, as `deskmail settings set` does."""
    document = {"mail_service": service, "from_address": "desk@example.org", "time_zone": time_zone,
                service: {}}
    limits = {"per_day": per_day, "recipients_per_mail": recipients} if per_day or recipients else None
    store.save_settings(project, service, document, None, time_zone, limits)


BOX = SecretBox(["p8q5cF2F8l8o0z6Xq2Yb7mJx3mO0d3k1tV9g4h5JrQ0="])
FAILURES = {  # each outcome as a server would answer: (outcome, detail, refused recipients)
    "transient": (Outcome.TRANSIENT, "451 4.3.0 try again later", None),
    "permanent": (Outcome.PERMANENT, "550 5.1.1 no such user", {"user@example.com": "550"}),
    "ambiguous": (Outcome.AMBIGUOUS, "no reply after the end of DATA", None),
    "quota": (Outcome.QUOTA, "550 5.4.5 Daily user sending limit exceeded", None),
    "configuration": (Outcome.CONFIGURATION, "535 5.7.8 bad credentials", None),
}


def failure(name: str) -> TransportFailure:
    """A fresh transport failure of one of FAILURES."""
    outcome, detail, refused = FAILURES[name]
    return TransportFailure(outcome, detail, refused=refused)


def deliverer(store: Any, transport: FakeTransport, *, worker: str = "host:1", handed: Handed | None = None,
              clock: Callable[[], datetime] | None = None, **config: Any) -> Deliverer:
    """A transport actor's callable on the store (on the fake's clock unless told), its lease renewer idle
    (tests move the clock instead)."""
    cfg = Config(database_url="", amqp_url="", **{"retry_base": 10, "retry_cap": 100, **config})
    return Deliverer(MailService.SMTP, store, SettingsService(store, lambda: BOX), {"smtp": transport}, cfg,
                     LeaseKeeper(store, cfg.lease_seconds, 3600), worker, handed or Handed(),
                     GroupWrites(store, worker), clock=clock or store.clock)


def deliver(store: Any, ids: list[str], *answers: Answer, **options: Any) -> FakeTransport:
    """Run one transport message of these ids through a transport answering as scripted."""
    transport = FakeTransport(*answers)
    deliverer(store, transport, **options)(ids)
    return transport
