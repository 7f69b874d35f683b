"""Lightning glue for the LAMP detector: training with an optimiser, validation loss, facts.

The algorithm (autoencoder, loss, scoring) lives in :mod:`fapm.lamp`; this class wires
it to the trainer. Test-time scoring, metrics and timing come from
:class:`~fapm.lightning.base.AnomalyModule`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from fapm.data.sampling import drop_padding
from fapm.distributed import world
from fapm.lamp.detector import LampDetector
from fapm.lamp.loss import ReconstructionLoss
from fapm.lightning.base import AnomalyModule

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], Any]

#: Logged names (monitored by the LAMP checkpoint / early-stopping callbacks).
TRAIN_LOSS = "train/loss"
TRAIN_BASE_LOSS = "train/base_loss"
VAL_LOSS = "val/loss"
VAL_OBJECTIVE = "val/objective"


class LampModule(AnomalyModule):
    """Trains a :class:`LampDetector` on normal images and scores the test set with it.

    Args:
        detector: autoencoder + scoring (``images [B, 3, H, W]`` → :class:`AnomalyOutput`).
        loss: training objective (base loss, optionally LAMP-amplified).
        optimizer: ``params → Optimizer``; from Hydra a ``_partial_: true`` node such as
            ``{_target_: torch.optim.Adam, _partial_: true, lr: 1e-3}``.
        scheduler: optional ``optimizer → LR scheduler``, stepped per epoch on ``val/loss``.
        name: the model's name for reports.
        restore_best: when fitting ends, load the weights of the trainer's best checkpoint
            (lowest ``val/loss``) so that testing and the saved model use them, not the
            last epoch's.
        timing_warmup: see :class:`AnomalyModule`.

    Logged: ``train/loss`` (the objective), ``train/base_loss`` and ``val/loss`` (the
    un-amplified base loss per element), ``val/objective``. ``val/loss`` is the base loss,
    not the LAMP value, because LAMP normalises each error map by its own maximum: the
    amplified value is unchanged when all errors shrink by the same factor, so it cannot
    rank checkpoints, and the base loss is comparable between ``lamp: true`` and ``false``.
    """

    #: DDP all-reduces gradients every batch: every rank needs the same number of batches.
    equal_batches_per_rank = True

    def __init__(
        self,
        detector: LampDetector,
        loss: ReconstructionLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        name: str = "lamp",
        restore_best: bool = True,
        timing_warmup: int = 2,
    ) -> None:
        super().__init__(detector, name=name, timing_warmup=timing_warmup)
        self.restore_best = restore_best
        self.restored_checkpoint: str | None = None
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        #: Per-epoch means: training objective, training base loss, validation base loss.
        self.epoch_losses: list[float] = []
        self.epoch_base_losses: list[float] = []
        self.val_losses: list[float] = []
        self._sums = torch.zeros(3, dtype=torch.float64)  # objective·n, base·n, n
        self._val_sums = torch.zeros(3, dtype=torch.float64)

    # ------------------------------------------------------------------ training
    def _losses(self, images: Tensor) -> tuple[Tensor, Tensor]:
        target, reconstruction = self.detector.reconstruct(images)
        objective = self.loss(reconstruction, target)
        with torch.no_grad():
            base = self.loss.base_map(reconstruction, target).mean()
        return objective, base

    def on_train_epoch_start(self) -> None:
        self._sums.zero_()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = batch["image"]
        objective, base = self._losses(images)
        n = images.shape[0]
        self._sums += torch.tensor([objective.item() * n, base.item() * n, n], dtype=torch.float64)
        self.log(TRAIN_LOSS, objective, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(TRAIN_BASE_LOSS, base, on_step=False, on_epoch=True, batch_size=n)
        return objective

    def on_train_epoch_end(self) -> None:
        sums = self._reduce_sums(self._sums)  # every rank's batches (DDP) or this one's
        if sums[2] > 0:
            self.epoch_losses.append(float(sums[0] / sums[2]))
            self.epoch_base_losses.append(float(sums[1] / sums[2]))

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(3, dtype=torch.float64)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        batch = drop_padding(batch)  # a shorter DDP shard's placeholders
        if batch is None:
            return
        images = batch["image"]
        objective, base = self._losses(images)
        n = images.shape[0]
        self._val_sums += torch.tensor([objective.item() * n, base.item() * n, n], dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        # The mean over every held-out image, whichever rank scored it: summed here rather than
        # logged per step with sync_dist, because a rank whose shard holds no image logs nothing
        # and Lightning's per-metric reduction would then wait for it forever.
        sums = self._reduce_sums(self._val_sums)
        if sums[2] == 0:
            return
        base, objective = float(sums[1] / sums[2]), float(sums[0] / sums[2])
        self.log(VAL_LOSS, base, prog_bar=True, sync_dist=False)
        self.log(VAL_OBJECTIVE, objective, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.val_losses.append(base)

    def _reduce_sums(self, sums: Tensor) -> Tensor:
        """``sums`` added over every DDP rank (unchanged in a single process)."""
        if world()[1] == 1:
            return sums
        return self.trainer.strategy.reduce(sums.to(self.device), reduce_op="sum").cpu()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.detector.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": VAL_LOSS, "interval": "epoch"}}

    def on_fit_end(self) -> None:
        callback = self.trainer.checkpoint_callback
        path = getattr(callback, "best_model_path", "") if callback is not None else ""
        if not self.restore_best or not path:
            return
        # Our own checkpoint, written by this run: a full (non weights-only) load is safe.
        checkpoint = torch.load(path, map_location=self.device, weights_only=False)
        self.load_state_dict(checkpoint["state_dict"])
        self.restored_checkpoint = str(path)
        log.info("restored the best checkpoint %s (val/loss %s)", path, getattr(callback, "best_model_score", None))

    # ------------------------------------------------------------------ persistence
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lamp_history"] = {
            "epoch_losses": self.epoch_losses,
            "epoch_base_losses": self.epoch_base_losses,
            "val_losses": self.val_losses,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        history = checkpoint.get("lamp_history", {})
        self.epoch_losses = list(history.get("epoch_losses", []))
        self.epoch_base_losses = list(history.get("epoch_base_losses", []))
        self.val_losses = list(history.get("val_losses", []))

    # ------------------------------------------------------------------ facts
    def facts(self) -> dict[str, Any]:
        """Model facts for ``metrics.json``: the detector's, plus loss, optimiser and loss history."""
        optimizer = self.optimizer_factory
        facts: dict[str, Any] = {
            **super().facts(),
            "base_loss": self.loss.base,
            "lamp": self.loss.lamp,
            "lamp_epsilon": self.loss.epsilon,
            "lamp_max_over": self.loss.max_over,
            "lamp_detach_max": self.loss.detach_max,
            "loss_reduction": self.loss.reduction,
            "optimizer": getattr(getattr(optimizer, "func", optimizer), "__name__", type(optimizer).__name__),
            "optimizer_args": dict(getattr(optimizer, "keywords", {}) or {}),
            "epochs_trained": len(self.epoch_losses),
            "train_loss_per_epoch": list(self.epoch_losses),
            "train_base_loss_per_epoch": list(self.epoch_base_losses),
            "val_loss_per_epoch": list(self.val_losses),
        }
        if self.val_losses:
            facts["best_val_loss"] = min(self.val_losses)
        if self.restored_checkpoint is not None:
            facts["restored_checkpoint"] = self.restored_checkpoint
        return facts
