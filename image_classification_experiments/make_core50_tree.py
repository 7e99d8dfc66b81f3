"""Write a small generated tree with CORe50's exact folder and file naming (for tests and a smoke demo).

    python -m image_classification_experiments.make_core50_tree --out data/core50_generated

``OUT/s<session>/o<object>/C_<session:02>_<object:02>_<frame:03>.png`` for all 11 sessions. Each frame is a
flat image of its category's colour (objects of one category share it, so the task is learnable) with a
little per-object tint, per-session brightness and per-pixel noise. It is not CORe50: only its naming.
"""
from __future__ import annotations

import argparse
import colorsys
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from remind.cli import run_main
from image_classification_experiments.utils_core50 import NUM_SESSIONS, OBJECTS_PER_CATEGORY, frame_name


def category_colour(category: int, num_categories: int) -> np.ndarray:
    """An RGB colour in [0, 255] per category, evenly spaced in hue."""
    return np.array(colorsys.hsv_to_rgb(category / num_categories, 0.8, 0.9)) * 255.0


def write_core50_tree(out: str, num_objects: int = 10, frames_per_video: int = 4, frame_step: int = 1,
                      pixels: int = 16, seed: int = 0) -> Path:
    """Write ``11 x num_objects x frames_per_video`` PNGs; frame numbers ``0, frame_step, ...``.

    ``num_objects`` must be a multiple of 5 (5 objects per category). Returns ``Path(out)``.
    """
    if num_objects % OBJECTS_PER_CATEGORY or not 0 < num_objects <= 50:
        raise ValueError(f"num_objects {num_objects} must be a multiple of {OBJECTS_PER_CATEGORY} up to 50")
    rng = np.random.default_rng(seed)
    num_categories = num_objects // OBJECTS_PER_CATEGORY
    root = Path(out)
    for session in range(1, NUM_SESSIONS + 1):
        brightness = rng.uniform(0.8, 1.1)
        for obj in range(1, num_objects + 1):
            base = category_colour((obj - 1) // OBJECTS_PER_CATEGORY, num_categories)
            tint = rng.normal(0, 8, 3)
            for k in range(frames_per_video):
                image = (base + tint) * brightness + rng.normal(0, 10, (pixels, pixels, 3))
                path = root / frame_name(session, obj, k * frame_step)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to write s1/ ... s11/ into")
    p.add_argument("--num_objects", type=int, default=10, help="objects o1..oN, a multiple of 5 (10: 2 categories)")
    p.add_argument("--frames_per_video", type=int, default=4, help="frames per session and object (4)")
    p.add_argument("--pixels", type=int, default=16, help="side of each PNG (16; real CORe50: 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the colours and noise (0)")
    args = p.parse_args(argv)
    def body():
        root = write_core50_tree(args.out, args.num_objects, args.frames_per_video, pixels=args.pixels,
                                 seed=args.seed)
        print(f"wrote {NUM_SESSIONS} sessions x {args.num_objects} objects x {args.frames_per_video} frames "
              f"under {root}")
    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
