"""The in-place neighbourhood search: radius 0 is plain FAPM, windows stay in the grid, and it
returns what a search of the old union copy of the memories returned."""

import pytest
import torch

from fapm.models.knn import TorchKNN, exact_distances
from fapm.models.neighbourhood import NeighbourhoodPlan, neighbourhood_search, window_table
from fapm.models.patch_memory import PatchMemory
from fapm.models.support import StreamSearch, support_distances


def memory_of(grid: tuple[int, int], k_max: int = 6, c: int = 5, seed: int = 0, ragged: bool = True) -> PatchMemory:
    """A padded memory with a different length per region (padding rows are zeros)."""
    g = torch.Generator().manual_seed(seed)
    regions = grid[0] * grid[1]
    cand = torch.randn(regions, 20, c, generator=g)
    lengths = torch.randint(3, k_max + 1, (regions,), generator=g) if ragged else torch.full((regions,), k_max)
    idx = torch.full((regions, k_max), -1)
    for r in range(regions):
        idx[r, : lengths[r]] = torch.randperm(20, generator=g)[: lengths[r]]
    mem = PatchMemory(grid)
    mem.set(cand, idx, lengths, torch.zeros(regions), torch.zeros(regions, dtype=torch.bool))
    return mem


def union_copy(mem: PatchMemory, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The removed implementation: each region's window of memories copied into one ``[R, S·K, C]``."""
    vectors, sq = mem.searchable()
    r, _, c = vectors.shape
    safe = table.clamp_min(0)
    union = vectors[safe].reshape(r, -1, c)
    norms = sq[safe].masked_fill((table < 0).unsqueeze(-1), float("inf")).reshape(r, -1)
    return union.contiguous(), norms.contiguous()


def search_new(mem: PatchMemory, queries: torch.Tensor, k: int, plan: NeighbourhoodPlan):
    vectors, norms = mem.searchable()
    search = TorchKNN()
    search.fit(vectors, norms)
    _, idx = neighbourhood_search(search, queries, k, plan, vectors.shape[1])
    from fapm.models.neighbourhood import exact_distances_at

    flat = vectors.reshape(-1, vectors.shape[-1])
    return exact_distances_at(queries, flat, plan.rows(idx, vectors.shape[1]), idx)


def search_old(mem: PatchMemory, queries: torch.Tensor, k: int, table: torch.Tensor):
    union, norms = union_copy(mem, table)
    search = TorchKNN()
    search.fit(union, norms)
    _, idx = search.search(queries, k)
    return exact_distances(queries, union, idx)


def window_regions(grid, i, radius, border) -> set[int]:
    """Brute-force geometric definition of region ``i``'s window."""
    gh, gw = grid
    y, x = divmod(i, gw)
    if border == "clip":
        rows = [v for v in range(y - radius, y + radius + 1) if 0 <= v < gh]
        cols = [v for v in range(x - radius, x + radius + 1) if 0 <= v < gw]
    else:
        lh, lw = min(2 * radius + 1, gh), min(2 * radius + 1, gw)
        y0, x0 = min(max(y - radius, 0), gh - lh), min(max(x - radius, 0), gw - lw)
        rows, cols = list(range(y0, y0 + lh)), list(range(x0, x0 + lw))
    return {a * gw + b for a in rows for b in cols}


@pytest.mark.parametrize("border", ["clip", "shift"])
def test_radius_zero_is_plain_search_exactly(border) -> None:
    grid = (3, 4)
    mem = memory_of(grid)
    queries = torch.randn(12, 7, 5, generator=torch.Generator().manual_seed(1))
    vectors, norms = mem.searchable()
    plain = TorchKNN()
    plain.fit(vectors, norms)
    d0, i0 = exact_distances(queries, vectors, plain.search(queries, 3)[1])
    plan = NeighbourhoodPlan.build(grid, 0, border)
    assert plan.table.tolist() == [[i] for i in range(12)]
    d1, i1 = search_new(mem, queries, 3, plan)
    assert torch.equal(i0, i1) and torch.equal(d0, d1)


@pytest.mark.parametrize("grid", [(3, 3), (4, 5), (7, 7)])
@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("border", ["clip", "shift"])
def test_windows_never_leave_the_grid(grid, radius, border) -> None:
    regions = grid[0] * grid[1]
    mem = memory_of(grid, seed=radius)
    vectors = mem.memory
    # adversarial queries: every region's queries are copies of vectors of *every* region's
    # memory, so a window that leaked outside would find an exact match there
    queries = vectors.reshape(-1, vectors.shape[-1])[mem.valid_mask().reshape(-1)].unsqueeze(0).expand(regions, -1, -1)
    plan = NeighbourhoodPlan.build(grid, radius, border)
    table = plan.table
    for i in range(regions):
        assert set(v for v in table[i].tolist() if v >= 0) == window_regions(grid, i, radius, border)
        assert table[i, 0] == i
    if border == "shift":  # every region searches the same number of memories
        assert bool((table >= 0).all())
        assert table.shape[1] == min(2 * radius + 1, grid[0]) * min(2 * radius + 1, grid[1])
    dist, idx = search_new(mem, queries.contiguous(), 4, plan)
    k_max = vectors.shape[1]
    region = table.gather(1, idx.flatten(1) // k_max).view_as(idx)
    assert bool((region >= 0).all())
    for i in range(regions):
        assert set(region[i].unique().tolist()) <= window_regions(grid, i, radius, border)
    assert bool((idx % k_max < mem.lengths[region.clamp_min(0)]).all())  # never a padding row
    assert bool(torch.isfinite(dist).all())


@pytest.mark.parametrize("radius,border", [(1, "clip"), (2, "clip"), (1, "shift"), (2, "shift")])
def test_in_place_search_equals_the_union_copy(radius, border) -> None:
    grid = (5, 6) if radius == 2 else (7, 7)
    mem = memory_of(grid, k_max=8, seed=3)
    queries = torch.randn(grid[0] * grid[1], 10, 5, generator=torch.Generator().manual_seed(4))
    plan = NeighbourhoodPlan.build(grid, radius, border)
    d_new, i_new = search_new(mem, queries, 4, plan)
    d_old, i_old = search_old(mem, queries, 4, plan.table)
    assert torch.equal(i_new, i_old)
    assert torch.allclose(d_new, d_old, rtol=0, atol=1e-6)


def test_radius_one_clip_table_is_the_old_one() -> None:
    """Radius 1 ``clip`` keeps the old slot order (own region, then row-major), so indices match."""
    table = window_table((3, 3), 1, "clip")
    assert table.shape == (9, 9)
    assert table[0].tolist() == [0, -1, -1, -1, -1, 1, -1, 3, 4]
    assert table[4].tolist() == [4, 0, 1, 2, 3, 5, 6, 7, 8]


def test_support_set_over_the_window_equals_the_union_copy() -> None:
    grid = (4, 4)
    mem = memory_of(grid, k_max=8, seed=5, ragged=False)
    h = w = 2
    batch = 3
    stream = torch.randn(batch, 5, grid[0] * h, grid[1] * w, generator=torch.Generator().manual_seed(6))
    from fapm.models.patch_memory import split_regions

    queries = split_regions(stream, grid)
    plan = NeighbourhoodPlan.build(grid, 1, "clip")
    d_new, i_new = search_new(mem, queries, 2, plan)
    d_old, i_old = search_old(mem, queries, 2, plan.table)
    size = (grid[0] * h, grid[1] * w)
    pos = torch.tensor([0, 5, 37])
    new = support_distances([StreamSearch(queries, d_new, i_new, size)], [mem.searchable()], [1.0], grid, size, pos, 4,
                            table=plan.table)
    old = support_distances([StreamSearch(queries, d_old, i_old, size)], [union_copy(mem, plan.table)], [1.0], grid,
                            size, pos, 4)
    assert torch.allclose(new, old, atol=1e-5)


def test_no_union_is_materialised() -> None:
    """The searchable memory is the stored one (same storage) whatever the radius."""
    mem = memory_of((3, 3))
    vectors, _ = mem.searchable()
    assert vectors.data_ptr() == mem.memory.data_ptr()
    with pytest.raises(ValueError, match="neighbourhood_border"):
        window_table((3, 3), 1, "wrap")


def test_faiss_backend_searches_windows_in_place_too() -> None:
    """The stacked-query search needs nothing of the backend but the KNNSearch interface."""
    pytest.importorskip("faiss")
    from fapm.models.knn import FaissKNN

    grid = (4, 4)
    mem = memory_of(grid, k_max=8, seed=7)
    queries = torch.randn(16, 6, 5, generator=torch.Generator().manual_seed(8))
    plan = NeighbourhoodPlan.build(grid, 1, "clip")
    vectors, norms = mem.searchable()
    faiss_search = FaissKNN()
    faiss_search.fit(vectors, norms)
    _, i_faiss = neighbourhood_search(faiss_search, queries, 3, plan, vectors.shape[1])
    _, i_torch = search_new(mem, queries, 3, plan)
    d_old, i_old = search_old(mem, queries, 3, plan.table)
    assert torch.equal(i_faiss.sort(-1).values, i_old.sort(-1).values)
    assert torch.equal(i_torch, i_old)
