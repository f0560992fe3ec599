"""The console's web application (Starlette), and `serve`, which runs it under uvicorn."""

from __future__ import annotations

import contextlib
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deskmail.producers.console import views
from deskmail.producers.console.actions import Actions
from deskmail.producers.console.config import ConsoleConfig
from deskmail.producers.console.jobs import Jobs
from deskmail.producers.console.pages import HERE, render
from deskmail.workers.runtime import Runtime

# htmx runs without eval and without its inline indicator styles, so nothing inline is needed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
           "x-frame-options": "DENY", "cache-control": "no-store", "cross-origin-opener-policy": "same-origin"}


class SecurityHeaders:
    """Adds the Content Security Policy and its companions to every response (HSTS over HTTPS)."""

    def __init__(self, app: ASGIApp, hsts: bool) -> None:
        self.app, self.hsts = app, hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap `send` so the headers go on every response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
                if self.hsts or scope.get("scheme") == "https":
                    headers.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = headers
            await send(message)
        await self.app(scope, receive, with_headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Errors as a page in the console's look (and as a fragment for htmx requests)."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "Something went wrong.")
    if request.headers.get("hx-request"):
        return render(request, "fragments/notice.html", status, ok=False, text=detail)
    return render(request, "error.html", status, code=status, text=detail)


def create_app(runtime: Runtime, console: ConsoleConfig) -> Starlette:
    """The console application over a runtime (store, settings, transports for the Test action)."""
    actions = Actions(runtime.config, runtime.store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        yield
        actions.close()

    app = Starlette(routes=[*views.routes(), Mount("/static", StaticFiles(directory=str(HERE / "static")),
                                                   name="static")],
                    exception_handlers={HTTPException: http_error, 500: http_error}, lifespan=lifespan)
    app.state.runtime, app.state.store, app.state.console = runtime, runtime.store, console
    app.state.actions, app.state.jobs = actions, Jobs(runtime, actions)
    return app


def serve(runtime: Runtime, console: ConsoleConfig) -> None:
    """Run the console under uvicorn until interrupted (refusing plain HTTP to the network)."""
    import uvicorn
    console.check_listen()
    options: dict[str, Any] = {"host": console.host, "port": console.port, "log_level": "warning",
                               "proxy_headers": True, "forwarded_allow_ips": console.forwarded_allow,
                               "server_header": False}
    if console.tls:
        options |= {"ssl_certfile": console.tls_cert, "ssl_keyfile": console.tls_key}
    app = SecurityHeaders(create_app(runtime, console), hsts=console.tls or console.behind_tls_proxy)
    scheme = "https" if console.tls else "http"
    print(f"deskmail console on {scheme}://{console.host}:{console.port}/", flush=True)
    uvicorn.run(app, **options)
