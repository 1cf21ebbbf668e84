"""The Triton nearest-code kernel against the torch reference (interpreter on CPU, compiled on a GPU)."""

import pytest
import torch

from auralm.kernels import nearest_code
from auralm.kernels.vq import nearest_code_torch, nearest_code_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def assert_nearest(x, codebook, metric, indices, distances, tolerance):
    """Each chosen code is a nearest one: its distance is the reference minimum, within `tolerance`
    (rounding decides between codes closer than that), and the reported distance is its distance."""
    ref_indices, ref_distances = nearest_code_torch(x, codebook, metric)
    rows = torch.nn.functional.normalize(x.float(), dim=-1) if metric == "cosine" else x.float()
    codes = codebook.float()[indices]
    if metric == "euclidean":
        chosen = (rows - codes).square().sum(-1)
    elif metric == "cosine":
        chosen = 1 - (rows * torch.nn.functional.normalize(codes, dim=-1)).sum(-1)
    else:
        chosen = -(rows * codes).sum(-1)
    assert indices.dtype == torch.int64 and indices.shape == (x.shape[0],)
    torch.testing.assert_close(chosen, ref_distances, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(distances, ref_distances, atol=tolerance, rtol=tolerance)
    return (indices == ref_indices).float().mean().item()


METRICS = ["euclidean", "cosine", "dot"]
# Odd sizes on purpose: rows and codes not multiples of any tile, d not a power of two.
SHAPES = [(1, 1, 32), (17, 5, 48), (300, 513, 64), (1000, 17, 256), (64, 2049, 40)]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize(("n", "k", "d"), SHAPES)
def test_float32_indices_match_the_reference(n, k, d, metric):
    generator = torch.Generator().manual_seed(n * k + d)
    x, codebook = torch.randn(n, d, generator=generator), torch.randn(k, d, generator=generator)
    indices, distances = nearest_code_triton(x.to(DEVICE), codebook.to(DEVICE), metric)
    # float32 throughout (ieee dots): only scores equal to ~1e-5 may order differently
    agreement = assert_nearest(x, codebook, metric, indices.cpu(), distances.cpu(), tolerance=1e-4)
    assert agreement >= 0.999


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", METRICS)
def test_half_precision_picks_a_nearest_code(dtype, metric):
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(500, 64, generator=generator).to(dtype)
    codebook = torch.randn(513, 64, generator=generator).to(dtype)
    indices, distances = nearest_code_triton(x.to(DEVICE), codebook.to(DEVICE), metric)
    # Inputs are rounded to 8 (bf16) or 11 (fp16) bits; products of them are exact in the float32
    # accumulator, only the summation order differs from the reference: 1e-3 of distances ~100.
    assert_nearest(x, codebook, metric, indices.cpu(), distances.cpu(), tolerance=1e-3)


@pytest.mark.parametrize("metric", METRICS)
def test_a_codebook_kept_in_float32_serves_half_precision_rows(metric):
    # a trained bottleneck keeps its codebook in float32 while autocast hands it bf16 rows: the kernel reads the
    # rows as stored, norms in float32, and casts each tile for the product
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(300, 64, generator=generator).bfloat16()
    codebook = torch.randn(513, 64, generator=generator) * 3
    indices, distances = nearest_code_triton(x.to(DEVICE), codebook.to(DEVICE), metric)
    assert_nearest(x, codebook, metric, indices.cpu(), distances.cpu(), tolerance=1e-3)


@pytest.mark.parametrize("metric", METRICS)
def test_exact_ties_go_to_the_lowest_index(metric):
    # Every score must be exact in floating point for a tie to be exact: small integers for
    # euclidean, signed one-hot rows (unit norm already) for cosine and dot.
    generator = torch.Generator().manual_seed(0)
    if metric == "euclidean":
        codebook = torch.randint(-4, 5, (40, 32), generator=generator).float()
    else:
        codebook = torch.zeros(40, 32)
        codebook[torch.arange(40), torch.arange(40) % 32] = torch.where(torch.arange(40) < 32, 1.0, -1.0)
    codebook = torch.cat([codebook, codebook, codebook])  # codes k, k + 40 and k + 80 are equal
    x = codebook[:40] * 2 + (0.25 if metric == "euclidean" else 0.0)
    indices, _ = nearest_code_triton(x.to(DEVICE), codebook.to(DEVICE), metric)
    expected, _ = nearest_code_torch(x, codebook, metric)
    assert torch.equal(indices.cpu(), expected)
    assert indices.max() < 40


def test_dot_scores_rows_as_stored():
    # Ichigo's search: the input is normalised, the codebook rows are not. A long row far off the
    # input's direction beats a short one right on it, which cosine (rows normalised) would not pick.
    x = torch.tensor([[1.0, 0.0]])
    codebook = torch.tensor([[0.5, 0.0], [3.0, 4.0]])  # x·c: 0.5 vs 3.0; cos: 1.0 vs 0.6
    for run in (nearest_code_torch, nearest_code_triton):
        assert run(x.to(DEVICE), codebook.to(DEVICE), "dot")[0].item() == 1
        assert run(x.to(DEVICE), codebook.to(DEVICE), "cosine")[0].item() == 0


def test_padding_codes_of_a_partial_tile_never_win():
    # All real codes are far away; zero rows padding the tile would be nearest if they counted.
    codebook = torch.full((3, 16), 100.0)
    indices, distances = nearest_code_triton(torch.zeros(4, 16, device=DEVICE), codebook.to(DEVICE), "euclidean")
    assert indices.tolist() == [0, 0, 0, 0]
    assert torch.allclose(distances.cpu(), torch.full((4,), 16 * 100.0**2))


def test_dispatch_and_argument_checks():
    x, codebook = torch.randn(10, 8), torch.randn(4, 8)
    assert torch.equal(nearest_code(x, codebook), nearest_code_torch(x, codebook, "euclidean")[0])
    indices, distances = nearest_code(x, codebook, "cosine", return_distances=True)
    assert torch.equal(indices, nearest_code_torch(x, codebook, "cosine")[0])
    assert distances.shape == (10,) and (distances >= 0).all() and (distances <= 2).all()
    with pytest.raises(ValueError, match=r"need x \(N, d\)"):
        nearest_code(x, torch.randn(4, 9))
    with pytest.raises(ValueError, match="metric"):
        nearest_code(x, codebook, "manhattan")
    with pytest.raises(ValueError, match="empty"):
        nearest_code(x, codebook[:0])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("k", [513, 2049, 16385, 65536])
def test_full_grid_on_gpu(k, metric, dtype):
    generator = torch.Generator().manual_seed(k)
    x = torch.randn(32 * 750, 64, generator=generator).to(dtype)
    codebook = torch.randn(k, 64, generator=generator).to(dtype)
    indices, distances = nearest_code(x.cuda(), codebook.cuda(), metric, return_distances=True)
    tolerance = 1e-4 if dtype == torch.float32 else 1e-3
    assert_nearest(x, codebook, metric, indices.cpu(), distances.cpu(), tolerance)
