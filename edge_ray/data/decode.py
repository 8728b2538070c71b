"""Encoded image bytes -> 8-bit RGB: the one decoder for shards, training, eval, OE ranking
and any predict path. Pure (PIL + numpy); `transforms` re-exports `decode_image`, `to_rgb` and
`decode_error`, and its `to_pixels` turns any image a predict path is given into eval pixels.

Conventions (also in shards/README.md, "Image modes"); each has a test in
tests/test_image_modes.py against a numpy expectation built without this module:

* Formats: JPEG, PNG and WebP only. Pillow picks a decoder by content, not by name;
  the allow-list keeps a hostile ".jpg" from reaching decoders such as EPS (Ghostscript).
* Frames: the first (frame 0 as PIL opens it: an animated WebP's or APNG's first frame;
  GIFs are only stored re-encoded, as their first frame).
* EXIF orientation (tag 0x0112, or XMP tiff:Orientation when EXIF has none, as
  `PIL.ImageOps.exif_transpose`): all 8 values applied; other values mean 1. Sizes and
  crops are those of the upright image.
* 1-bit, L (and 2/4-bit grey), P: grey replicated / palette looked up, exactly.
* Transparency (RGBA, LA, PA, La, RGBa, P or grey/RGB with a tRNS colour key, WebP alpha):
  composited on WHITE, out = round((c * a + 255 * (255 - a)) / 255). White, because
  transparent images in photo datasets are mostly cut-outs, logos and product shots made
  to be shown on a white page; the colour stored under a transparent pixel is arbitrary
  (often black) and simply dropping alpha, as `convert("RGB")` does, exposes it.
* 16-bit grey (`I;16`, `I;16B`, ... and 16-bit grey PNGs): the full range 0..65535 scaled
  to 0..255, out = round(v / 257) (no ties: 257 is odd). Never clipped at 255.
* 32-bit integer grey (`I`): read on the same 16-bit scale (PIL hands 16-bit data around
  as `I`); a value outside 0..65535 is refused (`UnsupportedImage`): its scale is unknown.
* 32-bit float grey (`F`): the float-image convention [0, 1], out = floor(v * 255 + 0.5);
  NaN, inf, or a value that would round outside 0..255 is refused. (PIL's own
  `convert("F")` keeps 0..255; such images are refused rather than guessed.)
* 16-bit colour PNGs (RGB, RGBA, LA at 16 bits): PIL reduces them to their high byte
  (v >> 8) while decoding, before we see them; within one level of round(v / 257). A 16-bit
  colour PNG with a tRNS colour key is refused: PIL compares the 16-bit key with the 8-bit
  pixels, so no pixel would be transparent.
* CMYK JPEGs: Adobe's APP14 marker means the file stores inverted CMYK (Photoshop's
  quirk; PIL reads every CMYK JPEG that way, "CMYK;I"); YCCK (APP14 transform 2) is turned
  into the same inverted CMYK by libjpeg. A CMYK JPEG without APP14 holds plain CMYK
  (libjpeg's rule), so PIL's inversion is undone for it. CMYK -> RGB is PIL's:
  R = round((255 - C) * (255 - K) / 255), the same for G (M) and B (Y).
* YCbCr, HSV, RGBX: PIL's `convert("RGB")`. Any other mode (LAB, ...) is refused.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

FORMATS = ("JPEG", "PNG", "WEBP")
BACKGROUND = 255  # white, per channel: see the module docstring
ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes PIL converts to RGB as the conventions say (LAB is not among them: PIL's LAB ->
# RGB copies bytes, no colour conversion).
_CONVERTIBLE = {"1", "L", "P", "RGB", "RGBA", "RGBa", "RGBX", "LA", "La", "PA", "CMYK", "YCbCr", "HSV"}
_KEY = "+transparency"  # suffix of a source mode with a tRNS / GIF transparent colour
_NOTES = {
    "1": "1-bit to grey", "L": "grey to RGB", "P": "palette to RGB",
    "LA": "composited on white", "PA": "composited on white", "RGBA": "composited on white",
    "La": "composited on white", "RGBa": "composited on white",
    "I;16": "scaled /257", "I;16L": "scaled /257", "I;16B": "scaled /257", "I;16N": "scaled /257",
    "I": "16-bit range, scaled /257", "F": "[0, 1] scaled x255",
    "CMYK": "CMYK to RGB", "YCbCr": "YCbCr to RGB",
}


class UnsupportedImage(ValueError):
    """A decodable image whose pixel values have no known 8-bit meaning (refused, not guessed)."""


@dataclass(frozen=True)
class Source:
    """What a file held before conversion; `width`, `height` are the upright full-size image's.
    Every mode but "RGB" is converted on read."""

    format: str
    mode: str          # PIL mode, with "+transparency" for a colour key (see `source_mode`)
    width: int
    height: int
    orientation: int   # EXIF orientation applied, 1..8 (1: none)


def decode_image(data: bytes, *, min_size: int | None = None) -> Image.Image:
    """Encoded bytes -> RGB PIL image, upright, by the module's conventions.

    `min_size` lets JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling, much cheaper) as
    long as both sides stay >= min_size; callers pass the smallest size their transform
    can use without upsampling more than a full decode would. A plain RGB JPEG or PNG is
    returned as PIL opened it (possibly not yet loaded): no copy, no conversion.
    """
    return _decode(Image.open(io.BytesIO(data), formats=FORMATS), min_size)


def decode_with_source(data: bytes) -> tuple[Image.Image, Source]:
    """Full-size decode, pixels loaded, and what the file held (for converters and audits)."""
    img = Image.open(io.BytesIO(data), formats=FORMATS)
    fmt, mode = img.format, source_mode(img)
    rgb = _decode(img, None)
    rgb.load()
    return rgb, Source(fmt, mode, rgb.width, rgb.height, orientation(img))


def decode_error(data: bytes, err: BaseException) -> str:
    """One line saying why encoded bytes did not give an image (`err`: what decoding raised)."""
    if not data:
        return "empty file (0 bytes)"
    if isinstance(err, Image.UnidentifiedImageError):
        return "not a JPEG, PNG or WebP image"
    text = (str(err).strip().splitlines() or [""])[0][:200]
    return f"corrupt or truncated image ({type(err).__name__}: {text})"


def _decode(img: Image.Image, min_size: int | None) -> Image.Image:
    _check_png_key(img)
    if min_size is not None and img.format == "JPEG":
        img.draft("RGB", (min_size, min_size))
    turn = orientation(img)
    if img.mode == "CMYK" and img.format == "JPEG" and "adobe" not in img.info:
        img = Image.fromarray(255 - np.asarray(img), "CMYK")  # plain CMYK: undo PIL's "CMYK;I"
    if turn != 1:
        img = img.transpose(_TRANSPOSE[turn])
    return to_rgb(img)


def source_mode(img: Image.Image) -> str:
    """PIL's mode, with "+transparency" when a colour key (PNG tRNS, GIF) marks transparent
    pixels in a mode without an alpha band: such images are composited too."""
    return img.mode + _KEY if "transparency" in img.info and "A" not in img.getbands() else img.mode


def conversion_note(mode: str) -> str:
    """How `to_rgb` turns a `source_mode` into RGB, in a few words (converter summaries)."""
    if mode.endswith(_KEY):
        base = mode[:-len(_KEY)]
        grey16 = base == "I" or base.startswith("I;16")
        return ("scaled /257, " if grey16 else "") + "transparent colour composited on white"
    return _NOTES.get(mode, f"{mode} to RGB")


def orientation(img: Image.Image) -> int:
    """The EXIF orientation `decode_image` applies (1..8; a missing or invalid tag is 1)."""
    if img.format == "JPEG" and "exif" not in img.info and "xmp" not in img.info:
        return 1  # the common case, without building an Exif (where PIL would look for it)
    value = img.getexif().get(ORIENTATION_TAG, 1)
    return value if value in _TRANSPOSE else 1


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB by the module's conventions; an RGB image is returned as is."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("I", "F") or mode.startswith("I;"):
        return _deep_grey(img)
    if mode not in _CONVERTIBLE:
        raise UnsupportedImage(f"mode {mode} image: no conversion to RGB is defined for it "
                               "(save it as RGB, RGBA, grey or palette)")
    if mode == "La":  # premultiplied; PIL has no La -> RGBA
        img = img.convert("LA")
    if img.has_transparency_data:  # an alpha band, a colour key, or an RGBA palette
        return _composite(np.asarray(img.convert("RGBA")))
    return img.convert("RGB")


def _composite(rgba: np.ndarray) -> Image.Image:
    """RGBA uint8 [H, W, 4] -> RGB on the white background, exactly rounded."""
    colour = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    out = (colour * alpha + BACKGROUND * (255 - alpha) + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


def _deep_grey(img: Image.Image) -> Image.Image:
    """`I;16*`, `I` and `F` grey -> RGB on their own scale (module docstring); a grey
    colour key (tRNS) is matched on the raw values, then composited."""
    raw = np.asarray(img)
    if img.mode == "F":
        scaled = raw.astype(np.float64) * 255
        if not np.isfinite(scaled).all() or scaled.min() < -0.5 or scaled.max() >= 255.5:
            raise UnsupportedImage(f"mode F (32-bit float) image with values outside [0, 1] "
                                   f"({_span(raw)}): their scale is unknown; save it as 8 or 16 bits")
        grey = np.floor(scaled + 0.5).astype(np.uint8)
    else:
        values = raw.astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnsupportedImage(f"mode {img.mode} (32-bit integer) image with values outside "
                                   f"0..65535 ({_span(values)}): their scale is unknown; save it "
                                   "as 8 or 16 bits")
        grey = ((values + 128) // 257).astype(np.uint8)
    key = img.info.get("transparency")
    if key is None or img.mode == "F":
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2), "RGB")
    alpha = np.where(raw == key, 0, 255).astype(np.uint8)
    return _composite(np.stack([grey, grey, grey, alpha], axis=-1))


def _span(values: np.ndarray) -> str:
    return f"min {values.min()}, max {values.max()}" if values.size else "empty"


def _check_png_key(img: Image.Image) -> None:
    """Fix or refuse the PNG colour keys PIL matches wrongly (it compares the file's key
    with unpacked pixels): 2/4-bit grey is scaled to 0..255 before the match; 16-bit
    colour is cut to 8 bits, which cannot be undone."""
    if img.format != "PNG" or "transparency" not in img.info or not img.tile:
        return
    rawmode = img.tile[0].args[0] if isinstance(img.tile[0].args, tuple) else img.tile[0].args
    if img.mode == "L" and rawmode in ("L;2", "L;4"):
        bits = int(rawmode[-1])
        img.info["transparency"] = img.info["transparency"] * 255 // (2 ** bits - 1)
    elif img.mode == "RGB" and rawmode == "RGB;16B":
        raise UnsupportedImage("16-bit RGB PNG with a transparent colour (tRNS): PIL cuts it "
                               "to 8 bits before the colour can be matched; save it with an "
                               "alpha channel instead")
