"""DenseSample, Fourier features, token index lists and soft masks on any grid."""
import torch

from refcomp_core.geometry import TokenGrid, box_token_indices, dense_sample, fourier_embed, soft_mask


def test_dense_sample_includes_endpoints():
    pts = dense_sample(torch.tensor([[0.1, 0.2, 0.5, 0.8]]), 4)
    assert pts.shape == (1, 16, 2)
    assert torch.allclose(pts[0, 0], torch.tensor([0.1, 0.2]))
    assert torch.allclose(pts[0, -1], torch.tensor([0.5, 0.8]))
    assert torch.allclose(pts[0, :4, 1], torch.full((4,), 0.2))          # first row: y fixed, x varies
    assert torch.allclose(pts[0, :4, 0], torch.linspace(0.1, 0.5, 4))


def test_fourier_dims_and_values():
    f = fourier_embed(torch.tensor([[0.0, 0.0]]), 16)
    assert f.shape == (1, 64)
    assert torch.allclose(f[0, 0::2], torch.zeros(32))                   # sin(0)
    assert torch.allclose(f[0, 1::2], torch.ones(32))                    # cos(0)


def test_token_indices_non_square_grid():
    grid = TokenGrid(h=4, w=6)
    idx = box_token_indices((0.0, 0.5, 0.5, 1.0), grid)                  # right half of columns 0..2, rows 2..3
    assert sorted(idx.tolist()) == [12, 13, 14, 18, 19, 20]
    rows, cols = idx // grid.w, idx % grid.w
    assert set(rows.tolist()) == {2, 3} and set(cols.tolist()) == {0, 1, 2}


def test_full_image_box_covers_every_token():
    grid = TokenGrid(h=5, w=3)
    assert sorted(box_token_indices((0, 0, 1, 1), grid).tolist()) == list(range(15))


def test_box_smaller_than_a_token_falls_back_to_its_centre_token():
    grid = TokenGrid(h=4, w=4)
    idx = box_token_indices((0.30, 0.30, 0.32, 0.32), grid)
    assert idx.tolist() == [1 * 4 + 1]


def test_non_multiple_of_16_uses_the_content_extent():
    grid = TokenGrid.from_pixels(height=40, width=72)                    # 2.5 x 4.5 tokens of content
    assert (grid.h, grid.w) == (3, 5)
    idx = box_token_indices((0.0, 0.0, 1.0, 1.0), grid)
    rows, cols = set((idx // grid.w).tolist()), set((idx % grid.w).tolist())
    assert rows == {0, 1} and cols == {0, 1, 2, 3}                       # padding row/col not covered


def test_soft_mask_hard_and_gaussian():
    grid = TokenGrid(h=8, w=8)
    box = (0.25, 0.25, 0.5, 0.5)
    hard = soft_mask(box, grid, 0)
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(hard.nonzero().squeeze(1).sort().values, box_token_indices(box, grid).sort().values)
    soft = soft_mask(box, grid, 2.0)
    assert torch.equal(soft[hard == 1], torch.ones(int(hard.sum())))
    ring = (soft > 0) & (soft < 1)
    assert ring.any()
    # tokens 2+ tokens away from the box edge are exactly 0
    far = soft_mask((0.0, 0.0, 0.125, 0.125), grid, 2.0).view(8, 8)
    assert far[4:, :].abs().sum() == 0 and far[:, 4:].abs().sum() == 0
