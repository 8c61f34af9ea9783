"""Request-size limit for the HTTP API: bodies over the limit are refused with 413 before the
app reads them (a declared Content-Length over the limit is refused unread; a chunked body is
counted as it arrives and refused once it passes the limit). A plain ASGI middleware: no
per-request task, and nothing buffered beyond the limit."""

from __future__ import annotations

import json


class BodySizeLimit:
    """ASGI middleware: 413 for HTTP request bodies over `max_bytes` bytes."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def _refuse(self, send, size: str) -> None:
        body = json.dumps({"detail": f"Request body of {size} bytes is over this server's limit of {self.max_bytes:,} bytes (api.max_body_bytes); send fewer persons or events per request."}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length > self.max_bytes:
                return await self._refuse(send, f"{length:,}")
            if length >= 0:
                return await self.app(scope, receive, send)
        # No (valid) Content-Length: a chunked body, read up to the limit before the app sees it.
        messages, total = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                return await self._refuse(send, f"over {self.max_bytes:,}")
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)
