"""Stochastic diagonal Levenberg-Marquardt (LeCun et al. 1998, appendix C).

Each parameter k takes steps of its own size eta / (mu + h_kk), where h_kk is an
estimate of the second derivative of the per-pattern loss with respect to it,
re-estimated on a few hundred patterns before each pass and held fixed during it.

Two estimates of h_kk (`curvature`; docs/classic.md measures both):

* "paper": the paper's own, diagonal second derivatives back-propagated layer by
  layer with every off-diagonal term dropped (`paper_diagonal`).
* "gauss_newton": an unbiased estimate of the exact diagonal of the Gauss-Newton
  matrix of the loss, averaged over the estimation patterns: the network is
  linearised up to its logits (H = diag(p) - pp^T there) and, for the RBF head, up
  to the head's input (the RBF units count as part of the criterion, as in the
  paper; their curvature adds 2 * p_rubbish * I).  One random probe per pattern,
  one backward pass each: see `gauss_newton_diagonal`.

Choices the paper leaves open:

* Batches.  The paper updates after every pattern.  Here one update follows the mean
  gradient of a batch of B patterns with the per-parameter rate eta / (mu + h_kk);
  B = 1 is the paper's algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from lenet_hpo.classic import RBFOutput, ScaledTanh, Subsample, TableConv2d
from lenet_hpo.config import SDLM_CURVATURES
from lenet_hpo.errors import ConfigError

GRADIENT_FLOATS = 20_000_000  # per-pattern gradients held at once (~80 MB of float32)
# Squashing units, through which d2E/da2 = f'(a)^2 d2E/dx2 (the paper's rule).
ELEMENTWISE = (nn.Tanh, nn.Sigmoid, nn.ReLU, nn.LeakyReLU, nn.GELU, ScaledTanh)


class SDLM(torch.optim.Optimizer):
    """p -= lr / (mu + h) * (grad + weight_decay * p), h from `update_curvature`.

    `lr` is the global rate eta of one update.  Before the first estimate h is 0.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        *,
        mu: float = 0.02,
        weight_decay: float = 0.0,
        curvature: str = "gauss_newton",
    ) -> None:
        if lr <= 0 or mu <= 0 or weight_decay < 0:
            raise ConfigError(f"sdlm: invalid lr={lr}, mu={mu}, weight_decay={weight_decay}")
        if curvature not in SDLM_CURVATURES:
            raise ConfigError(f"sdlm_curvature: unknown {curvature!r} (one of {', '.join(SDLM_CURVATURES)})")
        self.curvature_method = curvature
        super().__init__(params, {"lr": lr, "mu": mu, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            # One fused update per group: p -= lr * grad * 1 / (mu + h), the factor cached per pass.
            torch._foreach_addcmul_(params, grads, [self._rate(p, group["mu"]) for p in params], value=-group["lr"])
        return loss

    def _rate(self, p: torch.Tensor, mu: float) -> torch.Tensor:
        """1 / (mu + h) for `p`, recomputed only when h or mu changed."""
        state = self.state[p]
        h = state.get("h")
        if "rate" not in state or state["rate_of"][0] is not h or state["rate_of"][1] != mu:
            state["rate"] = 1.0 / (h + mu) if h is not None else torch.full_like(p, 1.0 / mu)
            state["rate_of"] = (h, mu)
        return state["rate"]

    def curvature(self) -> list[torch.Tensor]:
        """The current h_kk of every parameter (zeros before the first estimate)."""
        return [self.state[p].get("h", torch.zeros_like(p)) for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def update_curvature(
        self,
        model: nn.Module,
        x: torch.Tensor,
        loss_logits: Callable[[torch.Tensor], torch.Tensor],
        generator: torch.Generator | None = None,
    ) -> None:
        """Re-estimate h_kk on the patterns `x` (the trainer calls this before each pass)."""
        if self.curvature_method == "paper":
            estimate = paper_diagonal(model, x, loss_logits)
        else:
            estimate = gauss_newton_diagonal(model, x, loss_logits, generator=generator)
        h = dict(zip(trainable(model), estimate, strict=True))
        for group in self.param_groups:
            for p in group["params"]:
                if p in h:
                    self.state[p]["h"] = h[p]


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def gauss_newton_diagonal(
    model: nn.Module,
    x: torch.Tensor,
    loss_logits: Callable[[torch.Tensor], torch.Tensor],
    *,
    probes: int = 1,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Estimate of the Gauss-Newton diagonal diag(J^T H J), averaged over the patterns
    `x`; one tensor per trainable parameter.

    The loss must be cross-entropy over `loss_logits(logits)`, where `loss_logits`
    only appends constant logits (the MAP loss's rubbish class) or returns its input.
    H is the Hessian of that loss with respect to the logits, diag(p) - pp^T, plus,
    when the model's `head` has a `input_curvature(p)` (the RBF units), the head's own
    curvature c * I with respect to its input.  Each probe is a random vector r with
    E[r r^T] = H; the squared per-pattern gradient of r . outputs is then an unbiased
    estimate of the diagonal at the cost of one backward pass per pattern and probe.
    Computed in evaluation mode (no dropout, batch norm on running statistics).
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())
    head = getattr(model, "head", None)
    curvature = getattr(head, "input_curvature", None)
    was_training = model.training
    model.eval()
    try:
        x = x.repeat_interleave(probes, dim=0)
        logits, head_input = model(x, return_head_input=True)
        k = logits.shape[1]
        probs = torch.softmax(loss_logits(logits).float(), dim=1)
        # Logit probe: e_c - p with c drawn from p over all the loss's classes; the appended
        # logits are constants, so only the first k components reach the parameters.
        drawn = torch.multinomial(probs.cpu(), 1, generator=generator).flatten().to(x.device)
        r_logits = (nn.functional.one_hot(drawn, probs.shape[1]).float() - probs)[:, :k]
        # Head-input probe: sqrt(c) times a random sign vector.
        r_head = torch.zeros_like(head_input)
        if callable(curvature):
            signs = torch.randint(0, 2, head_input.shape, generator=generator).to(head_input) * 2 - 1
            r_head = signs * curvature(probs[:, :k]).clamp(min=0).sqrt().unsqueeze(1)

        def probe_value(
            ps: dict[str, torch.Tensor], xi: torch.Tensor, rz: torch.Tensor, rh: torch.Tensor
        ) -> torch.Tensor:
            z, h = functional_call(model, ({**ps, **frozen}, buffers), (xi.unsqueeze(0),), {"return_head_input": True})
            return (z[0] * rz).sum() + (h[0] * rh).sum()

        per_pattern_grad = vmap(grad(probe_value), in_dims=(None, 0, 0, 0))
        totals = {n: torch.zeros_like(p) for n, p in params.items()}
        chunk = max(1, GRADIENT_FLOATS // sum(p.numel() for p in params.values()))
        for i in range(0, len(x), chunk):
            with torch.enable_grad():
                grads = per_pattern_grad(params, x[i : i + chunk], r_logits[i : i + chunk], r_head[i : i + chunk])
            for n in names:
                totals[n] += grads[n].square().sum(0)
    finally:
        model.train(was_training)
    return [totals[n] / len(x) for n in names]


def paper_diagonal(
    model: nn.Module, x: torch.Tensor, loss_logits: Callable[[torch.Tensor], torch.Tensor]
) -> list[torch.Tensor]:
    """The paper's h_kk (its Appendix C): diagonal second derivatives back-propagated
    layer by layer with the Gauss-Newton approximation, averaged over the patterns `x`.

    Off-diagonal terms are dropped at every layer:  d2E/da2 = f'(a)^2 d2E/dx2 through
    a squashing unit, d2E/dx_i2 = sum_k w_ki^2 d2E/da_k2 through a weighted layer, and
    a shared weight collects sum over its connections of d2E/da2 * x^2.  At the output,
    the criterion's second derivatives with respect to the penalties are the diagonal
    p_i (1 - p_i) of the softmax Hessian, and the RBF units add their own curvature,
    2 (1 - sum_i p_i), which the rubbish class keeps positive.  Always >= 0.
    Computed in evaluation mode on the model's `features` and `classifier` layers.
    """
    layers = [*model.features, *model.classifier]
    params = [p for p in model.parameters() if p.requires_grad]
    totals = {p: torch.zeros_like(p) for p in params}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = []
            h = x
            for layer in layers:
                inputs.append(h)
                h = layer(h)
            k = h.shape[1]
            probs = torch.softmax(loss_logits(h).float(), dim=1)
            d2 = probs[:, :k] * (1 - probs[:, :k])  # d2E/dlogit2; logit = -y, so also d2E/dy2
            head, head_in = layers[-1], inputs[-1]
            if isinstance(head, RBFOutput):
                diff = head_in.unsqueeze(1) - head.centres  # dy_i/dx_j = 2 (x_j - w_ij)
                own = head.input_curvature(probs[:, :k]).clamp(min=0).unsqueeze(1)
                curv = 4 * (d2.unsqueeze(2) * diff.square()).sum(1) + own
                back = layers[:-1]
            else:
                curv, back = d2, layers
            for layer, inp in zip(reversed(back), reversed(inputs[: len(back)]), strict=True):
                curv = diagonal_step(layer, inp, curv, totals)
    finally:
        model.train(was_training)
    return [totals[p] / len(x) for p in params]


def diagonal_step(
    layer: nn.Module, x: torch.Tensor, curv: torch.Tensor, totals: dict[nn.Parameter, torch.Tensor]
) -> torch.Tensor:
    """Add `layer`'s parameters' diagonal second derivatives (summed over the batch) to
    `totals` and return d2E/dx2 at its input, given d2E/d(out)2 `curv`."""
    x2 = x.square()
    if isinstance(layer, nn.Linear):
        _add(totals, layer.weight, curv.t() @ x2)
        _add(totals, layer.bias, curv.sum(0))
        return curv @ layer.weight.square()
    if isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding == (0, 0) and layer.dilation == (1, 1):
        _add(totals, layer.weight, torch.nn.grad.conv2d_weight(x2, layer.weight.shape, curv, stride=layer.stride))
        _add(totals, layer.bias, curv.sum((0, 2, 3)))
        return torch.nn.grad.conv2d_input(x.shape, layer.weight.square(), curv, stride=layer.stride)
    if isinstance(layer, TableConv2d):
        dense = layer.dense_weight()
        per_kernel = torch.nn.grad.conv2d_weight(x2, dense.shape, curv)
        with torch.enable_grad():  # gather the dense kernels' sums onto the table's pairs
            w = layer.weight.detach().requires_grad_()
            (per_pair,) = torch.autograd.grad((layer.dense_weight(w) * per_kernel).sum(), w)
        _add(totals, layer.weight, per_pair)
        _add(totals, layer.bias, curv.sum((0, 2, 3)))
        return torch.nn.grad.conv2d_input(x.shape, dense.square(), curv)
    if isinstance(layer, Subsample):  # a = c * (sum of 4 inputs) + b: c is shared by 4 connections per unit
        _add(totals, layer.weight, (curv * F.avg_pool2d(x2, 2, 2) * 4.0).sum((0, 2, 3)))
        _add(totals, layer.bias, curv.sum((0, 2, 3)))
        return _spread(curv * layer.weight.view(1, -1, 1, 1).square(), x.shape)
    if isinstance(layer, nn.AvgPool2d) and layer.kernel_size in (2, (2, 2)) and layer.stride in (2, (2, 2)):
        return _spread(curv / 16.0, x.shape)
    if isinstance(layer, nn.Flatten):
        return curv.reshape(x.shape)
    if isinstance(layer, nn.Dropout):  # identity in evaluation mode
        return curv
    if isinstance(layer, ELEMENTWISE):
        with torch.enable_grad():
            a = x.detach().requires_grad_()
            (slope,) = torch.autograd.grad(layer(a).sum(), a)
        return curv * slope.square()
    raise ConfigError(
        f"sdlm_curvature 'paper': no diagonal rule for {type(layer).__name__}; use sdlm_curvature = 'gauss_newton'"
    )


def _add(totals: dict[nn.Parameter, torch.Tensor], p: nn.Parameter | None, value: torch.Tensor) -> None:
    if p is not None and p.requires_grad:
        totals[p] += value.reshape(p.shape)


def _spread(curv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Each 2x2 block of the input gets its unit's value (inputs past an odd edge get 0)."""
    out = curv.new_zeros(shape)
    up = curv.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    out[..., : up.shape[2], : up.shape[3]] = up
    return out
