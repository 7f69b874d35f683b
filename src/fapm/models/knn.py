"""Per-region k-nearest-neighbour search, behind one small interface.

A search is fitted on ``R`` memories at once (``vectors [R, M, C]`` and squared norms
``[R, M]``, +inf on padding rows) and answers ``R`` query sets at once: query set ``i``
is searched in memory ``i`` only. Distances are Euclidean (not squared).

* :class:`TorchKNN` — exact, all regions in one batched matrix product
  (‖q‖² + ‖m‖² − 2 q·m with the memory norms pre-computed), on any device.
* :class:`FaissKNN` — one FAISS index per region (flat, IVF, IVF-PQ, HNSW; from a factory
  string), torch tensors in and out on their device; GPU indexes when the memory is on CUDA
  and the installed FAISS has GPU support. FAISS is imported lazily.
* :class:`AutoKNN` — torch below a memory size, FAISS above (``search: auto``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import torch
from torch import Tensor


class KNNSearch(Protocol):
    """The search strategy interface."""

    def fit(self, vectors: Tensor, sq_norms: Tensor) -> None:
        """Index ``vectors [R, M, C]``; rows whose ``sq_norms [R, M]`` are +inf are padding."""

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``queries [R, Q, C]`` → ``(distances [R, Q, k] ascending, indices [R, Q, k])``."""


def exact_distances(queries: Tensor, vectors: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Recompute the found neighbours' distances directly, ``‖q − m‖``, and re-sort them.

    Searches rank by ‖q‖² + ‖m‖² − 2 q·m, whose float32 rounding is about 1e-7·‖q‖²: a
    feature that is *in* the memory would score ~1e-2 instead of 0. The ``k`` found
    neighbours are few, so their exact distances cost little and make every search
    backend return identical distances for identical neighbours.

    Args:
        queries: ``[R, Q, C]``; vectors: ``[R, M, C]``; indices: ``[R, Q, k]``.

    Returns:
        ``(distances [R, Q, k] ascending, indices [R, Q, k])``.
    """
    r, q, k = indices.shape
    m, c = vectors.shape[-2:]
    # one flat row lookup (a gather with an index expanded over C is several times slower)
    rows = (indices + torch.arange(r, device=indices.device).view(r, 1, 1) * m).reshape(-1)
    picked = vectors.reshape(r * m, c).index_select(0, rows).view(r, q, k, c)
    dist = (picked - queries.unsqueeze(2)).norm(dim=-1)
    if k > 1:
        dist, order = dist.sort(dim=-1)
        indices = torch.gather(indices, -1, order)
    return dist, indices


class TorchKNN:
    """Exact batched search in plain torch.

    Args:
        max_elements: cap on the ``[R, Q_chunk, M]`` distance block held at once (queries
            are chunked above it), bounding memory for large batches.
    """

    def __init__(self, max_elements: int = 1 << 26) -> None:
        self.max_elements = max_elements
        self._vectors: Tensor | None = None
        self._norms: Tensor | None = None

    def fit(self, vectors: Tensor, sq_norms: Tensor) -> None:
        self._vectors = vectors
        self._norms = sq_norms.unsqueeze(1)  # [R, 1, M]

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if self._vectors is None or self._norms is None:
            raise RuntimeError("TorchKNN.search called before fit")
        r, q, _ = queries.shape
        m = self._vectors.shape[1]
        step = max(1, self.max_elements // max(1, r * m))
        if step >= q:
            return self._block(queries, k)
        parts = [self._block(queries[:, lo : lo + step], k) for lo in range(0, q, step)]
        return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)

    def _block(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        assert self._vectors is not None and self._norms is not None
        sq = torch.baddbmm(self._norms, queries, self._vectors.transpose(1, 2), alpha=-2)
        sq.add_((queries * queries).sum(-1, keepdim=True))
        values, indices = torch.topk(sq, k, dim=2, largest=False, sorted=True)
        return values.clamp_min_(0).sqrt_(), indices


_GPU_RESOURCES: Any = None


def faiss_module() -> Any:
    """FAISS with its torch bridge (``faiss.contrib.torch_utils``: indexes take and return
    torch tensors, CPU or CUDA, without a numpy round trip). Imported lazily."""
    try:
        import faiss
        import faiss.contrib.torch_utils  # noqa: F401  (patches the index methods for torch tensors)
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "model.search=faiss needs FAISS: pip install faiss-cpu, or faiss-gpu-cu12 for CUDA 12 (docs/scale.md)"
        ) from err
    return faiss


def gpu_resources(temp_memory_mb: int | None = None) -> Any:
    """The process's one ``StandardGpuResources`` (FAISS's scratch memory and streams), shared by
    every index: one per index would reserve its temp memory again each time."""
    global _GPU_RESOURCES
    if _GPU_RESOURCES is None:
        faiss = faiss_module()
        resources = faiss.StandardGpuResources()
        if temp_memory_mb is not None:
            resources.setTempMemory(int(temp_memory_mb) << 20)
        _GPU_RESOURCES = resources
    return _GPU_RESOURCES


#: k-means training points per IVF cell (a seeded subsample beyond): bounds the training time
#: (FAISS warns below 39; its own cap is 256).
TRAIN_POINTS_PER_CELL = 64


def default_nlist(n: int) -> int:
    """IVF cells for ``n`` vectors: ``sqrt(n)``, at most ``n/39`` (FAISS wants >= 39 training
    points per cell), at least 1."""
    return max(1, min(int(round(math.sqrt(n))), n // 39))


def training_sample(rows: Tensor, cells: int, seed: int = 0) -> Tensor:
    """At most ``TRAIN_POINTS_PER_CELL · cells`` rows of ``rows [N, C]``, a seeded subsample."""
    limit = TRAIN_POINTS_PER_CELL * max(cells, 1)
    if rows.shape[0] <= limit:
        return rows
    pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:limit]
    return rows[pick.to(rows.device)].contiguous()


class FaissKNN:
    """One FAISS index per region, built once in :meth:`fit`, searched with torch tensors.

    The index type is data: a FAISS factory string (``Flat``, ``IVF{nlist},Flat``,
    ``IVF{nlist},PQ{pq_m}``, ``HNSW32``) from ``conf/model/search/``. Indexes live on the
    memory's GPU when it is on CUDA and FAISS has GPU support (HNSW is CPU only: CUDA queries
    are searched on a host copy), on the CPU otherwise. Queries and results stay torch
    tensors on their device; each region's results are written in place into one
    ``[R, Q, k]`` output (FAISS has no batched search over different indexes).

    Args:
        factory: FAISS index factory string, ``{nlist}``/``{pq_m}`` filled per region.
        nlist: IVF cells (``None``: :func:`default_nlist` of the region's size).
        nprobe: IVF cells visited per query.
        ef_search: HNSW candidate list size.
        pq_m: PQ sub-quantizers (must divide the dims).
        use_gpu: ``auto``/``true``/``false`` (see above).
        temp_memory_mb: scratch memory of the process's GPU resources (first use sets it).
    """

    def __init__(
        self,
        factory: str = "Flat",
        nlist: int | None = None,
        nprobe: int = 8,
        ef_search: int = 64,
        pq_m: int = 64,
        use_gpu: str | bool = "auto",
        temp_memory_mb: int | None = None,
    ) -> None:
        self.factory = factory
        self.nlist = nlist
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.pq_m = pq_m
        self.use_gpu = use_gpu
        self.temp_memory_mb = temp_memory_mb
        self._indexes: list[Any] = []
        self._positions: Tensor | None = None  # [R, M_valid] memory rows of index rows, None = identity
        self._index_device = torch.device("cpu")
        self._on_gpu = False

    def _want_gpu(self, device: torch.device) -> bool:
        faiss = faiss_module()
        has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if self.use_gpu in (False, "false") or self.factory.startswith("HNSW"):
            return False
        if self.use_gpu in (True, "true") and not has_gpu:
            raise RuntimeError("model.search.use_gpu=true but this FAISS has no GPU support (install faiss-gpu-cu12)")
        return has_gpu and device.type == "cuda"

    def _make_index(self, dims: int, n: int) -> Any:
        faiss = faiss_module()
        if "{pq_m}" in self.factory and dims % self.pq_m:
            raise ValueError(f"model.search.pq_m={self.pq_m} must divide the feature dims {dims}")
        factory = self.factory.format(nlist=self.nlist or default_nlist(n), pq_m=self.pq_m)
        if "PQ" in factory and n < 256:
            raise ValueError(
                f"model.search.factory={self.factory!r}: a memory of {n} vectors is too small to train 8-bit PQ "
                "(needs >= 256); use ivf_flat or flat"
            )
        index = faiss.index_factory(dims, factory, faiss.METRIC_L2)
        if self._on_gpu:
            index = faiss.index_cpu_to_gpu(gpu_resources(self.temp_memory_mb), self._index_device.index or 0, index)
        return index

    def set_nprobe(self, nprobe: int) -> None:
        """Visit ``nprobe`` IVF cells per query from now on (every fitted index; no refit)."""
        self.nprobe = int(nprobe)
        for index in self._indexes:
            self._set_search_parameters(index)

    def _set_search_parameters(self, index: Any) -> None:
        faiss = faiss_module()
        space = faiss.GpuParameterSpace() if self._on_gpu else faiss.ParameterSpace()
        if "IVF" in self.factory:
            space.set_index_parameter(index, "nprobe", self.nprobe)
        if self.factory.startswith("HNSW"):
            space.set_index_parameter(index, "efSearch", self.ef_search)

    def fit(self, vectors: Tensor, sq_norms: Tensor) -> None:
        self._on_gpu = self._want_gpu(vectors.device)
        self._index_device = vectors.device if self._on_gpu else torch.device("cpu")
        self._device = vectors.device
        valid = torch.isfinite(sq_norms)
        lengths = valid.sum(1)
        m = vectors.shape[1]
        # Padding is usually the tail of each row (own-region memories): then index row i is
        # memory row i. Otherwise (neighbourhood unions) keep the map, built once here.
        tail = bool((valid == (torch.arange(m, device=valid.device) < lengths.unsqueeze(1))).all())
        if tail:
            self._positions = None
        else:
            width = int(lengths.max())
            order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # valid rows first, in order
            self._positions = order[:, :width].contiguous()
        self._indexes = []
        for region in range(vectors.shape[0]):
            count = int(lengths[region])
            rows = vectors[region, :count] if tail else vectors[region, self._positions[region, :count]]
            rows = rows.detach().to(self._index_device, torch.float32).contiguous()
            index = self._make_index(rows.shape[1], count)
            if not index.is_trained:
                cells = (self.nlist or default_nlist(count)) if "IVF" in self.factory else 256
                if "PQ" in self.factory:  # 8-bit PQ codebooks: 256 centroids per sub-quantizer
                    cells = max(cells, 256)
                index.train(training_sample(rows, cells, seed=region))
            index.add(rows)
            self._set_search_parameters(index)
            self._indexes.append(index)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if not self._indexes:
            raise RuntimeError("FaissKNN.search called before fit")
        r, q, _ = queries.shape
        x = queries.detach().to(self._index_device, torch.float32).contiguous()
        dist = torch.empty(r, q, k, device=self._index_device)
        local = torch.empty(r, q, k, dtype=torch.int64, device=self._index_device)
        for region, index in enumerate(self._indexes):
            index.search(x[region], k, D=dist[region], I=local[region])
        dist = dist.to(queries.device).clamp_min_(0).sqrt_()
        local = local.to(queries.device)
        missing = local < 0  # fewer than k reachable items (approximate indexes): repeat the nearest
        if bool(missing.any()):
            local = torch.where(missing, local[..., :1], local)
            dist = torch.where(missing, dist[..., :1], dist)
        if self._positions is None:
            return dist.to(queries.dtype), local
        positions = self._positions.to(queries.device)
        idx = torch.gather(positions, 1, local.flatten(1)).view_as(local)
        return dist.to(queries.dtype), idx


class AutoKNN:
    """``search: auto``: exact :class:`TorchKNN` for memories up to ``min_vectors`` vectors per
    region (``min_vectors_cuda`` on CUDA), the given FAISS index above (the benchmark's rule,
    docs/scale.md). Decided at :meth:`fit` from the memory's size and device.

    Args:
        faiss: factory of the FAISS search used above the threshold.
        min_vectors: CPU threshold; min_vectors_cuda: CUDA threshold.
    """

    def __init__(self, faiss: Callable[[], KNNSearch], min_vectors: int, min_vectors_cuda: int) -> None:
        self.faiss = faiss
        self.min_vectors = min_vectors
        self.min_vectors_cuda = min_vectors_cuda
        self.chosen: KNNSearch | None = None

    def fit(self, vectors: Tensor, sq_norms: Tensor) -> None:
        largest = int(torch.isfinite(sq_norms).sum(1).max())
        limit = self.min_vectors_cuda if vectors.is_cuda else self.min_vectors
        self.chosen = self.faiss() if largest >= limit else TorchKNN()
        self.chosen.fit(vectors, sq_norms)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if self.chosen is None:
            raise RuntimeError("AutoKNN.search called before fit")
        return self.chosen.search(queries, k)
