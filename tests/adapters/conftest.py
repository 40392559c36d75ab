"""Fixtures of the adapter tests: every test taking ``backend`` runs on every CTC backbone."""

from __future__ import annotations

import pytest
import torch

from adapter_helpers import BACKENDS


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # the machine's cores are shared; tiny models gain nothing from more


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> str:
    """Each test that takes it runs on every CTC backend."""
    return request.param
