"""A minimal proto2 wire-format codec, enough for the official Portrait4D LMDB records.

The official records (``training/dataloader/protocols/datum_genhead_pb2.py``, ``datum_portrait_vfhq_pb2.py`` and
``datum_portrait_genhead_new_pb2.py`` in YuDeng/Portrait-4D) are flat proto2 messages of optional ``int32`` and
``bytes`` fields: no nesting, no repeated or packed fields. On the wire each field is a varint key ``number << 3 |
wire_type`` followed by a varint (wire type 0, ``int32``) or a varint length and that many bytes (wire type 2,
``bytes``).

Why this and not message classes built at run time from ``google.protobuf.descriptor_pb2``: the codec is about
eighty lines with no dependency (``protobuf`` would become a training dependency, and the ``mediapipe`` wheel
pins protobuf 4 while other packages want 5), it decodes ``bytes`` fields as zero-copy views of the LMDB page
(the Python protobuf runtime copies every 40 MB ``images`` field on parse, and we only need two frames of it),
and it reports a truncated or malformed record precisely (which field, how many bytes were missing) instead of
protobuf's generic ``DecodeError``. ``tests/test_train_data.py`` checks both directions against ``protobuf`` itself
when it is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DATUM_GENHEAD", "DATUM_NEW", "DATUM_VFHQ", "MessageSchema", "WireError", "decode_fields",
           "decode_message", "encode_message"]

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_WIRE_NAMES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "start-group", 4: "end-group", 5: "32-bit"}


class WireError(ValueError):
    """The bytes are not a well-formed proto2 message (or not the message they were read as)."""


@dataclass(frozen=True)
class MessageSchema:
    """A flat proto2 message: field name -> ``(number, 'int32' | 'bytes')``, in field-number order."""

    name: str
    fields: Mapping[str, tuple[int, str]]

    def field_number(self, name: str) -> int:
        return self.fields[name][0]


DATUM_VFHQ = MessageSchema("Datum_vfhq", {
    "channels": (1, "int32"), "height": (2, "int32"), "width": (3, "int32"), "num": (4, "int32"),
    "images": (5, "bytes"), "segs": (6, "bytes"), "labels": (7, "bytes"), "mots": (8, "bytes"),
})
"""``datum_portrait_vfhq.proto``: one VFHQ clip, ``num`` frames stored raw (``images`` uint8 num x H x W x 3,
``segs`` uint8 num x H x W [x C], ``labels`` float32 num x 437, ``mots`` float32 num x 548)."""

DATUM_GENHEAD = MessageSchema("Datum_genhead", {
    "channels": (1, "int32"), "height": (2, "int32"), "width": (3, "int32"),
    "image": (4, "bytes"), "seg": (5, "bytes"), "labels": (6, "bytes"), "mots": (7, "bytes"),
})
"""``datum_genhead.proto``: one FFHQ image, ``image`` and ``seg`` as encoded PNG/JPEG files, ``labels`` float32
x 437, ``mots`` float32 x 548."""

DATUM_NEW = MessageSchema("Datum_new", {
    "channels": (1, "int32"), "height": (2, "int32"), "width": (3, "int32"), "num": (4, "int32"),
    "images": (5, "bytes"), "segs": (6, "bytes"), "segs_render": (7, "bytes"), "features": (8, "bytes"),
    "depths": (9, "bytes"), "triplanes": (10, "bytes"), "labels": (11, "bytes"), "mots": (12, "bytes"),
    "bgs": (13, "bytes"),
})
"""``datum_portrait_genhead_new.proto``: GenHead renders of one subject, ``num`` = frames x 5 views, stored raw:
``images`` uint8 num x H x W x C, ``segs`` uint8 num x H x W [x C], ``segs_render`` uint8 num x 64 x 64 [x C],
``features`` and ``depths`` float16 num x 64 x 64 x C, ``triplanes`` float16 per frame (points x 35: xyz + 32),
``labels`` float32 num x 437, ``mots`` float32 num x 548, ``bgs`` float16 64 x 64 x C (one per record). Field
numbers from the serialised descriptor of ``datum_portrait_genhead_new_pb2.py`` (every field optional)."""


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError("the record ends inside a varint (truncated)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("a varint is longer than 10 bytes")


def decode_fields(data: bytes | bytearray | memoryview) -> dict[int, tuple[int, int | memoryview]]:
    """Every field of a message: number -> ``(wire_type, value)``; varints as ``int``, length-delimited values
    as zero-copy ``memoryview`` slices of ``data``. A field that occurs twice keeps its last value (proto2)."""
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) or data.format != "B" else data
    out: dict[int, tuple[int, int | memoryview]] = {}
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("a field has number 0 (not a protobuf message)")
        value: int | memoryview
        if wire == VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == LEN:
            length, pos = _read_varint(buf, pos)
            if pos + length > end:
                raise WireError(f"field {number} announces {length} bytes but only {end - pos} are left (truncated)")
            value, pos = buf[pos:pos + length], pos + length
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            if pos + size > end:
                raise WireError(f"field {number} is cut short (truncated)")
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        else:
            raise WireError(f"field {number} has wire type {wire} ({_WIRE_NAMES.get(wire, 'unknown')}), which these "
                            "records never use")
        out[number] = (wire, value)
    return out


def decode_message(schema: MessageSchema, data: bytes | bytearray | memoryview) -> dict[str, int | memoryview]:
    """The fields of ``schema`` present in ``data``: name -> ``int`` (int32, sign restored) or ``memoryview``.
    Fields of other numbers are ignored (proto2 unknown fields); a field of the wrong wire type is a
    :class:`WireError`. Absent fields are absent from the result (the caller decides which are required)."""
    raw = decode_fields(data)
    out: dict[str, int | memoryview] = {}
    for name, (number, kind) in schema.fields.items():
        if number not in raw:
            continue
        wire, value = raw[number]
        expected = VARINT if kind == "int32" else LEN
        if wire != expected:
            raise WireError(f"field {number} ({name}) should be {_WIRE_NAMES[expected]} for {schema.name} but is "
                            f"{_WIRE_NAMES.get(wire, wire)}: not a {schema.name} record")
        if kind == "int32":
            assert isinstance(value, int)
            value &= 0xFFFFFFFF
            value = value - (1 << 32) if value >= 1 << 31 else value
        out[name] = value
    return out


def _varint(value: int) -> bytes:
    if value < 0:  # int32 negatives are sign-extended to 64 bits on the wire
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_message(schema: MessageSchema, values: Mapping[str, int | bytes | bytearray | memoryview | None]) -> bytes:
    """Serialise ``values`` (name -> int or bytes; ``None`` or absent: the field is not set) as ``schema``, fields
    in number order as protobuf writes them."""
    unknown = set(values) - set(schema.fields)
    if unknown:
        raise KeyError(f"{schema.name} has no field(s) {sorted(unknown)}")
    parts: list[bytes | memoryview] = []
    for name, (number, kind) in schema.fields.items():
        value = values.get(name)
        if value is None:
            continue
        if kind == "int32":
            if not -(1 << 31) <= int(value) < 1 << 31:  # type: ignore[arg-type]
                raise ValueError(f"{schema.name}.{name} = {value} does not fit an int32")
            parts += [_varint(number << 3 | VARINT), _varint(int(value))]  # type: ignore[arg-type]
        else:
            data = memoryview(value).cast("B") if not isinstance(value, bytes) else value  # type: ignore[arg-type]
            parts += [_varint(number << 3 | LEN), _varint(len(data)), data]
    return b"".join(parts)
