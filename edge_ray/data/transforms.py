"""The train / eval transforms of the CPU "decode" stage (decoding itself: `decode.py`), and
`to_pixels`: any image a predict path is given (bytes, PIL, array, tensor, file location) as
the eval transform's uint8 pixels.

Randomness comes from an explicit `numpy.random.Generator`, never from torch's
global RNG: the reader seeds one per (seed, epoch, rank, worker), so an epoch's
augmentations are reproducible whatever the DataLoader did with global seeds, and
`sample_crop` can be reused by a GPU pipeline that crops batches on the device.
Test and OOD sets only ever get `eval_transform` (no augmentation).
"""
from __future__ import annotations

import math
import os
import platform

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image

# The one decoder (conventions per image mode in its docstring); re-exported here, where
# callers have always found it.
from .decode import decode_error, decode_image, to_rgb  # noqa: F401

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RATIO = (3 / 4, 4 / 3)


class TrainTransform:
    """RandomResizedCrop(size, scale=crop_scale) + optional horizontal flip + ToTensor + Normalize."""

    def __init__(self, image_size: int, *, hflip: bool = True,
                 crop_scale: tuple[float, float] = (0.5, 1.0),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        lo, hi = crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale={crop_scale} must satisfy 0 < min <= max <= 1")
        self.image_size, self.hflip, self.crop_scale = int(image_size), hflip, (lo, hi)
        self.mean, self.std = list(mean), list(std)

    @property
    def min_decode_size(self) -> int:
        """Smallest image side for which the smallest crop still has >= image_size pixels a side."""
        return math.ceil(self.image_size / math.sqrt(self.crop_scale[0] * _RATIO[0]))

    def sample_crop(self, width: int, height: int, gen: np.random.Generator) -> tuple[int, int, int, int, bool]:
        """(top, left, h, w, flip) as torchvision's RandomResizedCrop.get_params, seeded by `gen`."""
        area = width * height
        log_ratio = (math.log(_RATIO[0]), math.log(_RATIO[1]))
        flip = bool(self.hflip and gen.random() < 0.5)
        for _ in range(10):
            target = area * gen.uniform(*self.crop_scale)
            ratio = math.exp(gen.uniform(*log_ratio))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                return int(gen.integers(height - h + 1)), int(gen.integers(width - w + 1)), h, w, flip
        # Fallback: the largest centre crop with an aspect ratio inside _RATIO.
        w, h = width, height
        if width / height < _RATIO[0]:
            h = int(round(width / _RATIO[0]))
        elif width / height > _RATIO[1]:
            w = int(round(height * _RATIO[1]))
        return (height - h) // 2, (width - w) // 2, h, w, flip

    def geometric_uint8(self, img: Image.Image, gen: np.random.Generator) -> torch.Tensor:
        """The random crop + resize + flip as uint8 [3, S, S] (`crop_uint8`), drawing the crop
        from `gen` as `geometric` does: the reader's CPU path."""
        return self.geometric_pixels(rgb_pixels(img), gen)

    def geometric_pixels(self, pixels: np.ndarray, gen: np.random.Generator) -> torch.Tensor:
        """`geometric_uint8` of an image already decoded to RGB uint8 [H, W, 3] (left unchanged)."""
        top, left, h, w, flip = self.sample_crop(pixels.shape[1], pixels.shape[0], gen)
        return crop_pixels(pixels, (top, left, h, w), flip, self.image_size)

    def geometric(self, img: Image.Image, gen: np.random.Generator) -> Image.Image:
        """The random crop + resize + flip, still a PIL image (normalising is batched)."""
        from torchvision.transforms import functional as F

        img = to_rgb(img)
        top, left, h, w, flip = self.sample_crop(img.width, img.height, gen)
        img = F.resized_crop(img, top, left, h, w, [self.image_size, self.image_size], antialias=True)
        return F.hflip(img) if flip else img

    def __call__(self, img: Image.Image, gen: np.random.Generator | None = None) -> torch.Tensor:
        from torchvision.transforms import functional as F

        gen = gen if gen is not None else np.random.default_rng()
        return F.normalize(F.to_tensor(self.geometric(img, gen)), self.mean, self.std)


class EvalTransform:
    """Resize((size, size)) + ToTensor + Normalize: deterministic, no augmentation."""

    def __init__(self, image_size: int, *, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.image_size = int(image_size)
        self.mean, self.std = list(mean), list(std)

    @property
    def min_decode_size(self) -> int:
        return self.image_size

    def geometric(self, img: Image.Image, gen: np.random.Generator | None = None) -> Image.Image:
        from torchvision.transforms import functional as F

        return F.resize(to_rgb(img), [self.image_size, self.image_size], antialias=True)

    def geometric_uint8(self, img: Image.Image, gen: np.random.Generator | None = None) -> torch.Tensor:
        return self.geometric_pixels(rgb_pixels(img), gen)

    def geometric_pixels(self, pixels: np.ndarray, gen: np.random.Generator | None = None) -> torch.Tensor:
        return crop_pixels(pixels, None, False, self.image_size)

    def __call__(self, img: Image.Image, gen: np.random.Generator | None = None) -> torch.Tensor:
        from torchvision.transforms import functional as F

        return F.normalize(F.to_tensor(self.geometric(img)), self.mean, self.std)


def rgb_pixels(img: Image.Image) -> np.ndarray:
    """A decoded image as RGB uint8 [H, W, 3], what `geometric_pixels` crops (and the reader's
    decoded-image cache keeps)."""
    return np.array(to_rgb(img), dtype=np.uint8)


def to_pixels(image, transform) -> np.ndarray:
    """uint8 [S, S, 3]: one image after decoding and the eval transform's resize, the same
    pixels as the evaluation loader's (`decode_batch`: the same decode and uint8 resize).

    ``image``: encoded bytes (JPEG, PNG, WebP), a PIL image, a uint8 array or tensor
    ([H, W], [H, W, C] or [C, H, W] with C in 1, 3, 4), or a location (path or URI) of a file.
    Raises ValueError with one line on anything else or on bytes that do not decode."""
    if isinstance(image, (str, os.PathLike)):
        from edge_ray import storage

        image = storage.read_bytes(storage.normalize(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        try:
            img = decode_image(data, min_size=transform.min_decode_size)
            return _resized(img, transform)
        except Exception as err:  # PIL raises many types for corrupt or hostile bytes
            raise ValueError(decode_error(data, err)) from err
    if isinstance(image, Image.Image):
        return _resized(image, transform)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        return _resized(Image.fromarray(_hwc(image)), transform)
    raise ValueError(f"cannot read an image from {type(image).__name__}; pass encoded bytes, a PIL "
                     "image, a uint8 array or tensor, or a file location")


def _resized(img: Image.Image, transform) -> np.ndarray:
    """RGB uint8 [S, S, 3] as the evaluation loader resizes it (torch's uint8 antialiased
    resize; PIL's own differs by up to one level when shrinking)."""
    return np.ascontiguousarray(transform.geometric_uint8(img).permute(1, 2, 0).numpy())


def _hwc(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (0..255), got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = a.transpose(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"image array of shape {a.shape}: expected [H, W], [H, W, C] or [C, H, W]")
    return np.ascontiguousarray(a)


def crop_uint8(img: Image.Image, box: tuple[int, int, int, int] | None, flip: bool, size: int) -> torch.Tensor:
    """RGB PIL image -> uint8 [3, size, size] (a view of HWC memory): the crop `box` (top,
    left, height, width; None = the whole image) resized with antialiased bilinear on the
    tensor, then flipped left-right if `flip`. torch's uint8 path ports PIL's resampling:
    pixels equal PIL's when enlarging and differ by at most 1 level when shrinking, at a
    third of PIL's cost (benchmarks/README.md, reader).

    The same pixels as torchvision's `v2.functional.resized_crop(antialias=True)` (a test
    holds them equal), called here on torch directly: torchvision's dispatch per image and
    its import in every Train worker cost more than the resize itself."""
    return crop_pixels(np.array(img, dtype=np.uint8), box, flip, size)


def crop_pixels(pixels: np.ndarray, box: tuple[int, int, int, int] | None, flip: bool, size: int) -> torch.Tensor:
    """`crop_uint8` of RGB uint8 [H, W, 3] pixels (which it never writes to)."""
    x = torch.from_numpy(pixels).permute(2, 0, 1)
    top, left, h, w = box if box is not None else (0, 0, x.shape[1], x.shape[2])
    if (h, w) != (size, size) or (top, left) != (0, 0) or x.shape[1:] != (size, size):
        x = _resize_uint8(x[:, top:top + h, left:left + w], size)
    return x.flip(-1) if flip else x


# torchvision resizes uint8 natively where the CPU has the vectorised kernel, else in float32
# with rounding (`_do_native_uint8_resize_on_cpu`); the same choice keeps the pixels equal.
_NATIVE_UINT8 = (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                 or platform.machine() in ("aarch64", "arm64"))


def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, h, w] (any strides) -> uint8 [3, size, size]: antialiased bilinear, as
    torchvision's `resize_image` computes it (channels-last in and out, no extra copy)."""
    c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    x = x.reshape(1, c, h, w)
    if x.is_contiguous(memory_format=torch.channels_last) and x.numel() != x.stride(0):
        # torch allocates the output of a 1-image channels-last input as contiguous unless
        # the batch stride says otherwise (pytorch#68430); torchvision restrides the same way.
        strides = list(x.stride())
        strides[0] = x.numel()
        x = x.as_strided((1, c, h, w), strides)
    if _NATIVE_UINT8:
        out = nnf.interpolate(x, size=[size, size], mode="bilinear", align_corners=False, antialias=True)
    else:
        out = nnf.interpolate(x.to(torch.float32), size=[size, size], mode="bilinear",
                              align_corners=False, antialias=True).round_().to(torch.uint8)
    return out.reshape(c, size, size)


def stack_uint8(images: list[torch.Tensor]) -> torch.Tensor:
    """Same-size uint8 [3, S, S] images -> uint8 [B, 3, S, S] in channels-last memory: what
    a DataLoader worker hands over (a quarter of the bytes of float32, and the memory
    layout the model runs in), normalised later by `normalize_batch`."""
    size = images[0].shape[-1]
    out = torch.empty((len(images), size, size, 3), dtype=torch.uint8)
    for row, img in zip(out, images):
        row.copy_(img.permute(1, 2, 0))
    return out.permute(0, 3, 1, 2)


def normalize_batch(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [B, 3, S, S] -> float32 ``(x / 255 - mean) / std`` (as ToTensor + Normalize),
    computed as ``(x - 255 mean) / (255 std)`` in one pass, on the tensor's device and in
    its memory layout.

    On the CPU the arithmetic runs in numpy, on one thread, to the same float32 values:
    torch's intra-op threads are much slower in a training process whose loader workers
    share the cores (benchmarks/README.md, "Design measurements").
    """
    shape = (1, 3, 1, 1)
    m, s = [255.0 * v for v in mean], [255.0 * v for v in std]
    if x.device.type == "cpu":
        y = np.subtract(x.numpy(), np.asarray(m, dtype=np.float32).reshape(shape), dtype=np.float32)
        y /= np.asarray(s, dtype=np.float32).reshape(shape)
        return torch.from_numpy(y)
    m = torch.tensor(m, dtype=torch.float32, device=x.device).view(shape)
    s = torch.tensor(s, dtype=torch.float32, device=x.device).view(shape)
    return x.to(torch.float32).sub_(m).div_(s)


def to_normalized_batch(images: list[Image.Image], mean, std) -> torch.Tensor:
    """Same-size RGB images -> float [B, 3, S, S], equal to stacking ToTensor + Normalize,
    in channels-last memory like the loaders' batches (`normalize_batch`): a CPU forward of
    a conv net is faster on it (the demo's small CNN: 0.64 against 1.1-1.2 ms an image on one
    thread, which made `predict` slower than `eval`).

    One vectorised pass per batch instead of per-image to_tensor, normalize and
    stack (together as costly as the JPEG decode at 224-256 px). numpy, not torch: torch's
    intra-op threads are slower in a busy training process.
    """
    x = np.stack([np.asarray(img, dtype=np.uint8) for img in images]).transpose(0, 3, 1, 2)
    x = x.astype(np.float32)  # order "K": keeps the images' NHWC layout (channels-last)
    shape = (1, 3, 1, 1)
    x /= np.float32(255)
    x -= np.asarray(mean, dtype=np.float32).reshape(shape)
    x /= np.asarray(std, dtype=np.float32).reshape(shape)
    return torch.from_numpy(x)


def train_transform(image_size: int, *, hflip: bool = True, crop_scale=(0.5, 1.0),
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> TrainTransform:
    """Training augmentation; call as `t(img)` or `t(img, generator)` for reproducible crops."""
    return TrainTransform(image_size, hflip=hflip, crop_scale=tuple(crop_scale), mean=mean, std=std)


def eval_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> EvalTransform:
    """Evaluation / test / OOD transform; `t(img)` -> float tensor [3, S, S]."""
    return EvalTransform(image_size, mean=mean, std=std)
