"""Display names: which profile field names a device, with a fallback so it always has one.

The display value is the profile's chosen field (`display_field`); when that
is empty, the first non-empty of full_name, nickname, email, client_id, and
finally the device token itself, so a device is never nameless.
"""

from __future__ import annotations

FALLBACK_FIELDS = ("full_name", "nickname", "email", "client_id")


def display_value(profile: dict[str, str], display_field: str, device_token: str) -> str:
    for field in (display_field, *FALLBACK_FIELDS):
        value = profile.get(field)
        if value and value.strip():
            return value
    return device_token
