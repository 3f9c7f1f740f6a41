"""Test-session settings: one intra-op thread (tiny models are fastest that way, results do not depend on
the machine's core count, and tests that start several processes do not oversubscribe the CPU), and a
private cache directory so evaluation caches never leak between runs."""

import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    if "DITLAB_CACHE" not in os.environ:
        os.environ["DITLAB_CACHE"] = str(tmp_path_factory.mktemp("ditlab-cache"))
    yield
