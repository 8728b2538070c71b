"""Crop + resize on tensors, as PIL's antialiased bilinear (`TrainTransform.geometric`).

`crop_resize` does one image with `F.interpolate(antialias=True)` (torch's port of
PIL's resampling); `crop_resize_batch` does a batch as matrix products with the filter
weights built by `resize_weights`. The GPU decode stage (`gpu.py`) uses them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_resize(image: torch.Tensor, box: tuple[int, int, int, int], flip: bool, size: int) -> torch.Tensor:
    """uint8 or float [3, H, W] -> float32 [3, size, size] in 0..255: the crop `box`
    (top, left, height, width), resized bilinearly with antialiasing (PIL's filter, as
    `TrainTransform.geometric` applies it), then flipped left-right if `flip`."""
    top, left, h, w = box
    x = image[:, top:top + h, left:left + w].unsqueeze(0).float()
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x[0]
    return x.flip(-1) if flip else x


def resize_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """[n, out_size, in_size] float32: row i of matrix j holds the weights with which
    output pixel i of image j is made from input pixels 0..in_size-1, when image j's crop
    covers pixels [start, start + length) on this axis.

    PIL's (and torch's antialiased) bilinear resampling: output pixel i is centred at
    (i + 0.5) * scale in the crop, scale = length / out_size; the triangle filter has
    support max(scale, 1) (widened when shrinking, which is the antialiasing); weights
    outside the crop are zero and each row is normalised to sum to 1.
    """
    start = start.to(torch.float32)
    length = length.to(torch.float32)
    scale = length / out_size
    support = scale.clamp(min=1.0)
    device = start.device
    centre = (torch.arange(out_size, device=device, dtype=torch.float32) + 0.5)[None, :] * scale[:, None]
    x = torch.arange(in_size, device=device, dtype=torch.float32)[None, None, :] - start[:, None, None]
    w = (1 - ((x + 0.5 - centre[..., None]) / support[:, None, None]).abs()).clamp_(min=0)
    w = w * ((x >= 0) & (x < length[:, None, None]))
    return w / w.sum(-1, keepdim=True)


def crop_resize_batch(images: list[torch.Tensor], boxes: torch.Tensor, flips: torch.Tensor,
                      size: int) -> torch.Tensor:
    """`crop_resize` for a whole batch: [n, 3, size, size] float32 in 0..255.

    `boxes` [n, 4] (top, left, height, width) and `flips` [n] bool live on the images'
    device. Images of one size are stacked and resampled as two batched matrix products,
    out = Wy @ image @ Wx^T, with the crop, the antialiased bilinear filter and the flip
    folded into Wy and Wx (`resize_weights`): a handful of kernels per distinct image size
    instead of several per image.
    """
    n = len(images)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    out = None
    for (height, width), idx in groups.items():
        sel = None if len(idx) == n else torch.tensor(idx, device=boxes.device)
        box = boxes if sel is None else boxes[sel]
        flip = flips if sel is None else flips[sel]
        stack = torch.stack([images[i] for i in idx]).float()                   # [g, 3, H, W]
        wy = resize_weights(box[:, 0], box[:, 2], height, size)                 # [g, S, H]
        wx = resize_weights(box[:, 1], box[:, 3], width, size)                  # [g, S, W]
        wx = torch.where(flip[:, None, None], wx.flip(1), wx)
        res = torch.einsum("ncsw,ntw->ncst", torch.einsum("nsh,nchw->ncsw", wy, stack), wx)
        if sel is None:
            return res
        if out is None:
            out = torch.empty((n, 3, size, size), dtype=torch.float32, device=res.device)
        out[sel] = res
    if out is None:
        raise ValueError("crop_resize_batch: no images")
    return out
