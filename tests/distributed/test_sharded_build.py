"""The memory build sharded by regions across gloo processes equals the single-process build, bit for bit.

Each variant builds from the same features once alone and once in two processes, each
process holding a contiguous shard of the images and building its block of regions.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fapm.builders import build_memory_detector
from fapm.lightning.sharded_build import ShardedBuild
from fapm.models.coreset import GreedyKCenter
from fapm.models.detector import MemoryDetector
from fapm.pipeline.common import validated_settings
from tests.conftest import compose_config

# name: overrides. Grids of 3x3 give blocks of 5 and 4 regions; 1x1 (PatchCore) one block.
CASES = {
    "fapm_quantile": ["model=fapm", "model.grid=[3,3]", "model.threshold_mode=quantile", "model.distance_scale=relative"],
    "fapm_absolute": ["model=fapm", "model.grid=[3,3]", "model.distance_scale=per_channel", "model.d_th=0.9"],
    "ablation_b": ["model=ablation_b", "model.grid=[3,3]"],
    # 5 does not divide 12: uneven regions (3 or 2 rows/columns), padded with repeats
    "fapm_uneven": ["model=fapm", "model.grid=5", "model.threshold_mode=quantile", "model.distance_scale=relative"],
    "fapm_projected": [
        "model=fapm", "model.grid=[3,3]", "model.projection_dim=16", "model.threshold_mode=quantile",
        "model.distance_scale=relative",
    ],
    "patchcore": ["model=patchcore"],
}
# Built by every rank from its own images (the composable coreset): compared with the composable
# selection over the same shards in one process, not with a whole-set build.
COMPOSED = {
    "patchcore_scalable": ["model=patchcore_scalable", "model.coreset.shard_size=300"],
    "patchcore_scalable_union": ["model=patchcore_scalable", "model.coreset.shard_size=300", "model.coreset.oversample=2.0"],
}


def _detector(overrides: list[str], tmp: Path) -> MemoryDetector:
    cfg = compose_config("train", ["backbone=resnet18", "backbone.pretrained=false", *overrides], tmp)
    settings = validated_settings(cfg)
    return build_memory_detector(settings.model, settings.backbone, settings.seed)


def _features(detector: MemoryDetector, images: int) -> list[torch.Tensor]:
    """Seeded stream features ``[images, C, 12, 12]`` with a structure (some regions spread wider)."""
    g = torch.Generator().manual_seed(3)
    streams = []
    for channels in (24, 16)[: len(detector.memories)]:
        x = torch.randn(images, channels, 12, 12, generator=g)
        x[..., :4, :4] *= 3.0  # wide clusters in one corner: the adaptive rule enlarges them
        streams.append(x)
    return streams


def _worker(rank: int, port: int, tmp: str, images: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        for case, overrides in {**CASES, **COMPOSED}.items():
            detector = _detector(overrides, Path(tmp) / f"cfg{rank}")
            features = _features(detector, images)
            lo, hi = (0, 4) if rank == 0 else (4, images)  # uneven contiguous shards, as the sampler gives
            detector.reset_fit(strategy=ShardedBuild())  # what MemoryBankModule passes under DDP
            detector.add_features([f[lo:hi] for f in features])
            detector.build()
            if rank == 1:  # rank 1's copy: every rank must end with the whole memory
                torch.save(_memories(detector), Path(tmp) / f"{case}.pt")
    finally:
        dist.destroy_process_group()


def _memories(detector: MemoryDetector) -> dict[str, torch.Tensor]:
    return {k: v for k, v in detector.state_dict().items() if k.startswith("memories")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


IMAGES = 7


@pytest.fixture(scope="module")
def two_process_builds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case built once by two gloo processes (one spawn for all: a process start costs seconds)."""
    tmp = tmp_path_factory.mktemp("sharded")
    mp.start_processes(_worker, args=(_free_port(), str(tmp), IMAGES), nprocs=2, start_method="spawn")
    return tmp


@pytest.mark.parametrize("case", list(CASES))
def test_sharded_build_equals_single_process(case: str, two_process_builds: Path, tmp_path: Path) -> None:
    single = _detector(CASES[case], tmp_path)
    single.add_features(_features(single, IMAGES))
    report = single.build()
    expected = _memories(single)
    if case.startswith("fapm"):  # the adaptive rule did something, so the exchange of d_max is exercised
        assert 0 < sum(report.enlarged) < sum(len(s) for s in report.sizes)

    got = torch.load(two_process_builds / f"{case}.pt", weights_only=True)
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize("case", list(COMPOSED))
def test_composable_build_runs_on_every_rank(case: str, two_process_builds: Path, tmp_path: Path) -> None:
    """Each rank greedy on its own images (cut in blocks of 300 candidates), greedy over the gathered
    union: equal to the composable selection over the same blocks in one process, bit for bit."""
    single = _detector(COMPOSED[case], tmp_path)
    single.add_features(_features(single, IMAGES))
    candidates = single.features.take(0)  # [1, 7 images x 144 positions, C]
    sampler = single.coreset.sampler
    per_image = candidates.shape[1] // IMAGES
    g = torch.Generator().manual_seed(single.builder.seed)
    space = sampler.project(candidates, g)
    k = single.coreset.sizes(candidates.shape[1])[0]
    sizes = sampler.rank_shard_sizes([4 * per_image, 3 * per_image])  # the ranks hold 4 and 3 images
    assert sizes == [288, 288, 216, 216]
    chosen = sampler.compose(space, sizes, k, g)
    expected = torch.gather(candidates, 1, chosen.unsqueeze(-1).expand(-1, -1, candidates.shape[-1]))

    got = torch.load(two_process_builds / f"{case}.pt", weights_only=True)
    assert torch.equal(got["memories.0.memory"], expected)
    assert got["memories.0.lengths"].tolist() == [k]
    # and it is not the exact coreset's selection (the shards made a difference)
    exact = GreedyKCenter(sampler.projection_dim).select(candidates, k, torch.Generator().manual_seed(single.builder.seed))
    assert set(exact.selected[0].tolist()) != set(chosen[0].tolist())
