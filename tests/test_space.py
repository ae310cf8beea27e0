import tomllib

import optuna
import pytest

from lenet_hpo.acquire import DATASETS
from lenet_hpo.config import BASELINE, TrialConfig
from lenet_hpo.errors import StudyError
from lenet_hpo.search.space import check_name, config_from_params, params_for, suggest_config
from lenet_hpo.search.studyfile import available_studies, load_spec, parse_spec, study_path

SPACE = {
    "study": {"dataset": "synthetic", "val_size": 400, "epochs": 2},
    "space": {
        "c1": {"low": 4, "high": 8},
        "activation": {"choices": ["tanh", "relu"]},
        "optimizer": {"choices": ["sgd", "adam"]},
        "lr": {"low": 1e-4, "high": 0.1, "log": True},
        "momentum": {"low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True, "off": 0.0},
    },
}


def spec(**changes):
    raw = {k: dict(v) for k, v in SPACE.items()}
    for table, values in changes.items():
        raw[table] = {**raw.get(table, {}), **values}
    return parse_spec(raw, name="t")


def test_shipped_studies_parse_and_baseline_lies_in_the_default_space(tmp_path):
    assert {"mnist", "smoke", "fashion-mnist", "cifar10", "folder-example"} <= set(available_studies())
    for name in available_studies():
        text = study_path(name).read_text()
        raw = tomllib.loads(text)
        if raw["study"]["dataset"] not in DATASETS:  # a folder, relative to the study file: give it one
            (tmp_path / "studies").mkdir(exist_ok=True)
            (tmp_path / "studies" / raw["study"]["dataset"]).mkdir(parents=True, exist_ok=True)
            parse_spec(raw, name=name, text=text, base=tmp_path / "studies")
        else:
            load_spec(name)
    mnist = load_spec("mnist")
    assert mnist.dataset == "mnist" and mnist.val_size == 10_000
    searched = {p.name for p in mnist.params}
    assert {
        "c1",
        "c3",
        "f5",
        "f6",
        "activation",
        "pooling",
        "batch_size",
        "lr",
        "optimizer",
        "momentum",
        "weight_decay",
        "dropout",
        "batch_norm",
    } <= searched
    params = params_for(BASELINE, mnist)
    assert params is not None
    assert config_from_params(params, mnist) == BASELINE.replace(epochs=mnist.epochs)


def test_suggest_config_is_the_one_mapping_and_is_conditional():
    s = spec()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_momentum = {True: 0, False: 0}
    for _ in range(30):
        trial = study.ask()
        cfg = suggest_config(trial, s)
        assert isinstance(cfg, TrialConfig) and cfg.epochs == 2
        assert ("momentum" in trial.params) == (cfg.optimizer == "sgd")
        assert ("weight_decay" in trial.params) == trial.params["weight_decay_on"]
        seen_momentum[cfg.optimizer == "sgd"] += 1
        assert config_from_params(trial.params, s) == cfg
        study.tell(trial, 0.5)
    assert all(seen_momentum.values())


def test_params_for_rejects_configs_outside_the_space():
    s = spec()
    assert params_for(BASELINE.replace(c1=6), s) is not None
    assert params_for(BASELINE.replace(c1=12), s) is None  # out of range
    assert params_for(BASELINE.replace(activation="gelu"), s) is None  # not a choice
    assert params_for(BASELINE.replace(pooling="max"), s) is None  # not searched, differs from base
    assert params_for(BASELINE, spec(fixed={"schedule": "cosine"})) is None


def test_a_fixed_value_of_a_conditional_field_holds_where_its_condition_does_not():
    # Schedules searched for SGD only: Adam trials take the fixed cosine, and the
    # baseline (SGD, constant rate) still lies in the space.
    s = spec(fixed={"schedule": "cosine"},
             space={"schedule": {"choices": ["constant", "cosine"], "when": {"optimizer": "sgd"}}})
    params = params_for(BASELINE, s)
    assert params is not None and params["schedule"] == "constant"
    assert config_from_params(params, s) == BASELINE.replace(epochs=s.epochs)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    schedules = {"sgd": set(), "adam": set()}
    for _ in range(40):
        trial = study.ask()
        cfg = suggest_config(trial, s)
        schedules[cfg.optimizer].add(cfg.schedule)
        assert ("schedule" in trial.params) == (cfg.optimizer == "sgd")
        study.tell(trial, 0.5)
    assert schedules == {"sgd": {"constant", "cosine"}, "adam": {"cosine"}}
    assert params_for(BASELINE.replace(optimizer="adam"), s) is None  # Adam with a constant rate


def test_a_field_both_fixed_and_always_searched_is_refused():
    with pytest.raises(StudyError, match="fixed.activation: activation is also searched in every trial"):
        spec(fixed={"activation": "relu"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"study": {"colour": 1}}, "unknown key study.colour"),
        ({"study": {"dataset": "svhn"}}, "study.dataset"),
        ({"study": {"epochs": 0}}, "study.epochs"),
        ({"study": {"precision": "fp16"}}, "study.precision: 'fp16' is not one of auto, fp32, bf16"),
        ({"study": {"objectives": ["loss"]}}, "study.objectives"),
        ({"study": {"val_subset_epochs": "yes"}}, "study.val_subset_epochs: expected true or false"),
        ({"study": {"val_subset_epochs": True}}, "needs study.val_subset > 0"),
        ({"space": {"width": {"low": 1, "high": 2}}}, "unknown key space.width"),
        ({"space": {"c1": {"low": 8, "high": 4}}}, "low 8 is above high 4"),
        ({"space": {"c1": {"low": 1.5, "high": 4}}}, "integer field"),
        ({"space": {"c1": {"low": 4, "high": 9999}}}, "c1: 9999 is out of range"),
        ({"space": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log range needs low > 0"),
        ({"space": {"c1": {"low": 4, "high": 8, "steps": 2}}}, "unknown key space.c1.steps"),
        ({"space": {"activation": {"choices": ["tanh", "swish"]}}}, "activation: 'swish'"),
        (
            {"space": {"momentum": {"low": 0.5, "high": 0.9, "when": {"schedule": "cosine"}}}},
            "must be a field searched before",
        ),
        ({"sampler": {"name": "annealing"}}, "sampler.name"),
        ({"sampler": {"name": "tpe", "n_startup": 3}}, r"sampler: .*'n_startup' \(the other keys of \[sampler\]"),
        ({"sampler": {"name": "random", "seed": "zero"}}, "sampler.seed: expected a non-negative integer, got 'zero'"),
        ({"sampler": {"name": "random", "seed": 1.5}}, "sampler.seed: expected a non-negative integer"),
        ({"pruner": {"name": "none", "percentile": 25}}, 'pruner.percentile: pruner "none" takes no options'),
        ({"pruner": {"name": "patient"}}, "pruner.name"),
        ({"fixed": {"epochs": 3}}, "unknown key fixed.epochs"),
        ({"study": {"objectives": ["val_accuracy", "params"]}}, "cannot prune multi-objective"),
    ],
)
def test_malformed_specs_name_the_key(changes, message):
    with pytest.raises(StudyError, match=message):
        spec(**changes)


def test_malformed_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\n")
    with pytest.raises(StudyError, match="bad.toml: not valid TOML"):
        load_spec(str(bad))
    bad.write_text("[space]\nc9 = { low = 1, high = 2 }\n")
    with pytest.raises(StudyError, match="bad.toml: unknown key space.c9"):
        load_spec(str(bad))
    with pytest.raises(StudyError, match="no study file .*studies there: .*mnist"):
        load_spec("nonexistent")


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", ".hidden", "a\\b", "", "x" * 101])
def test_names_with_path_parts_are_refused(name):
    with pytest.raises(StudyError, match="not allowed"):
        check_name(name)


@pytest.mark.parametrize(
    "pruner",
    [{"name": "median", "n_warmup_steps": 0.5}, {"name": "percentile", "percentile": 40.0, "n_warmup_steps": 0.5}],
)
def test_pruner_steps_given_in_epochs_count_images_seen(pruner):
    """With 50,000 images an epoch, a warm-up of 1/2 epoch ends at step 25,000."""
    made = spec(pruner=pruner).make_pruner(fit_size=50_000, check_images=5_000)
    study = optuna.create_study(direction="maximize", pruner=made)
    for _ in range(5):  # the pruners' default n_startup_trials
        study.add_trial(optuna.trial.create_trial(value=0.99, intermediate_values={12_500: 0.9, 25_000: 0.95}))
    trial = study.ask()
    trial.report(0.1, 12_500)
    assert not trial.should_prune()  # still warming up
    trial.report(0.1, 25_000)
    assert trial.should_prune()
