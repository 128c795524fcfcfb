"""Losses: masked multi-label binary cross entropy (papers 000, 001, 003) and paper 002's weighted 3-class CE."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, pos_weight: torch.Tensor | None = None,
               class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross entropy (B, K) summed over entries with mask 1, divided by their count (0 if none count)."""
    logits, target, mask = logits.float(), target.float(), mask.float()
    per_entry = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pos_weight)  # (B, K)
    if class_weight is not None:
        per_entry = per_entry * class_weight.to(per_entry)  # (K,) broadcast over the batch
    counted = mask.sum()
    return (per_entry * mask).sum() / counted.clamp(min=1.0)


def multiclass_ce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                  class_weight: torch.Tensor | None = None, *, binary_only: bool = False) -> torch.Tensor:
    """Paper 002's loss: per-finding softmax CE over (negative, positive, uncertain), weighted w[k, class].

    logits (B, K, 3), target long (B, K) in {0, 1, 2}, mask (B, K), class_weight (K, 3) or None. Averaged over the
    counted entries (the paper's 1/N 1/14 sum). binary_only=True is the paper's validation loss: uncertain targets
    are masked out and the softmax runs over the first two outputs only (class weights are not used).
    """
    target = target.long()
    mask = mask.float()
    if binary_only:
        mask = mask * (target != 2).float()
        log_probs = F.log_softmax(logits[..., :2].float(), dim=-1)  # (B, K, 2)
        safe_target = target.clamp(max=1)
    else:
        log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, K, 3)
        safe_target = target
    nll = -log_probs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)  # (B, K)
    if class_weight is not None and not binary_only:
        weight = class_weight.to(nll)  # (K, 3)
        finding = torch.arange(weight.shape[0], device=nll.device).unsqueeze(0)  # (1, K)
        nll = nll * weight[finding, safe_target]  # w[k, target[b, k]]
    return (nll * mask).sum() / mask.sum().clamp(min=1.0)


def multiclass_weights(target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Paper 002's class weights (K, 3): w = (|N| + |P| + |U|) / count(class) per finding; 0 for an absent class."""
    target = target.long()
    counted = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.bool()
    counts = torch.stack([((target == c) & counted).sum(dim=0) for c in range(3)], dim=1).double()  # (K, 3)
    total = counts.sum(dim=1, keepdim=True)
    weights = torch.where(counts > 0, total / counts.clamp(min=1), torch.zeros_like(counts))
    return weights.float()


def positive_weights(target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """pos_weight (K,) = negatives / positives per finding among counted labels (1 where a finding has no positive)."""
    target = target.float()
    counted = torch.ones_like(target) if mask is None else mask.float()
    positives = (target * counted).sum(dim=0)
    negatives = ((1 - target) * counted).sum(dim=0)
    return torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives))
