"""The frames tracker writes itself are frames any WebSocket client reads."""

import pytest
import trio
from wsproto.connection import Connection as WSProtoConnection
from wsproto.connection import ConnectionType
from wsproto.events import TextMessage

from tracker.websocket import Connection, Frame


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
