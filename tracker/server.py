"""Runs the app under Hypercorn's trio worker, with the settings this stack needs.

Hypercorn's defaults do not suit a server with thousands of sockets facing
phones: the listen backlog is raised (200 simultaneous connects otherwise
wait seconds on SYN retries), a request's head must be complete within
`server.header_timeout_seconds` of the connection opening or of the
previous response (a client trickling its headers is cut too), every read
gets a deadline a little above twice the WebSocket ping interval (live
clients answer pings, so they are never cut; stalled ones are), and
WebSocket messages are capped at 4 KiB.
SIGINT and SIGTERM stop the server cleanly: the shutdown trigger returns,
Hypercorn closes connections, then the app's lifespan (and its nursery of
background tasks) ends.

The cyclic garbage collector runs its young generation every 50,000
allocations instead of 700: with a thousand WebSockets streaming, the
default promoted short-lived objects so fast that a full collection (a
~200 ms pause of the whole loop, measured) came every few seconds and set
the fan-out's p99 (docs/benchmarks.md).
"""

from __future__ import annotations

import gc
import logging
import math
import signal
from collections.abc import Awaitable, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Quart

from tracker import __version__
from tracker.config import Settings

log = logging.getLogger("tracker")

LISTEN_BACKLOG = 2048
WEBSOCKET_MAX_MESSAGE_BYTES = 4096
GRACEFUL_TIMEOUT_SECONDS = 5
SHUTDOWN_CLOSE_SECONDS = 1.0  # for telling WebSocket clients the server is going away
GC_THRESHOLDS = (50_000, 20, 100)  # gc.set_threshold: see the module doc


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"{settings.server.host}:{settings.server.port}"]
    if settings.ingest.osmand_port:
        config.bind.append(f"{settings.server.host}:{settings.ingest.osmand_port}")
    config.backlog = LISTEN_BACKLOG
    config.read_timeout = math.ceil(2 * settings.realtime.ping_interval_seconds + 5)
    # Hypercorn's keep-alive timer runs from a connection's start (and from each
    # response) until a request's head is complete, however slowly it trickles:
    # it is the deadline for a request's head, and the idle keep-alive time.
    config.keep_alive_timeout = settings.server.header_timeout_seconds
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_BYTES
    config.graceful_timeout = GRACEFUL_TIMEOUT_SECONDS
    config.accesslog = None  # share tokens are in paths; they never go to a log
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


def log_serving(binds: list[str], settings: Settings) -> None:
    """The startup line: where the server listens, and a URL that answers."""
    log.info(
        "tracker %s serving on %s (health: %s%s/health)",
        __version__,
        binds[0],
        binds[0],
        settings.server.api_prefix,
    )


async def wait_for_stop_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            return


async def serve(
    app: Quart,
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until the shutdown trigger returns (default: SIGINT or SIGTERM).

    Reports the bound addresses through task_status (for `nursery.start`).
    """
    trigger = shutdown_trigger or wait_for_stop_signal
    gc.set_threshold(*GC_THRESHOLDS)

    async def stop_then_close_streams() -> None:
        await trigger()
        # Hypercorn cancels open connections before the app's shutdown hooks run,
        # so WebSocket clients are told here, while their connections still live.
        with trio.move_on_after(SHUTDOWN_CLOSE_SECONDS):
            await app.extensions["tracker"].websockets.close_all()

    await hypercorn_serve(
        app,
        hypercorn_config(settings),
        shutdown_trigger=stop_then_close_streams,
        task_status=task_status,
    )
