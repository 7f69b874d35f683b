"""Per-region k-nearest-neighbour search, behind one small interface.

A search is fitted on ``R`` memories at once (``vectors [R, M, C]`` and squared norms
``[R, M]``, +inf on padding rows) and answers ``R`` query sets at once: query set ``i``
is searched in memory ``i`` only. Distances are Euclidean (not squared).

* :class:`TorchKNN` — exact, all regions in one batched matrix product
  (‖q‖² + ‖m‖² − 2 q·m with the memory norms pre-computed), on any device.
* :class:`FaissKNN` — one FAISS flat L2 index per region (GPU indexes when the queries
  are on CUDA and the installed FAISS has GPU support). FAISS is imported lazily.
"""

from __future__ import annotations

from typing import Callable, Protocol

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


class FaissKNN:
    """One exact FAISS ``IndexFlatL2`` per region.

    Args:
        use_gpu: ``auto`` puts the indexes on the GPU when the queries are on CUDA and FAISS
            was built with GPU support; ``false`` always searches on the CPU.
    """

    def __init__(self, use_gpu: str | bool = "auto") -> None:
        self.use_gpu = use_gpu
        self._indexes: list = []
        self._positions: list[Tensor] = []
        self._gpu_resources = None
        self._on_gpu = False

    @staticmethod
    def _faiss():
        try:
            import faiss
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError("model.search=faiss needs faiss-cpu or faiss-gpu installed") from err
        return faiss

    def _want_gpu(self, device: torch.device) -> bool:
        faiss = self._faiss()
        has_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
        if self.use_gpu in (False, "false"):
            return False
        if self.use_gpu in (True, "true") and not has_gpu:
            raise RuntimeError("model.search.use_gpu=true but this FAISS has no GPU support")
        return has_gpu and device.type == "cuda"

    def fit(self, vectors: Tensor, sq_norms: Tensor) -> None:
        faiss = self._faiss()
        self._on_gpu = self._want_gpu(vectors.device)
        if self._on_gpu and self._gpu_resources is None:
            self._gpu_resources = faiss.StandardGpuResources()
        self._indexes, self._positions = [], []
        host = vectors.detach().float().cpu()
        valid = torch.isfinite(sq_norms).cpu()
        for region in range(host.shape[0]):
            positions = valid[region].nonzero().squeeze(1)
            index = faiss.IndexFlatL2(host.shape[2])
            index.add(host[region, positions].contiguous().numpy())
            if self._on_gpu:
                index = faiss.index_cpu_to_gpu(self._gpu_resources, vectors.device.index or 0, index)
            self._indexes.append(index)
            self._positions.append(positions.to(vectors.device))

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        if not self._indexes:
            raise RuntimeError("FaissKNN.search called before fit")
        host = queries.detach().float().cpu()
        dists, indices = [], []
        for region, index in enumerate(self._indexes):
            d, i = index.search(host[region].contiguous().numpy(), k)
            dists.append(torch.from_numpy(d))
            indices.append(torch.from_numpy(i))
        dist = torch.stack(dists).to(queries.device).clamp_min_(0).sqrt_()
        local = torch.stack(indices).to(queries.device)
        positions = torch.nn.utils.rnn.pad_sequence(self._positions, batch_first=True)  # [R, M_valid]
        idx = torch.gather(positions, 1, local.clamp_min(0).flatten(1)).view_as(local)
        return dist.to(queries.dtype), idx


SEARCHES: dict[str, Callable[[], KNNSearch]] = {"torch": TorchKNN, "faiss": FaissKNN}


def search_factory(backend: str) -> Callable[[], KNNSearch]:
    """Factory of fresh searches for the config name ``torch`` or ``faiss``."""
    if backend not in SEARCHES:
        raise ValueError(f"model.search must be one of {sorted(SEARCHES)}, got {backend!r}")
    return SEARCHES[backend]
