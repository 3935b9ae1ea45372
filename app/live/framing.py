"""Wire framing, pure functions: an event's bytes as a WebSocket frame (RFC 6455) and
as a chunk of a chunked HTTP/1.1 response (RFC 9112), built once per event and written
straight to the connections whose transport takes them (app/server.py)."""

from __future__ import annotations


def ws_text_frame(payload: bytes) -> bytes:
    """`payload` (UTF-8) as one final, unmasked text frame (RFC 6455, section 5.2)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = b"\x81\x7e" + size.to_bytes(2, "big")
    else:
        header = b"\x81\x7f" + size.to_bytes(8, "big")
    return header + payload


def http_chunk(body: bytes) -> bytes:
    """`body` as one chunk of a chunked HTTP/1.1 response (RFC 9112, section 7.1).
    Never empty: an empty chunk ends the response."""
    if not body:
        raise ValueError("an empty chunk would end the response")
    return b"%x\r\n%b\r\n" % (len(body), body)
