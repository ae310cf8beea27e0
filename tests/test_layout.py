import json

import pytest
import torch

from lenet_hpo.search import layout
from lenet_hpo.search.layout import default_layout


def test_candidates_split_the_cores():
    assert layout.candidates(2) == [(1, 2), (2, 1)]
    assert layout.candidates(6) == [(1, 6), (2, 3), (3, 2), (6, 1)]


@pytest.mark.slow
def test_measure_runs_processes_side_by_side():
    rate = layout.measure(2, 1, seconds=0.3)
    assert rate > 100  # samples/s of two processes together


def test_best_layout_is_measured_once_and_cached(tmp_path):
    calls = []
    fake = {(1, 2): 100.0, (2, 1): 180.0}

    def measure(w, t):
        calls.append((w, t))
        return fake.get((w, t), 1.0)

    cache = tmp_path / "layout.json"
    assert layout.best_cpu_layout(cores=2, cache=cache, measure=measure) == (2, 1)
    assert layout.best_cpu_layout(cores=2, cache=cache, measure=measure) == (2, 1)
    assert calls == [(1, 2), (2, 1)]  # the second call read the cache
    assert json.loads(cache.read_text())[layout.machine_key(2)]["samples_per_s"] == {"1x2": 100.0, "2x1": 180.0}


def test_explicit_counts_win():
    cpu = torch.device("cpu")
    assert default_layout(cpu, 4, cores=8) == (4, 2)
    assert default_layout(cpu, 2, 1, cores=8) == (2, 1)
    assert default_layout(cpu, None, 2, cores=8) == (4, 2)
    assert default_layout(torch.device("cuda"), None, cores=8) == (4, 2)
