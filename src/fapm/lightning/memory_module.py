"""Lightning glue for memory-bank detectors (FAPM, PatchCore, ablations).

Fitting is one epoch without gradients: ``training_step`` only extracts features, and
the memory is built when the epoch ends. Testing is the shared :class:`AnomalyModule`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from tqdm import tqdm

from fapm.data.sampling import drop_padding
from fapm.distributed import world
from fapm.lightning.base import AnomalyModule
from fapm.lightning.sharded_build import ShardedBuild
from fapm.models.build_report import BuildReport
from fapm.models.detector import MemoryDetector
from fapm.settings import ConfigError

log = logging.getLogger(__name__)


class MemoryBankModule(AnomalyModule):
    """Builds a :class:`MemoryDetector`'s memory in one fit epoch and scores in ``test_step``.

    Args:
        detector: the plain-torch detector.
        name: the model's name for reports (``fapm``, ``patchcore``, ``ablation_b``…).
        timing_warmup: test batches not counted in the latency.
    """

    detector: MemoryDetector

    def __init__(self, detector: MemoryDetector, name: str = "fapm", timing_warmup: int = 2) -> None:
        super().__init__(detector, name=name, timing_warmup=timing_warmup)
        self.automatic_optimization = False
        self.build_report: BuildReport | None = None

    def configure_optimizers(self) -> None:
        return None

    def on_train_epoch_start(self) -> None:
        # the build strategy is this layer's choice: the plain-torch detector knows nothing of processes
        strategy = ShardedBuild() if world()[1] > 1 else None
        self.detector.reset_fit(expected_images=self._training_images(), strategy=strategy)

    def _training_images(self) -> int | None:
        """Number of images this process's fit epoch will see (for one preallocated feature buffer)."""
        loader = self.trainer.train_dataloader
        try:
            shard = getattr(loader, "batch_sampler", None)
            images = shard.real if hasattr(shard, "real") else len(loader.dataset)
            limit = self.trainer.limit_train_batches
        except (AttributeError, TypeError):  # iterable datasets, wrapped loaders: collect in pieces
            return None
        if isinstance(limit, int):
            images = min(images, limit * (loader.batch_size or 1))
        elif limit < 1.0:
            return None
        return images

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        batch = drop_padding(batch)  # a shorter DDP shard's placeholders
        if batch is None:
            return
        if batch_idx == 0:
            self.detector.check_input_size(tuple(batch["image"].shape[-2:]))
        self.detector.collect(batch["image"])

    def setup(self, stage: str) -> None:
        rank, size = world()
        if size > 1 and self.trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigError([
                "trainer.use_distributed_sampler: must be false for fapm's data modules under DDP (the "
                "trainer=ddp / ddp_cpu configs set it): they shard every dataset themselves, each sample once"
            ])

    def on_train_epoch_end(self) -> None:
        report = self.detector.build(progress=self._coreset_progress())
        self.build_report = report
        stats = report.as_dict()
        self.log_dict({k: float(v) for k, v in stats.items()}, on_epoch=True)
        for name, sizes, d_max, enlarged in zip(report.stream_names, report.sizes, report.d_max, report.enlarged):
            log.info(
                "memory %s: %d vectors in %d regions (%d–%d each), %d enlarged; d_max %s",
                name, sum(sizes), len(sizes), min(sizes), max(sizes), enlarged, _describe(d_max),
            )
        if report.alignment:  # how aligned the training images are, and what that recommends
            a = report.alignment
            log.info(
                "training-image alignment: shift p90 %.1f px, rotation p90 %.1f deg, %.0f%% register confidently "
                "-> %s (%s)", a["shift_px_p90"], a["rotation_deg_p90"], 100 * a["confident_share"],
                a.get("choice", f"recommended: {a['recommendation']}"), a["reason"],
            )

    def _coreset_progress(self) -> Callable[..., Any] | None:
        """A tqdm bar over the streams' coresets when the trainer shows progress bars."""
        trainer = self._trainer
        if trainer is None or trainer.progress_bar_callback is None:
            return None
        return functools.partial(tqdm, leave=False, dynamic_ncols=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Normal held-out images are scored only for thresholds (see the thresholds module)."""
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fitted"] = self.detector.fitted


def _describe(values: list[float]) -> str:
    finite = sorted(v for v in values if v == v)
    if not finite:
        return "n/a"
    return f"min {finite[0]:.3g} median {finite[len(finite) // 2]:.3g} max {finite[-1]:.3g}"
