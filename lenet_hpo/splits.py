"""Stratified splits: the one way a set of labelled images is cut in two (validation, test, subsets)."""

from __future__ import annotations

import torch

from lenet_hpo.errors import ConfigError


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val), sorted; each class keeps its share in both parts.

    Class quotas are val_size * class_count / n, rounded by largest remainder so
    the validation part has exactly `val_size` items.
    """
    n = len(labels)
    if not 0 < val_size < n:
        raise ConfigError(f"val_size: {val_size} must be between 1 and {n - 1}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * val_size / n
    quota = exact.floor().long()
    remainder = int(val_size - quota.sum())
    order = torch.argsort(exact - quota, descending=True, stable=True)
    quota[order[:remainder]] += 1
    train_parts, val_parts = [], []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=True):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_parts.append(idx[:q])
        train_parts.append(idx[q:])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values
