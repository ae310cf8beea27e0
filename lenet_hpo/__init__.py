"""lenet-hpo: which LeNet-5 is really best on a small image dataset, and proof of it.

The Python API is what the command line calls, in the same order::

    import lenet_hpo as lh

    spec = lh.load_spec("smoke")                            # studies/smoke.toml
    url = lh.storage_url(spec.name)                          # sqlite:///studies/smoke.db
    summary = lh.run_search(spec, url, 4)                    # the Optuna study (live progress in Jupyter)
    result = lh.retrain_best(spec.name, url, seeds=2, epochs=1)   # tuned vs baseline on the test split
    lh.how_sure(result, lh.open_study(spec.name, url))       # the verdict's statistics
    figs = lh.figures(spec.name, url)                        # the report's plotly figures, by title
    lh.build_report(spec.name, url)                          # reports/<name>/<key>/report.html

Every name below is loaded when first used, so `python -m lenet_hpo --help` does not wait
for torch.  Errors are `LenetHpoError` subclasses (`ConfigError`, `StudyError`, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "BASELINE": "lenet_hpo.config",
    "TrialConfig": "lenet_hpo.config",
    "load_config": "lenet_hpo.config",
    "CLASSIC": "lenet_hpo.classic",
    "Dataset": "lenet_hpo.data",
    "load_data": "lenet_hpo.data",
    "train": "lenet_hpo.training",
    "TrainResult": "lenet_hpo.training",
    "EpochStats": "lenet_hpo.training",
    "Probe": "lenet_hpo.training",
    "build_model": "lenet_hpo.model",
    "export": "lenet_hpo.folders",
    "train_final": "lenet_hpo.final",
    "FinalRun": "lenet_hpo.final",
    "StudySpec": "lenet_hpo.search",
    "load_spec": "lenet_hpo.search",
    "parse_spec": "lenet_hpo.search",
    "run_search": "lenet_hpo.search",
    "SearchSummary": "lenet_hpo.search",
    "Progress": "lenet_hpo.search",
    "TrialEvent": "lenet_hpo.search",
    "WarmStart": "lenet_hpo.search",
    "open_study": "lenet_hpo.search",
    "StoredStudy": "lenet_hpo.search",
    "best_trials": "lenet_hpo.search",
    "config_from_params": "lenet_hpo.search",
    "storage_url": "lenet_hpo.search.storage",
    "NoisePruner": "lenet_hpo.search.pruning",
    "retrain_best": "lenet_hpo.retrain",
    "RetrainResult": "lenet_hpo.retrain",
    "ModelResult": "lenet_hpo.retrain",
    "EpochDone": "lenet_hpo.retrain",
    "load_result": "lenet_hpo.retrain",
    "Look": "lenet_hpo.sequential",
    "Stopping": "lenet_hpo.sequential",
    "how_sure": "lenet_hpo.confidence",
    "Confidence": "lenet_hpo.confidence",
    "build_report": "lenet_hpo.report",
    "figures": "lenet_hpo.report",
    "ReportFiles": "lenet_hpo.report",
    "open_checkpoint": "lenet_hpo.predict",
    "predict_images": "lenet_hpo.predict",
    "Prediction": "lenet_hpo.predict",
    "LenetHpoError": "lenet_hpo.errors",
    "ConfigError": "lenet_hpo.errors",
    "DataError": "lenet_hpo.errors",
    "ChecksumError": "lenet_hpo.errors",
    "StudyError": "lenet_hpo.errors",
    "StorageError": "lenet_hpo.errors",
    "CheckpointError": "lenet_hpo.errors",
    "ImageError": "lenet_hpo.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lenet_hpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from lenet_hpo.classic import CLASSIC
    from lenet_hpo.confidence import Confidence, how_sure
    from lenet_hpo.config import BASELINE, TrialConfig, load_config
    from lenet_hpo.data import Dataset, load_data
    from lenet_hpo.errors import (
        CheckpointError,
        ChecksumError,
        ConfigError,
        DataError,
        ImageError,
        LenetHpoError,
        StorageError,
        StudyError,
    )
    from lenet_hpo.final import FinalRun, train_final
    from lenet_hpo.folders import export
    from lenet_hpo.model import build_model
    from lenet_hpo.predict import Prediction, open_checkpoint, predict_images
    from lenet_hpo.report import ReportFiles, build_report, figures
    from lenet_hpo.retrain import EpochDone, ModelResult, RetrainResult, load_result, retrain_best
    from lenet_hpo.search import (
        Progress,
        SearchSummary,
        StoredStudy,
        StudySpec,
        TrialEvent,
        WarmStart,
        best_trials,
        config_from_params,
        load_spec,
        open_study,
        parse_spec,
        run_search,
    )
    from lenet_hpo.search.pruning import NoisePruner
    from lenet_hpo.search.storage import storage_url
    from lenet_hpo.sequential import Look, Stopping
    from lenet_hpo.training import EpochStats, Probe, TrainResult, train
