"""Stochastic diagonal Levenberg-Marquardt (LeCun et al. 1998, appendix C).

Each parameter k takes steps of its own size eta / (mu + h_kk), where h_kk is an
estimate of the second derivative of the per-pattern loss with respect to it,
re-estimated on a few hundred patterns before each pass and held fixed during it.

Choices the paper leaves open (docs/classic.md measures them):

* h_kk is an unbiased estimate of the diagonal of the Gauss-Newton matrix of the
  loss, averaged over the estimation patterns: the network is linearised up to its
  logits (H = diag(p) - pp^T there) and, for the RBF head, up to the head's input
  (the RBF units count as part of the criterion, as in the paper; their curvature
  adds 2 * p_rubbish * I).  One random probe per pattern, one backward pass each:
  see `gauss_newton_diagonal`.  The paper computes its approximation by
  back-propagating diagonal second derivatives only.
* Batches.  The paper updates after every pattern.  Here one update follows the mean
  gradient of a batch of B patterns with the per-parameter rate eta / (mu + h_kk);
  B = 1 is the paper's algorithm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

GRADIENT_FLOATS = 20_000_000  # per-pattern gradients held at once (~80 MB of float32)


class SDLM(torch.optim.Optimizer):
    """p -= lr / (mu + h) * (grad + weight_decay * p), h from `update_curvature`.

    `lr` is the global rate eta of one update.  Before the first estimate h is 0.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, *, mu: float = 0.02, weight_decay: float = 0.0) -> None:
        if lr <= 0 or mu <= 0 or weight_decay < 0:
            raise ValueError(f"sdlm: invalid lr={lr}, mu={mu}, weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "mu": mu, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                h = self.state[p].get("h")
                denom = h + group["mu"] if h is not None else torch.full_like(p, group["mu"])
                p.addcdiv_(d, denom, value=-group["lr"])
        return loss

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

        def probe_value(ps: dict[str, torch.Tensor], xi: torch.Tensor, rz: torch.Tensor, rh: torch.Tensor) -> torch.Tensor:
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
