"""Final runs: train, test, save with predictions; reuse what is there; the shared run cache."""

import dataclasses

import pandas as pd
import pytest
import torch

from lenet_hpo.checkpoint import load_checkpoint
from lenet_hpo.config import BASELINE
from lenet_hpo.final import RunCache, predictions_path, read_predictions, train_final

FAST = BASELINE.replace(activation="relu", pooling="max", optimizer="adam", lr=3e-3, epochs=1)


def test_a_final_run_keeps_checkpoint_history_and_test_predictions(synthetic, tmp_path):
    run = train_final(FAST, synthetic, tmp_path / "m.pt", role="fast", device="cpu")
    ck = load_checkpoint(run.checkpoint)
    assert run.source == "trained" and ck.config == FAST and ck.extra["run"]["test_accuracy"] == run.test_accuracy
    assert [h["epoch"] for h in ck.extra["history"]] == [1] and ck.extra["history"][0]["split"] == "test"
    preds = read_predictions(run.checkpoint)
    assert list(preds.columns) == ["image", "label", "predicted"] and len(preds) == len(synthetic.test)
    assert preds.label.tolist() == synthetic.test.y.tolist()
    assert (preds.label == preds.predicted).mean() == pytest.approx(run.test_accuracy)
    assert pd.read_csv(predictions_path(run.checkpoint)).equals(preds)  # plain pandas reads it too


def test_a_run_done_in_another_precision_is_trained_again(synthetic, tmp_path):
    first = train_final(FAST, synthetic, tmp_path / "m.pt", role="fast", device="cpu", precision="fp32")
    again = train_final(FAST, synthetic, tmp_path / "m.pt", role="fast", device="cpu", precision="fp32")
    assert again.source == "reused" and again.test_accuracy == first.test_accuracy
    other = train_final(FAST, synthetic, tmp_path / "m.pt", role="fast", device="cpu", precision="bf16")
    assert other.source == "trained" and other.precision == "bf16"


def test_predictions_missing_from_an_older_run_are_recomputed_from_its_weights(synthetic, tmp_path):
    run = train_final(FAST, synthetic, tmp_path / "m.pt", role="fast", device="cpu")
    kept = read_predictions(run.checkpoint)
    predictions_path(run.checkpoint).unlink()
    again = train_final(FAST, synthetic, tmp_path / "m.pt", role="fast", device="cpu")
    assert again.source == "reused" and read_predictions(run.checkpoint).equals(kept)


def test_the_cache_hits_for_the_same_run_and_equals_training_it_again(synthetic, tmp_path):
    cache = RunCache(tmp_path / "cache")
    a = train_final(FAST, synthetic, tmp_path / "a" / "baseline-seed0.pt", role="baseline", device="cpu", cache=cache)
    b = train_final(FAST, synthetic, tmp_path / "b" / "baseline-seed0.pt", role="baseline", device="cpu", cache=cache)
    fresh = train_final(FAST, synthetic, tmp_path / "c" / "baseline-seed0.pt", role="baseline", device="cpu")
    assert (a.source, b.source, fresh.source) == ("trained", "cached", "trained")
    assert a.test_accuracy == b.test_accuracy == fresh.test_accuracy
    assert read_predictions(b.checkpoint).equals(read_predictions(fresh.checkpoint))
    assert b.checkpoint == str(tmp_path / "b" / "baseline-seed0.pt") and load_checkpoint(b.checkpoint).config == FAST


@pytest.mark.parametrize(
    "change", ["seed", "epochs", "config", "precision", "checksum", "data", "split", "device", "torch", "code"]
)
def test_the_cache_key_misses_when_any_part_changes(synthetic, change):
    from lenet_hpo.data import load_data

    cache, cpu = RunCache(), torch.device("cpu")
    key = cache.key(FAST, synthetic, "fp32", cpu)
    assert cache.key(FAST, synthetic, "fp32", cpu) == key  # the same run: the same key
    changed = {
        "seed": lambda: cache.key(FAST.replace(seed=1), synthetic, "fp32", cpu),
        "epochs": lambda: cache.key(FAST.replace(epochs=2), synthetic, "fp32", cpu),
        "config": lambda: cache.key(FAST.replace(c1=7), synthetic, "fp32", cpu),
        "precision": lambda: cache.key(FAST, synthetic, "bf16", cpu),
        "data": lambda: cache.key(FAST, load_data("synthetic", val_size=400, train_limit=1000), "fp32", cpu),
        "split": lambda: cache.key(FAST, load_data("synthetic", val_size=400, split_seed=1), "fp32", cpu),
        "checksum": lambda: cache.key(FAST, dataclasses.replace(synthetic, checksum="0" * 64), "fp32", cpu),
        "device": lambda: cache.key(FAST, synthetic, "fp32", torch.device("cuda")),
        "torch": lambda: cache.key(FAST, synthetic, "fp32", cpu, torch_version="2.99.0"),
        "code": lambda: cache.key(FAST, synthetic, "fp32", cpu, code="another version of train.py"),
    }[change]()
    assert changed != key


def test_a_corrupt_cached_run_is_trained_again(synthetic, tmp_path):
    cache = RunCache(tmp_path / "cache")
    train_final(FAST, synthetic, tmp_path / "a.pt", role="baseline", device="cpu", cache=cache)
    (cached,) = (tmp_path / "cache").glob("*.pt")
    cached.write_bytes(b"garbage")
    again = train_final(FAST, synthetic, tmp_path / "b.pt", role="baseline", device="cpu", cache=cache)
    assert again.source == "trained"
