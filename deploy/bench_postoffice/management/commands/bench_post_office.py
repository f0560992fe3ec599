"""`manage.py bench_post_office N`: queue N mails with post_office's API, send them, print one JSON line.

The mails are queued one `mail.send` call each (priority medium: stored, not sent), as a Django
application would queue them, then sent by post_office's own `send_queued_mail --processes P`,
run in this process so Django's start-up is not counted twice.
"""

import json
import time

from django.core.management import call_command
from django.core.management.base import BaseCommand
from post_office import mail
from post_office.models import STATUS, Email


class Command(BaseCommand):
    help = "queue N mails with post_office, then run send_queued_mail; print timings as JSON"

    def add_arguments(self, parser):
        parser.add_argument("n", type=int)
        parser.add_argument("--processes", type=int, default=2, help="send_queued_mail --processes")
        parser.add_argument("--lockfile", required=True, help="send_queued_mail --lockfile")

    def handle(self, *args, **options):
        n = options["n"]
        started = time.time()
        for i in range(n):
            mail.send([f"user{i}@customer.example"], cc=["agent@desk.example"], subject=f"[#{i}] Ticket updated",
                      message=f"Hello,\n\nticket #{i} has changed.\n\n-- desk\n", priority="medium")
        queued = time.time()
        call_command("send_queued_mail", "--processes", str(options["processes"]), "--lockfile", options["lockfile"])
        done = time.time()
        counts = {STATUS._fields[s] if s is not None else "none": Email.objects.filter(status=s).count()
                  for s in Email.objects.values_list("status", flat=True).distinct()}
        self.stdout.write(json.dumps({"n": n, "started": started, "queued": queued, "done": done,
                                      "queue_seconds": queued - started, "send_seconds": done - queued,
                                      "statuses": counts}))
