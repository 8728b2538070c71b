"""Image generators for the embedded benchmark (32x32 grayscale, uint8).

All glyph-like sets (digits, letters) go through one pipeline: an 8x8 glyph
in 0..16 (the scale of sklearn's digits), upscaled to 11-15 px and placed in
distinct quadrants of the canvas. Letters therefore differ from digits only in
shape, not in blur, size or layout, so a detector cannot win by a shortcut.
Every generator takes a numpy Generator and returns (image, meta).
"""
from __future__ import annotations

import io
import string
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIZE = 32
CELL = SIZE // 2


@lru_cache(maxsize=1)
def digits():
    """sklearn's 1797 8x8 handwritten digits (values 0..16) and their targets."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


@lru_cache(maxsize=2)
def photo(name: str) -> np.ndarray:
    """A sklearn sample photo ('china.jpg' or 'flower.jpg') as grayscale uint8."""
    from sklearn.datasets import load_sample_image

    return np.asarray(Image.fromarray(load_sample_image(name)).convert("L"))


@lru_cache(maxsize=64)
def letter_glyph(ch: str) -> np.ndarray:
    """`ch` drawn with Pillow's built-in font, cropped, centred in a square and
    area-reduced to 8x8 with its peak at 16, so its strokes are as thick and
    bright as a sklearn digit's."""
    img = Image.new("L", (24, 24), 0)
    ImageDraw.Draw(img).text((4, 2), ch, fill=255, font=ImageFont.load_default())
    img = img.crop(img.getbbox())
    side = max(img.size) + 1
    square = Image.new("L", (side, side), 0)
    square.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    small = np.asarray(square.resize((8, 8), Image.BOX), dtype=np.float32)
    return small * (16.0 / max(float(small.max()), 1.0))


def glyph_canvas(rng: np.random.Generator, glyphs: list[np.ndarray]) -> np.ndarray:
    """Place 1-4 glyphs (8x8, 0..16) in distinct quadrants at 11-15 px."""
    canvas = np.zeros((SIZE, SIZE), np.float32)
    cells = rng.choice(4, size=len(glyphs), replace=False)
    for cell, glyph in zip(cells, glyphs):
        s = int(rng.integers(11, 16))
        r = (cell // 2) * CELL + int(rng.integers(0, CELL - s + 1))
        c = (cell % 2) * CELL + int(rng.integers(0, CELL - s + 1))
        patch = Image.fromarray(np.uint8(glyph * (255.0 / 16.0))).resize((s, s), Image.BILINEAR)
        ink = np.asarray(patch, np.float32) * rng.uniform(0.75, 1.0)
        canvas[r:r + s, c:c + s] = np.maximum(canvas[r:r + s, c:c + s], ink)
    return np.uint8(np.clip(canvas, 0, 255))


def digit_canvas(rng, pool: dict[int, np.ndarray], classes) -> tuple[np.ndarray, dict]:
    """A canvas of one source digit per class in `classes`, drawn from `pool`
    (class -> allowed sklearn indices); meta records the source indices."""
    images, _ = digits()
    idx = [int(rng.choice(pool[c])) for c in classes]
    return glyph_canvas(rng, [images[i] for i in idx]), {"digits": idx}


def letters_canvas(rng, alphabet: str) -> tuple[np.ndarray, dict]:
    """1-3 letters drawn from `alphabet`."""
    chars = [str(c) for c in rng.choice(list(alphabet), size=int(rng.integers(1, 4)))]
    return glyph_canvas(rng, [letter_glyph(c) for c in chars]), {"letters": "".join(chars)}


def photo_crop(rng, name: str, edges: bool = False) -> tuple[np.ndarray, dict]:
    """A random square crop (24-128 px) of a sample photo resized to 32x32;
    with `edges`, its edge map (white lines on black, closer to glyph statistics)."""
    img = photo(name)
    s = int(rng.integers(24, 129))
    r, c = int(rng.integers(0, img.shape[0] - s + 1)), int(rng.integers(0, img.shape[1] - s + 1))
    if not edges:
        crop = Image.fromarray(img[r:r + s, c:c + s]).resize((SIZE, SIZE), Image.BILINEAR)
        return np.asarray(crop), {"crop": [r, c, s]}
    # Filter a 2-px larger image and cut its border: FIND_EDGES marks the frame.
    big = Image.fromarray(img[r:r + s, c:c + s]).resize((SIZE + 2, SIZE + 2), Image.BILINEAR)
    arr = np.asarray(big.filter(ImageFilter.FIND_EDGES), np.float32)[1:-1, 1:-1]
    # A floor on the divisor keeps flat crops dark instead of amplifying noise.
    return np.uint8(np.clip(255 * arr / max(arr.max(), 48.0), 0, 255)), {"crop": [r, c, s]}


def stripes(rng) -> tuple[np.ndarray, dict]:
    """Oriented sine or square-wave stripes, or a checkerboard."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    kind = str(rng.choice(["sine", "square", "checker"]))
    if kind == "checker":
        a = int(rng.integers(2, 9))
        wave = (((x + rng.integers(0, a)) // a + (y + rng.integers(0, a)) // a) % 2).astype(np.float32)
    else:
        theta, period = rng.uniform(0, np.pi), rng.uniform(3, 10)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period
                                  + rng.uniform(0, 2 * np.pi))
        wave = (wave > 0.5).astype(np.float32) if kind == "square" else wave
    lo, hi = rng.uniform(0, 60), rng.uniform(150, 255)
    return np.uint8(lo + (hi - lo) * wave), {"kind": kind}


def scribble(rng) -> tuple[np.ndarray, dict]:
    """1-4 random smooth polylines: stroke-like but no glyph shape."""
    img = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(img)
    strokes = int(rng.integers(1, 5))
    for _ in range(strokes):
        pts = [tuple(float(v) for v in rng.uniform(0, SIZE, 2)) for _ in range(int(rng.integers(3, 7)))]
        draw.line(pts, fill=int(rng.integers(150, 256)), width=int(rng.integers(1, 3)), joint="curve")
    return np.asarray(img), {"strokes": strokes}


def blobs(rng) -> tuple[np.ndarray, dict]:
    """A sum of 1-5 Gaussian blobs plus pixel noise."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    n = int(rng.integers(1, 6))
    field = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(n):
        cy, cx, sigma = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(2, 8)
        field += rng.uniform(0.4, 1.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
    field += rng.normal(0, rng.uniform(0.0, 0.08), field.shape)
    field = np.clip(field / max(field.max(), 1e-6), 0, 1)
    return np.uint8(255 * field), {"blobs": n}


def png_bytes(arr: np.ndarray) -> bytes:
    """Encode a uint8 grayscale array as PNG (deterministic for equal arrays)."""
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG")
    return buf.getvalue()


LETTERS_OE = string.ascii_uppercase[:13]   # A-M
LETTERS_OOD = string.ascii_uppercase[13:]  # N-Z
