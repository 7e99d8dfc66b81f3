"""Feature-map random resized crop (parameters and batched resize) and mixup."""
import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from remind.augment import (CROP_RATIO, CROP_SCALE, apply_resized_crops, mixup, random_resized_crop,
                            reference_resized_crop, sample_crop_params, sample_mixup_lambda)

DRAWS = 20000


def tv_get_params(rnd, height, width, scale=CROP_SCALE, ratio=CROP_RATIO):
    """Pure-python copy of torchvision's RandomResizedCrop.get_params (v0.5 .. 0.2x)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rnd.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rnd.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = rnd.randint(0, height - h)
            j = rnd.randint(0, width - w)
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    i = (height - h) // 2
    j = (width - w) // 2
    return i, j, h, w


def reachable_sizes(height, width, scale=CROP_SCALE, ratio=CROP_RATIO, grid=400):
    """(h, w) pairs the rule can produce: a dense grid over area scale and log aspect ratio."""
    sizes = set()
    for s in np.linspace(scale[0], scale[1], grid):
        for logr in np.linspace(math.log(ratio[0]), math.log(ratio[1]), grid):
            a, r = s * height * width, math.exp(logr)
            w, h = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
            if 0 < w <= width and 0 < h <= height:
                sizes.add((h, w))
    return sizes


@pytest.fixture(scope="module")
def boxes_7x7():
    return sample_crop_params(np.random.default_rng(0), DRAWS, 7, 7)


def test_crop_boxes_lie_inside_and_respect_scale_and_ratio(boxes_7x7):
    boxes = boxes_7x7
    assert boxes.shape == (DRAWS, 4) and boxes.dtype == np.int64
    top, left, h, w = boxes.T
    assert np.all(top >= 0) and np.all(left >= 0)
    assert np.all(h >= 1) and np.all(w >= 1)
    assert np.all(top + h <= 7) and np.all(left + w <= 7)
    reachable = reachable_sizes(7, 7) | {(7, 7)}  # plus the centre-crop fallback
    drawn = set(zip(h.tolist(), w.tolist()))
    assert drawn <= reachable, drawn - reachable
    min_area = min(a * b for a, b in reachable)
    assert 10 <= min_area <= 14  # 2/7 * 49 = 14, less a little from rounding
    area = h * w / 49.0
    assert np.all(area >= min_area / 49.0) and np.all(area <= 1.0)
    assert area.min() == min_area / 49.0  # the smallest crops do occur in 20000 draws
    # aspect ratio w/h within rounding (+-0.5 on each side) of [3/4, 4/3]
    assert np.all((w + 0.5) / (h - 0.5) >= 3 / 4 - 1e-9)
    assert np.all((w - 0.5) / (h + 0.5) <= 4 / 3 + 1e-9)
    # boxes differ from map to map: independent draws
    assert len(drawn) >= 10 and len(set(map(tuple, boxes.tolist()))) >= 50


@pytest.mark.parametrize("height,width", [(7, 7), (5, 9)])
def test_crop_distribution_matches_torchvision_rule(height, width):
    ours = sample_crop_params(np.random.default_rng(1), DRAWS, height, width)
    rnd = random.Random(2)
    ref = np.array([tv_get_params(rnd, height, width) for _ in range(DRAWS)])
    for columns in ((2, 3), (0,), (1,)):  # (h, w) pairs, then the top and left marginals
        ours_freq = Counter(map(tuple, ours[:, columns].tolist()))
        ref_freq = Counter(map(tuple, ref[:, columns].tolist()))
        for key in set(ours_freq) | set(ref_freq):
            p, q = ours_freq[key] / DRAWS, ref_freq[key] / DRAWS
            assert abs(p - q) < 0.02, (columns, key, p, q)
    # the most common size is shared and frequent
    common = Counter(map(tuple, ref[:, 2:].tolist())).most_common(1)[0][0]
    assert Counter(map(tuple, ours[:, 2:].tolist())).most_common(3)[0][1] > 0.05 * DRAWS
    assert common in set(map(tuple, ours[:, 2:].tolist()))


def test_crop_offsets_uniform_given_size(boxes_7x7):
    """For a given crop size the top and left offsets are uniform over every valid position."""
    top, left, h, w = boxes_7x7.T
    sizes = [s for s, _ in Counter(zip(h.tolist(), w.tolist())).most_common() if s[0] < 7 and s[1] < 7][:4]
    for size in sizes:
        sel = (h == size[0]) & (w == size[1])
        assert sel.sum() > 500, (size, sel.sum())
        for offsets, span in ((top[sel], 7 - size[0] + 1), (left[sel], 7 - size[1] + 1)):
            counts = np.bincount(offsets, minlength=span)
            assert len(counts) == span and np.all(counts > 0)
            assert stats.chisquare(counts).pvalue > 1e-4, counts


@pytest.mark.parametrize("height,width,expected", [(7, 7, (0, 0, 7, 7)), (5, 9, (0, 1, 5, 7)),
                                                   (9, 5, (1, 0, 7, 5))])
def test_crop_centre_fallback(height, width, expected):
    """A scale that never fits must fall back to torchvision's centre crop."""
    scale = (1.6, 2.0)
    boxes = sample_crop_params(np.random.default_rng(0), 50, height, width, scale=scale)
    assert np.all(boxes == np.array(expected)), boxes[:3]
    assert tv_get_params(random.Random(0), height, width, scale=scale) == expected
    torchvision = pytest.importorskip("torchvision")
    params = torchvision.transforms.RandomResizedCrop.get_params(
        torch.zeros(1, height, width), scale=list(scale), ratio=list(CROP_RATIO))
    assert tuple(params) == expected


def loop_resized_crop(maps, boxes):
    out = []
    for k, (t, l, h, w) in enumerate(boxes.tolist()):
        out.append(F.interpolate(maps[k:k + 1, :, t:t + h, l:l + w], size=maps.shape[2:],
                                 mode="bilinear", align_corners=False))
    return torch.cat(out)


@pytest.mark.parametrize("shape", [(40, 6, 7, 7), (30, 5, 2, 2), (40, 4, 5, 9)])
def test_batched_crop_matches_per_map_interpolate(shape):
    n, c, height, width = shape
    rng = np.random.default_rng(3)
    maps = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    boxes = sample_crop_params(rng, n, height, width)
    # plus fixed boxes: whole map, a single corner cell, a full-height strip, a full-width strip
    boxes[:4] = [[0, 0, height, width], [height - 1, width - 1, 1, 1], [0, width - 1, height, 1],
                 [height - 1, 0, 1, width]]
    out = apply_resized_crops(maps, boxes)
    assert out.shape == maps.shape and out.dtype == maps.dtype
    ref = reference_resized_crop(maps, boxes)
    loop = loop_resized_crop(maps, boxes)
    torch.testing.assert_close(ref, loop, atol=0, rtol=0)
    assert float((out - ref).abs().max()) < 1e-5
    # the whole-map box is the identity, a 1x1 box broadcasts one cell
    assert float((out[0] - maps[0]).abs().max()) < 1e-6
    assert torch.allclose(out[1], maps[1, :, -1:, -1:].expand(c, height, width), atol=1e-6)
    # and a non-trivial crop really changes the map
    changed = [k for k in range(4, n) if tuple(boxes[k, 2:]) != (height, width)]
    assert changed and float((out[changed] - maps[changed]).abs().max()) > 1e-2


def test_random_resized_crop_uses_sampled_boxes():
    maps = torch.randn(12, 3, 7, 7)
    out = random_resized_crop(maps, np.random.default_rng(9))
    boxes = sample_crop_params(np.random.default_rng(9), 12, 7, 7)
    assert float((out - reference_resized_crop(maps, boxes)).abs().max()) < 1e-5


def test_mixup_lambda():
    rng = np.random.default_rng(0)
    assert sample_mixup_lambda(rng, 0.0) == 1.0
    assert sample_mixup_lambda(rng, -1.0) == 1.0
    lams = np.array([sample_mixup_lambda(rng, 0.1) for _ in range(5000)])
    assert np.all((lams >= 0) & (lams <= 1))
    assert abs(lams.mean() - 0.5) < 0.03
    # Beta(0.1, 0.1) is U-shaped: about 80% of draws lie within 0.1 of 0 or 1
    near_edge = np.mean(np.minimum(lams, 1 - lams) < 0.1)
    assert 0.75 < near_edge < 0.85, near_edge
    assert abs(lams.var() - 0.25 / 1.2) < 0.02  # Var = 1 / (4 (2 alpha + 1))
    assert stats.kstest(lams, stats.beta(0.1, 0.1).cdf).pvalue > 1e-3
    # alpha 1 is uniform
    uni = np.array([sample_mixup_lambda(rng, 1.0) for _ in range(3000)])
    assert stats.kstest(uni, "uniform").pvalue > 1e-3


def test_mixup_formula():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3, 7, 7), torch.randn(5, 3, 7, 7)
    torch.testing.assert_close(mixup(a, b, 0.3), 0.3 * a + 0.7 * b)
    assert torch.equal(mixup(a, b, 1.0), a)
    assert torch.equal(mixup(a, b, 0.0), b)
    mixed = mixup(a, b, 0.25)
    assert torch.allclose(mixed[2, 1, 3, 4], 0.25 * a[2, 1, 3, 4] + 0.75 * b[2, 1, 3, 4])
