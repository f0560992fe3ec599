"""The private RabbitMQ node restarted, killed and stalled under publishers and workers."""

from __future__ import annotations

import threading
import time

import pytest

from deskmail.producers.publisher import Publisher
from tests.conftest import wait_until
from tests.faults.ledger import judge
from tests.faults.traffic import Steady, events
from tests.peers.smtp import SmtpPeer
from deskmail.workers.errors import BrokerError

N = 60
PUBLISH_TIMEOUT = 3.0


def _under_traffic(site, record, rabbit, fault: str, expected: str, break_broker):  # noqa: ANN001, ANN202
    """Publish N events steadily while workers consume; break the broker after a third is confirmed."""
    site.worker()
    site.scheduler()
    with SmtpPeer() as peer:
        site.project(peer, per_day=N - 10)
        record(fault, expected)
        third = threading.Event()
        publishing = Steady(site.publisher, events(N), give_up_after=120, pause=0.05,
                            on_confirmed=lambda n: n == N // 3 and third.set())
        publishing.start()
        assert third.wait(60), "a third of the events was never confirmed"
        began = time.monotonic()
        break_broker()
        ended = rabbit.up_at
        publishing.join(150)
        assert not publishing.is_alive(), "the publisher never got every event confirmed"
        verdict = judge(site.db_url, publishing.confirmed, lambda: peer.messages, timeout=120, per_day=N - 10,
                        fault_ended=ended, expect_states={"sent": N - 10, "backlog": 10})
        record.verdict(verdict, confirmed=len(publishing.confirmed), publish_errors=len(publishing.errors),
                       outage_s=round(ended - began, 1), longest_publish_s=round(publishing.longest, 1))


def test_broker_restart_while_publishing_and_consuming_loses_nothing(site, record, rabbit):
    _under_traffic(site, record, rabbit, "broker restart while publishing and consuming",
                   "every confirmed event in one state; none lost, none twice; limit held", rabbit.restart)


def test_broker_kill_9_while_publishing_and_consuming_loses_nothing(site, record, rabbit):
    def crash() -> None:
        rabbit.kill()
        time.sleep(1)
        rabbit.start()
    _under_traffic(site, record, rabbit, "broker kill -9 while publishing and consuming",
                   "every confirmed event in one state; none lost, none twice; limit held", crash)


@pytest.mark.parametrize("connection", ["pooled", "new"])
def test_publish_to_a_stalled_broker_raises_within_the_publish_timeout(site, record, rabbit, connection):
    record(f"broker SIGSTOP under a publisher ({connection} connection)",
           f"publish raises BrokerError within DESKMAIL_PUBLISH_TIMEOUT ({PUBLISH_TIMEOUT:g} s), not 4x it")
    publisher = Publisher(site.amqp_url, timeout=PUBLISH_TIMEOUT)
    try:
        if connection == "pooled":
            publisher.publish(events(1)[0])  # the pool holds a live connection when the broker stalls
        rabbit.pause()
        started = time.monotonic()
        try:
            with pytest.raises(BrokerError):
                publisher.publish(events(1)[0])
        finally:
            blocked = time.monotonic() - started
            rabbit.cont()
        record.note(f"publish raised after {blocked:.1f} s", blocked_s=round(blocked, 1))
        assert blocked <= PUBLISH_TIMEOUT + 1.0, f"publish blocked {blocked:.1f} s with a {PUBLISH_TIMEOUT:g} s timeout"
        wait_until(lambda: _publishes(publisher), timeout=30, interval=0.1)  # works again once the broker does
    finally:
        rabbit.cont()
        publisher.close()


def _publishes(publisher: Publisher) -> bool:
    try:
        publisher.publish(events(1)[0])
        return True
    except BrokerError:
        return False
