"""The GPU decode stage (`edge_ray.data.gpu`, `train_loader(decode="gpu")`).

On a CPU-only machine: the fallback is the CPU path itself; the GPU stage's own code
(worker-side packing, rank-side crop/resize, the prefetch thread) runs on CPU tensors
and must give the CPU path's samples, labels, steps and crop boxes. With CUDA: nvJPEG
against PIL, and whole batches against the CPU path.

Tolerances, in 0..255 pixel units:
  * resize: PIL resamples in two passes through a uint8 intermediate and rounds its
    output, torch stays in float: at most 1 apart (measured 0.3 mean, 1.0 max);
  * draft: the CPU path may decode a JPEG at 1/2..1/8 scale (DCT scaling) where the GPU
    path decodes in full and antialiases; on smooth images the mean stays under 1.5;
  * nvJPEG vs libjpeg-turbo: the IDCTs round differently (well under 1), and 4:2:0
    chroma may be upsampled by repetition instead of libjpeg's triangle filter, a few
    levels on textured colour (`tests/jpeg_reference.py` builds both libjpeg decodes;
    nvJPEG must be within 1 of one of them). A whole batch may add the resize's 1, so
    batches are held to a mean of 3 with no single image over 6 (a crop off by even a
    few pixels of a textured image is far above that).
"""
import io
import json
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from edge_ray.data import gpu, load_index, train_loader, train_transform
from edge_ray.data.streams import decode_batch
from edge_ray.data.transforms import normalize_batch
from edge_ray.data.records import Record
from edge_ray.data.transforms import IMAGENET_MEAN, IMAGENET_STD, decode_image
from tests.jpeg_reference import reference_decodes

# torchvision >= 0.29 announces that its decoders move to TorchCodec; 0.26 on the GPU host does not.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
C = 4
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU with nvJPEG")


def picture(i: int, width: int, height: int) -> np.ndarray:
    """Smooth colour waves plus mild noise: textured enough that a misplaced crop shows."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gen = np.random.default_rng(i)
    f = gen.uniform(5, 20, 3)
    rgb = np.stack([128 + 90 * np.sin(xx / f[0] + i), 128 + 90 * np.cos(yy / f[1] - i),
                    128 + 90 * np.sin((xx + yy) / f[2])], -1)
    return np.clip(rgb + gen.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)


def encode(arr, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    (arr if isinstance(arr, Image.Image) else Image.fromarray(arr)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def sample(i: int) -> tuple[str, bytes]:
    """Mostly baseline RGB JPEGs of assorted sizes, some PNG, grey, CMYK and EXIF-rotated JPEG."""
    width, height = [(40, 30), (64, 48), (120, 90), (33, 57)][i % 4]
    arr = picture(i, width, height)
    if i % 7 == 3:
        return "png", encode(arr, "PNG")
    if i % 7 == 5:
        return "jpg", encode(arr[..., 0], "JPEG", quality=92)
    if i % 11 == 6:
        return "jpg", encode(Image.fromarray(arr).convert("CMYK"), "JPEG", quality=92)
    if i % 13 == 8:  # stored sideways, EXIF says "rotate 90 CW": nvJPEG would not turn it
        exif = Image.Exif()
        exif[0x0112] = 6
        return "jpg", encode(arr, "JPEG", quality=92, exif=exif)
    return "jpg", encode(arr, "JPEG", quality=92)


def make_set(root: Path, name: str, role: str, sizes, start: int = 0) -> Path:
    out = root / name
    out.mkdir(parents=True)
    shards, i = [], start
    for s, n in enumerate(sizes):
        url = f"{name}-{s:06d}.tar"
        with tarfile.open(out / url, "w") as tar:
            for _ in range(n):
                ext, data = sample(i)
                labels = sorted({i % C, (5 * i + 1) % C}) if role == "id" else []
                for member, payload in ((f"k{i:05d}.{ext}", data),
                                        (f"k{i:05d}.json", json.dumps({"labels": labels}).encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                i += 1
        shards.append({"url": url, "num_samples": n})
    (out / "index.json").write_text(json.dumps({
        "name": name, "role": role, "classes": [f"c{c}" for c in range(C)] if role == "id" else [],
        "num_samples": sum(sizes), "shards": shards, "label_counts": []}))
    return out


@pytest.fixture()
def sets(tmp_path):
    id_dir = make_set(tmp_path, "toy", "id", [13, 11, 12])
    oe_dir = make_set(tmp_path, "oe", "oe", [9], start=500)
    return load_index(id_dir, role="id"), load_index(oe_dir, role="oe")


def epoch(sets, *, decode, device=None, rank=0, world_size=2, num_workers=2, epoch=1, image_size=16,
          **options):
    loader = train_loader(*sets, batch_size=4, oe_batch_size=3, image_size=image_size, epoch=epoch,
                          seed=7, rank=rank, world_size=world_size, num_workers=num_workers,
                          return_keys=True, decode=decode, device=device, **options)
    return len(loader), list(loader)


def pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalised batch -> 0..255 pixel units, on the CPU."""
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (x.detach().float().cpu() * std + mean) * 255


def assert_same_epochs(a, b, *, mean_tol: float, image_tol: float) -> None:
    """Same steps, keys and labels in the same order; images within tolerance."""
    (len_a, batches_a), (len_b, batches_b) = a, b
    assert len_a == len_b == len(batches_a) == len(batches_b)
    for (xa, ya, oa, ka), (xb, yb, ob, kb) in zip(batches_a, batches_b):
        assert ka == kb
        assert torch.equal(ya.cpu(), yb.cpu())
        for u, v in ((xa, xb), (oa, ob)):
            assert u.shape == v.shape and u.dtype == v.dtype == torch.float32
            per_image = (pixels(u) - pixels(v)).abs().mean(dim=(1, 2, 3))
            assert per_image.mean() < mean_tol and per_image.max() < image_tol, per_image


def test_gpu_decode_without_cuda_is_the_cpu_path(sets, monkeypatch):
    monkeypatch.setattr(gpu, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="needs a CUDA device"):
        fallback = epoch(sets, decode="gpu", device="cpu")
    cpu = epoch(sets, decode="cpu")
    assert_same_epochs(fallback, cpu, mean_tol=1e-9, image_tol=1e-9)  # bit-identical
    assert all(not x.is_cuda for x, *_ in fallback[1])


@pytest.mark.parametrize("rank,feeder,crops,share", [(0, "serial", "batched", 0), (1, "serial", "batched", 0),
                                                      (0, "serial", "per_image", 0), (1, "pipelined", "batched", 0),
                                                      (0, "inline", "per_image", 0), (1, "inline", "batched", 0.4),
                                                      (0, "serial", "batched", 1)])
def test_gpu_stage_on_cpu_tensors_matches_cpu_path(sets, monkeypatch, rank, feeder, crops, share):
    """The packing workers, the decoder and the feeder thread(s), run on the CPU: same
    samples, labels and steps per epoch, same crops (within the resize tolerance), in
    every feeder arrangement, and with a share of each batch decoded by the workers."""
    monkeypatch.setattr(gpu, "resolve_device", lambda device=None: torch.device("cpu"))
    packed = epoch(sets, decode="gpu", rank=rank, gpu_feeder=feeder, gpu_crops=crops, cpu_decode_share=share)
    cpu = epoch(sets, decode="cpu", rank=rank)
    assert_same_epochs(packed, cpu, mean_tol=1.5, image_tol=3.0)


def test_feeder_timings_and_option_errors(sets, monkeypatch):
    monkeypatch.setattr(gpu, "resolve_device", lambda device=None: torch.device("cpu"))
    for feeder, expected in (("serial", {"feeder_source", "feeder_convert", "feeder_blocked", "nvjpeg"}),
                             ("pipelined", {"decoder_convert", "cropper_convert", "crops"})):
        loader = train_loader(*sets, batch_size=4, oe_batch_size=3, image_size=16, epoch=0, seed=0,
                              rank=0, world_size=1, num_workers=1, decode="gpu", gpu_feeder=feeder)
        assert len(list(loader)) == len(loader)
        assert expected <= set(loader.timings) and all(v >= 0 for v in loader.timings.values()), loader.timings
    with pytest.raises(ValueError, match="gpu_feeder='fast'"):
        train_loader(*sets, batch_size=4, oe_batch_size=3, image_size=16, epoch=0, seed=0, rank=0,
                     world_size=1, num_workers=1, gpu_feeder="fast")
    with pytest.raises(ValueError, match="gpu_crops='bilinear'"):
        train_loader(*sets, batch_size=4, oe_batch_size=3, image_size=16, epoch=0, seed=0, rank=0,
                     world_size=1, num_workers=1, gpu_crops="bilinear")


@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 1 / 3, 0.4, 0.5, 0.9, 1.0])
def test_cpu_share_positions_are_the_share_evenly_spread(share):
    """floor(n * share) of the first n positions, for every n, and never two in a row
    below a share of 1/2 (brute force over the first 200 positions)."""
    flags = [gpu.on_cpu_share(i, share) for i in range(200)]
    for n in range(1, 201):
        assert sum(flags[:n]) == int(n * share + 1e-9), (share, n)
    if share <= 0.5:
        assert not any(a and b for a, b in zip(flags, flags[1:]))


def test_cpu_share_decodes_that_share_in_the_workers(sets, monkeypatch):
    """cpu_decode_share: the positions `on_cpu_share` names arrive as PIL pixels (decoded
    at the CPU path's draft size), the rest as JPEG bytes; bad values are refused."""
    from edge_ray.data.records import read_shard

    index = sets[0]
    url, n = index.shards[0]
    records = list(read_shard(url, np.arange(n), expected=n))[:6]
    transform = train_transform(16)
    batch = gpu.pack_batch(records, transform, np.random.default_rng(0), cpu_share=0.5)
    jpeg = [gpu.jpeg_geometry(r.data, transform.min_decode_size) is not None for r in records]
    assert batch.on_gpu == [ok and not gpu.on_cpu_share(i, 0.5) for i, ok in enumerate(jpeg)]
    assert len(batch.encoded_sizes) == sum(batch.on_gpu)
    cpu_sizes = [h * w * 3 for (h, w), g in zip(batch.sizes, batch.on_gpu) if not g]
    assert batch.pixels.numel() == sum(cpu_sizes) > 0
    with pytest.raises(ValueError, match="cpu_decode_share=1.5"):
        train_loader(*sets, batch_size=4, oe_batch_size=3, image_size=16, epoch=0, seed=0, rank=0,
                     world_size=1, num_workers=1, decode="gpu", cpu_decode_share=1.5)


def test_packed_batches_are_pinned_only_for_a_cuda_decoder(sets, monkeypatch):
    """On CUDA the DataLoader's pin thread page-locks packed batches unless told not to; a
    CPU decoder (and the CPU path) leaves them alone. Where CUDA is there, the pinned copy
    holds the same bytes, page-locked."""
    kw = dict(batch_size=4, oe_batch_size=3, image_size=16, epoch=0, seed=0, rank=0, world_size=1,
              num_workers=1)
    assert not train_loader(*sets, **kw).pin_memory
    monkeypatch.setattr(gpu, "resolve_device", lambda device=None: torch.device("cpu"))
    assert not train_loader(*sets, decode="gpu", **kw).pin_memory
    url, n = sets[0].shards[0]
    from edge_ray.data.records import read_shard

    records = list(read_shard(url, np.arange(n), expected=n))[:5]
    batch = gpu.pack_batch(records, train_transform(16), np.random.default_rng(0), cpu_share=0.4)
    assert batch.pixels.numel() > 0 and batch.encoded.numel() > 0
    if CUDA:
        monkeypatch.setattr(gpu, "resolve_device", lambda device=None: torch.device("cuda", 0))
        assert train_loader(*sets, decode="gpu", **kw).pin_memory
        assert not train_loader(*sets, decode="gpu", pin_memory=False, **kw).pin_memory  # asked: kept
        pinned = batch.pin_memory()
        for before, after in ((batch.encoded, pinned.encoded), (batch.pixels, pinned.pixels)):
            assert after.is_pinned() and torch.equal(before, after)
        assert pinned.keys == batch.keys and pinned.boxes == batch.boxes


def test_epoch_and_seed_semantics_carry_over(sets, monkeypatch):
    monkeypatch.setattr(gpu, "resolve_device", lambda device=None: torch.device("cpu"))
    keys = {e: [k for b in epoch(sets, decode="gpu", epoch=e, world_size=1, num_workers=1)[1]
                for k in b[3]] for e in (0, 1)}
    assert keys[0] != keys[1] and len(set(keys[0])) == len(keys[0])
    again = [k for b in epoch(sets, decode="gpu", epoch=0, world_size=1, num_workers=1)[1] for k in b[3]]
    assert again == keys[0]


def records(indices) -> list[Record]:
    out = []
    for i in indices:
        ext, data = sample(i)
        out.append(Record(key=f"k{i}", ext=ext, data=data, labels=(), shard="mem"))
    return out


@pytest.mark.parametrize("image_size", [16, 48])
def test_mixed_batch_jpeg_png_grey_cmyk(image_size):
    batch = records([0, 3, 5, 6, 2, 10])  # RGB JPEG, PNG, grey JPEG, CMYK JPEG, drafted JPEG, PNG
    t = train_transform(image_size)
    packed = gpu.pack_batch(batch, t, np.random.default_rng(1))
    assert packed.on_gpu == [True, False, True, False, True, False]
    assert len(packed) == 6 and len(packed.encoded_sizes) == 3
    (x,) = gpu.BatchDecoder(image_size, IMAGENET_MEAN, IMAGENET_STD, "cpu")(packed)
    ref = normalize_batch(decode_batch(batch, t, np.random.default_rng(1)), IMAGENET_MEAN, IMAGENET_STD)
    assert x.shape == ref.shape == (6, 3, image_size, image_size)
    assert (pixels(x) - pixels(ref)).abs().mean(dim=(1, 2, 3)).max() < 1.5


@pytest.mark.parametrize("size,image_size", [((320, 320), 256), ((120, 90), 16), ((33, 57), 48)])
def test_crop_resize_matches_pil_geometry(size, image_size):
    """Noise images: a box off by one pixel would differ by tens of levels, not by < 1."""
    gen = np.random.default_rng(0)
    arr = gen.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img, t = Image.fromarray(arr), train_transform(image_size)
    tensor = torch.from_numpy(arr).permute(2, 0, 1)
    for _ in range(10):
        top, left, h, w, flip = t.sample_crop(*size, gen)
        ref = TF.resized_crop(img, top, left, h, w, [image_size, image_size], antialias=True)
        ref = torch.from_numpy(np.array(TF.hflip(ref) if flip else ref)).permute(2, 0, 1).float()
        out = gpu.crop_resize(tensor, (top, left, h, w), flip, image_size)
        assert out.dtype == torch.float32 and (out - ref).abs().max() <= 1.01


def test_crop_resize_batch_matches_pil_in_float():
    """The batched resize (two matrix products per image size) against PIL resampling
    32-bit float images (mode "F": no uint8 rounding), channel by channel: mixed sizes,
    up- and down-scaling, flips, boxes touching the image edges."""
    gen = np.random.default_rng(3)
    images, boxes, flips, refs = [], [], [], []
    for i in range(24):
        height, width = [(50, 40), (33, 90), (50, 40), (300, 200)][i % 4]
        arr = gen.integers(0, 256, (height, width, 3), dtype=np.uint8)
        h, w = int(gen.integers(1, height + 1)), int(gen.integers(1, width + 1))
        top, left = int(gen.integers(0, height - h + 1)), int(gen.integers(0, width - w + 1))
        flip = bool(gen.integers(2))
        ref = [np.asarray(Image.fromarray(arr[..., c].astype(np.float32), "F")
                          .crop((left, top, left + w, top + h)).resize((37, 37), Image.BILINEAR))
               for c in range(3)]
        ref = np.stack(ref)
        refs.append(ref[..., ::-1] if flip else ref)
        images.append(torch.from_numpy(arr).permute(2, 0, 1))  # a non-contiguous view, as in BatchDecoder
        boxes.append((top, left, h, w))
        flips.append(flip)
    out = gpu.crop_resize_batch(images, torch.tensor(boxes, dtype=torch.float32), torch.tensor(flips), 37)
    assert out.shape == (24, 3, 37, 37) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.stack(refs), atol=0.02, rtol=0)
    single = gpu.crop_resize_batch(images[:1], torch.tensor(boxes[:1], dtype=torch.float32),
                                   torch.tensor(flips[:1]), 37)  # one size: the no-scatter branch
    torch.testing.assert_close(single, out[:1])
    per_image = torch.stack([gpu.crop_resize(img, box, flip, 37) for img, box, flip in zip(images, boxes, flips)])
    assert (per_image - out).abs().max() < 1e-3


def test_batched_and_per_image_decoders_agree(monkeypatch):
    batch = records(range(12))
    t = train_transform(24)
    packed = gpu.pack_batch(batch, t, np.random.default_rng(5))
    (a,) = gpu.BatchDecoder(24, IMAGENET_MEAN, IMAGENET_STD, "cpu")(packed)
    (b,) = gpu.BatchDecoder(24, IMAGENET_MEAN, IMAGENET_STD, "cpu", batched=False)(packed)
    assert (pixels(a) - pixels(b)).abs().max() < 1e-2


@pytest.mark.parametrize("size", [(320, 320), (257, 131), (64, 48), (33, 57)])
@pytest.mark.parametrize("quality", [75, 95])
def test_libjpeg_reference_rebuilds_pil_exactly(size, quality):
    """The references nvJPEG is held to: the "fancy" rebuild from PIL's own planes is
    PIL's RGB decode bit for bit; "nearest" (chroma repeated 2x2) is a different, equally
    valid decode, several levels apart on textured colour."""
    data = encode(picture(2, *size), "JPEG", quality=quality, subsampling=2)
    refs = reference_decodes(data)
    pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert refs["fancy"].shape == refs["nearest"].shape == pil.shape
    assert np.array_equal(refs["fancy"], pil)
    assert np.abs(refs["nearest"].astype(int) - pil).mean() > 0.5


@pytest.mark.parametrize("size,image_size", [((64, 48), 8), ((500, 375), 32), ((640, 480), 256),
                                             ((1001, 333), 16), ((120, 90), 16)])
def test_jpeg_geometry_reproduces_the_cpu_draft(size, image_size):
    data = encode(picture(1, *size), "JPEG")
    t = train_transform(image_size)
    width, height, seen, scale = gpu.jpeg_geometry(data, t.min_decode_size)
    assert (width, height) == size
    assert seen == decode_image(data, min_size=t.min_decode_size).size
    assert scale in (1, 2, 4, 8) and seen == (-(-width // scale), -(-height // scale))
    # the last drafted pixel row/column may be partial: boxes are clipped to the image
    top, left, h, w = gpu.scale_box((seen[1] - 1, seen[0] - 1, 1, 1), scale, height, width)
    assert top + h == height and left + w == width


def test_non_jpeg_and_bad_bytes():
    t = train_transform(16)
    assert gpu.jpeg_geometry(encode(picture(0, 20, 20), "PNG"), t.min_decode_size) is None
    bad = Record(key="broken", ext="jpg", data=gpu.JPEG_MAGIC + b"\x00" * 50, labels=(), shard="s.tar")
    with pytest.raises(ValueError, match="key 'broken'"):
        gpu.pack_batch([bad], t, np.random.default_rng(0))


def test_prefetch_order_errors_and_early_close():
    cpu = torch.device("cpu")
    assert list(gpu.prefetch(range(10), lambda i: i * i, cpu)) == [i * i for i in range(10)]

    def boom(i):
        if i == 3:
            raise KeyError("bad batch 3")
        return i
    with pytest.raises(KeyError, match="bad batch 3"):
        list(gpu.prefetch(range(10), boom, cpu))

    started = threading.active_count()
    it = gpu.prefetch(iter(range(1000)), lambda i: i, cpu, depth=2)
    assert next(it) == 0
    it.close()
    deadline = time.time() + 5
    while threading.active_count() > started and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= started


def test_resolve_device_without_cuda(monkeypatch):
    monkeypatch.setattr(gpu, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="CPU decode path"):
        assert gpu.resolve_device("cpu") is None


# ------------------------------------------------------------------ with a GPU


@needs_cuda
def test_nvjpeg_equals_a_libjpeg_decode():
    """nvJPEG against libjpeg, per file. 4:4:4 and greyscale files have no chroma to
    upsample: within IDCT rounding of PIL. 4:2:0 files: within IDCT rounding of one of
    the two libjpeg decodes (`tests/jpeg_reference.py`), fancy (PIL's default) or nearest
    chroma upsampling; the H100 run of 2026-11-26 found nvJPEG 3.17/255 from PIL on the
    320x320 file, which is exactly PIL's own fancy-vs-nearest gap there (3.171)."""
    arrays = [picture(i, w, h) for i, (w, h) in enumerate([(320, 320), (500, 375), (257, 131), (64, 48)])]
    files = [encode(a, "JPEG", quality=q, subsampling=s)
             for a, (q, s) in zip(arrays, [(90, 2), (95, 0), (75, 2), (90, 2)])]
    files.append(encode(arrays[0][..., 1], "JPEG", quality=90))  # greyscale
    subsampled = [True, False, True, True, False]
    device = gpu.resolve_device()
    assert device is not None and device.type == "cuda"
    data = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    report, failures = [], []
    for i, (f, img) in enumerate(zip(files, gpu.decode_jpeg(data, device))):
        assert img.is_cuda and img.dtype == torch.uint8
        got = img.cpu().permute(1, 2, 0).numpy().astype(int)
        refs = {"pil": np.array(decode_image(f))}
        if subsampled[i]:
            refs.update(reference_decodes(f))
        assert all(got.shape == r.shape for r in refs.values())
        diffs = {name: float(np.abs(got - r.astype(int)).mean()) for name, r in refs.items()}
        report.append(f"file {i} {'4:2:0' if subsampled[i] else '4:4:4/grey'}: " +
                      ", ".join(f"{k} {v:.3f}" for k, v in diffs.items()))
        if min(diffs.values()) >= 1.0:
            failures.append(report[-1])
    print("\nnvJPEG mean |difference| per file, 0..255 units:\n  " + "\n  ".join(report))
    assert not failures, failures


@needs_cuda
@pytest.mark.parametrize("image_size,crops", [(16, "batched"), (64, "batched"), (64, "per_image")])
def test_gpu_batches_equal_cpu_batches(sets, image_size, crops):
    on_gpu = epoch(sets, decode="gpu", image_size=image_size, gpu_crops=crops)
    assert all(x.is_cuda and y.is_cuda and o.is_cuda for x, y, o, _ in on_gpu[1])
    cpu = epoch(sets, decode="cpu", image_size=image_size)
    assert_same_epochs(on_gpu, cpu, mean_tol=3.0, image_tol=6.0)


@needs_cuda
def test_gpu_batches_feed_a_training_step(sets):
    """Batches from the side stream are used on the default stream: no copy, no race."""
    from edge_ray.train import builders, loop
    from edge_ray.config import LossConfig, TrainConfig
    from edge_ray.models.networks import build_model

    device = torch.device("cuda", torch.cuda.current_device())
    model = build_model("smallcnn", C).to(device)
    opts = loop.StepOptions(device=device, amp=True, channels_last=True)
    opt = builders.make_optimizer(model, TrainConfig())
    loss_fn = builders.make_loss_fn(LossConfig(k=2))
    loader = train_loader(*sets, batch_size=4, oe_batch_size=3, image_size=32, epoch=0, seed=0,
                          rank=0, world_size=1, num_workers=2, decode="gpu", device=device)
    stats = loop.train_epoch(model, loader, loss_fn, opt, None, epoch=0, opts=opts)
    assert stats["steps"] == len(loader) and np.isfinite(stats["loss"])


@needs_cuda
@pytest.mark.parametrize("options", [dict(decode="gpu", gpu_feeder="serial", gpu_crops="per_image"),
                                     dict(decode="gpu", gpu_feeder="serial"),
                                     dict(decode="gpu", gpu_feeder="pipelined"),
                                     dict(decode="gpu", gpu_feeder="inline"),
                                     dict(decode="gpu", gpu_feeder="inline", cpu_decode_share=0.4),
                                     dict(decode="cpu", prefetch_to_device=True)],
                         ids=["serial-per-image", "serial", "pipelined", "inline", "inline-cpu-share",
                              "cpu-decode-prefetched"])
def test_gpu_batches_stay_right_while_the_gpu_is_busy(sets, options):
    """Regression (one H100, 2026-11-26): once training stopped syncing every step, the
    decode side stream lagged behind the feeder thread and nvJPEG (which writes on its own
    stream) overwrote memory that queued kernels still read: "index out of bounds" device
    asserts. Here the default stream is kept busy without any host sync while batches
    arrive; every batch must still be the CPU path's, in every feeder arrangement, and
    for CPU-decoded batches copied to the GPU ahead on a side stream."""
    loader = train_loader(*sets, batch_size=4, oe_batch_size=3, image_size=32, epoch=1, seed=7, rank=0,
                          world_size=1, num_workers=2, return_keys=True, device="cuda", **options)
    load = torch.randn(4096, 4096, device="cuda")
    got = []
    for x, y, o, keys in loader:
        for _ in range(20):  # ~50 ms of fp32 matmuls queued per batch on an H100
            load = load @ load
            load = load / load.norm()
        assert x.is_cuda and y.is_cuda and o.is_cuda
        got.append((x.clone(), y.clone(), o.clone(), keys))
    assert_same_epochs((len(loader), got), epoch(sets, decode="cpu", world_size=1, image_size=32),
                       mean_tol=3.0, image_tol=6.0)
