"""Errors as JSON, the host / origin / token guard, the request-body limit and the security headers: ASGI pieces
around every route."""
from __future__ import annotations

from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

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


LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def host_name(host: str) -> str:
    """The name part of a Host header ('127.0.0.1:8000' -> '127.0.0.1', '[::1]:80' -> '::1'), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def allowed_host_names(bound: str, extra: Sequence[str] = ()) -> frozenset[str] | None:
    """The Host names a server bound to `bound` answers: the bound address, the loopback names when it listens on
    loopback or on every interface, and `extra` (--allowed-host); None when `extra` holds '*' (any host)."""
    names = {host_name(h).rstrip(".") for h in extra}
    if "*" in names:
        return None
    bound = bound.strip().lower().strip("[]")
    names.add(bound)
    if bound in LOOPBACK or bound in WILDCARD or bound.startswith("127."):
        names.update(LOOPBACK)
    return frozenset(n for n in names if n)


def origin_of(url: str) -> str | None:
    """'scheme://host[:port]' of a URL (an Origin or Referer header), lower case; None if it has none."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else None


class RequestGuard:
    """ASGI middleware deciding from the headers alone, before any body is read:

    - Host: a request whose Host is not a name this server answers (`hosts`) is refused (400), so a page on
      another site cannot reach it through DNS rebinding;
    - cross-site writes: a POST, PUT, PATCH or DELETE whose Origin (or, without one, Referer) is not the server's
      own origin is refused (403), so a page from another origin open in the user's browser cannot add or delete
      images; API clients that send neither (curl, httpx, the Python client) are not affected;
    - the bearer token of the routes that change the index (`needs_token(method, path)`), checked by
      `token_problem(authorization header)`: 401 before a large body is received.
    """

    def __init__(self, app, *, hosts: frozenset[str] | None, token_problem: Callable[[str | None], str | None],
                 needs_token: Callable[[str, str], bool]):
        self.app, self.hosts, self.token_problem, self.needs_token = app, hosts, token_problem, needs_token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host).rstrip(".") not in self.hosts:
            return await error_response(400, "host not allowed", f"Host {host[:200]!r} is not a name this server "
                                        "answers; start it with --allowed-host NAME to allow one")(scope, receive, send)
        method = scope["method"].upper()
        if method in UNSAFE_METHODS:
            sent = headers.get("origin") or headers.get("referer")
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            if sent is not None and origin_of(sent) != own:
                return await error_response(403, "cross-origin request refused",
                                            f"this request comes from a page of {sent[:200]!r}, not from {own}; a "
                                            "write must come from this server's own page or from a client that sends "
                                            "no Origin")(scope, receive, send)
            if self.needs_token(method, scope["path"]):
                problem = self.token_problem(headers.get("authorization"))
                if problem:
                    return await error_response(401, "unauthorized", problem,
                                                {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        await self.app(scope, receive, send)
