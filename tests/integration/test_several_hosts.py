"""Workers on several hosts against one RabbitMQ and PostgreSQL: each host a network namespace of its own.

The hosts reach the shared services only through a private bridge (tests/peers/netns.py), so what
crosses between them is what would cross a network. Skipped, with the reason, where namespaces
cannot be made (not root, no iproute2, a sandbox without CAP_NET_ADMIN).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pika
import pytest

from tests.conftest import TEST_KEY, purge_queues, wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers import netns
from tests.peers.smtp import SmtpPeer
from deskmail.workers.constants import Queue

REASON = netns.why_not_available()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"network namespaces unavailable: {REASON}"),
              pytest.mark.timeout(300)]  # a takeover waits for leases to expire, on a shared machine
BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


class Peer:
    """What a namespace sees at the bridge address: smtp_settings wants host and port."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port


def through(url: str, host: str, port: int) -> str:
    """The URL with its host and port replaced by the forwarder's."""
    parts = urlsplit(url)
    netloc = (parts.netloc.rpartition("@")[0] + "@" if "@" in parts.netloc else "") + f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def has_leases(store) -> bool:
    with store.pool.connection() as conn:
        return conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'mail' "
                            "AND column_name = 'lease_until'").fetchone() is not None


@pytest.fixture
def site(config, runtime, store, tmp_path):
    """Two hosts, a forwarder for PostgreSQL, RabbitMQ and an SMTP peer, and a way to start workers there."""
    purge_queues(config.amqp_url)  # messages earlier tests left in the shared vhost are not this test's mail
    with netns.Hosts(2) as hosts:
        site = Site(hosts, config, store, tmp_path)
        try:
            yield site
        finally:
            site.stop_scheduler()
    if site.forwarder:  # after the hosts' workers are gone
        site.forwarder.stop()


class Site:
    def __init__(self, hosts: netns.Hosts, config, store, tmp_path: Path) -> None:
        self.hosts, self.config, self.store, self.tmp = hosts, config, store, tmp_path
        self.forwarder: netns.Forwarder | None = None
        self.scheduler: subprocess.Popen | None = None

    def serve(self, peer: SmtpPeer) -> None:
        db, mq = urlsplit(self.config.database_url), urlsplit(self.config.amqp_url)
        self.forwarder = netns.Forwarder(self.hosts.gateway, {
            "postgres": (db.hostname, db.port or 5432), "rabbitmq": (mq.hostname, mq.port or 5672),
            "smtp": (peer.host, peer.port)}).start()

    @property
    def smtp(self) -> Peer:
        return Peer(self.hosts.gateway, self.forwarder.ports["smtp"])

    def env(self, inside: bool, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DESKMAIL_", "PROMETHEUS_"))}
        db, mq = self.config.database_url, self.config.amqp_url
        if inside:
            db = through(db, self.hosts.gateway, self.forwarder.ports["postgres"])
            mq = through(mq, self.hosts.gateway, self.forwarder.ports["rabbitmq"])
        env.update({"DESKMAIL_DATABASE_URL": db, "DESKMAIL_AMQP_URL": mq, "DESKMAIL_SECRET_KEYS": TEST_KEY,
                    "DESKMAIL_CONTROL_KEY": self.config.control_key,
                    "DESKMAIL_OUTBOUND_ALLOW": f"{self.hosts.net}.0/24", "DESKMAIL_LOG_LEVEL": "INFO", **extra})
        return env

    def workers(self, host: netns.Host, processes: int = 2, threads: int = 4, **extra: str) -> subprocess.Popen:
        log = (self.tmp / f"{host.name}.log").open("ab")
        return self.hosts.run(host, [str(BIN / "dramatiq"), "deskmail.workers.app:setup", "-p", str(processes),
                                     "-t", str(threads)], self.env(True, **extra), log)

    def start_scheduler(self, **extra: str) -> None:
        log = (self.tmp / "scheduler.log").open("ab")
        self.scheduler = subprocess.Popen([str(BIN / "deskmail"), "scheduler"], cwd=ROOT,
                                          env=self.env(False, DESKMAIL_SCHEDULER_INTERVAL="1", **extra),
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def consumers(self, queue: str) -> int:
        conn = pika.BlockingConnection(pika.URLParameters(self.config.amqp_url))
        try:
            return conn.channel().queue_declare(queue, passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        finally:
            conn.close()

    def smtp_sources(self) -> set[str]:
        return {a for a, n in self.forwarder.connections["smtp"].items() if n}

    def stop_scheduler(self) -> None:
        if self.scheduler and self.scheduler.poll() is None:
            os.killpg(self.scheduler.pid, signal.SIGTERM)
            self.scheduler.wait(30)


def states(store, ids: list[str]) -> collections.Counter:
    return collections.Counter(m.state if (m := store.get_mail(i)) else "not yet admitted" for i in ids)


def test_a_limit_shared_by_two_hosts_is_never_overshot(runtime, store, publisher, site):
    with SmtpPeer() as peer:
        site.serve(peer)
        runtime.settings.save("alpha", smtp_settings(site.smtp, security="none", auth="none", per_day=40))
        a, b = site.hosts.hosts
        site.workers(a)
        site.workers(b)
        wait_until(lambda: site.consumers(Queue.SMTP) == 4 and site.consumers(Queue.ADMIT) == 4, timeout=60)
        # one event per message, so admissions and sends spread over both hosts' workers
        ids = [publisher.publish(event(subject=f"shared {i}")) for i in range(120)]
        wait_until(lambda: sum(states(store, ids)[s] for s in ("sent", "backlog")) == 120, timeout=90)
        assert states(store, ids) == {"sent": 40, "backlog": 80}
        received = [m.message["Message-ID"] for m in peer.wait_for(40)]
        extra = [(i, m.state, m.detail, [(a.worker, a.outcome) for a in store.attempts_of(i)])
                 for i in (r.strip("<>").split("@")[0] for r in received)
                 if (m := store.get_mail(i)) is None or m.state != "sent"]
        assert len(received) == len(set(received)) == 40, extra
        assert store.sent_today("alpha", "UTC") == 40
        # both hosts took part: each opened SMTP connections through the bridge
        assert site.smtp_sources() == {a.address, b.address}
        assert all(ipaddress.ip_address(s) in ipaddress.ip_network(f"{site.hosts.net}.0/24")
                   for s in site.smtp_sources())


def test_a_host_cut_off_mid_send_loses_nothing_and_another_host_finishes_its_mails(runtime, store, publisher, site):
    async def slow(envelope) -> None:  # every DATA takes a while, so the cut finds mails in flight
        await asyncio.sleep(1.0)

    with SmtpPeer(before_data_reply=slow) as peer:
        site.serve(peer)
        runtime.settings.save("alpha", smtp_settings(site.smtp, security="none", auth="none", timeout_seconds=5))
        leases = has_leases(store)
        takeover = ({"DESKMAIL_LEASE_SECONDS": "4", "DESKMAIL_TAKEOVER_GRACE": "2"} if leases
                    else {"DESKMAIL_STALE_AFTER": "6"})
        a, b = site.hosts.hosts
        site.workers(a, processes=1, threads=4, **takeover)
        wait_until(lambda: site.consumers(Queue.SMTP) == 1, timeout=60)
        ids = publisher.publish_many([event(subject=f"cut {i}") for i in range(16)])
        wait_until(lambda: all(store.get_mail(i) for i in ids), timeout=30)  # all admitted by host a
        wait_until(lambda: len(peer.messages) >= 4, timeout=30)
        site.hosts.cut(a)
        in_flight = {str(i) for i in ids if store.get_mail(i).state == "sending"}
        sent_before = {str(m.message["Message-ID"]) for m in peer.messages}
        site.start_scheduler(**takeover)
        site.workers(b, processes=1, threads=4, **takeover)
        wait_until(lambda: sum(states(store, ids)[s] for s in ("sent", "ambiguous")) == 16, timeout=120)
        received = collections.Counter(str(m.message["Message-ID"]) for m in peer.messages)
        mids = {i: store.get_mail(i).message_id for i in ids}
        assert all(received[mid] >= 1 for mid in mids.values()), "a mail never arrived"
        twice = {i for i, mid in mids.items() if received[mid] > 1}
        assert all(received[mid] <= 2 for mid in mids.values())
        assert twice <= in_flight, "only a mail the cut host had in flight may arrive twice"
        assert len(twice) <= 4, "at most one mail per sending thread of the cut host may arrive twice"
        assert b.address in site.smtp_sources()
        print(f"\nseveral hosts: takeover by {'leases' if leases else 'DESKMAIL_STALE_AFTER recovery'}; "
              f"in flight at the cut {len(in_flight)}, sent before the cut {len(sent_before)}, "
              f"arrived twice {len(twice)}, final states {dict(states(store, ids))}")
