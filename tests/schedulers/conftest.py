"""Fixtures for the scheduler tests; importable helpers live in scheduler_helpers.py."""

from __future__ import annotations

import pytest
import torch


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
