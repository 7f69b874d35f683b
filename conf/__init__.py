"""The Hydra configs, shipped inside the package so that the installed ``fapm`` command finds them.

``CONFIG_DIR`` is this folder; ``python train.py`` and ``fapm train`` compose ``train.yaml`` from it.
:func:`compose` is the one way scripts, benchmarks and tests compose a config outside ``@hydra.main``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parent


def compose(
    overrides: Sequence[str] = (), config_name: str = "train", return_hydra_config: bool = False
) -> DictConfig:
    """``<config_name>.yaml`` of :data:`CONFIG_DIR` composed with ``overrides`` (Hydra's ``key=value``).

    Clears any global Hydra state first, so it may be called repeatedly in one process.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
