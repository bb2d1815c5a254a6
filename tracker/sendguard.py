"""ASGI middleware: HTTP responses are sent so that neither a client leaving nor Quart-Trio's
cancellation can break the connection they travel on.

Two traps of Hypercorn's trio worker under Quart-Trio, both at a response's
last send:
- Hypercorn ends a connection whose client closed by shutting the socket
  down for writing, without taking the send lock that guards the socket. A
  response written at that moment (typically the early 413 for a client that
  sent `Expect: 100-continue` with a large body and left after the 100)
  fails with `trio.BusyResourceError`, which would reach Hypercorn as "Error
  in ASGI Framework" with a traceback. The client is gone either way, so
  that send and the rest of the response are dropped, as ASGI asks of sends
  to a closed connection. WebSocket frames written by tracker/websocket.py
  past ASGI get the same treatment there (`Disconnected`).
- The last body send is where Hypercorn recycles a keep-alive connection and
  restarts its idle timer, from the sending task. Quart-Trio cancels that
  task's nursery as soon as the request is over, which killed the new timer:
  after its first request a keep-alive connection had no idle timeout and no
  deadline for its next request's head, and an idle client held a stopping
  server for the whole graceful timeout. The last send is therefore shielded
  (Hypercorn shields its socket writes anyway, so nothing waits longer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

# What a send to a socket that is being closed under it raises on Hypercorn's trio worker.
CLIENT_GONE_ERRORS = (trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError)


class GuardedResponses:
    def __init__(self, inner: Callable):
        self.inner = inner

    def __call__(self, scope: dict, receive: Callable, send: Callable) -> Awaitable[None]:
        # WebSockets are left alone: their fast path needs Hypercorn's own send
        # (tracker/websocket.py), which catches the same errors itself. Their
        # coroutine is returned, not awaited here: no frame of this middleware stays
        # alive for the life of every WebSocket (issue #20, memory).
        if scope["type"] != "http":
            return self.inner(scope, receive, send)
        return self._guarded(scope, receive, send)

    async def _guarded(self, scope: dict, receive: Callable, send: Callable) -> None:
        gone = False

        async def guarded_send(message: dict) -> None:
            nonlocal gone
            if gone:  # the rest of a response whose start could not be written
                return
            try:
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    with trio.CancelScope(shield=True):
                        await send(message)
                else:
                    await send(message)
            except CLIENT_GONE_ERRORS:
                gone = True

        await self.inner(scope, receive, guarded_send)
