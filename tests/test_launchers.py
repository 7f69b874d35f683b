"""Parallel and cluster sweeps through Hydra's launcher plugins, and an Optuna search.

Each sweep runs ``python train.py -m`` in a subprocess on a tiny generated category (resnet18,
random init, 112 px) with one job that succeeds and one that fails (missing category): both
jobs must leave their ``metrics.json``, the failure must not stop the other job, and
``report.py`` must give the same table whichever launcher ran the sweep.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from fapm.conf import CONFIG_DIR
from fapm.metrics import names
from fapm.reporting.runs import (
    STATUS_FAILED,
    STATUS_OK,
    check_optimized_metric,
    collect_runs,
    optimized_value,
)
from fapm.reporting.table import build_tables, category_table, to_markdown
from tests.conftest import make_obvious_category, tiny_train_overrides

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def _plugin(name: str) -> None:
    pytest.importorskip(f"hydra_plugins.{name}", reason=f"{name} is not installed (pip install -r requirements.txt)")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(HYDRA_FULL_ERROR="0", **extra)
    return env


def _sweep(tmp: Path, data_root: Path, *overrides: str, env: dict[str, str] | None = None) -> tuple[int, str, Path]:
    """``train.py -m`` over ``plate`` (succeeds) and ``missing`` (fails); returns (status, output, sweep folder)."""
    logs = tmp / "logs"
    command = [
        sys.executable, str(REPO / "train.py"), "-m",
        *tiny_train_overrides(data_root), "data.category=plate,missing", "logger=none",
        f"paths.log_dir={logs}", *overrides,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp, env=env or _env(), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    sweeps = list((logs / "train" / "multiruns").iterdir()) if (logs / "train" / "multiruns").is_dir() else []
    assert len(sweeps) == 1, output[-4000:]
    return done.returncode, output, sweeps[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_obvious_category(tmp_path_factory.mktemp("data"), "plate", n_train=5, n_good=2, n_defect=2)


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[int, str, Path]:
    _plugin("hydra_joblib_launcher")
    # One DataLoader worker: a joblib job must be able to start processes of its own.
    return _sweep(
        tmp_path_factory.mktemp("joblib"), data_root, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "data.num_workers=1",
    )  # fmt: skip


@pytest.fixture(scope="module")
def submitit_sweep(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> tuple[int, str, Path]:
    _plugin("hydra_submitit_launcher")
    # Both jobs start at once: one thread each (inherited from this environment).
    return _sweep(
        tmp_path_factory.mktemp("submitit"), data_root, "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5", env=_env(OMP_NUM_THREADS="1"),
    )  # fmt: skip


def _check_sweep(status: int, output: str, sweep: Path) -> None:
    assert status != 0, output[-4000:]  # the failed job makes the sweep exit 1, after both jobs ran
    assert (sweep / "1" / "metrics.json").is_file(), output[-4000:]
    ok = json.loads((sweep / "0" / "metrics.json").read_text())
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert ok["status"] == STATUS_OK and ok["category"] == "plate", ok
    assert 0.0 <= ok[names.IMAGE_AUROC] <= 1.0 and (sweep / "0" / "model.safetensors").is_file()
    assert failed["status"] == STATUS_FAILED and failed["error"].startswith("DataError: Category folder not found")
    assert (sweep / "multirun.yaml").is_file()


@pytest.mark.slow
def test_joblib_sweep_runs_both_jobs_and_records_the_failure(joblib_sweep: tuple[int, str, Path]) -> None:
    _check_sweep(*joblib_sweep)
    assert "Joblib.Parallel(n_jobs=2" in joblib_sweep[1]


@pytest.mark.slow
def test_submitit_local_sweep_runs_both_jobs_and_records_the_failure(submitit_sweep: tuple[int, str, Path]) -> None:
    _check_sweep(*submitit_sweep)
    sweep = submitit_sweep[2]
    logs = sorted((sweep / ".submitit").glob("*/*_log.err"))
    assert len(logs) == 2  # one submitit job per sweep job, logs beside (not inside) the job folders


_SAME = ("category", "model", "status", "error", names.IMAGE_AUROC, names.PIXEL_AUROC, names.PIXEL_AUPRO,
         names.IMAGE_F1_MAX, "memory_vectors")  # fmt: skip


def _table(sweep: Path) -> list[dict[str, Any]]:
    runs = collect_runs([sweep])
    assert [r.category for r in runs] == ["plate", "missing"]
    tables = build_tables(runs)
    assert set(tables) == {"by_category", "per_defect"}
    return [{k: row.get(k) for k in _SAME} for row in tables["by_category"].rows]


@pytest.mark.slow
def test_report_is_the_same_whatever_the_launcher(
    joblib_sweep: tuple[int, str, Path],
    submitit_sweep: tuple[int, str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    joblib_rows, submitit_rows = _table(joblib_sweep[2]), _table(submitit_sweep[2])
    assert [r["status"] for r in joblib_rows] == [STATUS_OK, STATUS_FAILED, "1/2 ok"]
    assert joblib_rows == submitit_rows
    # The CLI over a sweep folder: the failed job is a row, and the exit status says so.
    spec = importlib.util.spec_from_file_location("report_cli", REPO / "report.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(submitit_sweep[2]), f"out={tmp_path}"]) == 1
    printed = capsys.readouterr().out
    assert "| plate |" in printed and "| missing |" in printed and "1 failed run(s)" in printed


# --------------------------------------------------------------------------------------------
# Threads per job, launcher configs
# --------------------------------------------------------------------------------------------
THREADS_APP = """
    import json, os
    from pathlib import Path
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base="1.3", config_path={config_dir!r}, config_name="train")
    def main(cfg):
        import torch  # as train.py does: after the launcher has set up the job's process
        out = Path(HydraConfig.get().runtime.output_dir)
        (out / "threads.json").write_text(json.dumps({{"torch": torch.get_num_threads(), "pid": os.getpid()}}))

    main()
"""


@pytest.mark.slow
def test_joblib_jobs_share_the_cores_instead_of_each_taking_all(tmp_path: Path) -> None:
    _plugin("hydra_joblib_launcher")
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent(THREADS_APP.format(config_dir=str(CONFIG_DIR))))
    env = {k: v for k, v in _env().items() if not k.endswith("_NUM_THREADS")}
    command = [sys.executable, str(app), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1",
               f"paths.log_dir={tmp_path / 'logs'}"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("logs/train/multiruns/*/*/threads.json"))]
    assert len(jobs) == 2 and jobs[0]["pid"] != jobs[1]["pid"]  # two worker processes
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert [j["torch"] for j in jobs] == [max(1, cores // 2)] * 2


def _hydra_config(*overrides: str) -> Any:
    from fapm.conf import compose

    return compose(overrides, return_hydra_config=True)


@pytest.mark.filterwarnings("ignore:(?s).*is validated against ConfigStore schema:UserWarning")
def test_launcher_configs_name_real_launchers_and_follow_their_keys() -> None:
    import hydra

    _plugin("hydra_joblib_launcher")
    _plugin("hydra_submitit_launcher")
    for name in ("joblib", "submitit_slurm", "submitit_local"):
        launcher = _hydra_config(f"hydra/launcher={name}").hydra.launcher
        assert hasattr(hydra.utils.get_class(launcher._target_), "launch"), name  # the target is a real launcher
    # the job's thread count follows --cpus-per-task (an interpolation, not a copied number)
    for cpus in (6, 3):
        slurm = _hydra_config("hydra/launcher=submitit_slurm", f"hydra.launcher.cpus_per_task={cpus}").hydra.launcher
        assert slurm.setup == [f"export OMP_NUM_THREADS={cpus} MKL_NUM_THREADS={cpus}"]


def test_optuna_search_space_is_made_of_valid_runs(tmp_path: Path) -> None:
    """Every key the search tunes is a model setting, and every choice of it validates as a run; the
    optimised metric is one the test loop reports."""
    from fapm.pipeline.common import validated_settings

    _plugin("hydra_optuna_sweeper")
    cfg = _hydra_config("hparams_search=fapm_optuna")
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.optimized_metric in (*names.IMAGE_METRICS, *names.PIXEL_METRICS)
    assert _hydra_config().hydra.sweeper._target_.endswith("BasicSweeper")  # hparams_search: null by default
    paths = [f"paths.output_dir={tmp_path}", f"paths.root_dir={tmp_path}"]
    for key, space in cfg.hydra.sweeper.params.items():
        inner = space[space.index("(") + 1 : space.rindex(")")]
        if space.startswith("choice("):
            values = [v.strip() for v in inner.replace("], [", "];[").split(";" if "[" in inner else ",")]
        elif space.startswith("range("):
            lo, hi = (int(v) for v in inner.split(","))
            values = [str(lo), str(hi - 1)]
        else:  # (tagged) interval: its two ends
            values = [v.strip(" )") for v in inner.split("(")[-1].split(",")]
        for value in values:
            settings = validated_settings(_hydra_config(*paths, f"{key}={value}"))
            assert settings.model.to_dict()[key.split(".", 1)[1]] is not None, (key, value)


# --------------------------------------------------------------------------------------------
# The value returned to sweepers
# --------------------------------------------------------------------------------------------
def test_optimized_metric_is_checked_before_the_run_and_read_after_it() -> None:
    for name in (names.IMAGE_AUROC, names.PIXEL_AUPRO, names.FPS, names.per_defect(names.IMAGE_AUROC, "crack"), None):
        check_optimized_metric(name)
    for wrong in ("image_aurc", names.IMAGE_F1_THRESHOLD, names.per_defect(names.PIXEL_AUROC, "crack")):
        with pytest.raises(ValueError, match=r"optimized_metric: unknown metric"):
            check_optimized_metric(wrong)
    metrics = {names.IMAGE_AUROC: 0.75, names.PIXEL_AUROC: None, names.PIXEL_AUPRO: math.nan, names.FPS: 12}
    assert optimized_value(metrics, names.IMAGE_AUROC) == 0.75
    assert optimized_value(metrics, names.FPS) == 12.0
    # Undefined values (null in metrics.json, NaN, missing) are not handed to the sampler.
    assert optimized_value(metrics, names.PIXEL_AUROC) is None
    assert optimized_value(metrics, names.PIXEL_AUPRO) is None
    assert optimized_value(metrics, names.IMAGE_F1_MAX) is None
    assert optimized_value(metrics, None) is None


@pytest.mark.slow
def test_optuna_search_runs_and_reports_each_trial(tmp_path: Path, data_root: Path) -> None:
    _plugin("hydra_optuna_sweeper")
    logs = tmp_path / "logs"
    command = [
        sys.executable, str(REPO / "train.py"), "hparams_search=fapm_optuna", *tiny_train_overrides(data_root),
        "logger=none", "data.num_workers=0", f"paths.log_dir={logs}",
        "hydra.sweeper.n_trials=2", "model.grid=choice([7,7],[1,1])",  # grids of resnet18's 14x14 and 7x7 maps
        "optimized_metric=pixel_auroc",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    (sweep,) = (logs / "train" / "multiruns").iterdir()
    result = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))
    assert isinstance(result, dict)
    runs = collect_runs([sweep])
    assert [r.status for r in runs] == [STATUS_OK, STATUS_OK]
    # What train.py returned is what Optuna maximised.
    assert result["best_value"] == pytest.approx(max(r.metrics[names.PIXEL_AUROC] for r in runs))
    table = category_table(runs)
    assert table.columns[1].key == "settings"  # the trials' sampled values tell the rows apart
    assert all("model.d_th=" in row["settings"] and "model.k=" in row["settings"] for row in table.rows[:2])
    assert "settings" in to_markdown(table)
