"""Guards of the web app: plain-words errors, the access token, Host and Origin checks.

- Every error reaches the page as JSON ``{"error", "path", "fix", "message"}`` in plain
  words (a :class:`~deepscope.errors.DeepscopeError`), never as a traceback.
- With a token (servers reachable from other computers), every request must carry it:
  header ``X-Deepscope-Token``, or the cookie set by opening ``/?token=...``.
- A loopback server answers only requests addressed to this computer (against web pages
  that rebind their DNS name to 127.0.0.1), and refuses changes requested by other
  web sites (a foreign ``Origin``).
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response

from deepscope.app.paths import PathRefused
from deepscope.errors import DeepscopeError

TOKEN_HEADER = "X-Deepscope-Token"
TOKEN_COOKIE = "deepscope_token"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def error_response(status: int, err: DeepscopeError) -> JSONResponse:
    """The JSON answer for a user error: problem, path, fix and the whole message."""
    return JSONResponse(
        status_code=status,
        content={
            "error": err.problem,
            "path": str(err.path) if err.path is not None else None,
            "fix": err.fix,
            "message": str(err),
        },
    )


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error in plain words.

    Refused paths get 403, user errors 400, incomplete requests 422, unexpected ones 500.
    """

    @app.exception_handler(PathRefused)
    async def _refused(_request: Request, err: PathRefused) -> JSONResponse:
        return error_response(403, err)

    @app.exception_handler(DeepscopeError)
    async def _usererror_response(_request: Request, err: DeepscopeError) -> JSONResponse:
        return error_response(400, err)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, err: RequestValidationError) -> JSONResponse:
        lines = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'request'}: {e['msg']}"
            for e in err.errors()
        ]
        return error_response(
            422, DeepscopeError("the request is incomplete: " + "; ".join(lines), None, None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception) -> JSONResponse:
        return error_response(
            500,
            DeepscopeError(
                f"unexpected error ({type(err).__name__}: {err})",
                fix="the server's console shows the details; please report it",
            ),
        )


def install_guards(app: FastAPI, token: str | None, allowed_hosts: set[str] | None) -> None:
    """Token check (when one is set), Host check (DNS rebinding) and Origin check (CSRF)."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = (request.headers.get("host") or "").rsplit(":", 1)[0].strip("[]")
        if allowed_hosts is not None and host not in allowed_hosts:
            return error_response(403, PathRefused(f"requests for host {host!r} are not served"))
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD") and origin:
            if urlsplit(origin).netloc != request.headers.get("host"):
                return error_response(403, PathRefused("requests from other web sites are refused"))
        if token is not None:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given, token):
                response = RedirectResponse(request.url.path or "/", status_code=303)
                response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
                return response
            sent = request.headers.get(TOKEN_HEADER) or request.cookies.get(TOKEN_COOKIE) or ""
            if not hmac.compare_digest(sent, token):
                return error_response(
                    401,
                    DeepscopeError(
                        "this server needs its access token",
                        fix="open the address with ?token=... printed when 'deepscope app' started",
                    ),
                )
        return await call_next(request)


def new_token() -> str:
    """A random access token for a server reachable from other computers."""
    return secrets.token_urlsafe(24)
