"""A corpus of bad input, and the answer each piece must get (SPEC sections 2, 3, 5).

Every payload is built at test time from a few bytes of Pillow output or by hand:
nothing binary is committed. Each case names the stable error `code` it must get and,
for `invalid_input`, the field its `details` must name.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

# --- images ----------------------------------------------------------------------


def _pixels(size: int = 32) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def encoded(fmt: str, image: Image.Image | None = None, **options: Any) -> bytes:
    buffer = io.BytesIO()
    (image or _pixels()).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc & 0xFFFFFFFF)


def png_declaring(width: int, height: int, extra: bytes = b"", ihdr_crc: int | None = None) -> bytes:
    """A PNG whose header declares `width` x `height` RGB pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr, ihdr_crc)
        + extra
        + _chunk(b"IDAT", zlib.compress(bytes(64)))
        + _chunk(b"IEND", b"")
    )


def png_text_bomb() -> bytes:
    """A 4x4 PNG carrying a zTXt chunk that inflates to 64 MB."""
    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)
    return png_declaring(4, 4, extra=_chunk(b"zTXt", b"Comment\x00\x00" + bomb))


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to `width` x `height`."""
    jpeg = encoded("JPEG")
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def webp_declaring(side: int) -> bytes:
    """A real lossless WebP whose VP8L header is rewritten to `side` x `side` (max 16384)."""
    webp = encoded("WEBP", lossless=True)
    at = webp.index(b"VP8L") + 9  # fourcc, chunk size, the 0x2f signature byte
    bits = int.from_bytes(webp[at : at + 4], "little") & ~((1 << 28) - 1)
    bits |= (side - 1) | ((side - 1) << 14)
    return webp[:at] + bits.to_bytes(4, "little") + webp[at + 4 :]


@cache
def real_png(width: int, height: int) -> bytes:
    """A real, honestly encoded, well-compressing grayscale PNG."""
    return encoded("PNG", Image.new("L", (width, height), 128))


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def corrupt_jpeg() -> bytes:
    """A JPEG start-of-image marker followed by bytes that are no JPEG segments."""
    return encoded("JPEG")[:2] + bytes(range(256)) * 4


def corrupt_png_data() -> bytes:
    png = bytearray(encoded("PNG"))
    png[60:90] = bytes(30)  # inside the IDAT stream
    return bytes(png)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- submit bodies -----------------------------------------------------------------


def body(obj: Any) -> bytes:
    """JSON with every non-ASCII character escaped: lone surrogates travel as "\\ud800"."""
    return json.dumps(obj).encode()


def removal(image: str | Any, **fields: Any) -> dict[str, Any]:
    return {"task_type": "background_removal", "image": image, **fields}


def generation(**fields: Any) -> dict[str, Any]:
    return {"task_type": "image_generation", "prompt": "a lighthouse", **fields}


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@dataclass(frozen=True, slots=True)
class Submit:
    """A submit body (built when the test runs) and the error it must get."""

    build: Callable[[], bytes]
    field: str | None = None  # the `details` key an invalid_input must name
    says: str = ""  # words that message must hold
    status: int = 400
    code: str = "invalid_input"


def _image(data: Callable[[], bytes], says: str = "", name: str = "image") -> Submit:
    return Submit(lambda: body(removal(b64(data()))), name, says)


def _json(obj: Any, name: str | None, says: str = "") -> Submit:
    return Submit(lambda: body(obj), name, says)


def _raw(text: bytes, code: str = "invalid_json", name: str | None = None) -> Submit:
    return Submit(lambda: text, name, code=code)


SUBMITS: dict[str, Submit] = {
    # Decompression bombs and sizes over the limits (16 Mpx, 4096 px a side).
    "png header 30000x30000": _image(lambda: png_declaring(30000, 30000), "too large"),
    "png header 65535x1": _image(lambda: png_declaring(65535, 1), "largest side"),
    "png header 4096x4096": _image(lambda: png_declaring(4096, 4096), "pixels"),
    "jpeg header 60000x60000": _image(lambda: jpeg_declaring(60000, 60000), "too large"),
    "webp header 16384x16384": _image(lambda: webp_declaring(16384), "too large"),
    "real png 5000x5000": _image(lambda: real_png(5000, 5000), "largest side"),
    "real png 4096x4096": _image(lambda: real_png(4096, 4096), "pixels"),
    "real png 4097x8": _image(lambda: real_png(4097, 8), "largest side"),
    "png ztxt bomb": _image(png_text_bomb, "corrupt"),
    # Broken images.
    "truncated png": _image(lambda: truncated(encoded("PNG")), "truncated"),
    "truncated jpeg": _image(lambda: truncated(encoded("JPEG")), "truncated"),
    "truncated webp": _image(lambda: truncated(encoded("WEBP")), "corrupt"),
    "corrupt jpeg": _image(corrupt_jpeg, "not a PNG, JPEG or WebP"),
    "corrupt png data": _image(corrupt_png_data, "corrupt"),
    "png header with a bad crc": _image(lambda: png_declaring(8, 8, ihdr_crc=1)),
    "png of 0x0": _image(lambda: png_declaring(0, 0)),
    "png signature only": _image(lambda: b"\x89PNG\r\n\x1a\n"),
    # Not images, or not a format livepix takes.
    "gif": _image(lambda: encoded("GIF"), "not a PNG, JPEG or WebP"),
    "bmp": _image(lambda: encoded("BMP"), "not a PNG, JPEG or WebP"),
    "tiff": _image(lambda: encoded("TIFF"), "not a PNG, JPEG or WebP"),
    "pdf": _image(lambda: b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n"),
    "svg": _image(lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'),
    "text": _image(lambda: b"just some words, not an image\n"),
    "one byte": _image(lambda: b"\x89"),
    # Not base64, or a data: URL of the wrong kind.
    "empty image": _json(removal(""), "image", "empty"),
    "whitespace image": _json(removal(" \n\t "), "image", "empty"),
    "invalid base64": _json(removal("not base64 at all!!!"), "image", "base64"),
    "base64 padding inside": _json(removal("iVBO=Rw0KGgo"), "image", "base64"),
    "non-ascii base64": _json(removal("iVBORw0KGgo\u00e9\u00e9"), "image", "base64"),
    "data url text/plain": _json(removal("data:text/plain;base64," + b64(b"hello")), "image", "text/plain"),
    "data url svg": _json(removal("data:image/svg+xml;base64," + b64(b"<svg/>")), "image", "image/svg+xml"),
    "data url no base64": _json(removal("data:image/png,iVBORw0KGgo"), "image", "base64"),
    "data url no comma": _json(removal("data:image/png;base64"), "image", "base64"),
    "data url type of 1 MB": _json(removal("data:image/" + "x" * 1_000_000 + ";base64,AAAA"), "image", "..."),
    "data url no type": _json(removal("data:;base64," + b64(encoded("PNG"))), "image", "none"),
    "data url png holding a gif": Submit(
        lambda: body(removal("data:image/png;base64," + b64(encoded("GIF")))), "image"
    ),
    # Wrong JSON types, field by field.
    "body a list": _json([generation()], "non_field_errors"),
    "body a string": _json("image_generation", "non_field_errors"),
    "body a number": _json(42, "non_field_errors"),
    "body null": _json(None, "non_field_errors"),
    "body NaN": _raw(b"NaN"),  # not JSON (RFC 8259), though Python's json reads it
    "task_type missing": _json({"prompt": "x"}, "task_type", "required"),
    "task_type a number": _json({"task_type": 1, "prompt": "x"}, "task_type", "not a valid choice"),
    "task_type true": _json({"task_type": True}, "task_type", "not a valid choice"),
    "task_type a list": _json({"task_type": ["image_generation"]}, "task_type"),
    "task_type an object": _json({"task_type": {"name": "image_generation"}}, "task_type"),
    "task_type upper case": _json({"task_type": "IMAGE_GENERATION"}, "task_type"),
    "task_type empty": _json({"task_type": ""}, "task_type"),
    "task_type of 1 MB": _json({"task_type": "x" * 1_000_000}, "task_type", "..."),
    "prompt a list": _json(generation(prompt=["a", "b"]), "prompt", "string"),
    "prompt a number": _json(generation(prompt=7), "prompt", "string"),
    "prompt an object": _json(generation(prompt={"text": "x"}), "prompt", "string"),
    "prompt where none is taken": _json(removal(b64(encoded("PNG")), prompt="x"), "prompt"),
    "parameters a string": _json(generation(parameters="width=512"), "parameters", "object"),
    "parameters a list": _json(generation(parameters=[512, 512]), "parameters", "object"),
    "parameters unknown": _json(generation(parameters={"webhook": "http://x"}), "parameters.webhook"),
    "width a string": _json(generation(parameters={"width": "512"}), "parameters.width"),
    "width a float": _json(generation(parameters={"width": 512.5}), "parameters.width"),
    "width a bool": _json(generation(parameters={"width": True}), "parameters.width"),
    "width not a multiple of 8": _json(generation(parameters={"width": 100}), "parameters.width"),
    "width huge": _json(generation(parameters={"width": 10**40}), "parameters.width"),
    "guidance NaN": Submit(lambda: body(generation(parameters={"guidance_scale": float("nan")})), None, code="invalid_json"),
    "guidance Infinity": Submit(lambda: body(generation(parameters={"guidance_scale": float("inf")})), None, code="invalid_json"),
    "seed negative": _json(generation(parameters={"seed": -1}), "parameters.seed"),
    "seed over 32 bits": _json(generation(parameters={"seed": 2**32}), "parameters.seed"),
    "image a number": _json(removal(12345), "image", "base64 string"),
    "image a list": _json(removal([b64(encoded("PNG"))]), "image", "base64 string"),
    "image an object": _json(removal({"data": b64(encoded("PNG"))}), "image", "base64 string"),
    "image missing": _json({"task_type": "background_removal"}, "image", "required"),
    "image where none is taken": _json(generation(image=b64(encoded("PNG"))), "image"),
    "boxes of strings": _json(
        {"task_type": "object_removal", "image": "x", "parameters": {"boxes": [["0", "0", "8", "8"]]}},
        "parameters.boxes",
    ),
    "boxes empty box": _json(
        {"task_type": "object_removal", "image": "x", "parameters": {"boxes": [[4, 4, 4, 4]]}},
        "parameters.boxes",
    ),
    "boxes a string": _json(
        {"task_type": "object_removal", "image": "x", "parameters": {"boxes": "0,0,8,8"}},
        "parameters.boxes",
    ),
    "boxes of three": _json(
        {"task_type": "object_removal", "image": "x", "parameters": {"boxes": [[0, 0, 8]]}},
        "parameters.boxes",
    ),
    "mask of another size": Submit(
        lambda: body({"task_type": "object_removal", "image": b64(encoded("PNG")),
                      "mask": b64(encoded("PNG", _pixels(16)))}),
        "mask", "16x16",
    ),
    "mask not an image": _json({"task_type": "object_removal", "image": "x", "mask": b64(b"%PDF-")}, "mask"),
    "target_image corrupt": Submit(
        lambda: body({"task_type": "face_swap", "image": b64(encoded("PNG")),
                      "target_image": b64(truncated(encoded("PNG")))}),
        "target_image", "truncated",
    ),
    "bgcolor a name": _json(removal("x", parameters={"bgcolor": "red"}), "parameters.bgcolor"),
    "bgcolor out of range": _json(removal("x", parameters={"bgcolor": [256, 0, 0]}), "parameters.bgcolor"),
    "style unknown": _json({"task_type": "style_transfer", "image": "x", "parameters": {"style": 5}},
                           "parameters.style"),
    "method unknown": _json(
        {"task_type": "object_removal", "image": "x", "parameters": {"method": "magic"}}, "parameters.method"
    ),
    "unknown field": _json(generation(webhook_url="http://example.com"), "webhook_url", "Unknown field"),
    # NUL, lone surrogates, sizes in characters.
    "prompt with NUL": _json(generation(prompt="a\x00b"), "prompt", "NUL"),
    "negative_prompt with NUL": _json(generation(parameters={"negative_prompt": "\x00"}),
                                      "parameters.negative_prompt", "NUL"),
    "prompt lone high surrogate": _json(generation(prompt="a\ud800b"), "prompt", "surrogate"),
    "prompt lone low surrogate": _json(generation(prompt="\udfff"), "prompt", "surrogate"),
    "negative_prompt lone surrogate": _json(generation(parameters={"negative_prompt": "\ud83d"}),
                                            "parameters", "surrogate"),
    "field name lone surrogate": _json({**generation(), "\ud800": 1}, "non_field_errors", "surrogate"),
    "task_type lone surrogate": _json({"task_type": "\ud800"}, "task_type", "surrogate"),
    "image lone surrogate": _json(removal("iVBOR\udc00"), "image", "surrogate"),
    "data url type lone surrogate": _json(removal("data:\ud800;base64,AAAA"), "image", "surrogate"),
    "prompt 5001 emoji": _json(generation(prompt="\U0001f600" * 5001), "prompt", "5000"),
    "negative_prompt 5001 chars": _json(generation(parameters={"negative_prompt": "\u05d0" * 5001}),
                                        "parameters.negative_prompt", "5000"),
    "prompt only whitespace": _json(generation(prompt=" \t\n\u3000 "), "prompt", "required"),
    "parameters nested 100 deep": _json(generation(parameters={"seed": nested(100)}), "parameters", "deep"),
    "task_type nested 100 deep": _json({"task_type": nested(100)}, "task_type", "deep"),
    # Not JSON at all.
    "empty body": _raw(b""),
    "not json": _raw(b"task_type=image_generation&prompt=x"),
    "truncated json": _raw(b'{"task_type": "image_generation", "prompt": '),
    "invalid utf-8": _raw(b'{"task_type": "\xff\xfe"}'),
    "json with a trailing comma": _raw(b'{"task_type": "image_generation",}'),
    "nested 100000 deep": _raw(b"[" * 100_000 + b"]" * 100_000),
}

# Prompts that are odd but valid Unicode: accepted (202), never mangled into a 5xx.
ODD_BUT_VALID_PROMPTS: dict[str, str] = {
    "rtl marks": "\u202eabc\u202c \u200fשלום\u200e",
    "zero width and joiners": "a\u200bb\u200dc \U0001f469\u200d\U0001f4bb",
    "combining marks": "e" + "\u0301" * 200,
    "5000 emoji": "\U0001f600" * 5000,
    "private use and noncharacters": "\ue000\uffff\U0010fffd",
    "bidi isolates in json escapes": "\u2066x\u2069",
}

OVER_25_MB = 25 * 1024 * 1024 + 1024


@cache
def oversize_body() -> bytes:
    """A submit body just over 25 MB."""
    return body(removal("A" * OVER_25_MB))


# --- task ids and methods -----------------------------------------------------------

# Path segments, already percent-encoded as sent. Each must be 404 not_found everywhere.
BAD_TASK_IDS: dict[str, str] = {
    "dot dot": "..",
    "encoded dot dot": "%2e%2e",
    "encoded traversal": "..%2F..%2Fetc%2Fpasswd",
    "dot dot slash passwd": "..%2fetc%2fpasswd",
    "very long": "a" * 8000,
    "NUL": "%00",
    "emoji": "%F0%9F%98%80",
    "invalid utf-8": "%FF%FE",
    "encoded surrogate": "%ED%A0%80",
    "redis glob": "%2A",
    "redis key": "livepix:task:x",
    "sql": "1%27%20OR%20%271%27%3D%271",
    "uuid not uuid4 unknown": "00000000-0000-0000-0000-000000000000",
    "uuid braces unknown": "%7B6f1c0e1e-4ad1-4c63-9a55-1b2f0c1d2e3f%7D",
}

# (method, path under /api/v1, with {id} for a task id): the path exists, the method not.
WRONG_METHODS: list[tuple[str, str]] = [
    ("GET", "/tasks/submit/"),
    ("PUT", "/tasks/submit/"),
    ("DELETE", "/tasks/submit"),
    ("PATCH", "/tasks/submit/"),
    ("OPTIONS", "/tasks/submit/"),
    ("POST", "/tasks/{id}/status/"),
    ("DELETE", "/tasks/{id}/status"),
    ("POST", "/tasks/{id}/result/"),
    ("PUT", "/tasks/{id}/result.png"),
    ("GET", "/tasks/{id}/cancel/"),
    ("DELETE", "/tasks/{id}/cancel"),
    ("POST", "/tasks/{id}/events"),
    ("POST", "/queues"),
    ("DELETE", "/healthz"),
    ("POST", "/readyz"),
    ("PUT", "/metrics"),
    ("POST", "/openapi.json"),
]

# --- WebSocket messages on /ws ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WsOp:
    """A message for `/ws` and the `{"op":"error"}` it must get."""

    frame: Callable[[], str | bytes]
    code: str
    echoes: dict[str, Any] = field(default_factory=dict)  # fields the error must carry


def _op(obj: Any, code: str, **echoes: Any) -> WsOp:
    return WsOp(lambda: json.dumps(obj), code, echoes)


UNKNOWN_ID = "6f1c0e1e-4ad1-4c63-9a55-1b2f0c1d2e3f"  # a UUID4 no test submits

WS_OPS: dict[str, WsOp] = {
    "not json": WsOp(lambda: "subscribe please", "invalid_json"),
    "truncated json": WsOp(lambda: '{"op": "ping"', "invalid_json"),
    "an array": _op([{"op": "ping"}], "invalid_json"),
    "a string": _op("ping", "invalid_json"),
    "a number": _op(42, "invalid_json"),
    "null": _op(None, "invalid_json"),
    "NaN": WsOp(lambda: '{"op": "ping", "n": NaN}', "invalid_json"),
    "binary frame": WsOp(lambda: b"\x00\x01\x02\xff", "invalid_json"),
    "binary frame of json": WsOp(lambda: b'{"op": "ping"}', "invalid_json"),
    "lone surrogate": _op({"op": "ping\ud800"}, "invalid_json"),
    "request_id lone surrogate": _op({"op": "submit", "request_id": "\udfff", "task": {}}, "invalid_json"),
    "nested 100 deep": _op({"op": nested(100)}, "invalid_json"),
    "nested 5000 deep": WsOp(lambda: "[" * 5000 + "]" * 5000, "invalid_json"),
    "unknown op": _op({"op": "explode"}, "unknown_op", received_op="explode"),
    "no op": _op({"task_id": UNKNOWN_ID}, "unknown_op", received_op=None),
    "op a number": _op({"op": 3}, "unknown_op", received_op=3),
    "op a list": _op({"op": ["ping"]}, "unknown_op", received_op=["ping"]),
    "op upper case": _op({"op": "PING"}, "unknown_op", received_op="PING"),
    "subscribe without task_id": _op({"op": "subscribe"}, "invalid_input", task_id=None),
    "subscribe task_id a number": _op({"op": "subscribe", "task_id": 7}, "invalid_input", task_id=7),
    "subscribe path-like id": _op({"op": "subscribe", "task_id": "../etc/passwd"}, "not_found",
                                  task_id="../etc/passwd"),
    "subscribe unknown task": _op({"op": "subscribe", "task_id": UNKNOWN_ID}, "not_found", task_id=UNKNOWN_ID),
    "subscribe since -1": _op({"op": "subscribe", "task_id": UNKNOWN_ID, "since": -1}, "invalid_input",
                              task_id=UNKNOWN_ID),
    "subscribe since abc": _op({"op": "subscribe", "task_id": UNKNOWN_ID, "since": "abc"}, "invalid_input",
                               task_id=UNKNOWN_ID),
    "subscribe since 1.5": _op({"op": "subscribe", "task_id": UNKNOWN_ID, "since": 1.5}, "invalid_input"),
    "subscribe since true": _op({"op": "subscribe", "task_id": UNKNOWN_ID, "since": True}, "invalid_input"),
    "subscribe since 2**64": _op({"op": "subscribe", "task_id": UNKNOWN_ID, "since": 2**64}, "invalid_input"),
    "unsubscribe without task_id": _op({"op": "unsubscribe"}, "invalid_input"),
    "cancel without task_id": _op({"op": "cancel"}, "invalid_input"),
    "cancel path-like id": _op({"op": "cancel", "task_id": "%2e%2e"}, "not_found", task_id="%2e%2e"),
    "cancel unknown task": _op({"op": "cancel", "task_id": UNKNOWN_ID}, "not_found", task_id=UNKNOWN_ID),
    "submit without task": _op({"op": "submit", "request_id": "r1"}, "invalid_input", request_id="r1"),
    "submit task a string": _op({"op": "submit", "request_id": 2, "task": "x"}, "invalid_input", request_id=2),
    "submit bad image": WsOp(
        lambda: json.dumps({"op": "submit", "request_id": "r3",
                            "task": removal(b64(png_declaring(30000, 30000)))}),
        "invalid_input", {"request_id": "r3"},
    ),
    "submit prompt lone surrogate": _op({"op": "submit", "request_id": "r4", "task": generation(prompt="\ud800")},
                                        "invalid_input", request_id="r4"),
}

# Frames over the 64 KiB limit: the server closes with 1009.
WS_MAX_BYTES = 64 * 1024
OVERSIZE_FRAMES: dict[str, Callable[[], str | bytes]] = {
    "text": lambda: json.dumps({"op": "ping", "pad": "x" * WS_MAX_BYTES}),
    "binary": lambda: bytes(WS_MAX_BYTES + 1),
    "submit with an image": lambda: json.dumps(
        {"op": "submit", "request_id": "big", "task": removal(b64(real_png(600, 600) + bytes(70_000)))}
    ),
}
