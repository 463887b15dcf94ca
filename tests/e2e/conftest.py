"""Fixtures shared by the e2e tests."""

from __future__ import annotations

import pytest
from tests.fixtures import torchrun


@pytest.fixture(scope="session")
def ddp_reference(tmp_path_factory, shared_cache):
    """The demo trained by two gloo DDP processes (``strategy=ddp``), through evaluate: the
    reference the sharded strategies are held to. Returns its root (run dir under out/)."""
    root = tmp_path_factory.mktemp("ddp-reference")
    torchrun.finish(torchrun.start(torchrun.overrides(root, shared_cache,
                                                      "[ingest,train,convert,evaluate]")))
    return root
