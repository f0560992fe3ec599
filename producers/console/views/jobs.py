"""A console job's progress, polled by the page until it ends (any console instance can answer)."""

from __future__ import annotations

import uuid

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deskmail.producers.console.auth import viewer
from deskmail.producers.console.pages import render


@viewer
async def job(request: Request) -> Response:
    """The job fragment: steps so far, and a poll trigger while it runs."""
    try:
        found = request.app.state.store.console_job(uuid.UUID(request.path_params["job"]))
    except ValueError:
        found = None
    if found is None:
        raise HTTPException(404, "No such job.")
    return render(request, "fragments/job.html", job=found)


ROUTES = [Route("/jobs/{job}", job, methods=["GET"])]
