"""JSON in and out with orjson: strict parsing and fast encoding.

Python's `json` accepts NaN, Infinity, 1e999 (as inf) and lone surrogates,
and recurses until it crashes on deep nesting. orjson refuses all of these,
so every body parsed here is finite, valid Unicode and bounded in depth.
Encoding writes NaN as null, so output JSON never contains NaN.
"""

from __future__ import annotations

from typing import Any

import orjson
from quart.json.provider import JSONProvider


class JSONDecodeError(ValueError):
    """The bytes are not strict JSON; the message says where."""


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise JSONDecodeError(f"body is not valid JSON: {error}") from None


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


class OrjsonProvider(JSONProvider):
    """Quart's JSON provider backed by orjson, so request.get_json() is strict too."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return dumps(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s)

    def response(self, *args: Any, **kwargs: Any):
        value = args[0] if len(args) == 1 else (args or kwargs)
        return self._app.response_class(dumps(value), mimetype="application/json")
