"""LAMP tests run torch single-threaded: their tensors are tiny, and on a loaded 2-core
machine OpenMP's second thread made them up to 10× slower."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
