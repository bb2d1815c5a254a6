"""`tracker watch`: print an instance's /ws/realtime stream, one JSON message a line.

A small client for trying the stream from a terminal (the demo suggests it);
it answers the server's pings so the connection stays open.
"""

from __future__ import annotations

import json

import trio
from trio_websocket import ConnectionClosed, open_websocket_url


async def watch(url: str, token: str, instance_id: str, **settings: str) -> tuple[int, str]:
    """Stream until the server closes; returns the close code and reason."""
    async with open_websocket_url(url) as ws:
        await ws.send_message(
            json.dumps(
                {"type": "authenticate", "jwt": token, "instance_id": instance_id, **settings}
            )
        )
        try:
            while True:
                message = await ws.get_message()
                if json.loads(message).get("type") == "ping":
                    await ws.send_message(json.dumps({"type": "pong"}))
                    continue
                print(message, flush=True)
        except ConnectionClosed as closed:
            return closed.reason.code, closed.reason.reason or ""
        except BrokenPipeError:  # e.g. piped into `head`
            return 1000, ""


def run_watch(url: str, token: str, instance_id: str, **settings: str) -> tuple[int, str]:
    return trio.run(lambda: watch(url, token, instance_id, **settings))
