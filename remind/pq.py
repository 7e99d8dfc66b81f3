"""Product-quantisation codec: train with faiss, encode/decode with faiss or torch.

A feature map of shape ``(C, H, W)`` is treated as ``H * W`` vectors of ``C``
channels. Each vector is split into ``M`` sub-vectors of ``C / M`` channels and
each sub-vector is replaced by the index (uint8) of its nearest centroid in
that sub-space's codebook of ``K`` centroids. The codebooks are one float32
array ``centroids: (M, K, C / M)``, which is all that needs saving.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch

# faiss trains on at most this many vectors per centroid (its default); we
# sample the same number ourselves so training memory does not scale with the
# dataset.
MAX_POINTS_PER_CENTROID = 256


class TrainingVectorSampler:
    """Draws PQ's training vectors while feature batches stream past, in one pass, in order.

    ``count`` distinct positions among ``total`` vectors (all of them when ``total <= count``) are drawn
    up front from ``rng``, sorted; :meth:`take` keeps those that fall in each consecutive batch. Every
    path that trains a codebook (the image experiments' base init, VQA from a feature file or from the
    images) uses this one draw, so the same features give the same codebooks whichever path reads them.
    """

    def __init__(self, total: int, count: int, rng: np.random.Generator):
        self.positions = (np.arange(total) if total <= count
                          else np.sort(rng.choice(total, size=count, replace=False)))
        self.seen = 0
        self.kept: list[np.ndarray] = []

    def wanted(self, num_vectors: int) -> np.ndarray:
        """Offsets, within the next ``num_vectors`` vectors, of the drawn positions (without consuming them)."""
        lo, hi = np.searchsorted(self.positions, [self.seen, self.seen + num_vectors])
        return self.positions[lo:hi] - self.seen

    def take(self, vectors) -> None:
        """Keep the drawn rows of the next batch ``vectors: (n, C)`` (tensor or array), as float32 on the host."""
        local = self.wanted(len(vectors))
        if torch.is_tensor(vectors):
            chosen = vectors.index_select(0, torch.from_numpy(local).to(vectors.device)).float().cpu().numpy()
        else:
            chosen = np.asarray(vectors[local], dtype=np.float32)
        self.kept.append(chosen)
        self.seen += len(vectors)

    def skip(self, num_vectors: int) -> None:
        """Pass over ``num_vectors`` vectors that hold no drawn position (see :meth:`wanted`)."""
        if len(self.wanted(num_vectors)):
            raise ValueError("skip() over vectors that were drawn for training")
        self.seen += num_vectors

    def vectors(self) -> np.ndarray:
        """The kept training vectors ``(n, C)`` float32, in position order."""
        return np.concatenate(self.kept) if self.kept else np.zeros((0, 0), np.float32)


def check_pq_shape(num_channels: int, num_codebooks: int, codebook_size: int) -> None:
    """Raise ValueError with a fix if the PQ geometry is not valid."""
    if num_codebooks <= 0 or num_channels <= 0:
        raise ValueError(f"num_channels ({num_channels}) and num_codebooks ({num_codebooks}) must be positive")
    if num_channels % num_codebooks != 0:
        divisors = [d for d in (8, 16, 32, 64, 128) if num_channels % d == 0]
        raise ValueError(
            f"num_channels={num_channels} is not divisible by num_codebooks={num_codebooks}; "
            f"choose --num_codebooks from a divisor of {num_channels}, e.g. {divisors}")
    if codebook_size < 2 or codebook_size & (codebook_size - 1) != 0 or codebook_size > 256:
        raise ValueError(
            f"codebook_size={codebook_size} must be a power of two between 2 and 256 "
            "(codes are stored as uint8); the paper uses --codebook_size 256")


class PQCodec:
    """Product quantiser over ``C``-dimensional vectors.

    Args:
        centroids: ``(M, K, C // M)`` float32 codebooks.
        device: where the torch encode/decode paths run.
    """

    def __init__(self, centroids: np.ndarray | torch.Tensor, device: str | torch.device = "cpu"):
        centroids = torch.as_tensor(np.asarray(centroids, dtype=np.float32) if isinstance(centroids, np.ndarray)
                                    else centroids.float())
        if centroids.dim() != 3:
            raise ValueError(f"centroids must have shape (M, K, dsub), got {tuple(centroids.shape)}")
        self.num_codebooks, self.codebook_size, self.dsub = centroids.shape
        check_pq_shape(self.num_channels, self.num_codebooks, self.codebook_size)
        self.device = torch.device(device)
        self.centroids = centroids.to(self.device).contiguous()
        self._refresh_tables()
        self._faiss_pq = None

    # ------------------------------------------------------------------ set-up
    @property
    def num_channels(self) -> int:
        return self.num_codebooks * self.dsub

    def _refresh_tables(self) -> None:
        # Decoding gathers rows of one flat table; offsets turn a per-codebook
        # code into a row of that table.
        self._flat = self.centroids.reshape(-1, self.dsub)
        self._offsets = torch.arange(self.num_codebooks, device=self.device) * self.codebook_size
        self._sq_norms = (self.centroids ** 2).sum(-1)  # (M, K)

    def to(self, device: str | torch.device) -> "PQCodec":
        self.device = torch.device(device)
        self.centroids = self.centroids.to(self.device)
        self._refresh_tables()
        return self

    @classmethod
    def train(cls, vectors: np.ndarray, num_codebooks: int, codebook_size: int, seed: int = 1234,
              device: str | torch.device = "cpu") -> "PQCodec":
        """Train codebooks with faiss k-means on ``vectors: (N, C) float32``."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        num_channels = vectors.shape[1]
        check_pq_shape(num_channels, num_codebooks, codebook_size)
        if len(vectors) < codebook_size:
            raise ValueError(f"PQ training needs at least codebook_size={codebook_size} vectors, got "
                             f"{len(vectors)}; use more base-init data or a smaller --codebook_size")
        pq = faiss.ProductQuantizer(num_channels, num_codebooks, int(math.log2(codebook_size)))
        pq.cp.seed = seed
        pq.verbose = False
        few = 39 * codebook_size  # faiss's min_points_per_centroid
        if len(vectors) < few:
            # One line instead of faiss's warning per codebook; the clustering itself is unchanged.
            print(f"warning: PQ trains {codebook_size} centroids on {len(vectors)} vectors (faiss suggests at "
                  f"least {few}); codes will be coarse", file=sys.stderr)
            pq.cp.min_points_per_centroid = 1
        pq.train(vectors)
        centroids = faiss.vector_to_array(pq.centroids).reshape(num_codebooks, codebook_size, -1)
        return cls(centroids, device=device)

    # --------------------------------------------------------------- vectors
    def encode(self, vectors: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """Nearest-centroid codes by torch on ``self.device``.

        Args:
            vectors: ``(N, C)`` float.
        Returns:
            ``(N, M)`` uint8 codes on ``self.device``.
        """
        vectors = vectors.to(self.device, torch.float32)
        out = torch.empty(len(vectors), self.num_codebooks, dtype=torch.uint8, device=self.device)
        # Small chunks keep the (M, chunk, K) distance table in cache: 2-3x faster than large ones.
        for start in range(0, len(vectors), chunk):
            sub = vectors[start:start + chunk].reshape(-1, self.num_codebooks, self.dsub).transpose(0, 1)
            # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin.
            dist = self._sq_norms.unsqueeze(1) - 2.0 * torch.bmm(sub, self.centroids.transpose(1, 2))
            out[start:start + chunk] = dist.argmin(-1).transpose(0, 1).to(torch.uint8)
        return out

    def encode_faiss(self, vectors: np.ndarray) -> np.ndarray:
        """Codes from faiss on the CPU: ``(N, C) float32 -> (N, M) uint8``."""
        import faiss

        if self._faiss_pq is None:
            pq = faiss.ProductQuantizer(self.num_channels, self.num_codebooks, int(math.log2(self.codebook_size)))
            faiss.copy_array_to_vector(self.centroids.cpu().numpy().ravel(), pq.centroids)
            self._faiss_pq = pq
        packed = self._faiss_pq.compute_codes(np.ascontiguousarray(vectors, dtype=np.float32))
        nbits = int(math.log2(self.codebook_size))
        if nbits == 8:
            return packed.reshape(len(vectors), self.num_codebooks)
        # faiss packs codes of fewer than 8 bits back to back, least significant bit first.
        bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :self.num_codebooks * nbits]
        weights = (1 << np.arange(nbits)).astype(np.uint8)
        return (bits.reshape(len(vectors), self.num_codebooks, nbits) * weights).sum(-1).astype(np.uint8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstruct vectors by table lookup: ``(N, M)`` uint8 -> ``(N, C)`` float32."""
        codes = codes.to(self.device)
        rows = (codes.long() + self._offsets).reshape(-1)
        # embedding is a row gather, about 2x faster on CPU than index_select for this shape.
        return torch.nn.functional.embedding(rows, self._flat).reshape(len(codes), self.num_channels)

    # ------------------------------------------------------------ feature maps
    def encode_maps(self, maps: torch.Tensor, backend: str = "torch") -> torch.Tensor:
        """``maps: (B, C, H, W)`` float -> codes ``(B, H, W, M)`` uint8 on ``self.device``."""
        b, c, h, w = maps.shape
        if c != self.num_channels:
            raise ValueError(f"feature maps have {c} channels but the PQ codebooks expect {self.num_channels}")
        vectors = maps.permute(0, 2, 3, 1).reshape(-1, c)
        if backend == "faiss":
            codes = torch.from_numpy(self.encode_faiss(vectors.detach().cpu().numpy())).to(self.device)
        elif backend == "torch":
            codes = self.encode(vectors)
        else:
            raise ValueError(f"unknown PQ backend {backend!r}; use 'torch' or 'faiss'")
        return codes.reshape(b, h, w, self.num_codebooks)

    def decode_maps(self, codes: torch.Tensor, contiguous: bool = True) -> torch.Tensor:
        """``codes: (B, H, W, M)`` uint8 -> reconstructed maps ``(B, C, H, W)`` float32.

        With ``contiguous=False`` the result is a channels-last view (no copy),
        for a consumer such as the batched crop that reads it as it is.
        """
        b, h, w, m = codes.shape
        maps = self.decode(codes.reshape(-1, m)).reshape(b, h, w, self.num_channels).permute(0, 3, 1, 2)
        return maps.contiguous() if contiguous else maps

    def reconstruct_maps(self, maps: torch.Tensor, backend: str = "torch") -> torch.Tensor:
        """Encode then decode, so evaluation sees the features training sees."""
        return self.decode_maps(self.encode_maps(maps, backend))
