"""Two exact libjpeg decodes of one JPEG, to hold nvJPEG to (tests/test_gpu_decode.py).

A JPEG stores luma (Y) at full resolution and, in 4:2:0 files, the two chroma planes
(Cb, Cr) at half resolution. Decoders agree on the planes up to IDCT rounding but differ
in how they bring chroma back to full size: libjpeg (PIL) uses "fancy" triangle-filter
upsampling by default; libjpeg with fancy upsampling off, and many hardware decoders,
repeat each chroma sample 2x2 ("nearest"). On textured colour the two differ by several
grey levels, which is not a decoding error.

`reference_decodes` rebuilds both from PIL's own planes:
  * Y and full-size chroma: PIL's decode in YCbCr mode (no colour conversion);
  * the stored half-size chroma planes: PIL's decode at 1/2 scale (draft mode), where
    libjpeg gives chroma its full 8x8 IDCT and luma a 4x4 one, so the chroma planes come
    out unscaled and un-upsampled;
  * libjpeg's integer YCbCr -> RGB conversion (jdcolor.c tables, 16 fraction bits).
`tests/test_gpu_decode.py` checks on the CPU that the "fancy" rebuild is bit-identical to
PIL's RGB decode, which proves the planes and the conversion are libjpeg's own.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

_SCALEBITS = 16
_ONE_HALF = 1 << (_SCALEBITS - 1)


def _fix(x: float) -> int:
    return int(x * (1 << _SCALEBITS) + 0.5)


def ycc_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """libjpeg's ycc_rgb_convert: int planes -> uint8 [H, W, 3]."""
    cb, cr = cb.astype(np.int64) - 128, cr.astype(np.int64) - 128
    y = y.astype(np.int64)
    r = y + ((_fix(1.40200) * cr + _ONE_HALF) >> _SCALEBITS)
    g = y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + _ONE_HALF) >> _SCALEBITS)
    b = y + ((_fix(1.77200) * cb + _ONE_HALF) >> _SCALEBITS)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def fancy_upsample_h2v2(c: np.ndarray) -> np.ndarray:
    """libjpeg's h2v2_fancy_upsample (triangle filter, edges replicated): [h, w] -> [2h, 2w]."""
    c = c.astype(np.int64)
    rows = np.pad(c, ((1, 1), (0, 0)), mode="edge")
    out = np.zeros((2 * c.shape[0], 2 * c.shape[1]), np.int64)
    for r, near in ((0, rows[:-2]), (1, rows[2:])):  # output row 2i+r leans on row i-1 or i+1
        col = 3 * c + near
        left = np.pad(col, ((0, 0), (1, 0)), mode="edge")[:, :-1]
        right = np.pad(col, ((0, 0), (0, 1)), mode="edge")[:, 1:]
        even, odd = (3 * col + left + 8) >> 4, (3 * col + right + 7) >> 4
        even[:, 0] = (4 * col[:, 0] + 8) >> 4
        odd[:, -1] = (4 * col[:, -1] + 7) >> 4
        out[r::2, 0::2], out[r::2, 1::2] = even, odd
    return out


def nearest_upsample_h2v2(c: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(c.astype(np.int64), 2, axis=0), 2, axis=1)


def _planes(data: bytes, size=None) -> np.ndarray:
    img = Image.open(io.BytesIO(data), formats=["JPEG"])
    img.draft("YCbCr", size or img.size)
    if img.mode != "YCbCr":
        raise ValueError(f"not a colour JPEG (mode {img.mode})")
    return np.asarray(img).astype(np.int64)


def reference_decodes(data: bytes) -> dict[str, np.ndarray]:
    """{"fancy": libjpeg's default RGB, "nearest": the same with chroma repeated 2x2}, uint8
    [H, W, 3], for a 4:2:0 colour JPEG of even or odd size."""
    full = _planes(data)
    height, width = full.shape[:2]
    half = _planes(data, (width // 2, height // 2))
    if half.shape[:2] != ((height + 1) // 2, (width + 1) // 2):
        raise ValueError(f"the half-scale decode is {half.shape[:2]}: not a 4:2:0 file?")
    out = {}
    for name, up in (("fancy", fancy_upsample_h2v2), ("nearest", nearest_upsample_h2v2)):
        cb, cr = (up(half[..., c])[:height, :width] for c in (1, 2))
        out[name] = ycc_to_rgb(full[..., 0], cb, cr)
    return out
