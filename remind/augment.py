"""Feature-map augmentation: batched random resized crop, and mixup.

The crop follows torchvision's ``RandomResizedCrop`` parameter rule (10 tries
of area scale and log-uniform aspect ratio, then a centre-crop fallback),
drawn independently per map, and resizes each crop back to the map's own size
with bilinear interpolation (``align_corners=False``). Instead of one
``interpolate`` call per map, each crop is expressed as two small
interpolation matrices so that the whole batch is two batched matmuls.
"""
from __future__ import annotations

import math

import numpy as np
import torch

CROP_SCALE = (2.0 / 7.0, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10


def sample_crop_params(rng: np.random.Generator, count: int, height: int, width: int,
                       scale: tuple[float, float] = CROP_SCALE,
                       ratio: tuple[float, float] = CROP_RATIO) -> np.ndarray:
    """Draw ``count`` crop boxes, each ``(top, left, crop_h, crop_w)`` (int64 array ``(count, 4)``)."""
    area = height * width
    target_area = rng.uniform(scale[0], scale[1], size=(count, CROP_TRIES)) * area
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), size=(count, CROP_TRIES)))
    # np.rint rounds half to even, as Python's round() in torchvision does.
    crop_w = np.rint(np.sqrt(target_area * aspect)).astype(np.int64)
    crop_h = np.rint(np.sqrt(target_area / aspect)).astype(np.int64)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.argmax(axis=1)
    found = fits[np.arange(count), first]
    h = crop_h[np.arange(count), first]
    w = crop_w[np.arange(count), first]

    # Centre-crop fallback, as torchvision.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_h, fb_w = height, int(round(height * max(ratio)))
    else:
        fb_w, fb_h = width, height
    h = np.where(found, h, fb_h)
    w = np.where(found, w, fb_w)

    # Offsets uniform over the valid range (always drawn, so the stream of
    # draws does not depend on which try succeeded).
    u_top, u_left = rng.random(count), rng.random(count)
    top = np.where(found, np.floor(u_top * (height - h + 1)), (height - h) // 2).astype(np.int64)
    left = np.where(found, np.floor(u_left * (width - w + 1)), (width - w) // 2).astype(np.int64)
    return np.stack([top, left, h, w], axis=1)


def _interp_matrix(start: np.ndarray, length: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """Rows of bilinear weights (align_corners=False) mapping a window of the input to ``out_size`` samples.

    Returns ``(count, out_size, in_size)`` float32 with the window
    ``[start, start + length)`` resized to ``out_size``.
    """
    count = len(start)
    scale = length[:, None] / out_size
    src = (np.arange(out_size)[None, :] + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    lo = np.floor(src).astype(np.int64)
    lo = np.minimum(lo, length[:, None] - 1)
    hi = np.minimum(lo + 1, length[:, None] - 1)
    frac = (src - lo).astype(np.float32)
    matrix = np.zeros((count, out_size, in_size), dtype=np.float32)
    rows = np.arange(out_size)[None, :].repeat(count, 0)
    batch = np.arange(count)[:, None].repeat(out_size, 1)
    np.add.at(matrix, (batch, rows, start[:, None] + lo), 1.0 - frac)
    np.add.at(matrix, (batch, rows, start[:, None] + hi), frac)
    return matrix


def resized_crop_matrices(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column interpolation matrices ``(n, H, H)`` and ``(n, W, W)`` for crop boxes."""
    rows = _interp_matrix(boxes[:, 0], boxes[:, 2], height, height)
    cols = _interp_matrix(boxes[:, 1], boxes[:, 3], width, width)
    return rows, cols


def apply_resized_crops(maps: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """Crop each map of ``maps: (n, C, H, W)`` to its box and resize back to ``(H, W)``.

    Each crop-and-resize is one ``(H*W, H*W)`` matrix (the Kronecker product of
    its row and column interpolation matrices), so the batch is a single
    ``bmm``. ``maps`` may be a channels-last view (as ``PQCodec.decode_maps``
    returns with ``contiguous=False``); the result is contiguous NCHW.
    """
    n, channels, height, width = maps.shape
    rows, cols = resized_crop_matrices(boxes, height, width)
    # kron[n, (y, x), (h, w)] = rows[n, y, h] * cols[n, x, w]
    kron = np.einsum("nyh,nxw->nyxhw", rows, cols).reshape(n, height * width, height * width)
    kron = torch.from_numpy(kron).to(maps.device, maps.dtype)
    out = torch.bmm(maps.reshape(n, channels, height * width), kron.transpose(1, 2))
    return out.reshape(n, channels, height, width)


def random_resized_crop(maps: torch.Tensor, rng: np.random.Generator,
                        scale: tuple[float, float] = CROP_SCALE,
                        ratio: tuple[float, float] = CROP_RATIO) -> torch.Tensor:
    """Independent random resized crop of every map in ``maps: (n, C, H, W)``."""
    boxes = sample_crop_params(rng, maps.shape[0], maps.shape[2], maps.shape[3], scale, ratio)
    return apply_resized_crops(maps, boxes)


def reference_resized_crop(maps: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """Per-map crop + ``F.interpolate``, as the original does; used to test the batched path."""
    out = torch.empty_like(maps)
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        crop = maps[k:k + 1, :, top:top + h, left:left + w]
        out[k] = torch.nn.functional.interpolate(crop, size=maps.shape[2:], mode="bilinear",
                                                 align_corners=False)[0]
    return out


def sample_mixup_lambda(rng: np.random.Generator, alpha: float) -> float:
    """``lam ~ Beta(alpha, alpha)``; 1.0 (no mixing) when ``alpha <= 0``."""
    return float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0


def mixup(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """Convex combination ``lam * first + (1 - lam) * second``."""
    return lam * first + (1.0 - lam) * second
