"""Patch split/merge round trip, grid errors, padded memories and neighbourhoods."""

import pytest
import torch

from fapm.models.patch_memory import GridError, PatchMemory, merge_regions, neighbour_table, split_regions


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


def test_grid_must_divide() -> None:
    with pytest.raises(GridError, match="does not divide"):
        split_regions(torch.randn(1, 2, 14, 14), (4, 4))


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
