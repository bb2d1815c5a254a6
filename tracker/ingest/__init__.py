"""Wire formats of the phone apps, each parsed into models.Position.

One module per format: `native` (our own JSON, strict), `osmand` (Traccar
Client, OsmAnd, GPSLogger: form parameters or JSON), `owntracks` (OwnTracks'
HTTP mode). Each is pure: decoded input in, validated positions out, and a
payload that is wrong raises `native.IngestError` naming the field as the
client spelled it. What the phone apps need beyond that (numbers sent as
strings, `-1` meaning unknown, attributes that never fail) lives in `osmand`,
which OwnTracks borrows.
"""
