"""Draw the REMIND pipeline figure (``repo_images/remind_pipeline.png``).

Our own diagram of what this repository implements: a frozen network G, a
product-quantization (PQ) codec, a replay buffer of compressed codes, and a
plastic network F updated with one SGD step per streamed example. It needs
only matplotlib (Agg backend) and downloads nothing.

    python repo_images/draw_pipeline.py [--out PATH] [--dpi 150]
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch, Rectangle  # noqa: E402

# Colour families: edge colour, fill colour.
FROZEN = ("#2f5d9e", "#dbe7f7")  # G: never updated after base init
PLASTIC = ("#c2541b", "#fde3cf")  # F: one SGD step per streamed example
MEMORY = ("#3d7d3a", "#dff0da")  # PQ codec and replay buffer (compressed memory)
AUGMENT = ("#6b5b95", "#ebe6f5")  # feature-map augmentation (no parameters)
DATA = ("#555555", "#f4f4f4")  # inputs and outputs
NOTE = ("#6f6f6f", "#ffffff")  # explanatory notes

TEXT = "#1d1d1d"

# The canvas is drawn in data units: 10 units per inch, so a 14 x 6 inch figure
# spans x in [0, 140] and y in [0, 60] with an aspect ratio of 1.
WIDTH, HEIGHT = 14.0, 6.0
UNITS = 10.0


def box(ax, x, y, w, h, colours, title, body="", *, title_size=9.5, body_size=7.8,
        dashed=False, lw=1.6, align="center"):
    """A rounded box with a bold title line and a smaller body below it."""
    edge, fill = colours
    ax.add_patch(FancyBboxPatch(
        (x, y), w, h,
        boxstyle="round,pad=0,rounding_size=1.2",
        linewidth=lw, edgecolor=edge, facecolor=fill,
        linestyle=(0, (4, 2)) if dashed else "solid", zorder=2,
    ))
    tx = x + w / 2 if align == "center" else x + 1.2
    ax.text(tx, y + h - 1.3, title, ha=align, va="top", fontsize=title_size,
            fontweight="bold", color=edge, zorder=3)
    if body:
        ax.text(tx, y + h - 1.3 - 0.22 * title_size * 1.25 - 0.4, body, ha=align, va="top",
                fontsize=body_size, color=TEXT, linespacing=1.35, zorder=3)
    return (x, y, w, h)


def arrow(ax, start, end, *, colour="#333333", dashed=False, lw=1.6, rad=0.0):
    ax.add_patch(FancyArrowPatch(
        start, end,
        arrowstyle="-|>", mutation_scale=13, linewidth=lw, color=colour,
        linestyle=(0, (4, 2.5)) if dashed else "solid",
        connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0, zorder=4,
    ))


def badge(ax, x, y, number, colour="#222222"):
    """A small numbered disc marking the order of the steps."""
    ax.add_patch(Circle((x, y), 1.05, facecolor=colour, edgecolor="white", linewidth=1.2, zorder=5))
    ax.text(x, y - 0.05, str(number), ha="center", va="center", fontsize=7.5,
            fontweight="bold", color="white", zorder=6)


def right(b, frac=0.5):
    x, y, w, h = b
    return (x + w, y + h * frac)


def left(b, frac=0.5):
    x, y, w, h = b
    return (x, y + h * frac)


def draw_buffer_glyph(ax, x, y, w, h):
    """Per-class stacks of stored code tensors; the tallest stack loses one."""
    counts = [4, 3, 5, 2, 4, 3, 6]
    n = len(counts)
    cell_w = w / (n * 1.45)
    cell_h = h / max(counts)
    largest = counts.index(max(counts))
    evict_row = 3
    for i, c in enumerate(counts):
        cx = x + i * cell_w * 1.45
        for j in range(c):
            evicted = i == largest and j == evict_row
            ax.add_patch(Rectangle(
                (cx, y + j * cell_h), cell_w, cell_h * 0.82,
                facecolor="white" if evicted else "#9fcb98",
                edgecolor="#c0392b" if evicted else MEMORY[0],
                linewidth=1.3 if evicted else 0.7,
                linestyle=(0, (2, 1.5)) if evicted else "solid", zorder=3,
            ))
        ax.text(cx + cell_w / 2, y - 0.55, f"c{i + 1}", ha="center", va="top",
                fontsize=6.3, color=TEXT, zorder=3)
    ex = x + largest * cell_w * 1.45 + cell_w / 2
    ey = y + evict_row * cell_h + cell_h * 0.41
    ax.annotate("evict (random,\nlargest class)", xy=(ex + cell_w / 2 + 0.2, ey),
                xytext=(x + w + 3.0, y + h * 0.55), fontsize=6.5, color="#c0392b",
                ha="left", va="center", zorder=5,
                arrowprops=dict(arrowstyle="-|>", color="#c0392b", lw=1.0,
                                shrinkA=1, shrinkB=1, mutation_scale=8))


def draw(out_path: str, dpi: int = 150) -> str:
    fig = plt.figure(figsize=(WIDTH, HEIGHT), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, WIDTH * UNITS)
    ax.set_ylim(0, HEIGHT * UNITS)
    ax.set_aspect("equal")
    ax.axis("off")

    # ----------------------------------------------------------- header
    ax.text(1.5, 58.3, "REMIND: streaming learning with replay of compressed feature maps",
            fontsize=13.5, fontweight="bold", color=TEXT, va="center")
    legend = [
        Patch(facecolor=FROZEN[1], edgecolor=FROZEN[0], label="frozen (G)"),
        Patch(facecolor=PLASTIC[1], edgecolor=PLASTIC[0], label="plastic (F, trained online)"),
        Patch(facecolor=MEMORY[1], edgecolor=MEMORY[0], label="memory (PQ codec, buffer)"),
        Patch(facecolor=AUGMENT[1], edgecolor=AUGMENT[0], label="augmentation"),
    ]
    ax.legend(handles=legend, loc="upper right", bbox_to_anchor=(0.995, 0.995), ncol=4,
              fontsize=8, frameon=False, handlelength=1.6, columnspacing=1.4)

    ax.text(1.5, 54.6, "Training: each streamed example is seen once, then one update",
            fontsize=9.5, fontstyle="italic", color="#444444", va="center")

    # ----------------------------------------------------------- training row
    ty, th = 36.0, 16.0
    img = box(ax, 1.0, ty, 12.0, th, DATA, "Stream", "new example\n(x, y)\n224×224 image\n+ label")
    g = box(ax, 17.0, ty, 20.0, th, FROZEN, "G  (frozen)",
            "ResNet-18\nconv1 → … → layer4.0\n\noutput: feature map\n512 × 7 × 7 floats")
    enc = box(ax, 41.0, ty, 22.5, th, MEMORY, "PQ encoder",
              "32 codebooks × 256 centroids\neach 512-d position → 32 bytes\n\n"
              "codes: 7 × 7 × 32 uint8\n= 1,568 bytes / example")
    dec = box(ax, 76.0, ty, 20.0, th, MEMORY, "PQ decoder",
              "table lookup:\ncode → centroid, per\nposition & codebook\n\n"
              "r replays + new one\n→ r + 1 maps 512×7×7")
    aug = box(ax, 100.0, ty, 19.0, th, AUGMENT, "Augment maps",
              "random resized crop\nper map: scale [2/7, 1],\nratio [3/4, 4/3], bilinear\n"
              "back to 7×7\n\nmixup (α = 0.1) on the\nreplays, not the new one")
    f = box(ax, 123.0, ty, 16.0, th, PLASTIC, "F  (plastic)",
            "layer4.1\n→ avg pool → fc\n\none SGD step\non the r + 1 maps")

    arrow(ax, right(img), left(g))
    arrow(ax, right(g), left(enc))
    arrow(ax, right(enc, 0.62), left(dec, 0.62))
    ax.text((enc[0] + enc[2] + dec[0]) / 2, ty + th * 0.62 + 0.8, "new codes", ha="center",
            va="bottom", fontsize=7.3, color=TEXT)
    arrow(ax, right(dec), left(aug))
    arrow(ax, right(aug), left(f))

    badge(ax, g[0] + 0.4, ty + th - 0.3, 1)
    badge(ax, dec[0] + 0.4, ty + th - 0.3, 3)
    badge(ax, aug[0] + 0.4, ty + th - 0.3, 4)
    badge(ax, f[0] + 0.4, ty + th - 0.3, 5)

    # ----------------------------------------------------------- memory row
    my, mh = 16.5, 14.5
    buf = box(ax, 44.0, my, 49.0, mh, MEMORY, "Replay buffer  (compressed, on F's device)",
              "uint8 codes (N × 7×7×32) + labels; base-init images stored first\n"
              "when full (ImageNet: 959,665): evict a random example of the largest class",
              body_size=7.4, title_size=9.2)
    draw_buffer_glyph(ax, 49.0, my + 2.0, 20.0, 5.2)
    ax.text(88.5, my + 4.6, "stored per class", ha="right", va="center", fontsize=6.6,
            color="#555555", fontstyle="italic")

    # step 2: sample r codes from the buffer into the decoder
    sx = dec[0] + dec[2] * 0.5
    arrow(ax, (sx, my + mh), (sx, ty))
    ax.text(sx + 1.0, (my + mh + ty) / 2, "sample r = 50 (2r with mixup),\nuniform, no replacement",
            ha="left", va="center", fontsize=7.3, color=TEXT)
    badge(ax, sx - 1.9, (my + mh + ty) / 2, 2)

    # step 6: after the update, insert the new example's codes
    ix = enc[0] + enc[2] * 0.5
    arrow(ax, (ix, ty), (ix, my + mh), colour=MEMORY[0], dashed=True)
    ax.text(ix + 1.0, (my + mh + ty) / 2, "after the step:\ninsert new codes + label",
            ha="left", va="center", fontsize=7.3, color=TEXT)
    badge(ax, ix - 1.9, (my + mh + ty) / 2, 6)

    # base-initialisation note (left) and update-rule note (right)
    box(ax, 1.0, my, 36.0, mh, NOTE,
        "Before the stream: base initialization",
        "• train G + F offline on the first 100 classes\n"
        "• fit PQ on G's 512-d vectors at every position\n"
        "  of the base-init feature maps (FAISS)\n"
        "• encode all base-init images into the buffer\n"
        "• freeze G and the codebooks from then on",
        dashed=True, align="left", body_size=7.5, title_size=9)

    box(ax, 100.0, my, 39.0, mh, NOTE, "Update of F (step 5)",
              "loss = λ·CE(y_a) + (1−λ)·CE(y_b), λ ~ Beta(0.1, 0.1)\n"
              "SGD, momentum 0.9, weight decay 1e-5\n"
              "per-class LR: k-th step on class c uses\n"
              r"lr = $0.1\cdot\gamma^{\lfloor k/100 \rfloor}$, decaying 0.1 → 0.001"
              "\nover that class's examples",
              dashed=True, align="left", body_size=7.5, title_size=9)
    ax.plot([f[0] + f[2] * 0.5, f[0] + f[2] * 0.5], [ty, my + mh], color=NOTE[0],
            linewidth=1.0, linestyle=(0, (2, 2)), zorder=1)

    # ----------------------------------------------------------- test row
    ax.text(1.5, 13.0, "Test time (at any point of the stream): same G, same codebooks, same F; "
            "F only ever sees reconstructed feature maps",
            fontsize=9.5, fontstyle="italic", color="#444444", va="center")
    ry, rh = 1.5, 9.0
    w, gap = 19.0, 5.0
    specs = [
        (DATA, "Test image", "224×224"),
        (FROZEN, "G  (frozen)", "→ 512 × 7 × 7"),
        (MEMORY, "PQ encode", "→ 7 × 7 × 32 uint8"),
        (MEMORY, "PQ decode", "→ 512 × 7 × 7"),
        (PLASTIC, "F  (plastic)", "layer4.1 → pool → fc"),
        (DATA, "Prediction", "top-1 / top-5 on base,\nnew and all seen classes"),
    ]
    x0 = 1.0 + (138.0 - (len(specs) * w + (len(specs) - 1) * gap)) / 2
    prev = None
    for i, (col, title, body) in enumerate(specs):
        b = box(ax, x0 + i * (w + gap), ry, w, rh, col, title, body, title_size=9, body_size=7.6)
        if prev is not None:
            arrow(ax, right(prev), left(b))
        prev = b

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return out_path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Draw the REMIND pipeline figure.")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "remind_pipeline.png"),
                        help="output image path (default: next to this script)")
    parser.add_argument("--dpi", type=int, default=150, help="resolution (default: 150)")
    args = parser.parse_args(argv)
    print(draw(args.out, args.dpi))


if __name__ == "__main__":
    main()
