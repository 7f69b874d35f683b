"""``trainer=ddp_cpu``: two gloo processes build the same memory and report the same metrics as one,
and exactly one process writes the run's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fapm.model_file import read_model_file
from fapm.metrics import names
from tests.conftest import make_obvious_category, tiny_train_overrides

ROOT = Path(__file__).resolve().parents[2]


def _run(root: Path, out: Path, model: str, extra: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    overrides = [
        *tiny_train_overrides(root),
        f"model={model}",
        "data.image_size=64",
        "data.crop_size=64",
        "data.train_batch_size=3",
        "data.eval_batch_size=2",
        "data.normal_holdout=0.25",
        "model.image_score=max" if model == "fapm" else "model.k=1",
        # one thread, as each of ddp_cpu's two processes on 2 cores: the same float kernels and
        # reduction order on both sides, so the comparison below can be bit for bit
        "runtime.threads=1",
        f"hydra.run.dir={out}",
        f"paths.log_dir={out.parent / 'logs'}",
        *extra,
    ]
    if model == "fapm":
        overrides.append("model.grid=[2,2]")
    return subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 9 training images (7 after the hold-out: shards of 4 and 3), 4 + 3 test images: uneven shards on purpose
    return make_obvious_category(tmp_path_factory.mktemp("ddp_data"), n_train=9, n_good=4, n_defect=3, size=64)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["fapm", "patchcore"])
def test_two_processes_build_the_single_process_memory(data: Path, tmp_path: Path, model: str) -> None:
    single = _run(data, tmp_path / "single", model, ["trainer=cpu"])
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run(data, tmp_path / "ddp", model, ["trainer=ddp_cpu"])
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    # exactly one writer: one model file and one metrics.json, and no stray run folder
    assert sorted(p.name for p in (tmp_path / "ddp").glob("*.safetensors")) == ["model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "ddp").glob("metrics*.json")) == ["metrics.json"]
    assert ddp.stdout.count("==== train") == 1  # one summary

    a = read_model_file(tmp_path / "single" / "model.safetensors")
    b = read_model_file(tmp_path / "ddp" / "model.safetensors")
    assert sorted(a.tensors) == sorted(b.tensors)
    for name in a.tensors:  # bit-identical on the CPU
        assert torch.equal(a.tensors[name].nan_to_num(-1.0), b.tensors[name].nan_to_num(-1.0)), name
    assert a.thresholds == b.thresholds  # hold-out images scored in shards, decided on all of them

    ma = json.loads((tmp_path / "single" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for key in (names.IMAGE_AUROC, names.PIXEL_AUROC, names.PIXEL_AUPRO, names.IMAGE_F1_MAX, names.PIXEL_F1_MAX):
        assert ma[key] == mb[key], key
    assert mb["processes"] == 2 and ma["processes"] == 1


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_its_error(data: Path, tmp_path: Path) -> None:
    """Rank 1 alone gets a bad value (from its own environment): the job ends with that error, no hang."""
    env = {**os.environ, "FAPM_TEST_BATCH_1": "abc"}
    batch = "data.train_batch_size='${oc.decode:${oc.env:FAPM_TEST_BATCH_${oc.env:LOCAL_RANK,0},3}}'"
    start = time.perf_counter()
    bad = _run(data, tmp_path / "bad", "fapm", ["trainer=ddp_cpu", batch], env=env)
    assert bad.returncode == 2  # the failing rank's status (a usage error), not 137 from SIGKILL (issue 25)
    assert time.perf_counter() - start < 300
    assert "data.train_batch_size: expected an integer, got 'abc'" in bad.stderr
    assert "fapm: error: DDP rank 1 (pid " in bad.stderr and "failed (exit status 2)" in bad.stderr
    written = json.loads((tmp_path / "bad" / "metrics.json").read_text())  # written by the failing rank
    assert written["status"] == "failed" and "train_batch_size" in written["error"]


@pytest.mark.slow
def test_lamp_trains_with_ddp_like_any_lightning_model(data: Path, tmp_path: Path) -> None:
    """LAMP has gradients: it is wrapped in DistributedDataParallel and trains on padded shards."""
    out = tmp_path / "lamp"
    overrides = [*tiny_train_overrides(data), "model=lamp", "trainer=ddp_cpu", "trainer.max_epochs=2",
                 "data.image_size=64", "data.crop_size=64", "model.base_channels=4", "model.max_channels=8",
                 f"hydra.run.dir={out}", f"paths.log_dir={tmp_path / 'logs'}"]
    proc = subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["epochs_trained"] == 2 and metrics["processes"] == 2
    assert len(metrics["val_loss_per_epoch"]) == 2  # synchronised over both ranks
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
