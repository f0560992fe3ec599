"""Minimal Django settings for the django-post_office run of `make bench`: PostgreSQL, SMTP to the sink.

Used only by deploy/bench.py, inside its own virtualenv; everything variable comes from the
environment the bench sets (database, sink port, batch size).
"""

import os

SECRET_KEY = "bench-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["post_office", "bench_postoffice"]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": os.environ["BENCH_PO_DATABASE"],
    "USER": "postgres",
    "HOST": os.environ.get("BENCH_PO_HOST", "127.0.0.1"),
    "PORT": os.environ.get("BENCH_PO_PORT", "5432"),
}}
# post_office renders subject and text as Django templates when it queues a mail.
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
EMAIL_BACKEND = "post_office.EmailBackend"
EMAIL_HOST = "127.0.0.1"
EMAIL_PORT = int(os.environ["BENCH_PO_SMTP_PORT"])
DEFAULT_FROM_EMAIL = "Bench Desk <bench@desk.example>"
# Everything else is post_office's default (5 threads per process, log every send) except the
# batch: the default of 100 re-forks the process pool every 100 mails, which a shop sending
# tens of thousands a day would raise.
POST_OFFICE = {
    "BACKENDS": {"default": "django.core.mail.backends.smtp.EmailBackend"},
    "DEFAULT_PRIORITY": "medium",
    "BATCH_SIZE": int(os.environ.get("BENCH_PO_BATCH_SIZE", "100")),
    "MESSAGE_ID_ENABLED": True,
}
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "root": {"level": "WARNING", "handlers": []}}
