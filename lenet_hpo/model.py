"""`build_model`: config in, `nn.Module` out.  Shapes are computed, never hard-coded.

One family: the modern LeNet-5 by default, the paper's network when every classic
switch is on (`architecture = "classic"` asserts exactly that; see classic.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from lenet_hpo.classic import C3_TABLE, RBFOutput, ScaledTanh, Subsample, TableConv2d, digit_bitmaps, paper_init_
from lenet_hpo.config import TrialConfig
from lenet_hpo.errors import ConfigError

INPUT_SIZE = 32  # LeNet-5 reads 32x32 images; 28x28 digits are padded or resized


def make_activation(name: str) -> nn.Module:
    match name:
        case "tanh":
            return nn.Tanh()
        case "relu":
            return nn.ReLU()
        case "leaky_relu":
            return nn.LeakyReLU(0.01)
        case "gelu":
            return nn.GELU()
        case "sigmoid":
            return nn.Sigmoid()
        case "scaled_tanh":
            return ScaledTanh()
    raise ConfigError(f"activation: unknown {name!r}")


def feature_size(cfg: TrialConfig, size: int = INPUT_SIZE) -> int:
    """Side of the feature map after conv-pool-conv-pool (valid convolutions)."""
    for _ in range(2):
        size = (size - cfg.kernel_size + 1) // 2
    return size


class LeNet5(nn.Module):
    """Parameterised LeNet-5: conv-[bn]-act-pool x2, then three linear layers.

    Classic switches: pooling "subsample" (trainable, then squashed), c3_table (the
    second convolution through Table I), head "rbf" (fixed digit bitmaps, logits = -y).
    """

    def __init__(self, cfg: TrialConfig, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        side = feature_size(cfg)
        if side < 1:
            raise ConfigError(
                f"kernel_size: {cfg.kernel_size} leaves no feature map on {INPUT_SIZE}x{INPUT_SIZE} input"
            )
        if cfg.head == "rbf" and num_classes != 10:
            raise ConfigError(f"head: 'rbf' has the 10 digit bitmaps; this dataset has {num_classes} classes")
        # Batch norm makes the convolution's bias redundant.
        bias = not cfg.batch_norm

        def pool(channels: int) -> list[nn.Module]:
            match cfg.pooling:
                case "avg":
                    return [nn.AvgPool2d(2, 2)]
                case "max":
                    return [nn.MaxPool2d(2, 2)]
            # The paper's S2/S4 units have weights, so they squash like every other layer.
            return [Subsample(channels), make_activation(cfg.activation)]

        def conv_block(cin: int, cout: int, table: bool = False) -> list[nn.Module]:
            conv = (
                TableConv2d(cin, C3_TABLE, cfg.kernel_size)
                if table
                else nn.Conv2d(cin, cout, cfg.kernel_size, bias=bias)
            )
            layers: list[nn.Module] = [conv]
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers += [make_activation(cfg.activation), *pool(cout)]
            return layers

        def fc_block(fin: int, fout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Linear(fin, fout), make_activation(cfg.activation)]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            return layers

        # (N, C, 32, 32) -> (N, c1, s1, s1) -> (N, c3, side, side)
        self.features = nn.Sequential(*conv_block(in_channels, cfg.c1), *conv_block(cfg.c1, cfg.c3, cfg.c3_table))
        # (N, c3 * side * side) -> (N, num_classes) logits.  On 32x32 input F5 is the
        # paper's C5: a 5x5 convolution over all of S4 with a 1x1 output is this linear layer.
        # (Layers are made in forward order: their default init draws from the seeded stream.)
        hidden = [nn.Flatten(), *fc_block(cfg.c3 * side * side, cfg.f5), *fc_block(cfg.f5, cfg.f6)]
        head = RBFOutput(digit_bitmaps()) if cfg.head == "rbf" else nn.Linear(cfg.f6, num_classes)
        self.classifier = nn.Sequential(*hidden, head)

    @property
    def head(self) -> nn.Module:
        return self.classifier[-1]

    def forward(
        self, x: torch.Tensor, return_head_input: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, classes); with return_head_input, also the output layer's input
        (N, f6), which SDLM's curvature estimate needs."""
        hidden = self.features(x)
        *body, head = self.classifier
        for layer in body:
            hidden = layer(hidden)
        logits = head(hidden)
        return (logits, hidden) if return_head_input else logits


def init_weights(model: nn.Module, scheme: str) -> None:
    """Re-initialise conv and linear weights; biases start at zero.

    "paper" instead draws every trainable weight and bias (subsampling included)
    uniform in +-2.4/F_i.  The other schemes leave subsampling at its start
    (average pooling) and treat a table convolution as a dense one.
    """
    if scheme == "default":
        return
    if scheme == "paper":
        paper_init_(model)
        return
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear, TableConv2d)):
            continue
        match scheme:
            case "xavier":
                nn.init.xavier_uniform_(m.weight)
            case "kaiming":
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            case "lecun":
                fan_in = m.weight[0].numel()
                bound = math.sqrt(3.0 / fan_in)  # variance 1/fan_in
                nn.init.uniform_(m.weight, -bound, bound)
            case _:
                raise ConfigError(f"init: unknown {scheme!r}")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_model(cfg: TrialConfig, *, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """Build the network `cfg` describes; weights are drawn from `cfg.seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LeNet5(cfg, in_channels=in_channels, num_classes=num_classes)
        init_weights(model, cfg.init)
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: nn.Module, in_channels: int = 1) -> int:
    """Multiply-accumulates of one forward pass on one image (conv and linear layers,
    and modules with a `macs(inp, out)` method)."""

    def per_module(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
        if isinstance(m, nn.Conv2d):
            return out[0].numel() * m.weight[0].numel()  # in_channels/groups * kh * kw per output
        if isinstance(m, nn.Linear):
            return m.in_features * m.out_features
        extra = getattr(m, "macs", None)
        return int(extra(inp, out)) if callable(extra) else 0

    return _sum_over_modules(model, in_channels, per_module)


def count_connections(model: nn.Module, in_channels: int = 1) -> int:
    """Weighted connections of one forward pass on one image, as the paper counts them:
    one per (input, unit) pair through a weight, shared or fixed, plus one per bias.
    Conv and linear layers, and modules with a `connections(inp, out)` method."""

    def per_module(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
        bias = 1 if getattr(m, "bias", None) is not None else 0
        if isinstance(m, nn.Conv2d):
            return out[0].numel() * (m.weight[0].numel() + bias)
        if isinstance(m, nn.Linear):
            return m.out_features * (m.in_features + bias)
        extra = getattr(m, "connections", None)
        return int(extra(inp, out)) if callable(extra) else 0

    return _sum_over_modules(model, in_channels, per_module)


def _sum_over_modules(
    model: nn.Module, in_channels: int, per_module: Callable[[nn.Module, torch.Tensor, torch.Tensor], int]
) -> int:
    """Run one zero image through `model` and sum `per_module` over the modules it calls."""
    total = 0

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += per_module(m, inp[0][:1], out[:1])

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            device = next(model.parameters()).device
            model(torch.zeros(1, in_channels, INPUT_SIZE, INPUT_SIZE, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
