"""Fixtures for the scheduler tests; importable helpers live in scheduler_helpers.py."""

from __future__ import annotations

import pytest
import torch
from scheduler_helpers import DTYPES, FINAL_SIGMAS, PREDICTIONS, SIGMA_KINDS, SPACINGS


@pytest.fixture
def no_sync(monkeypatch):
    """A context in which Python-level host syncs on tensors (item, tolist, cpu, numpy, bool, int, float) raise."""

    class _NoSync:
        def __enter__(self):
            def forbid(name):
                def raiser(*args, **kwargs):
                    raise AssertionError(f"host-device sync: Tensor.{name} called")

                return raiser

            for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
                monkeypatch.setattr(torch.Tensor, name, forbid(name))
            return self

        def __exit__(self, *exc):
            monkeypatch.undo()
            return False

    return _NoSync()


# The config matrices of scheduler_helpers.py as fixtures: a test that takes `spacing`, `dtype`, `kind`,
# `prediction` or `final` runs once per value, unless it parametrizes that name itself.


@pytest.fixture(params=SPACINGS)
def spacing(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request):
    return request.param


@pytest.fixture(params=list(SIGMA_KINDS))
def kind(request):
    return request.param


@pytest.fixture(params=PREDICTIONS)
def prediction(request):
    return request.param


@pytest.fixture(params=FINAL_SIGMAS)
def final(request):
    return request.param
