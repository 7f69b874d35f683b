"""What a memory build did, per stream: sizes, the adaptive rule's statistics, timings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from fapm.models.patch_memory import PatchMemory


def memory_facts(stream_names: Sequence[str], memories: Sequence[PatchMemory]) -> dict[str, Any]:
    """Per stream: every region's memory size, how many regions were enlarged, every ``d_imax``."""
    named = list(zip(stream_names, memories))
    return {
        "memory_sizes": {n: m.sizes() for n, m in named},
        "enlarged_regions": {n: int(m.enlarged.sum()) for n, m in named},
        "d_max": {n: [round(float(v), 6) for v in m.d_max.tolist()] for n, m in named},
    }


@dataclass
class BuildReport:
    """Per-stream facts of one memory build (for logs, metrics and figures).

    Attributes:
        stream_names: one name per stream (``layer2``, ``layer2+layer3``…).
        sizes: per stream, the memory length of every region.
        d_max: per stream, ``d_imax`` of every region (NaN when not computed).
        enlarged: per stream, how many regions the adaptive rule enlarged.
        candidates: per stream, the candidates each region's coreset chose from.
        seconds: per stream, the build time.
        alignment: how aligned the training images are (registration spread to their mean,
            see :class:`~fapm.models.alignment.AlignmentProbe`) and the recommended choice.
    """

    stream_names: list[str]
    sizes: list[list[int]] = field(default_factory=list)
    d_max: list[list[float]] = field(default_factory=list)
    enlarged: list[int] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    alignment: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Flat ``memory/<stream>/<fact>`` entries."""
        out: dict[str, Any] = {}
        for i, name in enumerate(self.stream_names):
            sizes = self.sizes[i]
            out[f"memory/{name}/vectors"] = sum(sizes)
            out[f"memory/{name}/min_region"] = min(sizes)
            out[f"memory/{name}/max_region"] = max(sizes)
            out[f"memory/{name}/enlarged_regions"] = self.enlarged[i]
            out[f"memory/{name}/candidates_per_region"] = self.candidates[i]
            out[f"memory/{name}/build_seconds"] = self.seconds[i]
            finite = [d for d in self.d_max[i] if d == d]
            if finite:
                out[f"memory/{name}/d_max_min"] = min(finite)
                out[f"memory/{name}/d_max_median"] = sorted(finite)[len(finite) // 2]
                out[f"memory/{name}/d_max_max"] = max(finite)
        for key, value in self.alignment.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"alignment/{key}"] = value
        return out
