"""Validate one encoded image without re-encoding it.

Every image is fully decoded once during conversion: a file that PIL cannot
open, that is truncated, or whose format a WebDataset reader would not decode
must be caught here rather than crash a training job hours later.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image

# PIL format name -> the extension stored in the tar (the reader picks the
# decoder from it, so it must be the true format, not the source file's suffix).
STORED_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


class BadImage(Exception):
    """An image to skip; `reason` goes into index.json `skipped`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def probe_image(data: bytes) -> str:
    """Fully decode `data` and return the extension of its true format.

    Raises BadImage for empty, truncated, corrupt or unsupported files.
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL warns on odd-but-valid metadata
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
                img.load()  # full decode: truncated data fails here, not at open()
    except Image.UnidentifiedImageError:
        raise BadImage("not a recognised image format") from None
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise BadImage(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    if fmt not in STORED_FORMATS:
        raise BadImage(f"unsupported format {fmt} (stored formats: jpeg, png, webp; "
                       "pass --reencode to convert it to PNG)")
    return STORED_FORMATS[fmt]


def reencode_png(data: bytes) -> bytes:
    """Losslessly re-encode a decodable non-stored format (BMP, GIF, TIFF) as PNG.

    Only used when the caller asks (`reencode=True`); stored formats are never touched.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode not in ("L", "LA", "RGB", "RGBA", "I", "I;16", "P", "1"):
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format="PNG")
    return buf.getvalue()


def load_checked(data: bytes, reencode: bool = False) -> tuple[bytes, str]:
    """Return (bytes to store, extension); re-encode other formats only if asked."""
    try:
        return data, probe_image(data)
    except BadImage as bad:
        if not reencode or not bad.reason.startswith("unsupported format"):
            raise
    png = reencode_png(data)
    return png, probe_image(png)
