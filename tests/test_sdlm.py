"""SDLM, the paper's optimizer: the update, and both estimates of h_kk."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lenet_hpo.classic import CLASSIC, RBFOutput, Subsample, TableConv2d, digit_bitmaps
from lenet_hpo.config import BASELINE
from lenet_hpo.model import build_model, make_activation
from lenet_hpo.sdlm import SDLM, diagonal_step, gauss_newton_diagonal, paper_diagonal
from lenet_hpo.training import loss_logits


class TinyNet(nn.Module):
    """A small model with the `return_head_input` interface SDLM's estimate uses."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 84), nn.Tanh())
        self.head = head

    def forward(self, x, return_head_input=False):
        hidden = self.body(x)
        out = self.head(hidden)
        return (out, hidden) if return_head_input else out


def exact_gauss_newton_diagonal(model, x, loss_logits_fn):
    """diag(J^T H J) of the body's parameters, pattern by pattern with full Jacobians,
    H the exact Hessian of the loss with respect to the head input (the network is
    linearised up to there; the linear or RBF head is part of the criterion)."""
    body = {n: p.detach() for n, p in model.body.named_parameters()}
    total = {n: torch.zeros_like(p) for n, p in body.items()}
    for xi in x:
        hidden = model.body(xi.unsqueeze(0))[0].detach()

        def loss_of_hidden(h):  # for both heads its Hessian does not depend on the label
            return F.cross_entropy(loss_logits_fn(model.head(h.unsqueeze(0))), torch.tensor([0]))

        def hidden_of(params, xi=xi):
            return torch.func.functional_call(model.body, params, (xi.unsqueeze(0),))[0]

        hess = torch.autograd.functional.hessian(loss_of_hidden, hidden)
        jac = torch.func.jacrev(hidden_of)(body)
        for n, jn in jac.items():
            j2 = jn.reshape(len(hidden), -1)
            total[n] += torch.einsum("ak,ab,bk->k", j2, hess, j2).view_as(total[n])
    return {f"body.{n}": t / len(x) for n, t in total.items()}


@pytest.mark.parametrize("head", ["rbf", "linear"])
def test_gauss_newton_estimate_is_unbiased_and_positive(head):
    torch.manual_seed(0)
    model = TinyNet(RBFOutput(digit_bitmaps()) if head == "rbf" else nn.Linear(84, 10))
    with torch.no_grad():
        model.body[0].weight.mul_(0.3)
    x = torch.randn(6, 6)

    def fn(z):
        return torch.cat([z, z.new_full((len(z), 1), -40.0)], 1) if head == "rbf" else z

    exact = exact_gauss_newton_diagonal(model, x, fn)
    estimate = gauss_newton_diagonal(model, x, fn, probes=3000, generator=torch.Generator().manual_seed(1))
    names = [n for n, _ in model.named_parameters()]
    for name, est in zip(names, estimate, strict=True):
        assert (est >= 0).all() and est.sum() > 0
        if name in exact:
            assert est.sum().item() == pytest.approx(exact[name].sum().item(), rel=0.05)


# --- the paper's diagonal back-propagation of second derivatives ----------------------------


def hessian_diagonal(f, t):
    return torch.autograd.functional.hessian(f, t).reshape(t.numel(), t.numel()).diagonal().view_as(t)


PAPER_RULE_LAYERS = {
    "linear": (lambda: nn.Linear(5, 4), (3, 5)),
    "conv": (lambda: nn.Conv2d(2, 3, 3), (2, 2, 6, 6)),
    "table": (lambda: TableConv2d(3, ((0,), (0, 2), (0, 1, 2)), 3), (2, 3, 6, 6)),
    "subsample": (lambda: Subsample(2), (2, 2, 5, 5)),
    "avgpool": (lambda: nn.AvgPool2d(2, 2), (2, 2, 4, 4)),
}


@pytest.mark.parametrize("kind", list(PAPER_RULE_LAYERS))
def test_paper_rule_of_each_weighted_layer_drops_only_the_off_diagonal_terms(kind):
    """Given d = d2E/da2 >= 0 at a layer's units, the paper's rule is the Hessian diagonal
    of E' = 1/2 sum d * a^2 with each unit's inputs taken one connection at a time:
    exact for weights used once per unit and for every input."""
    torch.manual_seed(0)
    make, shape = PAPER_RULE_LAYERS[kind]
    layer = make()
    x = torch.randn(shape)
    with torch.no_grad():
        d = torch.rand_like(layer(x))
    params = dict(layer.named_parameters())
    totals = {p: torch.zeros_like(p) for p in params.values()}
    back = diagonal_step(layer, x, d, totals)

    def energy(out):
        return 0.5 * (d * out.square()).sum()

    assert torch.allclose(back, hessian_diagonal(lambda xi: energy(layer(xi)), x), atol=1e-5)
    for name, p in params.items():

        def of_param(v, name=name):
            return energy(torch.func.functional_call(layer, {**params, name: v}, (x,)))

        if isinstance(layer, Subsample) and name == "weight":
            # the coefficient is shared by the 4 connections of a unit: sum of d * x^2 over them
            expected = (d * F.avg_pool2d(x.square(), 2, 2) * 4).sum((0, 2, 3))
        else:
            expected = hessian_diagonal(of_param, p.detach())
        assert torch.allclose(totals[p], expected, atol=1e-5), name


def test_paper_rule_of_a_squashing_unit_is_the_squared_slope():
    a = torch.linspace(-3, 3, 13)
    d = torch.rand(13)
    slope = 1.7159 * (2 / 3) * (1 - torch.tanh(2 * a / 3) ** 2)
    assert torch.allclose(diagonal_step(make_activation("scaled_tanh"), a, d, {}), d * slope**2, atol=1e-6)


def test_paper_diagonal_is_exact_at_the_last_layer_and_positive_everywhere():
    torch.manual_seed(0)
    cfg = BASELINE.replace(c1=2, c3=3, f5=8, f6=6)
    model = build_model(cfg)
    x = torch.randn(4, 1, 32, 32)
    h = dict(zip([n for n, _ in model.named_parameters()], paper_diagonal(model, x, lambda z: z), strict=True))
    assert all((v >= 0).all() and v.sum() > 0 for v in h.values())
    head = model.classifier[-1]
    hidden = model.classifier[:-1](model.features(x)).detach()
    exact = {"weight": torch.zeros_like(head.weight), "bias": torch.zeros_like(head.bias)}
    for hi in hidden:  # the loss is convex in the logits and the head linear: Hessian = Gauss-Newton
        for name, p in head.named_parameters():

            def loss_of(v, name=name, hi=hi):
                logits = torch.func.functional_call(
                    head, {**dict(head.named_parameters()), name: v}, (hi.unsqueeze(0),)
                )
                return F.cross_entropy(logits, torch.tensor([3]))

            exact[name] += hessian_diagonal(loss_of, p.detach()) / len(x)
    assert torch.allclose(h["classifier.5.weight"], exact["weight"], atol=1e-6)
    assert torch.allclose(h["classifier.5.bias"], exact["bias"], atol=1e-6)


def test_paper_diagonal_of_the_classic_network_agrees_with_gauss_newton_at_the_top():
    """Above C5 the two estimates share their terms; below, the paper's drops more."""
    torch.manual_seed(0)
    model = build_model(CLASSIC)
    x = torch.rand(64, 1, 32, 32) * 1.275 - 0.1
    fn = lambda z: loss_logits(CLASSIC, z)  # noqa: E731
    paper = paper_diagonal(model, x, fn)
    gn = gauss_newton_diagonal(model, x, fn, probes=20, generator=torch.Generator().manual_seed(0))
    names = [n for n, _ in model.named_parameters()]
    for name, p, g in zip(names, paper, gn, strict=True):
        assert (p >= 0).all() and p.sum() > 0, name
        if name.startswith("classifier.3"):  # F6, just under the RBF units
            assert p.sum().item() == pytest.approx(g.sum().item(), rel=0.1), name


def test_paper_diagonal_refuses_a_layer_it_has_no_rule_for():
    model = build_model(BASELINE.replace(batch_norm=True))
    with pytest.raises(ValueError, match="BatchNorm2d.*gauss_newton"):
        paper_diagonal(model, torch.randn(2, 1, 32, 32), lambda z: z)


def test_sdlm_decreases_the_loss_on_a_tiny_problem():
    torch.manual_seed(0)
    x = torch.randn(64, 6)
    y = (x[:, 0] + x[:, 1] > 0).long() + 2 * (x[:, 2] > 0).long()
    model = TinyNet(nn.Linear(84, 4))
    opt = SDLM(model.parameters(), lr=0.01, mu=0.02)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(6):
        opt.update_curvature(model, x[:32], lambda z: z, gen)
        assert all((h >= 0).all() for h in opt.curvature()) and sum(h.sum() for h in opt.curvature()) > 0
        for i in range(0, 64, 8):
            loss = F.cross_entropy(model(x[i : i + 8]), y[i : i + 8])
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses.append(F.cross_entropy(model(x), y).item())
    assert losses[-1] < 0.7 * losses[0]
    # the per-parameter step is lr / (mu + h) * grad
    p = nn.Parameter(torch.ones(3))
    opt = SDLM([p], lr=0.001, mu=0.02)
    p.grad = torch.ones(3)
    opt.step()
    assert p.detach().tolist() == pytest.approx([1 - 0.001 / 0.02] * 3)
    opt.state[p]["h"] = torch.tensor([0.0, 0.08, 1.98])
    opt.step()
    assert p.detach().tolist() == pytest.approx([1 - 0.1, 1 - 0.05 - 0.01, 1 - 0.05 - 0.0005])
