"""A worker that stops closes what it holds: each thread's SMTP sessions (QUIT), then its database pool."""

from __future__ import annotations

import dramatiq
import psycopg

from tests.conftest import PG_ADMIN, purge_queues, wait_until
from tests.integration.helpers import event, smtp_settings
from tests.peers.smtp import SmtpPeer


def connections_to(database_url: str) -> int:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                           (name,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_stopped_worker_quits_its_smtp_sessions_and_closes_its_pool(config, runtime, publisher, tls_ca):
    from deskmail.workers.app import setup
    with SmtpPeer(security="starttls", cert=tls_ca.issue(), users={"desk": "s3cret-Pa55"}) as peer:
        runtime.settings.save("alpha", smtp_settings(peer, tls_ca.ca_path))
        purge_queues(config.amqp_url)
        before = connections_to(config.database_url)
        broker = setup(config)
        worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
        worker.start()
        try:
            ids = [publisher.publish(event(to=[f"u{i}@example.com"], subject=f"n{i}")) for i in range(4)]
            wait_until(lambda: all((m := runtime.store.get_mail(i)) and m.state == "sent" for i in ids))
            assert peer.quit_count == 0  # the sessions stay open for the next mail
            assert connections_to(config.database_url) > before
        finally:
            worker.stop(timeout=10_000)
            broker.close()
        wait_until(lambda: peer.quit_count >= 1, timeout=5)
        wait_until(lambda: connections_to(config.database_url) <= before, timeout=5)
