import pytest
import torch

from lenet_hpo import acquire as A
from lenet_hpo import data as D


def test_stratified_split_is_deterministic_disjoint_and_stratified():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([100, 200, 300, 400])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    tr, va = D.stratified_split(labels, 100, seed=3)
    tr2, va2 = D.stratified_split(labels, 100, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 100 and len(tr) == 900
    assert not set(tr.tolist()) & set(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    assert torch.bincount(labels[va]).tolist() == [10, 20, 30, 40]
    _, other = D.stratified_split(labels, 100, seed=4)
    assert not torch.equal(va, other)
    with pytest.raises(ValueError, match="val_size"):
        D.stratified_split(labels, 0, seed=0)


def test_split_quota_sums_exactly_with_remainders():
    labels = torch.tensor([0] * 7 + [1] * 7 + [2] * 7)
    _, va = D.stratified_split(labels, 10, seed=0)
    assert len(va) == 10 and sorted(torch.bincount(labels[va]).tolist()) == [3, 3, 4]


def test_to_32_pad_and_resize():
    x = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    padded = D.to_32(x, "pad")
    assert padded.shape == (2, 1, 32, 32) and padded.dtype == torch.uint8
    assert padded[:, :, :2].sum() == 0 and torch.equal(padded[:, :, 2:30, 2:30], x)
    resized = D.to_32(x, "resize")
    assert resized.shape == (2, 1, 32, 32) and int(resized.float().mean()) == 200
    with pytest.raises(ValueError, match="resize"):
        D.to_32(x, "crop")


def test_normalisation_uses_train_split_stats(synthetic):
    x = D.scale_input(synthetic.train.x, "standard", synthetic.mean, synthetic.std)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-3
    assert D.scale_input(synthetic.val.x, "standard", synthetic.mean, synthetic.std).dtype == torch.float32


def test_load_data_parts_and_meta(synthetic):
    assert len(synthetic.val) == 400 and len(synthetic.train) == 1600 and len(synthetic.test) == 500
    assert synthetic.train.x.shape[1:] == (1, 32, 32)
    meta = synthetic.meta()
    assert meta["split_seed"] == 0 and meta["n_val"] == 400 and meta["classes"] == list(A.DIGITS)
    limited = D.load_data("synthetic", val_size=400, train_limit=300)
    assert len(limited.train) == 300 and len(limited.val) == 400
    assert torch.bincount(limited.train.y).min() >= 25


@pytest.mark.realdata
def test_real_mnist_is_verified_and_learnable(mnist_dir):
    from lenet_hpo.config import BASELINE
    from lenet_hpo.training import train

    data = D.load_data("mnist", data_dir=mnist_dir, train_limit=6000)
    assert (len(data.val), len(data.test)) == (10_000, 10_000)
    assert data.checksum == A.dataset_checksum(A.DATASETS["mnist"])
    assert abs(data.mean[0] - 0.1307 * 28 * 28 / 32 / 32) < 0.005  # padding adds background
    assert torch.bincount(data.val.y).min() > 850  # stratified: each digit ~10%
    cfg = BASELINE.replace(activation="relu", pooling="max", optimizer="adam", lr=2e-3, epochs=1)
    result = train(cfg, data, device="cpu")
    assert result.history[-1].eval_acc > 0.9


def test_channel_stats_match_the_direct_computation():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = D.channel_stats(x)
    xf = x.double() / 255
    assert mean == pytest.approx(tuple(xf.mean((0, 2, 3)).tolist()), abs=1e-12)
    assert std == pytest.approx(tuple(xf.std((0, 2, 3)).tolist()), abs=1e-12)


def test_the_validation_subset_is_fixed_stratified_and_part_of_the_split(synthetic):
    a, b = synthetic.val_subset(100, seed=0), synthetic.val_subset(100, seed=0)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and len(a) == 100
    assert torch.bincount(a.y, minlength=10).tolist() == [10] * 10  # the split is balanced, so is the subset
    assert D.split_digest(a) != D.split_digest(synthetic.val_subset(100, seed=1))
    rows = {tuple(x.flatten().tolist()) for x in synthetic.val.x}
    assert all(tuple(x.flatten().tolist()) in rows for x in a.x)  # validation images, nothing else
    assert synthetic.val_subset(0, seed=0) is synthetic.val and synthetic.val_subset(10**6, seed=0) is synthetic.val
