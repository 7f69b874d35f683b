"""One run per run folder (issue 25, point 6)."""

import os
from pathlib import Path

from fapm import cli
from fapm.runlock import LOCK_NAME, lock_folder, release_all
from tests.conftest import tiny_train_overrides


def test_a_second_train_into_a_folder_in_use_is_refused_before_hydra_writes(tmp_path: Path, capsys) -> None:
    """Failed before: the folder ended with one run's config and the other's model and metrics."""
    out = tmp_path / "run"
    held = lock_folder(out)  # the first run, still writing
    try:
        code = cli.main(["train", *tiny_train_overrides(tmp_path / "data"), f"hydra.run.dir={out}"])
        err = capsys.readouterr().err
        assert code == 1
        assert f"fapm train: error: another fapm run (pid {os.getpid()}) is writing into the run folder {out}" in err
        assert "a bug?" not in err and "Traceback" not in err
        assert sorted(os.listdir(out)) == [LOCK_NAME]  # nothing of the second run: no .hydra/config.yaml
    finally:
        os.close(held)
    release_all()
    # once the first run ends, the folder is free again (the OS drops the lock with the process too)
    os.close(lock_folder(out))
