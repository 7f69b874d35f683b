"""Patch split/merge round trip, grid errors, padded memories and neighbourhoods."""

import pytest
import torch

from fapm.models.patch_memory import (
    GridError, PatchMemory, bounds, merge_regions, neighbour_table, region_layout, split_regions,
)


@pytest.mark.parametrize("grid", [(1, 1), (7, 7), (2, 4)])
def test_split_merge_round_trip(grid: tuple[int, int]) -> None:
    x = torch.randn(3, 5, 28, 28 if grid[1] != 4 else 16)
    regions = split_regions(x, grid)
    assert regions.shape[0] == grid[0] * grid[1]
    assert torch.equal(merge_regions(regions, 3, grid, tuple(x.shape[-2:])), x)


def test_region_contents() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    regions = split_regions(x, (2, 2))  # [4, 2*2*2, 1]
    # region 1 = top-right 2x2 block of image 0 then of image 1
    expected = torch.cat([x[0, 0, :2, 2:].reshape(-1), x[1, 0, :2, 2:].reshape(-1)])
    assert torch.equal(regions[1, :, 0], expected)


def test_grid_larger_than_the_map_is_refused() -> None:
    with pytest.raises(GridError, match="more regions than the feature map of 14x14"):
        split_regions(torch.randn(1, 2, 14, 14), (15, 4))


@pytest.mark.parametrize("size,grid", [((20, 20), (7, 7)), ((13, 17), (4, 6)), ((5, 9), (5, 9)), ((40, 28), (8, 3))])
def test_uneven_regions_round_trip_and_boundaries(size: tuple[int, int], grid: tuple[int, int]) -> None:
    """Any grid up to the map's size: boundaries at floor(i*H/g), regions padded with their own repeats."""
    x = torch.randn(2, 3, *size)
    regions = split_regions(x, grid)
    layout = region_layout(*size, grid)
    assert regions.shape == (grid[0] * grid[1], 2 * layout.slots, 3)
    assert torch.equal(merge_regions(regions, 2, grid, size), x)
    # region (i, j) holds exactly the positions between the floor boundaries, every slot from it
    rows, cols = bounds(size[0], grid[0]), bounds(size[1], grid[1])
    for r in range(grid[0] * grid[1]):
        i, j = divmod(r, grid[1])
        own = x[:, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]]  # [B, C, h, w]
        expected = own.permute(0, 2, 3, 1).reshape(2, -1, 3)  # by image, then row, then column
        got = regions[r].view(2, layout.slots, 3)
        n = expected.shape[1]
        assert int(layout.region_sizes()[r]) == n
        assert torch.equal(got[:, :n], expected)
        # the repeat slots repeat the region's own vectors, cyclically
        assert torch.equal(got[:, n:], expected[:, torch.arange(n, layout.slots) % n])
    sizes = layout.region_sizes()
    assert int(sizes.sum()) == size[0] * size[1]


def test_even_grid_is_the_plain_split() -> None:
    """Where the grid divides the map the layout is the paper's equal regions: no repeats."""
    layout = region_layout(28, 28, (7, 7))
    assert layout.even and layout.slots == 16 and bool(layout.valid.all())


def test_padded_memory_and_search_norms() -> None:
    mem = PatchMemory((1, 2))
    cand = torch.randn(2, 10, 3)
    idx = torch.tensor([[0, 1, 2], [5, -1, -1]])
    mem.set(cand, idx, torch.tensor([3, 1]), torch.zeros(2), torch.zeros(2, dtype=torch.bool))
    vectors, norms = mem.searchable()
    assert vectors.shape == (2, 3, 3)
    assert torch.equal(vectors[1, 0], cand[1, 5])
    assert torch.isinf(norms[1, 1:]).all() and torch.isfinite(norms[0]).all()
    # state dict round trip into an empty memory takes the stored shapes
    other = PatchMemory((1, 2))
    other.load_state_dict(mem.state_dict())
    assert torch.equal(other.memory, mem.memory) and other.sizes() == [3, 1]


def test_neighbour_table() -> None:
    table = neighbour_table((3, 3), 1)
    assert table.shape == (9, 9)
    assert table[4].tolist()[0] == 4 and sorted(table[4].tolist()) == list(range(9))
    corner = [v for v in table[0].tolist() if v >= 0]
    assert sorted(corner) == [0, 1, 3, 4]


def test_neighbourhood_plan_covers_every_memory() -> None:
    """On a 2x2 grid, radius 1 reaches all four regions from each (searched in place, no union copy)."""
    from fapm.models.neighbourhood import NeighbourhoodPlan

    plan = NeighbourhoodPlan.build((2, 2), 1, "clip")
    for i in range(4):
        assert sorted(v for v in plan.table[i].tolist() if v >= 0) == [0, 1, 2, 3]
    mem = PatchMemory((2, 2))
    cand = torch.randn(4, 6, 2)
    mem.set(cand, torch.arange(3).expand(4, 3).clone(), torch.full((4,), 3), torch.zeros(4), torch.zeros(4, dtype=torch.bool))
    vectors, norms = mem.searchable()
    assert vectors.shape == (4, 3, 2) and int(torch.isfinite(norms).sum()) == 12
