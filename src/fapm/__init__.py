"""FAPM: Fast Adaptive Patch Memory for real-time industrial anomaly detection."""

import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"


def _source_checkout_configs() -> None:
    """Make ``fapm.conf`` the repository's top-level ``conf/`` when ``fapm`` is imported from ``src/``.

    A wheel ships the configs inside the package (``fapm/conf``, pyproject's ``package-dir``), so
    nothing is done there. From a source checkout (``PYTHONPATH=src``, or an editable install,
    whose ``fapm`` is ``src/fapm``) the configs are at ``<repository>/conf``: registering that
    folder as ``fapm.conf`` here makes ``pkg://fapm.conf`` and ``fapm.conf.CONFIG_DIR`` read the
    checkout's own YAML files, edited ones included, whatever else is installed.
    """
    package = Path(__file__).resolve().parent
    if (package / "conf" / "__init__.py").is_file() or "fapm.conf" in sys.modules:
        return  # installed from a wheel: the configs are a normal subpackage
    configs = package.parent.parent / "conf"
    init = configs / "__init__.py"
    if package.parent.name != "src" or not init.is_file():
        return
    spec = importlib.util.spec_from_file_location("fapm.conf", init, submodule_search_locations=[str(configs)])
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has a loader
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["fapm.conf"] = module
    spec.loader.exec_module(module)
    globals()["conf"] = module  # what `import fapm.conf` binds on the parent package


_source_checkout_configs()
