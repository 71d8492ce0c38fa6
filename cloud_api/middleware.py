"""Limits before work: authentication from the headers (``EarlyAuthMiddleware``), then the body cap (413) counted on
the streamed bytes with a read timeout, and bounded decompression of gzip/zstd request bodies.

The whole body is read here, never more than ``max_bytes`` (compressed *and* decompressed), before the app sees it:
a lying or missing Content-Length, a chunked upload or a decompression bomb all end in a 413 with a fixed message, and
a body that trickles in slower than ``read_timeout_s`` per chunk ends in a 408. None of it is read for a request whose
token is wrong: that is refused from its headers first.
"""

from __future__ import annotations

import asyncio
import json
import zlib

import zstandard
from fastapi import HTTPException

from cloud_api.deps import AUTHENTICATED_DEVICE, authenticate_admin, authenticate_device, bearer_token_from, charge
from cooperllm.protocol import API_PREFIX, ERRORS

_SUPPORTED = (b"", b"identity", b"gzip", b"zstd")


class BodyTooLarge(Exception):
    pass


def _decompress(data: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding == b"gzip":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = d.decompress(data, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise BodyTooLarge
        if not d.eof:
            raise ValueError("truncated gzip body")
        return out

    reader = zstandard.ZstdDecompressor().stream_reader(data)
    out = reader.read(limit + 1)
    if len(out) > limit:
        raise BodyTooLarge
    return out


class EarlyAuthMiddleware:
    """Refuse a request that carries a body from its headers alone, before a byte of the body is read: /enroll is
    rate-limited by the socket peer, admin calls need the admin token, device calls a valid device token (its rate
    limit is charged once, by the route). Failed authentications are rate-limited per socket peer as well."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            _check_headers(scope["app"].state.cooper, scope)
        except HTTPException as exc:
            await _error(send, exc.status_code, exc.detail, exc.headers)
            return
        await self.app(scope, receive, send)


def _check_headers(state, scope) -> None:
    path, peer = scope["path"], (scope.get("client") or ("", 0))[0]
    if path == f"{API_PREFIX}/enroll":
        charge(state, ("enroll", peer))
        return
    token = bearer_token_from(dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1"))
    try:
        if path.startswith(f"{API_PREFIX}/admin/"):
            authenticate_admin(state, token)
        elif path.startswith(f"{API_PREFIX}/rounds/"):
            # the route charges the device's rate limit (request_device); the token is not looked up twice
            scope.setdefault("state", {})[AUTHENTICATED_DEVICE] = authenticate_device(state, token, rate_limit=False)
    except HTTPException as exc:
        if exc.status_code == 401:  # token guessing costs the guesser's address its budget
            charge(state, ("unauthenticated", peer))
        raise


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int, read_timeout_s: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        encoding = headers.get(b"content-encoding", b"").strip().lower()
        if encoding not in _SUPPORTED:
            await _error(send, 415, ERRORS["unsupported_encoding"])
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _error(send, 413 if declared.isdigit() else 400, ERRORS["body_too_large"])
            return
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except TimeoutError:  # a slow client holds a connection and a buffer: let it go
                await _error(send, 408, ERRORS["body_timeout"])
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _error(send, 413, ERRORS["body_too_large"])
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        data = b"".join(chunks)
        if encoding in (b"gzip", b"zstd"):
            try:
                data = _decompress(data, encoding, self.max_bytes)
            except BodyTooLarge:
                await _error(send, 413, ERRORS["body_too_large"])
                return
            except Exception:  # malformed compressed stream
                await _error(send, 400, "malformed compressed body")
                return
            scope = dict(scope)
            scope["headers"] = [
                (k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")
            ] + [(b"content-length", str(len(data)).encode())]
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _error(send, status: int, detail: str, extra: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
