"""FAISS search on torch tensors: flat equals torch, IVF recall, the config group, auto (issue 13)."""

import math

import pytest
import torch

from fapm.builders import build_memory_detector, build_search
from fapm.models.knn import AutoKNN, FaissKNN, TorchKNN, default_nlist
from fapm.pipeline.common import validated_settings
from fapm.settings import ConfigError, SearchSettings
from tests.conftest import compose_config

pytest.importorskip("faiss")


def padded(regions: int = 4, m: int = 300, dims: int = 16, seed: int = 0, tail: bool = True):
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(regions, m, dims, generator=g)
    lengths = torch.tensor([m, m - 40, m - 100, m - 7][:regions])
    pad = torch.arange(m) >= lengths.unsqueeze(1)
    if not tail:  # padding scattered through the rows (as a neighbourhood union gives)
        pad = pad[:, torch.randperm(m, generator=g)]
    vectors[pad] = 0
    return vectors, (vectors * vectors).sum(-1).masked_fill(pad, math.inf)


def clustered(n: int, dims: int, clusters: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(clusters, dims, generator=g)
    return centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, dims, generator=g)


@pytest.mark.parametrize("tail", [True, False])
def test_faiss_flat_equals_torch_search_with_torch_tensors(tail) -> None:
    vectors, norms = padded(tail=tail)
    queries = torch.randn(4, 23, 16, generator=torch.Generator().manual_seed(1))
    exact, faiss = TorchKNN(), FaissKNN("Flat")
    exact.fit(vectors, norms)
    faiss.fit(vectors, norms)
    d0, i0 = exact.search(queries, 5)
    d1, i1 = faiss.search(queries, 5)
    assert isinstance(d1, torch.Tensor) and d1.device == queries.device and i1.dtype == torch.int64
    assert torch.equal(i0, i1)
    assert torch.allclose(d0, d1, atol=1e-4)
    assert torch.isfinite(norms.gather(1, i1.flatten(1))).all()  # never a padding row
    indexes = list(faiss._indexes)
    faiss.search(queries, 5)
    assert all(a is b for a, b in zip(indexes, faiss._indexes))  # nothing rebuilt per call


def test_ivf_recall_at_default_nprobe_on_clustered_data() -> None:
    memory = torch.stack([clustered(8000, 32, 60, seed) for seed in (0, 1)])
    queries = torch.stack([clustered(300, 32, 60, seed) for seed in (0, 1)])  # same clusters, new points
    norms = (memory * memory).sum(-1)
    exact, ivf = TorchKNN(), FaissKNN("IVF{nlist},Flat", nprobe=SearchSettings().nprobe)
    exact.fit(memory, norms)
    ivf.fit(memory, norms)
    assert ivf._indexes[0].nlist == default_nlist(8000) == 89  # sqrt(8000)
    _, truth = exact.search(queries, 1)
    _, found = ivf.search(queries, 1)
    recall = float((truth == found).float().mean())
    assert recall >= 0.95, recall


@pytest.mark.parametrize("factory", ["IVF{nlist},PQ{pq_m}", "HNSW32"])
def test_other_indexes_search_mostly_right(factory) -> None:
    memory = clustered(3000, 32, 30, 0).unsqueeze(0)
    queries = clustered(200, 32, 30, 0).unsqueeze(0)
    norms = (memory * memory).sum(-1)
    exact, other = TorchKNN(), FaissKNN(factory, pq_m=16, nprobe=16, ef_search=64)
    exact.fit(memory, norms)
    other.fit(memory, norms)
    _, truth = exact.search(queries, 1)
    dist, found = other.search(queries, 4)
    assert found.shape == (1, 200, 4) and (found >= 0).all() and (found < 3000).all()
    assert (dist[..., 1:] >= dist[..., :-1] - 1e-4).all()
    assert float((truth[..., 0] == found[..., 0]).float().mean()) >= (0.5 if "PQ" in factory else 0.9)


def test_pq_refuses_dims_it_cannot_split() -> None:
    memory = torch.randn(1, 400, 20)
    with pytest.raises(ValueError, match="pq_m"):
        FaissKNN("IVF{nlist},PQ{pq_m}", pq_m=16).fit(memory, (memory * memory).sum(-1))


def test_auto_picks_by_memory_size() -> None:
    vectors, norms = padded()
    faiss = lambda: FaissKNN("Flat")  # noqa: E731
    small, large = AutoKNN(faiss, min_vectors=1000, min_vectors_cuda=10), AutoKNN(faiss, 300, 10)
    small.fit(vectors, norms)
    large.fit(vectors, norms)
    assert isinstance(small.chosen, TorchKNN) and isinstance(large.chosen, FaissKNN)
    queries = torch.randn(4, 5, 16)
    assert torch.equal(small.search(queries, 3)[1], large.search(queries, 3)[1])


@pytest.mark.parametrize("group", ["torch", "flat", "ivf_flat", "ivf_pq", "hnsw", "auto"])
def test_search_config_group_composes_and_validates(group, tmp_path) -> None:
    cfg = compose_config("train", ["model=patchcore", f"model/search={group}"], tmp_path)
    search = validated_settings(cfg).model.search
    assert search.backend == ("torch" if group == "torch" else "auto" if group == "auto" else "faiss")
    made = build_search(search)()
    assert isinstance(made, {"torch": TorchKNN, "auto": AutoKNN}.get(group, FaissKNN))


def test_bad_factory_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="model.search.factory"):
        SearchSettings.parse({"backend": "faiss", "factory": "IVF{nlist},Foo"}, "model.search")


def test_detector_with_ivf_scores_like_exact(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 3, 64, 64, generator=g)
    train, test = base + 0.3 * torch.randn(8, 3, 64, 64, generator=g), base + 0.5 * torch.randn(2, 3, 64, 64, generator=g)
    scores = {}
    for group in ("torch", "flat"):
        cfg = compose_config(
            "train", ["model=patchcore", f"model/search={group}", "backbone=resnet18", "backbone.pretrained=false"],
            tmp_path,
        )
        s = validated_settings(cfg)
        with pytest.warns(UserWarning, match="RANDOM"):
            det = build_memory_detector(s.model, s.backbone, s.seed)
        det.collect(train)
        det.build()
        scores[group] = det(test)
    assert torch.allclose(scores["torch"].image_scores, scores["flat"].image_scores, rtol=1e-5)
    assert torch.allclose(scores["torch"].anomaly_maps, scores["flat"].anomaly_maps, rtol=1e-5, atol=1e-5)


def test_use_search_refits_the_same_memory_under_another_index(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(6, 3, 112, 112, generator=g), torch.randn(2, 3, 112, 112, generator=g)
    cfg = compose_config("train", ["model=fapm", "backbone=resnet18", "backbone.pretrained=false"], tmp_path)
    s = validated_settings(cfg)
    with pytest.warns(UserWarning, match="RANDOM"):
        det = build_memory_detector(s.model, s.backbone, s.seed)
    det.collect(train)
    det.build()
    exact = det(test)
    assert all(isinstance(search, TorchKNN) for search in det.searches())
    flat = validated_settings(compose_config("train", ["model=fapm", "model/search=flat"], tmp_path)).model.search
    det.use_search(build_search(flat))
    served = det(test)
    # the indexes were rebuilt from the new factory on the unchanged memory
    assert det.searches() and all(isinstance(search, FaissKNN) for search in det.searches())
    assert torch.allclose(served.image_scores, exact.image_scores, rtol=1e-5)
    assert torch.allclose(served.anomaly_maps, exact.anomaly_maps, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FAISS GPU path: needs CUDA and faiss-gpu")
def test_gpu_flat_stays_on_device_and_shares_resources() -> None:  # pragma: no cover - CUDA only
    from fapm.models import knn

    faiss = knn.faiss_module()
    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss without GPU support")
    vectors, norms = padded()
    vectors, norms = vectors.cuda(), norms.cuda()
    queries = torch.randn(4, 23, 16, device="cuda")
    exact, a, b = TorchKNN(), FaissKNN("Flat", temp_memory_mb=64), FaissKNN("IVF{nlist},Flat")
    for s in (exact, a, b):
        s.fit(vectors, norms)
    d, i = a.search(queries, 3)
    assert d.is_cuda and i.is_cuda and a._on_gpu
    assert torch.equal(i, exact.search(queries, 3)[1])
    assert knn._GPU_RESOURCES is knn.gpu_resources()  # one resources object per process
