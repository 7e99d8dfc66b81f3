"""``python -m remind.list_layers ARCH [IMAGE_SIZE]``: where a torchvision classifier can be cut into G and F.

Prints every layer :func:`remind.split.split_network` accepts, G's map shape
there, and the bytes of codes per example (``H x W x M`` with ``M`` the most of
32/16/8/4 codebooks dividing the channels).
"""
from __future__ import annotations

import sys

from remind.networks import build_network
from remind.split import SplitError, split_points


def main(argv=None) -> int:
    """``python -m remind.list_layers ARCH [IMAGE_SIZE]``: the layers a torchvision model can be split at, with G's
    map shape there and the bytes of codes per example."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m remind.list_layers ARCH [IMAGE_SIZE]   (ARCH: a torchvision model, e.g. resnet18)")
        return 2
    try:
        network = build_network(argv[0], 1000)
        size = int(argv[1]) if len(argv) > 1 else 224
        points = split_points(network, size)
    except (ValueError, SplitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{argv[0]} at {size} px: layer, G's map (C x H x W), codebooks M (the most of 32/16/8/4 dividing C), "
          "bytes of codes per example (H x W x M)")
    for name, (c, h, w) in points.items():
        books = next((m for m in (32, 16, 8, 4) if c % m == 0), 1)
        print(f"  {name:32s} {c:5d} x {h:3d} x {w:3d}   M={books:<3d} {h * w * books:>9,} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
