"""The search: an Optuna study over `suggest_config`, trained by the shared `train()`.

Its face is narrow: read a study file, run a search, open a stored study, rebuild a
trial's config.  Inside: `space` (a study's search space, sampler and pruner), `studyfile`
(reading a study file), `storage` (URLs, heartbeats, the claim lock), `studies` (a stored
study), `study` (creating or resuming one), `objective` (one trial), `worker` (claim, run,
retry, recover), `watch` (progress and the summary), `layout` (processes x threads), `run`.
"""

from lenet_hpo.search.run import run_search
from lenet_hpo.search.space import StudySpec, config_from_params
from lenet_hpo.search.studies import StoredStudy, best_trials, open_study
from lenet_hpo.search.study import WarmStart
from lenet_hpo.search.studyfile import load_spec, parse_spec
from lenet_hpo.search.watch import Progress, SearchSummary, TrialEvent

__all__ = [
    "Progress",
    "SearchSummary",
    "StoredStudy",
    "StudySpec",
    "TrialEvent",
    "WarmStart",
    "best_trials",
    "config_from_params",
    "load_spec",
    "open_study",
    "parse_spec",
    "run_search",
]
