"""Greedy k-center: distinctness, monotone covering radius, determinism, brute-force equality."""

import itertools

import pytest
import torch

from fapm.models.coreset import GreedyKCenter, exact_assignment, num_centres


def brute_force_kcenter(x: torch.Tensor, k: int, start: int) -> list[int]:
    """Textbook greedy k-center on one memory ``x [N, C]`` with float64 distances."""
    x = x.double()
    chosen = [start]
    nearest = (x - x[start]).norm(dim=1)
    for _ in range(k - 1):
        nearest[chosen] = -1
        nxt = int(nearest.argmax())
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (x - x[nxt]).norm(dim=1))
    return chosen


def covering_radius(x: torch.Tensor, idx: torch.Tensor) -> float:
    return float(torch.cdist(x.double(), x[idx].double()).min(dim=1).values.max())


@pytest.mark.parametrize("chunk_mb", [0, 0.01])
def test_equals_brute_force_reference(chunk_mb: float) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 60, 7, generator=g)
    sampler = GreedyKCenter(chunk_mb=chunk_mb)
    state = sampler.select(x, 12, torch.Generator().manual_seed(11))
    for r in range(5):
        expected = brute_force_kcenter(x[r], 12, int(state.selected[r, 0]))
        assert state.selected[r].tolist() == expected


def test_distinct_indices_even_with_duplicates() -> None:
    base = torch.randn(1, 5, 3)
    x = base.repeat(1, 4, 1)  # 20 points, only 5 distinct
    state = GreedyKCenter().select(x, 20, torch.Generator().manual_seed(0))
    assert len(set(state.selected[0].tolist())) == 20


def test_covering_radius_non_increasing_in_k() -> None:
    x = torch.randn(3, 200, 16, generator=torch.Generator().manual_seed(1))
    radii = []
    for k in (1, 2, 5, 10, 20, 50, 100, 200):
        state = GreedyKCenter().select(x, k, torch.Generator().manual_seed(5))
        radii.append(state.radius())
        # the running distances give the true covering radius
        for r in range(3):
            assert float(state.radius()[r]) == pytest.approx(covering_radius(x[r], state.selected[r]), rel=1e-4, abs=1e-4)
    for a, b in itertools.pairwise(radii):
        assert bool((b <= a + 1e-5).all())
    assert bool((radii[-1] <= 1e-3).all())  # every point chosen: radius 0


def test_deterministic_per_seed_and_seed_matters() -> None:
    x = torch.randn(4, 100, 8, generator=torch.Generator().manual_seed(2))
    a = GreedyKCenter().select(x, 10, torch.Generator().manual_seed(7)).selected
    b = GreedyKCenter().select(x, 10, torch.Generator().manual_seed(7)).selected
    c = GreedyKCenter().select(x, 10, torch.Generator().manual_seed(8)).selected
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_extend_equals_fresh_run() -> None:
    x = torch.randn(6, 150, 10, generator=torch.Generator().manual_seed(4))
    sampler = GreedyKCenter(chunk_mb=0.02)
    short = sampler.select(x, 15, torch.Generator().manual_seed(1))
    fresh = sampler.select(x, 30, torch.Generator().manual_seed(1))
    extended = sampler.extend(short, 30)
    assert torch.equal(extended.selected, fresh.selected)
    assert torch.allclose(extended.nearest_sq, fresh.nearest_sq, atol=1e-5)
    some = sampler.extend(short, 30, rows=torch.tensor([1, 4]))
    assert torch.equal(some.selected, fresh.selected[[1, 4]])
    assert torch.allclose(some.nearest_sq, fresh.nearest_sq[[1, 4]], atol=1e-5)


def test_extend_rows_reads_candidates_in_place() -> None:
    # Extending only some memories reads their candidates in place (chunk by chunk), with
    # the same runs as a fresh selection of those memories and no copy of all candidates.
    x = torch.randn(7, 120, 6, generator=torch.Generator().manual_seed(5))
    sampler = GreedyKCenter(chunk_mb=0.005)  # a chunk of ~2 regions
    short = sampler.select(x, 12, torch.Generator().manual_seed(3))
    fresh = sampler.select(x, 40, torch.Generator().manual_seed(3))
    rows = torch.tensor([0, 2, 3, 6])
    in_place = sampler.extend(short, 40, rows=rows)
    assert in_place.space is x and torch.equal(in_place.rows, rows)
    assert torch.equal(in_place.selected, fresh.selected[rows])
    assert torch.equal(in_place.assignment, fresh.assignment[rows])
    with pytest.raises(ValueError, match="full run"):
        sampler.extend(in_place, 50)


def test_assignment_is_nearest_centre() -> None:
    x = torch.randn(2, 80, 5, generator=torch.Generator().manual_seed(9))
    state = GreedyKCenter().select(x, 9, torch.Generator().manual_seed(0))
    nearest, assignment = exact_assignment(x, state.selected)
    assert torch.allclose(nearest, state.nearest_sq, atol=1e-4)
    d = torch.cdist(x, torch.gather(x, 1, state.selected.unsqueeze(-1).expand(-1, -1, 5)))
    assert torch.allclose(d.gather(2, state.assignment.unsqueeze(-1)).squeeze(-1), d.min(dim=2).values, atol=1e-5)


def test_projection_is_seeded_and_changes_space() -> None:
    x = torch.randn(1, 300, 64, generator=torch.Generator().manual_seed(0))
    sampler = GreedyKCenter(projection_dim=8)
    a = sampler.select(x, 20, torch.Generator().manual_seed(3))
    b = sampler.select(x, 20, torch.Generator().manual_seed(3))
    assert a.space.shape == (1, 300, 8)
    assert torch.equal(a.selected, b.selected)


def test_num_centres_rounding() -> None:
    assert num_centres(3200, 0.1) == 320
    assert num_centres(5, 0.1) == 1
    assert num_centres(10, 1.0) == 10
    with pytest.raises(ValueError):
        num_centres(10, 0)
