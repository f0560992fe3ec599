"""The control actor: admin commands that change what gets sent, applied once and audited.

A command travels as a control message (schemas/control-message.v1.json) on `deskmail.control`.
It is refused when malformed, unsigned or mis-signed (DESKMAIL_CONTROL_KEY), or older than
DESKMAIL_CONTROL_MAX_AGE; a refusal is kept apart (control_refusals and the audit) and never
takes the request id it carries. An accepted command is applied in ONE transaction that first
takes its request id, then applies the action and writes its answer and audit row: a duplicate
delivered at the same time waits for that transaction and finds the request applied. A bulk
move (MOVES) is accepted in such a transaction instead (request id, selection fixed and counted,
the work kept with the request) and then applied batch by batch, by this worker, the redelivered
message (never refused for its age once accepted) or the scheduler (`finish_stalled`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Protocol

from deskmail import schemas
from deskmail.workers.constants import MailService, State
from deskmail.workers.errors import SecretError, StoreUnavailable
from deskmail.workers.handing import DueStore, Enqueue, hand_on
from deskmail.workers.records import MoveBatch, Project
from deskmail.workers.rejects import claimed_fields
from deskmail.workers.secrets import SecretBox
from deskmail.workers.settings import merge_secrets, split_secrets
from deskmail.workers.store import MOVED

if TYPE_CHECKING:
    from deskmail.workers.runtime import Runtime

log = logging.getLogger(__name__)
CONTROL_SCHEMA = "control-message.v1"
BULK_BATCH = 5000
"""Mails one transaction of a bulk action moves: its progress is committed (and shown) after each."""
BULK_STALLED_AFTER = 60.0
"""Seconds without progress after which the scheduler goes on with an accepted bulk action (a batch takes
well under one; a live worker and the scheduler going on at once share the batches)."""
DispatchTest = Callable[[MailService, str], None]
"""Publishes a Test message (a request id) to the transport queue of a mail service."""
MOVES = {"backlog.resume": (State.BACKLOG, State.QUEUED), "backlog.suspend": (State.BACKLOG, State.SUSPENDED),
         "suspended.resume": (State.SUSPENDED, State.QUEUED), "failed.retry": (State.FAILED, State.QUEUED),
         "ambiguous.resend": (State.AMBIGUOUS, State.QUEUED), "ambiguous.close": (State.AMBIGUOUS, State.SENT)}
DEFAULT_PROJECT = "default"
_STAMP = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
                    r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


class ControlStore(DueStore, Protocol):
    """What the control actor needs of the store: Store's methods of the same names (or a fake with their rules).

    `atomic()` gives a store of the same kind whose calls run in one transaction.
    """

    def atomic(self) -> ContextManager["ControlStore"]: ...

    def claim_control_request(self, request_id: str, action: str) -> bool: ...

    def control_answer(self, request_id: str) -> dict | None: ...

    def lock_control_progress(self, request_id: str) -> dict[str, Any] | None: ...

    def control_progress(self, request_id: str, progress: dict[str, Any]) -> None: ...

    def record_control(self, message: dict[str, Any], answer: dict[str, Any]) -> None: ...

    def record_control_refusal(self, message: dict[str, Any], reason: str) -> None: ...

    def move_batch(self, ids: list[str] | None, project: str | None, from_state: str, to_state: str,
                   detail: str, limit: int = 5000, through: int | None = None,
                   since: str | None = None) -> MoveBatch: ...

    def bulk_selection(self, state: str, project: str | None) -> tuple[int, int, str]: ...

    def accept_control_work(self, message: dict[str, Any], answer: dict[str, Any]) -> None: ...

    def stalled_control_work(self, seconds: float, limit: int = 10) -> list[dict[str, Any]]: ...

    def keep_moved_ids(self, request_id: str, ids: list[uuid.UUID]) -> None: ...

    def project_known(self, project: str) -> bool: ...

    def count_in_state(self, state: str, project: str | None) -> int: ...

    def unpause(self, project: str | None) -> None: ...

    def get_project(self, key: str) -> Project | None: ...

    def list_projects(self) -> list[Project]: ...

    def set_pause(self, project: str, reason: str | None) -> bool: ...

    def set_global_limits(self, **limits: int | None) -> None: ...

    def set_project_limits(self, project: str, **limits: int | None) -> bool: ...

    def set_auto_resume(self, project: str, enabled: bool) -> bool: ...

    def auto_resume(self, now: datetime, project: str | None = None, batch: int = 1000) -> dict[str, int]: ...

    def save_settings(self, key: str, service: str, settings: dict, secrets: bytes | None, time_zone: str,
                      limits: dict[str, int | None] | None) -> None: ...

    def replace_secrets(self, key: str, old: bytes, new: bytes) -> bool: ...

    def add_control_test(self, message: dict[str, Any], project: str, service: str) -> None: ...


def canonical(message: dict[str, Any]) -> bytes:
    """The bytes a control message's signature covers: sorted-key compact JSON without `signature`."""
    body = {k: v for k, v in message.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(message: dict[str, Any], key: str) -> str:
    """HMAC-SHA256 of the canonical message, hex."""
    return hmac.new(key.encode("utf-8"), canonical(message), hashlib.sha256).hexdigest()


def parse_requested_at(text: object) -> datetime | None:
    """An RFC 3339 date-time as UTC (`z`, `t`, offsets, fractions, a leap second `:60`); None if it is none."""
    match = _STAMP.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        stamp = datetime(int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59),
                         tzinfo=timezone.utc)
        stamp += timedelta(seconds=int(second) - min(int(second), 59))  # 23:59:60 is the instant after :59
        if fraction:
            stamp += timedelta(microseconds=int(fraction[1:7].ljust(6, "0")))
        if offset not in ("Z", "z"):
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if hours > 23 or minutes > 59:
                return None
            stamp -= (1 if offset[0] == "+" else -1) * timedelta(hours=hours, minutes=minutes)
        return stamp
    except (ValueError, OverflowError):  # day 31 of a 30-day month, or beyond year 9999 in UTC
        return None


class Controller:
    """Callable behind the `deskmail.control` actor."""

    def __init__(self, store: ControlStore, key: str, max_age: float, enqueue: Enqueue,
                 box: Callable[[], SecretBox] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 dispatch_test: DispatchTest | None = None, batch: int = BULK_BATCH) -> None:
        self.store, self.key, self.max_age, self.enqueue, self.clock = store, key, max_age, enqueue, clock
        self.box, self.dispatch_test, self.batch = box, dispatch_test, batch
        self._hand_on: ThreadPoolExecutor | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        """Apply one control message, or record why it was refused."""
        message = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], dict) else None
        if message is None:
            self._refuse(args[0] if args else {}, "(root): a control message must carry exactly one object")
            return
        refusal = self._refusal(message)
        if refusal is None and (expired := self._expired(message)) and not self._accepted(message):
            refusal = expired  # an accepted bulk action goes on however long its message took to come back
        if refusal:
            self._refuse(message, refusal)
            return
        if message["action"] in MOVES:
            self._bulk(message, *MOVES[message["action"]])
            return
        with self.store.atomic() as tx:
            if not tx.claim_control_request(message["request_id"], message["action"]):
                log.info("control request %s applied before; not applied again", message["request_id"])
                return
            answer = self._apply(tx, message)
            if answer.get("running"):
                tx.control_progress(message["request_id"], answer)  # finished, and audited, by another worker
            else:
                tx.record_control(message, answer)
        if answer.get("dispatch"):
            self._dispatch(message, answer)
        elif answer.get("touched"):
            while hand_on(self.enqueue, self.store.take_due_retries(1000)):  # auto resume made mail due
                pass

    # -- bulk moves ---------------------------------------------------------------------------

    def _bulk(self, message: dict[str, Any], from_state: str, to_state: str) -> None:
        """Accept the action (its selection fixed and counted, committed with the work left to do: the
        command answers with the count at once), then move the selected mails in batches, each committed
        with the request's progress and handed to the broker while the next one moves; the answer (counts)
        and audit entry go with the last batch."""
        rid = message["request_id"]
        with self.store.atomic() as tx:
            if tx.claim_control_request(rid, message["action"]):
                answer = self._bulk_start(tx, message, from_state)
                if answer.get("running"):
                    tx.accept_control_work(message, answer)
                else:
                    tx.record_control(message, answer)
            elif not (tx.control_answer(rid) or {}).get("running"):
                log.info("control request %s applied before; not applied again", rid)
                return
        self._bulk_batches(message, from_state, to_state)

    def _bulk_start(self, store: ControlStore, message: dict[str, Any], from_state: str) -> dict[str, Any]:
        project, everything = message.get("project"), bool(message.get("all"))
        if project and not store.project_known(project):
            return _unknown(project)
        if everything and message["action"] == "backlog.resume":
            store.unpause(project)  # resuming the whole backlog unpauses (new mail goes out behind it)
        if not everything:
            return {"ok": True, "running": True, "accepted": True, "total": len(_given(message)), "done": 0,
                    "touched": 0, "counts": {}, "outcomes": {}}
        total, through, since = store.bulk_selection(from_state, project)
        return {"ok": True, "running": True, "accepted": True, "total": total, "through_seq": through,
                "accepted_at": since, "done": 0, "touched": 0, "counts": {}}

    def _bulk_batches(self, message: dict[str, Any], from_state: str, to_state: str) -> int:
        """Batches until the request is answered; returns how many mails they moved. Each batch's mails go
        to the broker (records first) while the next batch moves; that next batch commits only once they
        are all handed, so a hand-on that fails rolls it back and stops the action (to go on when the
        message is redelivered), and a worker lost at any point leaves at most one committed batch not
        handed (stale_queued hands it)."""
        handing: Future[int] | None = None
        moved = 0
        try:
            while True:
                batch, more = self._bulk_step(message, from_state, to_state, handing.result if handing else None)
                if handing is not None:
                    handing.result()  # waited for inside the batch's transaction, unless it had nothing to do
                handing = None
                if batch is not None:
                    moved += batch.counts.get(MOVED[to_state], 0)
                    if to_state == State.QUEUED and batch.moved:  # a lost wake-up is caught by stale_queued
                        handing = self._hands().submit(hand_on, self.enqueue, batch.moved)
                if not more:
                    break
        finally:
            if handing is not None:
                wait([handing])  # however this ends, the batch committed last is handed before it returns
        if handing is not None:
            handing.result()
        return moved

    def _hands(self) -> ThreadPoolExecutor:
        """The one thread that hands moved mails to the broker (its own broker connection, kept for reuse)."""
        if self._hand_on is None:
            self._hand_on = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deskmail-hand-on")
        return self._hand_on

    def _bulk_step(self, message: dict[str, Any], from_state: str, to_state: str,
                   before_commit: Callable[[], object] | None = None) -> tuple[MoveBatch | None, bool]:
        """One batch: (what it moved, None when there was nothing left to do; False once the request is
        answered). `before_commit` runs last inside its transaction: an exception there rolls the batch back."""
        rid, everything = message["request_id"], bool(message.get("all"))
        with self.store.atomic() as tx:
            answer = tx.lock_control_progress(rid)
            if not answer or not answer.get("running"):
                return None, False
            given = None if everything else _given(message)
            ids = None if given is None else given[answer["done"]:answer["done"] + self.batch]
            batch = tx.move_batch(ids, message.get("project"), from_state, to_state,
                                  f"{message['action']} by {message['requested_by']}", self.batch,
                                  answer.get("through_seq"), answer.get("accepted_at"))
            answer["done"] += batch.examined
            answer["touched"] += batch.counts.get(MOVED[to_state], 0)
            answer["projects"] = sorted(set(answer.get("projects", [])) | batch.projects)
            for value, n in batch.counts.items():
                answer["counts"][value] = answer["counts"].get(value, 0) + n
            if batch.outcomes is not None:
                answer["outcomes"].update(batch.outcomes)
            if message.get("with_ids"):
                tx.keep_moved_ids(rid, [m.event_id for m in batch.moved])
            finished = batch.examined < self.batch if given is None else answer["done"] >= len(given)
            if finished:
                answer["running"] = False
                answer["total"] = answer["done"] if everything else answer["total"]
                answer.pop("ok", None)
                answer = {"ok": True, **answer, **({"ids_kept": True} if message.get("with_ids") else {})}
                tx.record_control(message, answer)
            else:
                answer["total"] = max(answer["total"], answer["done"])
                tx.control_progress(rid, answer)
            if before_commit is not None:
                before_commit()
        return batch, not finished

    def finish_stalled(self, seconds: float) -> int:
        """Go on with accepted bulk actions nobody reported progress on for `seconds` (the scheduler's
        backstop for a control worker that stopped and a message that will not come back); returns how many
        mails it moved."""
        moved = 0
        for work in self.store.stalled_control_work(seconds):
            log.warning("control request %s made no progress for %.0f s; going on with it here", work["request_id"],
                        seconds)
            try:
                moved += self._bulk_batches(work, *MOVES[work["action"]])
            except StoreUnavailable:
                raise
            except Exception:  # noqa: BLE001 - one that fails again must not hold up the others
                log.exception("control request %s could not be finished here; tried again later", work["request_id"])
        return moved

    def _accepted(self, message: dict[str, Any]) -> bool:
        """True for a bulk action accepted before and still running: going on with it is no new request."""
        return message["action"] in MOVES and bool((self.store.control_answer(message["request_id"]) or {})
                                                   .get("running"))

    def _refusal(self, message: dict[str, Any]) -> str | None:
        problems = schemas.validate(CONTROL_SCHEMA, message)
        if problems:
            return "; ".join(map(str, problems[:20])) + (f"; ... and {len(problems) - 20} more" if len(problems) > 20
                                                         else "")
        if self.key and not hmac.compare_digest(str(message.get("signature", "")), sign(message, self.key)):
            return "signature: missing or wrong (DESKMAIL_CONTROL_KEY differs between the command and the worker?)"
        if parse_requested_at(message["requested_at"]) is None:
            return "requested_at: not an RFC 3339 date-time with an offset"
        return None

    def _expired(self, message: dict[str, Any]) -> str | None:
        requested = parse_requested_at(message["requested_at"])
        if requested is not None and abs((self.clock() - requested).total_seconds()) > self.max_age:
            return f"requested_at: older than {self.max_age:.0f} s; the request expired and was not applied"
        return None

    def _refuse(self, message: object, refusal: str) -> None:
        fields = claimed_fields(message)
        log.warning("control message %s refused: %s", fields.get("request_id", "(no request id)"),
                    refusal.encode("unicode_escape").decode("ascii")[:1000])
        self.store.record_control_refusal(fields, refusal)

    def _apply(self, store: ControlStore, message: dict[str, Any]) -> dict[str, Any]:
        action = message["action"]
        handler = getattr(self, "_" + action.replace(".", "_"), None)
        if handler is None:
            return {"ok": False, "error": f"action: {action} is not available in this version", "touched": 0}
        return handler(store, message)

    def _limits_set(self, store: ControlStore, message: dict[str, Any]) -> dict[str, Any]:
        limits = {k: message[k] for k in ("per_day", "recipients_per_mail") if k in message}
        if message.get("global"):
            store.set_global_limits(**limits)
        elif not store.set_project_limits(message["project"], **limits):
            return _unknown(message["project"])
        resumed = store.auto_resume(self.clock(), None if message.get("global") else message["project"])
        return {"ok": True, "touched": sum(resumed.values()), "limits": limits, "auto_resumed": resumed}

    def _auto_resume_set(self, store: ControlStore, message: dict[str, Any]) -> dict[str, Any]:
        if not store.set_auto_resume(message["project"], message["enabled"]):
            return _unknown(message["project"])
        resumed = store.auto_resume(self.clock(), message["project"]) if message["enabled"] else {}
        return {"ok": True, "touched": sum(resumed.values()), "auto_resume": message["enabled"],
                "auto_resumed": resumed}

    def _project_pause(self, store: ControlStore, message: dict[str, Any]) -> dict[str, Any]:
        return self._set_pause(store, message["project"], "admin")

    def _project_unpause(self, store: ControlStore, message: dict[str, Any]) -> dict[str, Any]:
        return self._set_pause(store, message["project"], None)

    def _set_pause(self, store: ControlStore, project: str, reason: str | None) -> dict[str, Any]:
        if store.get_project(project) is None:
            return _unknown(project)
        return {"ok": True, "touched": 0, "changed": store.set_pause(project, reason)}

    def _settings_set(self, store: ControlStore, message: dict[str, Any]) -> dict[str, Any]:
        project, public = message["project"], dict(message["settings"])
        if split_secrets(public)[1]:
            return {"ok": False, "touched": 0, "error": "settings: holds a secret in clear text; the command "
                    "seals secrets with DESKMAIL_SECRET_KEYS (sealed_secrets) and never sends them in clear"}
        sealed = message.get("sealed_secrets")
        secrets: dict[str, object] = {}
        if sealed:
            if self.box is None:
                return {"ok": False, "touched": 0, "error": "sealed_secrets: this worker has no DESKMAIL_SECRET_KEYS"}
            try:
                secrets = self.box().open(project, sealed.encode("ascii"))
            except SecretError as exc:
                return {"ok": False, "touched": 0, "error": f"sealed_secrets: {exc} (the command and the workers "
                        "need the same DESKMAIL_SECRET_KEYS)"}
        public.pop("secret_names", None)
        problems = schemas.validate(schemas.SETTINGS, merge_secrets(public, secrets))
        if problems:
            return {"ok": False, "touched": 0, "error": "; ".join(map(str, problems[:20]))}
        public["secret_names"] = sorted(secrets)
        store.save_settings(project, public["mail_service"], public, sealed.encode("ascii") if sealed else None,
                            public.get("time_zone", "UTC"), public.get("limits"))
        return {"ok": True, "touched": 0, "mail_service": public["mail_service"],
                "secret_names": public["secret_names"]}

    def _settings_test(self, store: ControlStore, message: dict[str, Any]) -> dict[str, Any]:
        """Hand a Test action to a worker of the project's transport queue; it answers step by step."""
        project, document = message["project"], message.get("settings")
        if document is not None:
            tested, service = project, document.get("mail_service")
        else:
            if not store.project_known(project):
                return _unknown(project)
            row = store.get_project(project)
            tested = project if row is not None and row.settings is not None else DEFAULT_PROJECT
            row = row if tested == project else store.get_project(DEFAULT_PROJECT)
            if row is None or row.settings is None:
                return {"ok": False, "touched": 0, "error": f"project: {project!r} has no mail settings, and there "
                        "is no default project"}
            service = row.mail_service
        if service not in set(MailService) or self.dispatch_test is None:
            return {"ok": False, "touched": 0, "error": f"mail_service: {service!r} has no transport queue here"}
        store.add_control_test(message, tested, service)
        queue = MailService(service).queue
        return {"ok": True, "running": True, "touched": 0, "dispatch": service, "project": tested,
                "mail_service": service, "queue": str(queue), "steps": [],
                "note": f"waiting for a worker of {queue} to run the test"}

    def _dispatch(self, message: dict[str, Any], answer: dict[str, Any]) -> None:
        dispatch = self.dispatch_test
        assert dispatch is not None  # _settings_test asks for a dispatch only when there is a dispatcher
        try:
            dispatch(MailService(answer["dispatch"]), message["request_id"])
        except Exception as exc:  # noqa: BLE001 - the command must hear why, not wait for nothing
            log.exception("Test message for %s not published", message["request_id"])
            with self.store.atomic() as tx:
                tx.record_control(message, {"ok": False, "touched": 0, "running": False,
                                            "error": f"the Test message could not be published to "
                                                     f"{answer['queue']}: {type(exc).__name__}: {exc}"})

    def _keys_rotate(self, store: ControlStore, message: dict[str, Any]) -> dict[str, Any]:
        if not self.box:
            return {"ok": False, "touched": 0, "error": "this worker has no DESKMAIL_SECRET_KEYS"}
        box, replacements = self.box(), []
        for project in store.list_projects():
            if project.secrets:
                try:  # every token first: one that cannot be opened leaves all of them as they were
                    replacements.append((project.key, project.secrets, box.rotate(project.secrets)))
                except SecretError as exc:
                    return {"ok": False, "touched": 0, "error": f"project {project.key}: {exc}; nothing was "
                            "re-encrypted"}
        rotated = [key for key, old, new in replacements if store.replace_secrets(key, old, new)]
        return {"ok": True, "touched": 0, "rotated": rotated}


def _given(message: dict[str, Any]) -> list[str]:
    """The ids a bulk action names, each once whatever its letter case (the schema's uniqueItems compares
    texts), in the order given."""
    return list(dict.fromkeys(str(uuid.UUID(i)) for i in message["ids"]))


def applies(action: str) -> bool:
    """True when this version's control actor has a way to apply `action`."""
    return action in MOVES or callable(getattr(Controller, "_" + action.replace(".", "_"), None))


def _unknown(project: str) -> dict[str, Any]:
    return {"ok": False, "error": f"project: unknown project {project!r}", "touched": 0}


def declare_control_actor(broker, runtime: Runtime, enqueue: Enqueue,  # noqa: ANN001 - dramatiq
                          dispatch_test: DispatchTest | None = None) -> None:
    """Declare the `deskmail.control` actor on broker."""
    import dramatiq
    from deskmail.workers.constants import Queue
    box = (lambda: runtime.box) if runtime.config.secret_keys else None
    controller = Controller(runtime.store, runtime.config.control_key, runtime.config.control_max_age, enqueue, box,
                            dispatch_test=dispatch_test)
    dramatiq.Actor(controller, broker=broker, actor_name=Queue.CONTROL, queue_name=Queue.CONTROL, priority=0,
                   options={"max_retries": 30, "min_backoff": 1_000, "max_backoff": 60_000})
