"""Errors as JSON, the request-body limit and the security headers: ASGI pieces around every route."""
from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException



class ApiError(Exception):
    """A refused request: HTTP status, a short `error` and a `detail`."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(f"{status} {error}: {detail}")
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


class BodyTooLarge(StarletteHTTPException):
    """A request body above the limit (an HTTPException, so the framework's body parsing lets it through)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


def error_response(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse a request whose body is larger than `limit` bytes with a JSON 413, from its
    Content-Length before reading anything, or while reading a body sent without one."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await error_response(413, "upload too large", f"the request body ({int(declared)} bytes) is larger than the "
                         f"limit of {self.limit} bytes")(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:
            if started:
                raise
            await error_response(413, "upload too large", e.detail)(scope, receive, send)


class SecurityHeaders:
    """ASGI middleware: no content sniffing anywhere; the page (/ and /static/) may load only its own scripts,
    styles and images (FastAPI's /docs loads Swagger UI's, so it is left as the framework serves it)."""

    CSP = (b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
           b"object-src 'none'; frame-ancestors 'none'; base-uri 'none'")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        page = scope["path"] == "/" or scope["path"].startswith("/static/")

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                if page:
                    headers.append((b"content-security-policy", self.CSP))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


