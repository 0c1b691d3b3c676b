"""Concept neurons: output rows of the cross-attention projections W_q, W_k, W_v.

A neuron's saliency is the mean |gradient| over its row; z-scored within its layer, rows with
z > xi are the concept neurons. Masks are dicts {parameter name: bool row mask}.
"""
from __future__ import annotations

import torch

Mask = dict[str, torch.Tensor]
CA_PROJECTIONS = ("to_q", "to_k", "to_v")


def cross_attention_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """{name: weight} of every attn2 q/k/v projection, the only weights TRUST may change."""
    from trust_unlearn.pipeline import cross_attention_layers

    out = {}
    for layer_name, layer in cross_attention_layers(unet).items():
        for proj in CA_PROJECTIONS:
            out[f"{layer_name}.{proj}.weight"] = getattr(layer, proj).weight
    return out


def neuron_saliency(grad: torch.Tensor) -> torch.Tensor:
    """s_u = mean over the row of |g|."""
    return grad.abs().flatten(1).mean(dim=1)


def zscore_mask(saliency: torch.Tensor, xi: float) -> torch.Tensor:
    """m_u = 1[(s_u - mean) / std > xi], within one layer."""
    std = saliency.std()
    if not torch.isfinite(std) or std == 0:
        return torch.zeros_like(saliency, dtype=torch.bool)
    return (saliency - saliency.mean()) / std > xi


def concept_neuron_masks(grads: dict[str, torch.Tensor], xi: float) -> Mask:
    return {name: zscore_mask(neuron_saliency(g), xi) for name, g in grads.items()}


def contrastive_neuron_masks(target: dict[str, torch.Tensor], retain: dict[str, torch.Tensor], weight: float,
                             xi: float) -> Mask:
    """Rows salient for the target *beyond* the retain prompts: per layer, z-score of
    s_t / mean(s_t) - weight * s_r / mean(s_r) (each saliency relative to its layer's mean, so the two
    alignment scores' scales do not matter). A row every prompt leans on (colour, shape in general) cancels."""
    def relative(g):
        s = neuron_saliency(g)
        mean = s.mean()
        return s / mean if mean > 0 else s
    return {name: zscore_mask(relative(g) - weight * relative(retain[name]), xi) for name, g in target.items()}


def mask_size(mask: Mask) -> int:
    return int(sum(int(m.sum()) for m in mask.values()))


def mask_indices(mask: Mask) -> set[tuple[str, int]]:
    return {(name, int(i)) for name, m in mask.items() for i in m.nonzero().flatten().tolist()}


def jaccard(a: Mask, b: Mask) -> float:
    """Overlap of two masks' selected neuron locations (1.0 for two empty masks)."""
    sa, sb = mask_indices(a), mask_indices(b)
    return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)


def per_layer_sizes(mask: Mask) -> dict[str, int]:
    return {name: int(m.sum()) for name, m in mask.items()}
