"""Body cap (413) counted on the streamed bytes, and bounded decompression of gzip/zstd request bodies.

The whole body is read here, never more than ``max_bytes`` (compressed *and* decompressed), before the app sees it:
a lying or missing Content-Length, a chunked upload or a decompression bomb all end in a 413 with a fixed message.
"""

from __future__ import annotations

import json
import zlib

import zstandard

from cooperllm.protocol import ERRORS

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


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

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
            message = await receive()
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


async def _error(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
