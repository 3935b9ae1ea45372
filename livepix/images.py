"""Decoding and encoding of the images that travel as base64 (Pillow only)."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
_FORMATS = sorted(ACCEPTED_FORMATS)  # what Image.open tries, in this order
_DATA_URL_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/webp"}


class ImageError(ValueError):
    """Raised when an uploaded image cannot be used; the message says why, in plain words."""


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_pixels: int = 16_000_000
    max_side: int = 4096


def strip_data_url(data: str) -> str:
    """Return the base64 payload of `data`, accepting a `data:image/...;base64,` prefix."""
    if not data.startswith("data:"):
        return data
    header, sep, payload = data.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ImageError("a data: URL must be base64 encoded")
    media_type = header[5:-7].lower()
    if media_type not in _DATA_URL_TYPES:
        shown = media_type[:60] + ("..." if len(media_type) > 60 else "")  # echoed: keep it short
        raise ImageError(f"a data: URL of type {shown or 'none'} is not an image livepix accepts")
    return payload


def decode_bytes(data: str) -> bytes:
    """Decode base64 (standard or URL-safe, padding optional) to bytes."""
    payload = "".join(strip_data_url(data).split())
    if not payload:
        raise ImageError("the image is empty")
    payload += "=" * (-len(payload) % 4)
    try:
        if "-" in payload or "_" in payload:
            return base64.urlsafe_b64decode(payload)
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError("the image is not valid base64") from exc


def open_image(raw: bytes, limits: ImageLimits) -> Image.Image:
    """Open and fully decode `raw`, refusing other formats, huge sizes and decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=_FORMATS)
            width, height = image.size
            if max(width, height) > limits.max_side:
                raise ImageError(
                    f"the image is {width}x{height}; the largest side allowed is {limits.max_side} px"
                )
            if width * height > limits.max_pixels:
                raise ImageError(
                    f"the image has {width * height} pixels; at most {limits.max_pixels} are allowed"
                )
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError("the image is too large once decompressed") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("the data is not a PNG, JPEG or WebP image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image is truncated or corrupt ({exc})") from exc
    return image


def decode_image(data: str, limits: ImageLimits) -> Image.Image:
    """Base64 (or data: URL) to a fully decoded Pillow image, within `limits`."""
    return open_image(decode_bytes(data), limits)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_png_base64(image: Image.Image) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")
