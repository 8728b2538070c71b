"""One test per image mode PIL opens: `decode_image`'s RGB output against a numpy
expectation built from the pixel values written into the file, never from the code under
test. Files are real bytes: Pillow's encoders, or, for what Pillow cannot write (2/4-bit
grey, 16-bit colour, colour keys at odd depths), the small PNG writer below.
Conventions: the docstring of edge_ray/data/decode.py and shards/README.md."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from edge_ray.data.decode import (UnsupportedImage, conversion_note, decode_image,
                                  decode_with_source, to_rgb)
from shards.images import BadImage, load_checked
from tests.jpeg_reference import ycc_to_rgb

RNG = np.random.default_rng(20)


def encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def png(arr: np.ndarray, color_type: int, depth: int, *, trns: bytes | None = None,
        plte: np.ndarray | None = None) -> bytes:
    """A PNG from raw samples (no filter, one IDAT), for files Pillow's encoder cannot make."""
    h, w = arr.shape[:2]
    samples = arr.reshape(h, -1)
    if depth == 16:
        rows = [r.astype(">u2").tobytes() for r in samples]
    elif depth == 8:
        rows = [r.astype(np.uint8).tobytes() for r in samples]
    else:
        rows = [np.packbits(np.unpackbits(r.astype(np.uint8)[:, None], axis=1)[:, -depth:]).tobytes()
                for r in samples]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
    if plte is not None:
        out += chunk(b"PLTE", plte.astype(np.uint8).tobytes())
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + r for r in rows))) + chunk(b"IEND", b"")


def decoded(data: bytes, **kw) -> np.ndarray:
    img = decode_image(data, **kw)
    assert img.mode == "RGB"
    return np.asarray(img)


def grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(grey, np.uint8)[..., None], 3, axis=2)


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight alpha over white, rounded to nearest (float64; exact halves cannot occur)."""
    a = np.asarray(alpha, np.float64)[..., None] / 255
    return np.rint(np.asarray(colour, np.float64) * a + 255 * (1 - a)).astype(np.uint8)


# ---------------------------------------------------------------- 8-bit modes


def test_rgb_png_and_jpeg_unchanged():
    arr = RNG.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    assert np.array_equal(decoded(encode(arr, "PNG")), arr)
    jpeg = encode(arr, "JPEG", quality=95)
    assert np.array_equal(decoded(jpeg), np.asarray(Image.open(io.BytesIO(jpeg))))


def test_grey_L():
    grey = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    assert np.array_equal(decoded(encode(grey, "PNG")), grey3(grey))


def test_one_bit():
    bits = RNG.integers(0, 2, (5, 11)).astype(bool)
    assert np.array_equal(decoded(encode(Image.fromarray(bits), "PNG")), grey3(bits * 255))


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_bit_grey_png_spans_0_to_255(depth):
    levels = RNG.integers(0, 2 ** depth, (4, 9))
    expected = levels * 255 // (2 ** depth - 1)  # 1-bit: 255, 2-bit: 85, 4-bit: 17 per step
    assert np.array_equal(decoded(png(levels, 0, depth)), grey3(expected))


def test_palette():
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    index = RNG.integers(0, 256, (7, 6), dtype=np.uint8)
    assert np.array_equal(decoded(png(index, 3, 8, plte=palette)), palette[index])


def test_palette_with_transparency_is_composited_on_white():
    palette = RNG.integers(0, 256, (8, 3), dtype=np.uint8)
    alphas = np.array([0, 1, 64, 128, 200, 254, 255, 255], np.uint8)  # tRNS: one alpha per entry
    index = np.arange(64, dtype=np.uint8).reshape(8, 8) % 8
    out = decoded(png(index, 3, 8, plte=palette, trns=alphas.tobytes()))
    assert np.array_equal(out, on_white(palette[index], alphas[index]))
    assert (out[index == 0] == 255).all()  # fully transparent: white whatever the palette says


def test_rgba_is_composited_on_white_not_dropped():
    rgba = RNG.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255
    rgba[0, :, :3] = 0  # transparent black: `convert("RGB")` would show black
    for data in (encode(rgba, "PNG"), encode(rgba, "WEBP", lossless=True, exact=True)):
        out = decoded(data)
        assert np.array_equal(out, on_white(rgba[..., :3], rgba[..., 3]))
        assert (out[0] == 255).all() and np.array_equal(out[1], rgba[1, :, :3])


def test_grey_with_alpha_LA():
    la = RNG.integers(0, 256, (5, 8, 2), dtype=np.uint8)
    assert np.array_equal(decoded(encode(Image.fromarray(la, "LA"), "PNG")),
                          on_white(grey3(la[..., 0]), la[..., 1]))


def test_colour_keys_make_their_pixels_white():
    grey = RNG.integers(0, 256, (6, 6), dtype=np.uint8)
    grey[0, 0] = 77
    assert np.array_equal(decoded(encode(grey, "PNG", transparency=77)),
                          grey3(np.where(grey == 77, 255, grey)))
    rgb = RNG.integers(0, 4, (6, 6, 3), dtype=np.uint8) * 60
    rgb[0, 0] = (60, 120, 0)
    key = np.all(rgb == (60, 120, 0), axis=-1)
    assert np.array_equal(decoded(encode(rgb, "PNG", transparency=(60, 120, 0))),
                          np.where(key[..., None], 255, rgb))
    # Low bit depths: the key is a raw sample value (here 2 of 0..3, i.e. 170 once scaled).
    levels = np.array([[0, 1, 2, 3, 2, 1]])
    expected = np.where(levels == 2, 255, levels * 85)
    assert np.array_equal(decoded(png(levels, 0, 2, trns=struct.pack(">H", 2))), grey3(expected))
    bits = np.array([[0, 1, 1, 0, 1]])
    assert np.array_equal(decoded(png(bits, 0, 1, trns=struct.pack(">H", 0))), grey3(np.full((1, 5), 255)))


# ---------------------------------------------------------------- deep grey


def test_16bit_grey_png_keeps_its_levels():
    """The reported bug: a 16-bit grey PNG decoded to 99.7% white (clipped at 255)."""
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once
    expected = grey3(np.rint(ramp / 257))
    for data in (png(ramp, 0, 16), encode(Image.fromarray(ramp), "PNG")):  # ours and Pillow's writer
        out = decoded(data)
        assert np.array_equal(out, expected)
        assert len(np.unique(out)) == 256 and (out == 255).mean() < 0.01
    photo = (RNG.normal(30000, 9000, (64, 64)).clip(0, 65535)).astype(np.uint16)
    out = decoded(png(photo, 0, 16))
    assert np.array_equal(out, grey3(np.rint(photo / 257))) and len(np.unique(out)) >= 200


def test_16bit_grey_colour_key_matches_the_16bit_value():
    values = np.array([[300, 257, 65535, 300, 0]], np.uint16)
    out = decoded(png(values, 0, 16, trns=struct.pack(">H", 300)))
    assert np.array_equal(out, grey3([[255, 1, 255, 255, 0]]))  # 257 -> 1 stays opaque


def test_32bit_int_grey_on_the_16bit_scale_or_refused():
    values = RNG.integers(0, 65536, (5, 7)).astype(np.int32)
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(values))), grey3(np.rint(values / 257)))
    for bad in (70000, -1):
        values[0, 0] = bad
        with pytest.raises(UnsupportedImage, match=r"outside 0\.\.65535"):
            to_rgb(Image.fromarray(values))


def test_float_grey_is_read_as_0_to_1_or_refused():
    k = np.arange(256, dtype=np.float64)
    values = np.stack([k / 255, (k + 0.25) / 255, np.minimum(k + 0.75, 255.25) / 255]).astype(np.float32)
    expected = np.stack([k, k, np.minimum(k + 1, 255)])
    assert np.array_equal(np.asarray(to_rgb(Image.fromarray(values))), grey3(expected))
    for bad in (2.0, -0.1, np.nan, np.inf):
        values[0, 0] = bad
        with pytest.raises(UnsupportedImage, match=r"outside \[0, 1\]"):
            to_rgb(Image.fromarray(values))


def test_16bit_colour_png_is_cut_to_its_high_byte_by_pil():
    rgb16 = RNG.integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    out = decoded(png(rgb16, 2, 16))
    assert np.array_equal(out, rgb16 >> 8)
    assert np.abs(out.astype(int) - np.rint(rgb16 / 257)).max() <= 1  # within a level of /257
    rgba16 = RNG.integers(0, 65536, (6, 5, 4)).astype(np.uint16)
    assert np.array_equal(decoded(png(rgba16, 6, 16)), on_white(rgba16[..., :3] >> 8, rgba16[..., 3] >> 8))
    la16 = RNG.integers(0, 65536, (6, 5, 2)).astype(np.uint16)
    assert np.array_equal(decoded(png(la16, 4, 16)), on_white(grey3(la16[..., 0] >> 8), la16[..., 1] >> 8))
    with pytest.raises(UnsupportedImage, match="16-bit RGB PNG with a transparent colour"):
        decode_image(png(rgb16, 2, 16, trns=struct.pack(">HHH", *rgb16[0, 0])))


# ---------------------------------------------------------------- CMYK / YCCK JPEG


def _flat_blocks(values: np.ndarray) -> np.ndarray:
    """Each value fills an 8x8 block: at quality 100 a flat block decodes exactly (DC only)."""
    return np.repeat(np.repeat(values, 8, 0), 8, 1)


def _cmyk_to_rgb(ink: np.ndarray) -> np.ndarray:
    """R = (255 - C)(255 - K) / 255, the same for G (M) and B (Y), rounded."""
    ink = ink.astype(np.float64)
    return np.rint((255 - ink[..., :3]) * (255 - ink[..., 3:]) / 255).astype(np.uint8)


def _adobe_app14(data: bytes) -> int:
    """Offset of the APP14 'Adobe' segment (Pillow's CMYK JPEGs carry one, via libjpeg)."""
    at = data.index(b"\xff\xee")
    assert data[at + 4:at + 9] == b"Adobe"
    return at


def test_cmyk_jpeg_with_adobe_marker_stores_inverted_ink():
    ink = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    data = encode(Image.fromarray(_flat_blocks(ink), "CMYK"), "JPEG", quality=100)
    _adobe_app14(data)
    assert np.array_equal(decoded(data), _flat_blocks(_cmyk_to_rgb(ink)))
    assert decode_with_source(data)[1].mode == "CMYK"


def test_cmyk_jpeg_without_adobe_marker_is_plain_cmyk():
    """libjpeg's rule: no APP14, no inversion. The file holds 255 - ink (Pillow wrote it
    inverted, for Adobe), so read plainly the ink is 255 - ink."""
    ink = RNG.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    data = encode(Image.fromarray(_flat_blocks(ink), "CMYK"), "JPEG", quality=100)
    at = _adobe_app14(data)
    data = data[:at] + data[at + 2 + int.from_bytes(data[at + 2:at + 4], "big"):]
    assert np.array_equal(decoded(data), _flat_blocks(_cmyk_to_rgb(255 - ink)))


def test_ycck_jpeg():
    """APP14 transform 2: the first three components are YCbCr of (255 - file CMY)
    (libjpeg's YCCK), K is stored as is; the file CMYK is Adobe-inverted ink."""
    stored = RNG.integers(0, 256, (3, 3, 4), dtype=np.uint8)  # Y, Cb, Cr, K as in the file
    data = bytearray(encode(Image.fromarray(_flat_blocks(255 - stored), "CMYK"), "JPEG", quality=100))
    data[_adobe_app14(bytes(data)) + 4 + 11] = 2  # Pillow stores 255 - value: the file holds `stored`
    rgb = ycc_to_rgb(stored[..., 0], stored[..., 1], stored[..., 2]).astype(np.int64)
    file_cmyk = np.concatenate([255 - rgb, stored[..., 3:]], axis=-1)
    assert np.array_equal(decoded(bytes(data)), _flat_blocks(_cmyk_to_rgb(255 - file_cmyk)))


# ---------------------------------------------------------------- orientation and frames


EXIF_ORIENTATION = {  # what the viewer must do to the stored pixels (EXIF 2.3, tag 0x0112)
    1: lambda a: a,
    2: lambda a: a[:, ::-1],                     # mirror left-right
    3: lambda a: a[::-1, ::-1],                  # rotate 180
    4: lambda a: a[::-1],                        # mirror top-bottom
    5: lambda a: a.transpose(1, 0, 2),           # mirror along the main diagonal
    6: lambda a: np.rot90(a, -1),                # rotate 90 clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # mirror along the anti-diagonal
    8: lambda a: np.rot90(a, 1),                 # rotate 90 counter-clockwise
}


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", sorted(EXIF_ORIENTATION))
def test_exif_orientation(orientation):
    arr = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)  # 5 wide, 3 high: every turn shows
    expected = EXIF_ORIENTATION[orientation](arr)
    for fmt, kw in (("PNG", {}), ("WEBP", {"lossless": True})):
        data = encode(arr, fmt, exif=_exif(orientation), **kw)
        assert np.array_equal(decoded(data), expected), fmt
        source = decode_with_source(data)[1]
        assert (source.width, source.height, source.orientation) == \
            (expected.shape[1], expected.shape[0], orientation)


def test_exif_orientation_on_a_draft_scaled_jpeg_and_from_xmp():
    arr = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    upright = encode(arr, "JPEG", quality=90)
    small = Image.open(io.BytesIO(upright))
    small.draft("RGB", (16, 16))  # PIL's own half-scale decode of the same file
    small = np.asarray(small)
    out = decoded(encode(arr, "JPEG", quality=90, exif=_exif(6)), min_size=16)
    assert out.shape == (32, 24, 3) and np.array_equal(out, np.rot90(small, -1))
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/'
           b'22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
           b'tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')
    out = decoded(encode(arr, "JPEG", quality=90, xmp=xmp))
    assert np.array_equal(out, np.rot90(np.asarray(Image.open(io.BytesIO(upright))), 1))


def test_exif_rotated_jpeg_is_left_to_the_cpu_decoder():
    from edge_ray.data.gpu import jpeg_geometry

    arr = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert jpeg_geometry(encode(arr, "JPEG"), 16) == (64, 48, (32, 24), 2)
    assert jpeg_geometry(encode(arr, "JPEG", exif=_exif(6)), 16) is None


def _frames(n: int = 3) -> list[np.ndarray]:
    return [np.full((4, 6, 3), (40 * i + 10, 200 - 50 * i, 90), np.uint8) for i in range(n)]


def test_animated_webp_and_apng_first_frame():
    frames = _frames()
    imgs = [Image.fromarray(f) for f in frames]
    for fmt, kw in (("WEBP", {"lossless": True}), ("PNG", {})):
        data = encode(imgs[0], fmt, save_all=True, append_images=imgs[1:], duration=50, **kw)
        assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3, fmt
        assert np.array_equal(decoded(data), frames[0]), fmt


def test_animated_gif_is_stored_as_its_first_frame_only_when_reencoded():
    frames = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE) for f in _frames()]
    frames[0].info["transparency"] = frames[0].getpixel((0, 0))  # frame 0 fully transparent
    gif = encode(frames[1], "GIF", save_all=True, append_images=[frames[0], frames[2]], duration=50)
    with pytest.raises(Image.UnidentifiedImageError):
        decode_image(gif)  # GIF is not a stored format: never reaches a decoder on read
    with pytest.raises(BadImage, match="unsupported format GIF"):
        load_checked(gif)
    stored, ext, source = load_checked(gif, reencode=True)
    assert ext == "png" and source["reencoded_from"] == "GIF P" and source["mode"] == "P"
    assert np.array_equal(decoded(stored), _frames()[1])
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    stored, _, source = load_checked(gif, reencode=True)
    assert source["mode"] == "P+transparency" and (decoded(stored) == 255).all()


# ---------------------------------------------------------------- re-encoding, refusals, notes


def test_reencode_keeps_16_bits_and_converts_the_rest_through_to_rgb():
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    for tiff in (encode(Image.fromarray(ramp), "TIFF"), encode(Image.fromarray(ramp.astype(np.int32)), "TIFF")):
        stored, ext, source = load_checked(tiff, reencode=True)
        assert ext == "png" and source["mode"] == "I;16"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), ramp)  # lossless
        out = decoded(stored)
        assert np.array_equal(out, grey3(np.rint(ramp / 257))) and len(np.unique(out)) >= 200
    with pytest.raises(BadImage, match=r"outside 0\.\.65535"):
        load_checked(encode(Image.fromarray(np.array([[0, 70000]], np.int32)), "TIFF"), reencode=True)
    values = np.array([[0.0, 0.5, 1.0]], np.float32)
    stored, _, source = load_checked(encode(Image.fromarray(values), "TIFF"), reencode=True)
    assert source["mode"] == "RGB" and np.array_equal(decoded(stored), grey3([[0, 128, 255]]))
    ink = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)  # TIFF CMYK is plain, never inverted
    stored, _, _ = load_checked(encode(Image.fromarray(ink, "CMYK"), "TIFF"), reencode=True)
    assert np.array_equal(decoded(stored), _cmyk_to_rgb(ink))
    arr = RNG.integers(0, 256, (3, 5, 3), dtype=np.uint8)
    stored, _, source = load_checked(encode(arr, "TIFF", exif=_exif(8)), reencode=True)
    assert np.array_equal(decoded(stored), np.rot90(arr, 1))  # Pillow turns TIFFs as it loads
    assert source["orientation"] == 1 and source["reencoded_from"] == "TIFF RGB"


def test_modes_without_a_defined_conversion_are_refused_in_one_line():
    with pytest.raises(UnsupportedImage, match="mode LAB") as err:
        to_rgb(Image.new("LAB", (2, 2)))
    assert "\n" not in str(err.value)


def test_source_modes_and_conversion_notes():
    index = np.zeros((2, 2), np.uint8)
    palette = np.array([[1, 2, 3]], np.uint8)
    cases = {
        "RGB": encode(np.zeros((2, 2, 3), np.uint8), "JPEG"),
        "I;16": png(np.zeros((2, 2), np.uint16), 0, 16),
        "P+transparency": png(index, 3, 8, plte=palette, trns=b"\x00"),
        "RGBA": encode(np.zeros((2, 2, 4), np.uint8), "PNG"),
    }
    for mode, data in cases.items():
        assert decode_with_source(data)[1].mode == mode
    assert conversion_note("I;16") == "scaled /257"
    assert conversion_note("RGBA") == "composited on white"
    assert conversion_note("P+transparency") == "transparent colour composited on white"


# ---------------------------------------------------------------- through a shard set


def test_converted_set_reads_back_by_the_conventions(tmp_path):
    """Converter and eval loader on real files: what a model sees is what the conventions
    say (image_size = the files' size, mean 0 and std 1: the batch is the decoded pixels)."""
    from edge_ray.data import eval_loader, load_index
    from shards.folder import convert_folder

    grey16 = RNG.integers(0, 65536, (8, 8)).astype(np.uint16)
    rgba = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    turned = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ink = RNG.integers(0, 256, (1, 1, 4), dtype=np.uint8)
    files = {"g16.png": png(grey16, 0, 16), "rgba.png": encode(rgba, "PNG"),
             "rot.webp": encode(turned, "WEBP", lossless=True, exif=_exif(6)),
             "cmyk.jpg": encode(Image.fromarray(_flat_blocks(ink), "CMYK"), "JPEG", quality=100)}
    expected = {"g16": grey3(np.rint(grey16 / 257)), "rgba": on_white(rgba[..., :3], rgba[..., 3]),
                "rot": np.rot90(turned, -1), "cmyk": _flat_blocks(_cmyk_to_rgb(ink))}
    (tmp_path / "in").mkdir()
    for name, data in files.items():
        (tmp_path / "in" / name).write_bytes(data)
    convert_folder(tmp_path / "in", tmp_path / "set", role="ood", name="modes", progress=False)
    loader = eval_loader(load_index(tmp_path / "set", role="ood"), batch_size=4, image_size=8,
                         mean=(0, 0, 0), std=(1, 1, 1))
    (x, _, keys), = list(loader)
    seen = np.rint(x.numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    assert sorted(keys) == sorted(expected)
    for key, img in zip(keys, seen):
        assert np.array_equal(img, expected[key]), key
