"""Product-quantisation codec: training, torch/faiss encode agreement, map layout, shape checks."""
import numpy as np
import pytest
import torch

from remind.pq import PQCodec, check_pq_shape


def _random_codec(num_codebooks=8, codebook_size=16, dsub=4, seed=0):
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((num_codebooks, codebook_size, dsub)).astype(np.float32)
    return PQCodec(centroids)


@pytest.fixture(scope="module")
def codec256():
    """The paper's code size (256 centroids, 8 bits): 16 channels, M=4."""
    rng = np.random.default_rng(21)
    train = rng.standard_normal((256 * 24, 16)).astype(np.float32)
    return PQCodec.train(train, num_codebooks=4, codebook_size=256, seed=1)


@pytest.fixture(scope="module")
def gaussian_codec():
    """Codebooks trained by faiss on gaussian data: 32 channels, M=8, K=16."""
    rng = np.random.default_rng(1)
    train = rng.standard_normal((4096, 32)).astype(np.float32)
    return PQCodec.train(train, num_codebooks=8, codebook_size=16, seed=3), train


def test_train_codebook_geometry(gaussian_codec):
    codec, _ = gaussian_codec
    assert codec.centroids.shape == (8, 16, 4)
    assert codec.centroids.dtype == torch.float32
    assert (codec.num_codebooks, codec.codebook_size, codec.dsub, codec.num_channels) == (8, 16, 4, 32)


def test_round_trip_on_clustered_data_is_nearly_lossless():
    """Vectors built from 16 true centres per sub-space (+ small noise) must be reconstructed
    far better than the data variance."""
    rng = np.random.default_rng(2)
    m, k, dsub = 4, 16, 4
    # 8 true centres per sub-space, 16 centroids (k-means from a random start may still leave a
    # cluster without a centroid, so only most sub-vectors are reconstructed to noise level)
    true_centres = rng.standard_normal((m, 8, dsub)).astype(np.float32) * 3.0
    n = 16 * 256
    true_codes = rng.integers(0, 8, size=(n, m))
    vectors = np.concatenate([true_centres[j, true_codes[:, j]] for j in range(m)], axis=1)
    vectors += rng.standard_normal(vectors.shape).astype(np.float32) * 0.05
    codec = PQCodec.train(vectors, num_codebooks=m, codebook_size=k, seed=5)
    codes = codec.encode(torch.from_numpy(vectors))
    assert codes.dtype == torch.uint8 and codes.shape == (n, m)
    recon = codec.decode(codes).numpy()
    assert recon.shape == vectors.shape and recon.dtype == np.float32
    mse = float(((recon - vectors) ** 2).mean())
    variance = float(vectors.var(axis=0).mean())
    assert variance > 5.0
    assert mse < 0.1 * variance, (mse, variance)
    noise_var = 0.05 ** 2
    sub_err = ((recon - vectors) ** 2).reshape(n, m, dsub).sum(-1)
    assert np.median(sub_err) < 3 * dsub * noise_var


def test_round_trip_on_gaussian_data_beats_variance(gaussian_codec):
    codec, train = gaussian_codec
    rng = np.random.default_rng(11)
    test = rng.standard_normal((2000, 32)).astype(np.float32)
    for data in (train, test):
        recon = codec.decode(codec.encode(torch.from_numpy(data))).numpy()
        mse = float(((recon - data) ** 2).mean())
        # 1 bit per dimension: the rate-distortion bound is var/4; k-means gets about 0.3-0.4 var
        assert 0.25 < mse < 0.4, mse
    # random (untrained) codebooks of the same size are much worse: training did something
    bad = PQCodec(np.random.default_rng(0).standard_normal((8, 16, 4)).astype(np.float32))
    bad_mse = float(((bad.decode(bad.encode(torch.from_numpy(test))).numpy() - test) ** 2).mean())
    good_mse = float(((codec.decode(codec.encode(torch.from_numpy(test))).numpy() - test) ** 2).mean())
    assert good_mse < 0.85 * bad_mse


def test_decode_encode_exact_on_centroid_vectors():
    for k in (32, 256):
        codec = _random_codec(num_codebooks=8, codebook_size=k, dsub=6, seed=4)
        rng = np.random.default_rng(7)
        codes = torch.from_numpy(rng.integers(0, k, size=(500, 8)).astype(np.uint8))
        vectors = codec.decode(codes)
        assert vectors.shape == (500, 48) and vectors.dtype == torch.float32
        # each sub-vector is exactly its centroid
        cents = codec.centroids.numpy()
        v = vectors.numpy()
        for j in range(8):
            np.testing.assert_array_equal(v[:, j * 6:(j + 1) * 6], cents[j, codes[:, j].numpy().astype(int)])
        recoded = codec.encode(vectors)
        assert torch.equal(recoded, codes)
        assert torch.equal(codec.decode(recoded), vectors)
        if k == 256:
            np.testing.assert_array_equal(codec.encode_faiss(vectors.numpy()), codes.numpy())


def _near_tie_mask(codec, vectors, rel=1e-4):
    """(N, M) mask where the two smallest centroid distances tie within ``rel`` (float64
    distances), and the exact (float64) nearest centroid."""
    m, k, dsub = codec.centroids.shape
    sub = vectors.astype(np.float64).reshape(len(vectors), m, 1, dsub)
    dist = ((sub - codec.centroids.numpy().astype(np.float64)[None]) ** 2).sum(-1)  # (N, M, K)
    two = np.sort(dist, axis=-1)[..., :2]
    return (two[..., 1] - two[..., 0]) <= rel * np.maximum(two[..., 1], 1e-12), dist.argmin(-1)


def test_torch_encode_matches_faiss_encode(codec256):
    codec = codec256
    assert codec.centroids.shape == (4, 256, 4)
    rng = np.random.default_rng(12)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32) * 1.5 + 0.25
    torch_codes = codec.encode(torch.from_numpy(vectors), chunk=1024).numpy()  # several chunks
    faiss_codes = codec.encode_faiss(vectors)
    assert faiss_codes.dtype == np.uint8 and faiss_codes.shape == (3000, 4)
    assert torch_codes.dtype == np.uint8 and torch_codes.shape == (3000, 4)
    tie, exact = _near_tie_mask(codec, vectors)
    mismatch = torch_codes != faiss_codes
    assert not np.any(mismatch & ~tie), f"{int((mismatch & ~tie).sum())} mismatches away from ties"
    assert mismatch.mean() < 1e-3
    # both are the true nearest centroid except at near-ties
    assert not np.any((torch_codes != exact) & ~tie)
    assert not np.any((faiss_codes != exact) & ~tie)
    # codes use the full uint8 range (values above 127 survive the uint8 conversion)
    assert torch_codes.max() > 200 and len(np.unique(torch_codes[:, 0])) > 200


def test_torch_encode_matches_faiss_encode_small_codebooks(gaussian_codec):
    codec, _ = gaussian_codec  # codebook_size 16 (4 bits)
    vectors = np.random.default_rng(13).standard_normal((500, 32)).astype(np.float32)
    faiss_codes = codec.encode_faiss(vectors)
    tie, _ = _near_tie_mask(codec, vectors)
    assert faiss_codes.shape == (500, 8)
    assert not np.any((codec.encode(torch.from_numpy(vectors)).numpy() != faiss_codes) & ~tie)


def test_encode_maps_layout_and_shapes(codec256, gaussian_codec):
    torch.manual_seed(0)
    for codec, backends in ((codec256, ("torch", "faiss")), (gaussian_codec[0], ("torch",))):
        c, m = codec.num_channels, codec.num_codebooks
        maps = torch.randn(3, c, 5, 4)
        for backend in backends:
            codes = codec.encode_maps(maps, backend=backend)
            assert codes.shape == (3, 5, 4, m) and codes.dtype == torch.uint8
            # position (b, h, w) holds the codes of the vector maps[b, :, h, w]
            for b, h, w in [(0, 0, 0), (1, 2, 3), (2, 4, 1)]:
                assert torch.equal(codes[b, h, w], codec.encode(maps[b, :, h, w][None])[0])
        codes = codec.encode_maps(maps)
        decoded = codec.decode_maps(codes)
        assert decoded.shape == (3, c, 5, 4) and decoded.dtype == torch.float32
        assert decoded.is_contiguous()
        assert torch.equal(decoded[1, :, 2, 3], codec.decode(codes[1, 2, 3][None])[0])
        assert torch.equal(decoded[2, :, 4, 0], codec.decode(codes[2, 4, 0][None])[0])
        assert torch.equal(codec.reconstruct_maps(maps), decoded)
        # reconstruction is close to the input relative to its variance
        assert float(((decoded - maps) ** 2).mean()) < 0.5 * float(maps.var())


def test_encode_maps_rejects_wrong_channels_and_backend(gaussian_codec):
    codec, _ = gaussian_codec
    with pytest.raises(ValueError, match="channels"):
        codec.encode_maps(torch.randn(1, 16, 2, 2))
    with pytest.raises(ValueError, match="backend"):
        codec.encode_maps(torch.randn(1, 32, 2, 2), backend="cuda-magic")


def test_check_pq_shape_messages():
    check_pq_shape(512, 32, 256)  # the paper's setting is valid
    check_pq_shape(32, 8, 2)
    with pytest.raises(ValueError) as err:
        check_pq_shape(512, 30, 256)
    msg = str(err.value)
    assert "divisible" in msg and "512" in msg and "30" in msg and "num_codebooks" in msg
    for bad_size in (100, 255, 0, 1, 512):
        with pytest.raises(ValueError) as err:
            check_pq_shape(512, 32, bad_size)
        assert "power of two" in str(err.value) and str(bad_size) in str(err.value)


def test_codec_and_train_validate_geometry():
    with pytest.raises(ValueError, match="power of two"):
        PQCodec(np.zeros((4, 100, 2), dtype=np.float32))
    with pytest.raises(ValueError):
        PQCodec(np.zeros((4, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="divisible"):
        PQCodec.train(np.zeros((300, 30), dtype=np.float32), num_codebooks=8, codebook_size=16)
    with pytest.raises(ValueError, match="codebook_size"):
        PQCodec.train(np.zeros((10, 32), dtype=np.float32), num_codebooks=8, codebook_size=16)
