"""Lightning's DDP, made to accept a module that has nothing to train.

``torch.nn.parallel.DistributedDataParallel`` exists to all-reduce gradients, and refuses a
module without a trainable parameter ("DistributedDataParallel is not needed when a module
doesn't have any parameter that requires a gradient"). A memory bank (FAPM, PatchCore, the
ablations) has none: its fit is feature extraction plus a coreset, and its ranks exchange
features and memories explicitly (:mod:`fapm.distributed`). This strategy is Lightning's
own ``DDPStrategy`` — process launch, process group (gloo on CPU, NCCL on GPU), device
placement, collectives, failure handling — that simply does not wrap such a module; a
module that trains (LAMP) is wrapped as usual. No dummy parameter is added anywhere.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.pytorch.strategies import DDPStrategy

log = logging.getLogger(__name__)


def _end_job_with_the_rank_error(observer: _ChildProcessObserver) -> None:
    """Replaces Lightning's observer reaction to a failed child rank (SIGKILL to every process,
    rank 0 included: exit 137 and no word of why) with one line naming the rank, then an exit
    with that rank's status. The rank's own error is printed by the rank itself (same stderr)."""
    failed = [(i + 1, p) for i, p in enumerate(observer._child_processes) if p.returncode]
    rank, proc = failed[0] if failed else (0, None)
    code = int(proc.returncode) if proc is not None else 1
    status = f"exit status {code}" if code > 0 else f"signal {-code}"
    print(
        f"fapm: error: DDP rank {rank}{f' (pid {proc.pid})' if proc is not None else ''} failed ({status}); its "
        "error is printed above; the other ranks were stopped",
        file=sys.stderr, flush=True,
    )
    for child in observer._child_processes:
        try:
            child.send_signal(observer._termination_signal)
        except (ProcessLookupError, OSError):
            pass
    os._exit(code if 0 < code < 128 else 1)


_ChildProcessObserver._terminate_all = _end_job_with_the_rank_error  # type: ignore[method-assign]


class MemoryBankDDPStrategy(DDPStrategy):
    """:class:`DDPStrategy` that wraps the module in ``DistributedDataParallel`` only when it has
    trainable parameters. Accepts every ``DDPStrategy`` argument (``process_group_backend``,
    ``timeout``, …)."""

    strategy_name = "fapm_ddp"

    def configure_ddp(self) -> None:
        assert self.model is not None
        if any(p.requires_grad for p in self.model.parameters()):
            super().configure_ddp()
            return
        # Nothing to synchronise: the LightningModule stays unwrapped and its steps are
        # called directly (Lightning's strategy does so whenever model is the module).
        log.debug("%s: module has no trainable parameter; not wrapped in DistributedDataParallel", type(self).__name__)

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        stop_other_ranks(self)


def stop_other_ranks(strategy: object) -> None:
    """On rank 0, stop the processes it launched: they would otherwise wait in a collective until
    the process-group timeout. (A failing child is caught by Lightning's own process observer,
    which ends the whole job.)"""
    launcher = getattr(strategy, "launcher", None)
    if launcher is not None and getattr(launcher, "procs", None):
        log.error("stopping the other DDP processes after a failure on rank 0")
        launcher.kill(signal.SIGKILL)
