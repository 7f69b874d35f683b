"""The per-stream k-NN indexes of a detector's memories, fitted once and refitted only when the memory changes."""

from __future__ import annotations

from typing import Callable, Sequence

from fapm.models.knn import KNNSearch, TorchKNN
from fapm.models.patch_memory import PatchMemory


class SearchCache:
    """One fitted :class:`KNNSearch` per stream memory, plus the ``k`` limits read once.

    Args:
        factory: returns a fresh search (one per stream), e.g. :func:`fapm.builders.build_search`'s.
    """

    def __init__(self, factory: Callable[[], KNNSearch] | None = None) -> None:
        self.factory = factory or TorchKNN
        self.searches: list[KNNSearch] = []
        self.k = 0
        self.k_max = 0
        self._key: tuple | None = None

    def use(self, factory: Callable[[], KNNSearch]) -> None:
        """Serve later searches with fresh indexes from ``factory``, fitted at the next :meth:`ensure`."""
        self.factory = factory
        self.invalidate()

    def invalidate(self) -> None:
        self._key = None

    def ensure(self, memories: Sequence[PatchMemory], k: int) -> tuple[int, int]:
        """Fit the searches if the memories changed (rebuilt, loaded, moved); return ``(k capped by the
        smallest region memory, the smallest region memory)``."""
        key = tuple((m.memory.data_ptr(), str(m.memory.device)) for m in memories) + (k,)
        if key != self._key:
            # every search is fitted on the memory as stored, whatever the neighbourhood
            self.searches = []
            for memory in memories:
                search = self.factory()
                search.fit(*memory.searchable())
                self.searches.append(search)
            # read once here: a host read per call would synchronise a GPU on every batch
            self.k_max = min(int(m.lengths.min()) for m in memories)
            self.k = min(k, self.k_max)
            self._key = key
        return self.k, self.k_max
