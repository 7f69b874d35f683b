"""Logger configs: every logger group instantiates; W&B runs offline with no network access and
records config, metrics, figures and the results table in its offline run folder."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fapm.metrics import names
from fapm.pipeline.common import instantiate_group
from fapm.tracking import close_loggers, log_images, log_table
from tests.conftest import compose_config, make_obvious_category, tiny_train_overrides

_BLOCK = 32768  # wandb's transaction log uses LevelDB's log format: 32 KiB blocks, 7-byte record headers


def wandb_records(path: Path) -> Iterator[Any]:
    """Protobuf records of an offline ``run-*.wandb`` file, read without wandb's servers or API."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # block trailer padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            pos += (_BLOCK - pos % _BLOCK) % _BLOCK
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # full record, or last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def finished_records(path: Path, timeout: float = 60.0) -> list[Any]:
    """The records of a finished run: wandb-core writes the log asynchronously, so the last
    records (history, exit) may land shortly after ``finish()`` returns."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple]:
    """Record (and refuse) every name lookup or TCP connection; keep wandb's own files in tmp."""
    attempts: list[tuple] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.setenv(var, "unset")  # remembered, so the test's changes are undone ...
        monkeypatch.delenv(var)  # ... and absent during the test: the config alone must keep it offline
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return attempts


@pytest.mark.parametrize("group", ["csv", "tensorboard", "wandb", "many", "none"])
def test_logger_configs_instantiate(group: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    cfg = compose_config("train", [f"logger={group}"], tmp_path)
    loggers = instantiate_group(cfg.get("logger"))
    expected = {"csv": 1, "tensorboard": 1, "wandb": 1, "many": 2, "none": 0}[group]
    assert len(loggers) == expected
    if group == "wandb":
        # the config alone keeps the run offline, in the run's folder: starting it touches no network
        attempts = request.getfixturevalue("no_network")
        run = loggers[0].experiment
        run.finish()
        assert attempts == []
        assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_wandb_offline_run_records_everything(no_network: list[tuple], tmp_path: Path) -> None:
    from fapm.pipeline.train import train

    root = make_obvious_category(tmp_path / "data", n_train=6, n_good=3, n_defect=3)
    out = tmp_path / "run"
    overrides = [o for o in tiny_train_overrides(root) if not o.startswith(("callbacks=", "logger="))]
    overrides += ["callbacks=default", "callbacks.visualizer.num_images=2", "logger=[csv,wandb]", "save_model=false"]
    metrics = train(compose_config("train", overrides, out))
    assert no_network == []

    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = runs[0]
    kinds: dict[str, int] = {}
    history: set[str] = set()
    config: set[str] = set()
    for record in finished_records(next(run.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        if kind == "config":
            config |= {item.key or "/".join(item.nested_key) for item in record.config.update}
    assert kinds.get("exit") == 1  # the run was finished (so the next job of a sweep gets its own)
    assert {names.IMAGE_AUROC, names.PIXEL_AUROC, names.PIXEL_AUPRO, names.FPS} <= history
    assert {"test/figures/_type", "results/_type"} <= history  # images and the results table
    assert {"model", "backbone", "data", "seed"} <= config
    media = run / "files" / "media"
    assert len(list((media / "images").rglob("*.png"))) == 3  # 2 samples + memory figure
    table = json.loads(next((media / "table").glob("results_*.table.json")).read_text())
    assert "image AUROC (%)" in table["columns"] and table["data"][0][0] == "plate"
    assert table["data"][0][table["columns"].index("image AUROC (%)")] == pytest.approx(metrics[names.IMAGE_AUROC])


def test_close_loggers_gives_each_job_its_own_wandb_run(no_network: list[tuple], tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    ids = []
    for job in range(2):
        logger = WandbLogger(project="fapm", save_dir=str(tmp_path / str(job)), offline=True)
        logger.log_metrics({"x": float(job)})
        csv_logger = CSVLogger(str(tmp_path / str(job)), name="csv", version="")
        png = tmp_path / "img.png"
        from PIL import Image

        Image.new("RGB", (8, 8)).save(png)
        assert log_images([logger, csv_logger], "figs", [png], ["a caption"]) == 1  # CSV takes no images
        assert log_table([logger, csv_logger], "tab", ["a"], [[1.0]], "| a |") == 1
        ids.append(logger.experiment.id)
        close_loggers([logger, csv_logger])
    assert ids[0] != ids[1]
    assert len(list(tmp_path.glob("*/wandb/offline-run-*"))) == 2
    assert no_network == []
