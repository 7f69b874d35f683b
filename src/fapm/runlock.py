"""One run per run folder: ``fapm train|eval|predict`` lock their Hydra run folder.

Two runs writing into one folder (the same ``hydra.run.dir``) used to leave one run's config
beside the other's model and metrics. :class:`RunFolderLock` is a Hydra callback
(``conf/hydra/default.yaml``) that takes an OS lock on ``<run folder>/.fapm-run.lock`` before
Hydra writes anything there (``on_run_start``), and refuses the run at once when another
process holds it. The OS drops the lock when the process ends, however it ends (``kill -9``
included): no stale lock to clean up.

Hydra ignores exceptions raised by callbacks (it turns them into warnings), so a refused run
is redirected to a throw-away folder (Hydra writes its config there, not into the busy one)
and the command's task raises :class:`RunFolderBusy` first thing (:func:`raise_if_refused`).
A job of a multirun is locked in ``on_job_start``, after Hydra wrote its config: jobs of one
sweep have their own folders, so only two sweeps into the same sweep folder can meet there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from hydra.experimental.callback import Callback

from fapm.errors import FapmError

log = logging.getLogger(__name__)

LOCK_NAME = ".fapm-run.lock"


class RunFolderBusy(FapmError):
    """Another fapm run is writing into the run folder."""

    hint = "wait for it to finish, or give this run another folder (hydra.run.dir=...)"


def try_lock(fd: int, what: str = "the run folder") -> bool:
    """Non-blocking exclusive lock on ``fd``; False when another process holds it. On a file
    system without locks the run goes on unlocked (said once in the log) rather than not at all."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        log.warning("cannot lock %s (%s); concurrent runs into it are not detected", what, err)
    return True


def lock_folder(folder: str | Path) -> int:
    """Lock ``folder`` (created) for this process; returns the lock's file descriptor.

    Raises:
        RunFolderBusy: another process holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    if not try_lock(fd):
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            pid = os.read(fd, 32).decode(errors="replace").strip()
        finally:
            os.close(fd)
        raise RunFolderBusy(
            f"another fapm run{f' (pid {pid})' if pid.isdigit() else ''} is writing into the run folder {folder}; "
            "two runs in one folder would mix their config, model and metrics"
        )
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class RunFolderLock(Callback):
    """Hydra callback: lock the run folder before Hydra writes into it (see the module)."""

    held: ClassVar[list[int]] = []
    refused: ClassVar[RunFolderBusy | None] = None
    scratch: ClassVar[str | None] = None

    @staticmethod
    def _secondary_rank() -> bool:
        # DDP ranks > 0 are started by Lightning with the same command and run folder as rank 0
        return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        if self._secondary_rank():
            return
        try:
            RunFolderLock.held.append(lock_folder(str(config.hydra.run.dir)))
        except RunFolderBusy as busy:
            import tempfile

            from omegaconf import read_write

            RunFolderLock.refused = busy
            RunFolderLock.scratch = tempfile.mkdtemp(prefix="fapm-refused-")
            with read_write(config.hydra):
                config.hydra.run.dir = RunFolderLock.scratch  # Hydra's files go there, not into the busy folder

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN and not self._secondary_rank():
            try:
                RunFolderLock.held.append(lock_folder(HydraConfig.get().runtime.output_dir))
            except RunFolderBusy as busy:
                RunFolderLock.refused = busy

    def on_job_end(self, config: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.get().mode == RunMode.MULTIRUN:
            release_all()

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        release_all()


def raise_if_refused() -> None:
    """Raise the :class:`RunFolderBusy` of this run, if its folder was refused (called by the task)."""
    busy, RunFolderLock.refused = RunFolderLock.refused, None
    if busy is not None:
        raise busy


def release_all() -> None:
    """Release every run-folder lock this process holds (closing the descriptor drops the lock)."""
    while RunFolderLock.held:
        try:
            os.close(RunFolderLock.held.pop())
        except OSError:
            pass
    RunFolderLock.refused = None
    if RunFolderLock.scratch is not None:
        import shutil

        shutil.rmtree(RunFolderLock.scratch, ignore_errors=True)
        RunFolderLock.scratch = None
