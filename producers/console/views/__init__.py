"""The console's screens, one module each; `routes()` gathers them."""

from __future__ import annotations

from starlette.routing import Route

from deskmail.producers.console.views import audit, global_settings, jobs, login, mail, mails, projects, smtp


def routes() -> list[Route]:
    """Every route of the console."""
    return [route for module in (login, projects, smtp, jobs, mails, mail, global_settings, audit)
            for route in module.ROUTES]
