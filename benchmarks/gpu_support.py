"""What the GPU check (benchmarks/gpu_check.py, tests/test_gpu.py) needs on a machine that may lack faiss.

``remind.pq.PQCodec.train`` trains codebooks with faiss k-means. The GPU machine has no faiss unless a
wheel is carried there (benchmarks/gpu_check.sh installs ``.whl/*.whl`` when present), so this module
offers a small torch k-means with the same contract (``train_pq_torch``) and ``patch_pq_training()``,
which puts it in place of ``PQCodec.train`` when faiss cannot be imported (and says so). Codebooks from it
are not faiss's (other initialisation, fewer iterations): fine for timing and for comparing a device
against the CPU on the same codebooks, not for accuracy figures.

Run an entry point with the patch applied (for subprocesses, e.g. the kill test)::

    python -m benchmarks.gpu_support image_classification_experiments.imagenet_experiment ARGS...
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import numpy as np
import torch

_PATCHED = False


def faiss_available() -> bool:
    try:
        return importlib.util.find_spec("faiss") is not None and importlib.import_module("faiss") is not None
    except Exception:  # a broken install (missing shared library, packaging) counts as absent
        return False


def faiss_version() -> str | None:
    if not faiss_available():
        return None
    import faiss
    return getattr(faiss, "__version__", "unknown")


def train_pq_torch(vectors: np.ndarray, num_codebooks: int, codebook_size: int, seed: int = 1234,
                   device: str | torch.device = "cpu", iterations: int = 15):
    """Codebooks ``(M, K, C / M)`` by k-means in each sub-space, all ``M`` at once, in torch on ``device``.

    Initial centroids are ``K`` distinct training vectors drawn with ``seed``; an empty cluster takes a
    random training vector. The k-means itself runs on the CPU in float64 (deterministic, small: at
    most ``K * 256`` vectors are ever sampled for it), then the codec moves to ``device``.
    """
    from remind.pq import PQCodec, check_pq_shape

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, channels = vectors.shape
    check_pq_shape(channels, num_codebooks, codebook_size)
    if n < codebook_size:
        raise ValueError(f"PQ training needs at least codebook_size={codebook_size} vectors, got {n}")
    rng = np.random.default_rng(seed)
    dsub = channels // num_codebooks
    x = torch.from_numpy(vectors).double().reshape(n, num_codebooks, dsub).transpose(0, 1).contiguous()  # (M, N, d)
    start = torch.from_numpy(rng.choice(n, codebook_size, replace=False))
    centroids = x[:, start].clone()  # (M, K, d)
    for _ in range(iterations):
        dist = (centroids ** 2).sum(-1).unsqueeze(1) - 2 * torch.bmm(x, centroids.transpose(1, 2))  # (M, N, K)
        assign = dist.argmin(-1)  # (M, N)
        sums = torch.zeros_like(centroids).scatter_add_(1, assign.unsqueeze(-1).expand(-1, -1, dsub), x)
        counts = torch.zeros(num_codebooks, codebook_size, dtype=torch.float64).scatter_add_(
            1, assign, torch.ones_like(assign, dtype=torch.float64))
        empty = counts == 0
        centroids = torch.where(empty.unsqueeze(-1), centroids, sums / counts.clamp(min=1).unsqueeze(-1))
        if empty.any():
            m_idx, k_idx = torch.nonzero(empty, as_tuple=True)
            picks = torch.from_numpy(rng.integers(0, n, len(m_idx)))
            centroids[m_idx, k_idx] = x[m_idx, picks]
    return PQCodec(centroids.float().numpy(), device=device)


def patch_pq_training(verbose: bool = True) -> bool:
    """Use :func:`train_pq_torch` for ``PQCodec.train`` when faiss is missing; returns True if patched."""
    global _PATCHED
    if _PATCHED:
        return True
    if faiss_available():
        return False
    from remind.pq import PQCodec

    def train(cls, vectors, num_codebooks, codebook_size, seed=1234, device="cpu"):
        return train_pq_torch(vectors, num_codebooks, codebook_size, seed=seed, device=device)

    PQCodec.train = classmethod(train)
    _PATCHED = True
    if verbose:
        print("note: faiss is not installed; PQ codebooks are trained by a torch k-means "
              "(benchmarks/gpu_support.py), not faiss", file=sys.stderr, flush=True)
    return True


def write_digits_tree(out: str, val_fraction: float = 0.25, pixels: int = 32, seed: int = 0,
                      per_class: int = 40):
    """The digits ImageFolder tree of ``make_digits_imagefolder.write_digits`` (scikit-learn's digits); on a
    machine without scikit-learn (the GPU machines), the same layout with digits drawn here: each class's
    numeral in PIL's built-in font at a random offset and stroke level, with noise."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        pass
    else:
        from image_classification_experiments.make_digits_imagefolder import write_digits
        return write_digits(out, val_fraction, pixels, seed, per_class)
    from pathlib import Path

    from PIL import Image, ImageDraw, ImageFont

    from image_classification_experiments.make_numpy_imagenet_label_files import make_label_files
    print("note: scikit-learn is not installed; the digits tree holds digits drawn with PIL's font "
          "(benchmarks/gpu_support.py)", file=sys.stderr, flush=True)
    rng = np.random.default_rng(seed)
    out_path = Path(out)
    names = [f"digit_{d}" for d in range(10)]
    font = ImageFont.load_default()
    index = 0
    for digit in range(10):
        n_val = max(1, int(round(per_class * val_fraction)))
        for rank in range(per_class):
            split = "val" if rank < n_val else "train"
            canvas = Image.new("L", (16, 16), 0)
            ImageDraw.Draw(canvas).text((int(rng.integers(4, 7)), int(rng.integers(1, 4))), str(digit),
                                        fill=int(rng.integers(180, 256)), font=font)
            pixels_16 = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 10, (16, 16))
            image = Image.fromarray(np.clip(pixels_16, 0, 255).astype(np.uint8)).resize((pixels, pixels),
                                                                                       Image.BICUBIC)
            folder = out_path / split / names[digit]
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{index:04d}.png")
            index += 1
    order = [names[k] for k in rng.permutation(10)]
    (out_path / "class_order.txt").write_text("\n".join(order) + "\n")
    make_label_files(str(out_path), str(out_path / "class_order.txt"), str(out_path / "imagenet_indices"))
    return out_path


def main(argv: list[str]) -> int:
    """``python -m benchmarks.gpu_support MODULE ARGS...``: ``MODULE.main(ARGS)`` with the patch applied."""
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    patch_pq_training()
    module = importlib.import_module(argv[0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
