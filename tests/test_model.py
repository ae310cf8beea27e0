import itertools

import pytest
import torch

from lenet_hpo.config import ACTIVATIONS, BASELINE, INITS, OPTIMIZERS, POOLINGS, SCHEDULES, TrialConfig
from lenet_hpo.model import build_model, count_macs, count_params
from lenet_hpo.training import make_optimizer, make_schedule


def test_baseline_parameter_count():
    assert count_params(build_model(BASELINE)) == 61_706


def test_baseline_macs():
    # C1 28*28*6*25 + C3 10*10*16*150 + 400*120 + 120*84 + 84*10
    assert count_macs(build_model(BASELINE)) == 117_600 + 240_000 + 48_000 + 10_080 + 840


def test_shapes_are_computed():
    for k, c3, channels in [(3, 32, 1), (5, 8, 3)]:
        model = build_model(TrialConfig(kernel_size=k, c3=c3), in_channels=channels, num_classes=7)
        assert model(torch.zeros(2, channels, 32, 32)).shape == (2, 7)


def test_same_seed_same_weights():
    a, b = build_model(BASELINE), build_model(BASELINE)
    c = build_model(BASELINE.replace(seed=1))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


OPTIONS = (
    [{"activation": a} for a in ACTIVATIONS]
    + [{"pooling": p} for p in POOLINGS]
    + [{"init": i} for i in INITS]
    + [{"optimizer": o, "momentum": 0.0} for o in OPTIMIZERS]
    + [{"schedule": s} for s in SCHEDULES]
    + [{"kernel_size": 3}, {"batch_norm": True}, {"dropout": 0.5}, {"nesterov": True}, {"weight_decay": 1e-3}]
)


@pytest.mark.parametrize("changes", OPTIONS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("channels", [1, 3])
def test_every_option_builds_and_takes_a_step(changes, channels):
    cfg = BASELINE.replace(**changes)
    model = build_model(cfg, in_channels=channels)
    opt = make_optimizer(cfg, list(model.parameters()))
    sched = make_schedule(cfg, opt, total_steps=10)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, channels, 32, 32), torch.randint(0, 10, (8,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    sched.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_init_schemes_differ_from_default():
    default = build_model(BASELINE)
    for scheme in ("xavier", "kaiming", "lecun"):
        other = build_model(BASELINE.replace(init=scheme))
        w0, w1 = next(default.parameters()), next(other.parameters())
        assert not torch.equal(w0, w1)
    # LeCun uniform: bound sqrt(3 / fan_in); the first conv has fan_in 25
    w = next(build_model(BASELINE.replace(init="lecun")).parameters())
    assert w.abs().max() <= (3 / 25) ** 0.5


def test_all_activation_pooling_pairs_forward():
    for a, p in itertools.product(ACTIVATIONS, POOLINGS):
        out = build_model(BASELINE.replace(activation=a, pooling=p))(torch.randn(3, 1, 32, 32))
        assert torch.isfinite(out).all()
