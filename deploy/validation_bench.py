"""Measures what checking one event costs on each side: the publisher's preparation and the admission.

For each shape of event (the benchmark's common notification, a record mail that answers a thread,
a notification with an attachment) it prepares N events as `Publisher.publish_many` does (complete,
validate, check the caps, write the broker messages), then, in another process (cold caches, as a
worker is), decodes those messages as Dramatiq does and checks each event as admission does. It prints
microseconds and CPU microseconds (time.process_time) per event for every stage, then one JSON line.

    .venv/bin/python deploy/validation_bench.py [-n 5000] [--profile]

`--profile` runs each side once more under cProfile and prints where the time goes.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import multiprocessing
import pstats
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import sample  # noqa: E402

import dramatiq  # noqa: E402

from deskmail import schemas  # noqa: E402
from deskmail.producers.publisher import batches, prepare  # noqa: E402
from deskmail.schemas.mail_parts import AttachmentCaps  # noqa: E402
from deskmail.workers.admit import admissible  # noqa: E402

CAPS = AttachmentCaps()
PDF = base64.b64encode(bytes(range(256)) * 80).decode()  # a 20 KiB file


def record_mail(i: int) -> dict[str, Any]:
    """A technician's reply on a ticket: named recipient, the agent's From name, threading headers."""
    return {"event_id": str(uuid.uuid4()), "project": "bench", "kind": "record",
            "to": [{"address": f"customer{i}@customer.example", "name": f"Customer {i}"}],
            "subject": f"Re: [#{i}] Printer on fire", "text": f"Hello,\n\nwe are on it (#{i}).\n\n-- Alice\n",
            "from_name": "Alice via Service Desk", "record": {"type": "ticket", "id": str(i)},
            "in_reply_to": f"<CAF{i}.x@mail.customer.example>",
            "references": [f"<root{i}@desk.example>", f"<CAF{i}.x@mail.customer.example>"]}


def with_attachment(i: int) -> dict[str, Any]:
    """A notification carrying one PDF."""
    return {**sample(i), "attachments": [{"filename": f"report-{i}.pdf", "content_type": "application/pdf",
                                          "content": PDF}]}


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "notification": sample, "record": record_mail, "attachment": with_attachment}


def timed(results: dict[str, dict[str, float]], stage: str, n: int, work: Callable[[], Any]) -> Any:
    """Runs `work`, storing its wall and CPU microseconds per event under `stage`."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = work()
    results[stage] = {"us": (time.perf_counter() - wall) * 1e6 / n, "cpu_us": (time.process_time() - cpu) * 1e6 / n}
    return out


def publisher_side(shape: str, n: int) -> tuple[dict[str, dict[str, float]], list[bytes]]:
    """Prepare and encode N events of one shape, as publish_many does; the broker message bodies."""
    events = [SHAPES[shape](i) for i in range(n)]
    results: dict[str, dict[str, float]] = {}
    prepared = timed(results, "publish.prepare", n, lambda: [prepare(event, CAPS) for event in events])
    bodies = timed(results, "publish.encode", n, lambda: [batch.body for batch in batches(prepared)])
    return results, bodies


def admission_side(bodies: list[bytes], n: int) -> dict[str, dict[str, float]]:
    """Decode the broker messages as Dramatiq does and check every event as the admit actor does."""
    results: dict[str, dict[str, float]] = {}
    messages = timed(results, "admit.decode", n, lambda: [dramatiq.Message.decode(body) for body in bodies])
    events = [event for message in messages for event in message.args[0]]
    timed(results, "admit.check", n, lambda: [(admissible(event, CAPS), schemas.unique_recipients(event))
                                               for event in events])
    return results


def profiled(work: Callable[[], Any], lines: int = 25) -> str:
    """The top functions of `work` by own time, as cProfile reports them."""
    profile = cProfile.Profile()
    profile.runcall(work)
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def profile_publisher(shape: str, n: int) -> str:
    """The cProfile report of the publisher side for one shape."""
    events = [SHAPES[shape](i) for i in range(n)]
    return profiled(lambda: batches([prepare(event, CAPS) for event in events]))


def profile_admission(bodies: list[bytes]) -> str:
    """The cProfile report of the admission side over prebuilt bodies."""
    def work() -> None:
        for body in bodies:
            for event in dramatiq.Message.decode(body).args[0]:
                admissible(event, CAPS)
                schemas.unique_recipients(event)
    return profiled(work)


def main() -> int:
    """Measure every shape once; prints a table and one JSON object."""
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("-n", type=int, default=5000, help="events per shape")
    options.add_argument("--profile", action="store_true", help="also print cProfile reports")
    args = options.parse_args()
    spawn = multiprocessing.get_context("spawn")  # each side starts cold, as a publisher and a worker do
    report: dict[str, dict[str, dict[str, float]]] = {}
    with spawn.Pool(1, maxtasksperchild=1) as pool:
        for shape in SHAPES:
            published, bodies = pool.apply(publisher_side, (shape, args.n))
            report[shape] = {**published, **pool.apply(admission_side, (bodies, args.n))}
            if args.profile:
                print(f"== {shape}: publisher ==\n" + pool.apply(profile_publisher, (shape, args.n)))
                print(f"== {shape}: admission ==\n" + pool.apply(profile_admission, (bodies,)))
    print(f"{'shape':<14}{'stage':<18}{'us/event':>10}{'cpu us/event':>14}")
    for shape, stages in report.items():
        for stage, figures in stages.items():
            print(f"{shape:<14}{stage:<18}{figures['us']:>10.1f}{figures['cpu_us']:>14.1f}")
    print(json.dumps({"n": args.n, "stages": report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
