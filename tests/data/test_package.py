"""The ``fapm.data`` package exports resolve, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys

import fapm.data


def test_every_export_resolves() -> None:
    assert set(fapm.data.__all__) == set(fapm.data._MODULE_OF)
    for name in fapm.data.__all__:
        assert getattr(fapm.data, name) is not None


def test_import_does_not_load_lightning() -> None:
    code = "import sys, fapm.data, fapm.data.demo; print('lightning' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
