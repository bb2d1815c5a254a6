"""The frames tracker writes itself are frames any WebSocket client reads."""

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from wsproto.connection import Connection as WSProtoConnection
from wsproto.connection import ConnectionType
from wsproto.events import TextMessage

from tracker.websocket import Connection, Disconnected, Frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_text_frames_of_every_length_class_decode_in_wsproto(size):
    text = ("é" + "x" * size)[:size] if size else ""
    client = WSProtoConnection(ConnectionType.CLIENT)
    client.receive_data(bytes(Frame.text(text)) + bytes(Frame.text("next")))
    messages = [event for event in client.events() if isinstance(event, TextMessage)]
    assert [m.data for m in messages] == [text, "next"]
    assert all(m.message_finished for m in messages)
    assert Frame.text(text).payload() == text.encode()


async def test_without_hypercorn_frames_go_out_as_plain_asgi_messages():
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        await trio.sleep_forever()

    connection = Connection({"type": "websocket", "headers": []}, receive, send)
    await connection.send_frames([Frame.text('{"a":1}'), Frame.text("é" * 200)])
    await connection.send_json({"last": True})
    assert sent == [
        {"type": "websocket.send", "text": '{"a":1}'},
        {"type": "websocket.send", "text": "é" * 200},
        {"type": "websocket.send", "text": '{"last":true}'},
    ]


async def test_a_frame_sent_while_hypercorn_closes_the_socket_ends_the_connection_quietly():
    """Hypercorn's close (send_eof) holds the socket's send side outside its send lock,
    so a frame sent at that moment meets trio.BusyResourceError. Under connection churn
    (bench/soak.py) that came out as "Error in ASGI Framework" tracebacks in the log; the
    client has gone, so the connection must end as for any other disconnect."""

    async def transport_send(event):
        raise trio.BusyResourceError("another task is currently sending data on this SocketStream")

    async def receive():
        await trio.sleep_forever()

    stream = WSStream(
        app=None,
        config=HypercornConfig(),
        context=None,
        task_group=None,
        ssl=False,
        client=None,
        server=None,
        send=transport_send,
        stream_id=1,
    )
    stream.state = ASGIWebsocketState.CONNECTED
    stream.connection = WSProtoConnection(ConnectionType.SERVER)
    connection = Connection({"type": "websocket", "headers": []}, receive, stream.app_send)
    with pytest.raises(Disconnected):
        await connection.send_frames([Frame.text('{"type":"position"}')])
    await connection.close(1000)  # the close frame meets the same: no error either
    assert connection.closed
