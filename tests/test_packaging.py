"""The layout the project promises: top-level ``conf/`` shipped as ``fapm.conf``, ``requirements.txt``.

The configs live at the repository's ``conf/`` and install as the subpackage ``fapm.conf``
(pyproject's ``package-dir``). These tests build a wheel and make an editable install of a copy of
the tree (no dependencies are installed: the copy's ``fapm`` runs on this interpreter's packages),
and check ``requirements.txt`` against ``pyproject.toml``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

#: Composes ``train`` with ``model=patchcore`` from ``pkg://fapm.conf`` and prints where the
#: configs were read from and two composed values.
COMPOSE = """
import fapm.conf
from hydra import compose, initialize_config_module
with initialize_config_module("fapm.conf", version_base="1.3"):
    cfg = compose("train", overrides=["model=patchcore"])
print(fapm.conf.CONFIG_DIR)
print(cfg.model.name)
print(cfg.model.num_neighbors)
"""


def _copy_tree(dest: Path) -> Path:
    """The files a build needs (pyproject, README, src, conf), copied to ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest


def _run(args: list[str], *, cwd: Path, pythonpath: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def test_package_list_covers_every_package_under_src():
    """The written-out package list (needed by the ``fapm.conf`` mapping) misses no subpackage."""
    from setuptools import find_packages

    setuptools_cfg = PYPROJECT["tool"]["setuptools"]
    assert setuptools_cfg["package-dir"] == {"": "src", "fapm.conf": "conf"}
    expected = sorted({*find_packages(str(REPO / "src")), "fapm.conf"})
    assert sorted(setuptools_cfg["packages"]) == expected
    assert not (REPO / "src" / "fapm" / "conf").exists(), "the configs belong in the top-level conf/"
    assert (REPO / "conf" / "train.yaml").is_file()


def test_source_checkout_reads_the_top_level_conf():
    """From ``src/`` (this test run), ``fapm.conf`` is the repository's ``conf/``."""
    import fapm.conf

    assert fapm.conf.CONFIG_DIR == REPO / "conf"


def test_wheel_ships_the_configs_and_composes_patchcore(tmp_path):
    """A wheel built from the tree holds every YAML as ``fapm/conf/...`` and composes ``model=patchcore``."""
    tree = tmp_path / "tree"
    tree.mkdir()
    _copy_tree(tree)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(tree)],
         cwd=tmp_path)
    (wheel,) = wheels.glob("fapm-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    yamls = {f"fapm/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert yamls and yamls <= names, sorted(yamls - names)
    assert "fapm/conf/__init__.py" in names and "fapm/py.typed" in names
    assert not any(n.startswith("conf/") for n in names), "conf/ must install inside the package"

    site = tmp_path / "site"
    out = _run([sys.executable, "-c", COMPOSE], cwd=tmp_path, pythonpath=str(site)).split("\n")
    assert Path(out[0]) == site / "fapm" / "conf"
    assert out[1] == "patchcore"


def test_editable_install_sees_an_edited_yaml(tmp_path):
    """``pip install -e`` of the tree, then a YAML edited in its ``conf/``: the next compose reads the edit."""
    tree = tmp_path / "tree"
    tree.mkdir()
    _copy_tree(tree)
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # The new venv sees this interpreter's packages (hydra, setuptools) through a .pth line, so
    # that the install needs no network and no dependencies: only the copy's fapm is installed.
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    (purelib / "shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-build-isolation",
          "-e", str(tree)], cwd=tmp_path)

    before = _run([str(python), "-c", COMPOSE], cwd=tmp_path).split("\n")
    assert Path(before[0]) == tree / "conf"
    patchcore = tree / "conf" / "model" / "patchcore.yaml"
    text = patchcore.read_text()
    assert re.search(r"^num_neighbors: ", text, re.M), "the edit below needs a top-level num_neighbors"
    patchcore.write_text(re.sub(r"^num_neighbors: [^\n#]*", "num_neighbors: 7 ", text, flags=re.M))
    after = _run([str(python), "-c", COMPOSE], cwd=tmp_path).split("\n")
    assert after[1] == "patchcore" and after[2] == "7" and before[2] != "7"


# ---------------------------------------------------------------------------------------------
# requirements.txt in step with pyproject.toml
# ---------------------------------------------------------------------------------------------


def _pyproject_requirements(extra: str) -> list[Requirement]:
    """The runtime dependencies plus ``extra``'s, following ``fapm[...]`` self-references."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    out = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    todo, seen = [extra], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in extras[name]:
            req = Requirement(line)
            if canonicalize_name(req.name) == "fapm":
                todo.extend(req.extras)
            else:
                out.append(req)
    return out


def test_requirements_txt_pins_the_dev_set_inside_pyproject_ranges():
    lines = [ln.split("#")[0].strip() for ln in (REPO / "requirements.txt").read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    assert lines[0] == "-e .[dev]", "requirements.txt installs the project itself with its dev extra"
    pins = {}
    for line in lines[1:]:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"requirements.txt: {line!r} is not a pin"
        pins[canonicalize_name(req.name)] = (spec.version, req.extras)
    wanted = {canonicalize_name(r.name): r for r in _pyproject_requirements("dev")}
    assert sorted(pins) == sorted(wanted), (
        f"only in requirements.txt: {sorted(set(pins) - set(wanted))}; "
        f"only in pyproject.toml: {sorted(set(wanted) - set(pins))}"
    )
    for name, (version, extras) in pins.items():
        assert wanted[name].specifier.contains(version, prereleases=True), (
            f"requirements.txt pins {name}=={version}, outside pyproject.toml's {wanted[name].specifier}"
        )
        assert extras == wanted[name].extras, f"{name}: extras {extras} vs pyproject's {wanted[name].extras}"


@pytest.mark.parametrize("path", [".ci/run"])
def test_ci_sets_up_with_the_one_command(path):
    """CI installs the way the README tells a user to: one command, requirements.txt."""
    text = (REPO / path).read_text()
    assert "pip install -r requirements.txt" in text
