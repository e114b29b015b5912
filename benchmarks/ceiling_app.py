"""The serving benchmark's ceiling: an empty ASGI app that answers every request with a fixed small JSON.

No framework, no routing, no parsing: it reads the request body (as a real server must) and answers
`{"predictions":[0]}`. Run by `benchmarks/serve_bench.py` under uvicorn with uvloop + httptools,
one process, no access log — the most requests/s a Python ASGI server reaches on this machine.
"""

from __future__ import annotations

from typing import Any

BODY = b'{"predictions":[0]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
