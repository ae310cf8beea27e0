import json

import pytest

from lenet_hpo.config import BASELINE, TrialConfig, load_config
from lenet_hpo.final import named_config


def test_baseline_is_seed_000_part_1():
    b = BASELINE
    assert (b.c1, b.c3, b.f5, b.f6, b.kernel_size) == (6, 16, 120, 84, 5)
    assert (b.activation, b.pooling, b.optimizer) == ("tanh", "avg", "sgd")
    assert (b.lr, b.momentum, b.batch_size, b.epochs) == (0.01, 0.9, 64, 20)
    assert not b.batch_norm and b.dropout == 0.0
    assert named_config("baseline") is BASELINE


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("c1", 0), ("c1", 2.5), ("c3", -1), ("f5", True), ("kernel_size", 4), ("activation", "swish"),
        ("pooling", "lp"), ("dropout", 1.0), ("dropout", float("nan")), ("batch_norm", "yes"),
        ("init", "orthogonal"), ("optimizer", "rmsprop"), ("lr", 0.0), ("lr", "0.1"), ("momentum", 1.5),
        ("weight_decay", -0.1), ("batch_size", 0), ("epochs", 0), ("schedule", "linear"), ("seed", -1),
    ],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        TrialConfig(**{field: value})


def test_invalid_combination():
    with pytest.raises(ValueError, match="^nesterov:"):
        TrialConfig(optimizer="adam", nesterov=True)
    with pytest.raises(ValueError, match="^nesterov:"):
        TrialConfig(momentum=0.0, nesterov=True)


def test_frozen():
    with pytest.raises(AttributeError):
        BASELINE.lr = 1.0  # type: ignore[misc]


def test_json_round_trip(tmp_path):
    cfg = TrialConfig(
        c1=12, activation="gelu", optimizer="adamw", lr=3e-3, dropout=0.25, batch_norm=True, schedule="onecycle", seed=7
    )
    assert TrialConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "cfg.json"
    path.write_text(cfg.to_json())
    assert load_config(path) == cfg
    # ints are normalised to floats so equal configs serialise equally
    assert TrialConfig(lr=1).to_dict()["lr"] == 1.0


def test_unknown_key_and_bad_json(tmp_path):
    with pytest.raises(ValueError, match="^colour: unknown config field"):
        TrialConfig.from_dict({"colour": "red"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: config: not valid JSON"):
        load_config(bad)
    with pytest.raises(ValueError, match="cannot read config file"):
        load_config(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="expected a JSON object"):
        TrialConfig.from_json(json.dumps([1, 2]))
