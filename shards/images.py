"""Validate one encoded image without re-encoding it.

Every image is fully decoded once during conversion, by the decoder every reader uses
(`edge_ray.data.decode`): a file that PIL cannot open, that is truncated, whose format a
WebDataset reader would not decode, or whose pixels the decoder refuses must be caught
here rather than crash a training job hours later.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from edge_ray.data.decode import (ORIENTATION_TAG, Source, UnsupportedImage, decode_with_source,
                                  orientation, to_rgb)

# PIL format name -> the extension stored in the tar (the reader picks the
# decoder from it, so it must be the true format, not the source file's suffix).
STORED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
# Modes PNG stores as they are (P keeps its transparency, I;16 its 16 bits).
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")


class BadImage(Exception):
    """An image to skip; `reason` goes into index.json `skipped`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def probe_image(data: bytes) -> tuple[str, Source]:
    """Fully decode `data` as every reader will (`edge_ray.data.decode`) and return the
    extension of its true format and what it held (mode, upright size, EXIF orientation).

    Raises BadImage for empty, truncated, corrupt or unsupported files, and for pixel
    values the decoder refuses to guess the scale of (e.g. 32-bit values beyond 16 bits).
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns on odd-but-valid metadata
        fmt = _format(data)
        if fmt not in STORED_FORMATS:
            raise BadImage(f"unsupported format {fmt} (stored formats: jpeg, png, webp; "
                           "pass --reencode to convert it to PNG)")
        try:
            _, source = decode_with_source(data)  # full decode: truncated data fails here
        except UnsupportedImage as exc:
            raise BadImage(str(exc)) from None
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise BadImage(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    return STORED_FORMATS[fmt], source


def _format(data: bytes) -> str:
    """The format PIL recognises from the header, whatever the decoder allow-list."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Image.UnidentifiedImageError:
        raise BadImage("not a recognised image format") from None
    except Exception as exc:
        raise BadImage(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def reencode_png(data: bytes) -> bytes:
    """Re-encode a decodable non-stored format (BMP, GIF, TIFF) as PNG: its first frame.

    Lossless where PNG can hold the mode (1, L, LA, P with its transparency, RGB, RGBA,
    16-bit grey; a 32-bit integer image within 0..65535 becomes 16-bit grey), so the
    conversion to RGB still happens on read, in the one decoder. Other modes (CMYK, float,
    YCbCr, ...) go through that decoder's `to_rgb` here. An EXIF orientation still to apply
    is kept as the PNG's only EXIF tag (Pillow has already turned a TIFF upright). Only
    used when the caller asks (`reencode=True`); stored formats are never touched.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                turn = orientation(img)  # after load: Pillow turns a TIFF upright as it loads
                img = _png_mode(img)
        except UnsupportedImage as exc:
            raise BadImage(str(exc)) from None
        except Exception as exc:
            raise BadImage(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    exif = Image.Exif()
    if turn != 1:
        exif[ORIENTATION_TAG] = turn
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=exif)
    return buf.getvalue()


def _png_mode(img: Image.Image) -> Image.Image:
    if img.mode in _PNG_MODES:
        return img
    if img.mode == "I" or img.mode.startswith("I;16"):
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            return to_rgb(img)  # raises UnsupportedImage with the values' span
        grey = Image.fromarray(values.astype(np.uint16))  # mode I;16
        if "transparency" in img.info:
            grey.info["transparency"] = img.info["transparency"]
        return grey
    return to_rgb(img)


def load_checked(data: bytes, reencode: bool = False) -> tuple[bytes, str, dict]:
    """(bytes to store, extension, source) where source = {"mode", "width", "height",
    "orientation"} of the stored image, plus "reencoded_from" ("GIF P", ...) when it
    was re-encoded; other formats are re-encoded only if asked."""
    try:
        ext, source = probe_image(data)
        return data, ext, _source_dict(source)
    except BadImage as bad:
        if not reencode or not bad.reason.startswith("unsupported format"):
            raise
    with Image.open(io.BytesIO(data)) as img:
        original = f"{img.format} {img.mode}"
    png = reencode_png(data)
    ext, source = probe_image(png)
    return png, ext, {**_source_dict(source), "reencoded_from": original}


def _source_dict(source: Source) -> dict:
    return {"mode": source.mode, "width": source.width, "height": source.height,
            "orientation": source.orientation}
