"""Abusive clients are cut off within their documented timeouts and never starve the others."""

import json

import httpx
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from tests.conftest import start_server
from tracker.app import create_app


def other_address_client(server) -> httpx.AsyncClient:
    """A client on another loopback address (127.0.0.2), as a different user would be."""
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    return httpx.AsyncClient(base_url=server.api, transport=transport, timeout=5)


async def test_stalled_and_trickled_headers_are_cut_at_the_header_timeout(nursery, settings, app):
    settings = settings.replace(server={"header_timeout_seconds": 1.5})
    server = await start_server(nursery, app, settings)
    host, port = server.url.removeprefix("http://").split(":")
    request_line = b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n"
    stalled = []
    for _ in range(20):
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(request_line[:10])  # half a request line, then nothing
        stalled.append(stream)
    trickler = await trio.open_tcp_stream(host, int(port))
    started = trio.current_time()

    async def trickle() -> None:
        # One byte every 0.2 s: the whole head would take ~8 s.
        for byte in request_line + b"X-Padding: " + b"p" * 20 + b"\r\n\r\n":
            await trio.sleep(0.2)
            try:
                await trickler.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                return

    nursery.start_soon(trickle)
    async with other_address_client(server) as client:
        assert (await client.get("/health")).status_code == 200
    with trio.fail_after(6):
        replies = [await stream.receive_some(1024) for stream in stalled]
        trickled = await trickler.receive_some(1024)
    assert replies == [b""] * 20, replies[:2]
    assert trickled == b""  # hung up on, not answered
    assert trio.current_time() - started < 5  # the head would have been complete at ~8 s


async def test_keep_alive_connection_is_closed_when_idle_after_a_request(nursery, settings, app):
    settings = settings.replace(server={"header_timeout_seconds": 1})
    server = await start_server(nursery, app, settings)
    host, port = server.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    with trio.fail_after(5):
        while b'"status"' not in answer:
            answer += await stream.receive_some(4096)
        # Idle now: the next request's head is due within the header timeout.
        await stream.send_all(b"GET /api/v1/hea")
        assert await stream.receive_some(1024) == b""


async def test_stalled_bodies_get_408_and_others_are_served(server, app, fleet):
    app.config["BODY_TIMEOUT"] = 1
    host, port = server.url.removeprefix("http://").split(":")

    async def stalled(results: list) -> None:
        stream = await trio.open_tcp_stream(host, int(port))
        await stream.send_all(
            b"POST /api/v1/devices HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        results.append(await stream.receive_some(4096))
        await stream.aclose()

    results: list[bytes] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as stalls:
            for _ in range(30):
                stalls.start_soon(stalled, results)
            async with other_address_client(server) as client:
                assert (await client.get("/health")).status_code == 200
    assert len(results) == 30
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in results)


async def test_connection_flood_from_one_address_is_capped(nursery, settings):
    settings = settings.replace(
        server={"max_connections_per_address": 40}, realtime={"auth_timeout_seconds": 1}
    )
    app = create_app(settings)  # the cap is wired in when the app is made
    server = await start_server(nursery, app, settings)
    accepted, refused, closed_codes = 0, 0, []

    async def never_authenticates() -> None:
        nonlocal accepted, refused
        try:
            async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
                accepted += 1
                try:
                    while True:
                        await ws.get_message()
                except ConnectionClosed as closed:
                    closed_codes.append(closed.reason.code)
        except ConnectionRejected as rejected:
            assert rejected.status_code == 429
            refused += 1

    started = trio.current_time()
    async with trio.open_nursery() as flood:
        for _ in range(60):
            flood.start_soon(never_authenticates)
        await trio.sleep(0.3)
        async with other_address_client(server) as client:
            assert (await client.get("/health")).status_code == 200
        async with httpx.AsyncClient(base_url=server.api) as same_address:
            capped = await same_address.get("/health")
            assert capped.status_code == 429
            assert capped.json()["error"]["code"] == "rate_limited"
    assert accepted == 40 and refused == 20
    assert closed_codes == [4008] * 40
    assert trio.current_time() - started < 3  # auth timeout 1 s
    async with httpx.AsyncClient(base_url=server.api) as same_address:
        assert (await same_address.get("/health")).status_code == 200


async def test_never_authenticating_websockets_are_closed_in_time(nursery, settings, app):
    settings = settings.replace(realtime={"auth_timeout_seconds": 0.5})
    app.extensions["tracker"].settings = settings
    server = await start_server(nursery, app, settings)
    codes = []

    async def idle() -> None:
        async with open_websocket_url(f"{server.ws}/ws/realtime") as ws:
            try:
                while True:
                    message = json.loads(await ws.get_message())
                    assert message["type"] == "error"
            except ConnectionClosed as closed:
                codes.append(closed.reason.code)

    with trio.fail_after(3):
        async with trio.open_nursery() as idlers:
            for _ in range(100):
                idlers.start_soon(idle)
    assert codes == [4008] * 100
