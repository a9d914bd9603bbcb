"""The ASGI app: the native API, the A1111-compatible API and the web page over one `Service`.

Around every route: a body-size limit (413) and, when the server has a token, authentication (a bearer token, or HTTP
Basic with the token as password, so browsers and `webuiapi.set_auth` work). Errors are `{"detail": message}` JSON:
400 for malformed input (bad JSON, base64 or image data), 422 for values out of range, never a 500 for bad input.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from sdxl.server.errors import ApiError
from sdxl.server.service import Service

logger = logging.getLogger(__name__)


def create_app(service: Service) -> FastAPI:
    """The app; the worker starts with the app's lifespan and stops with it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="sdxl",
        summary="Stable Diffusion XL: a native job API and an AUTOMATIC1111-compatible API",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = service

    from sdxl.server.a1111 import build_router as a1111_router
    from sdxl.server.native import build_router as native_router

    app.include_router(native_router(service))
    app.include_router(a1111_router(service))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        html = resources.files("sdxl.server").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"detail": "the request body is not valid JSON"}, status_code=400)
        return JSONResponse({"detail": _describe_errors(errors)}, status_code=422)

    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes)
    if service.config.token:
        app.add_middleware(TokenAuth, token=service.config.token)
    return app


def _describe_errors(errors: list[dict]) -> str:
    """Pydantic's errors as one readable line: `body.steps: Input should be greater than or equal to 1; ...`."""
    parts = []
    for e in errors[:10]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def _version() -> str:
    import sdxl

    return sdxl.__version__


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, from the Content-Length or while reading a chunked body."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                return await _reply(send, 400, "the Content-Length header is not a number")
            if too_big:
                return await _reply(send, 413, f"the request body is over the server's limit of {self.max_bytes} bytes")
        body, more = bytearray(), True
        messages = []
        while more:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await _reply(send, 413, f"the request body is over the server's limit of {self.max_bytes} bytes")
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": bytes(body), "more_body": False}, *messages]

        async def replayed():
            return replay.pop(0) if replay else await receive()

        return await self.app(scope, replayed, send)


class TokenAuth:
    """Every request needs `Authorization: Bearer TOKEN` or HTTP Basic with TOKEN as the password (any user name)."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self._allowed(dict(scope.get("headers") or []).get(b"authorization", b"")):
            return await self.app(scope, receive, send)
        return await _reply(send, 401, "authentication required: send `Authorization: Bearer TOKEN`, or HTTP Basic "
                            "with the server's token as the password",
                            headers=[(b"www-authenticate", b'Basic realm="sdxl", charset="UTF-8"')])

    def _allowed(self, header: bytes) -> bool:
        scheme, _, value = header.partition(b" ")
        scheme = scheme.lower()
        if scheme == b"bearer":
            return hmac.compare_digest(value.strip(), self.token)
        if scheme == b"basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return hmac.compare_digest(decoded.partition(b":")[2], self.token)
        return False


async def _reply(send, status: int, message: str, headers: list | None = None) -> None:
    import json

    body = json.dumps({"detail": message}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})
