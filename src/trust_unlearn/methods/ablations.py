"""TRUST ablations, the questions the paper's reviewers asked, each a named method built on `Trust`.

- `trust-static`: the concept-neuron mask is estimated once (step 0) and kept: static vs dynamic.
- `trust-noise-saliency`: saliency from the noise-prediction loss, g = d||eps_theta(z_t,t,c_f) - eps||^2 / d theta_CA
  on the original model's target images (SalUn's saliency signal), instead of the alignment score.
- `trust-zero`: "zero the concept neurons" instead of CIP: every time the mask is estimated, its rows
  are set to 0 (CIP's L1 pull on theta*g taken to its hard limit); then L_prev trains the masked rows
  as in TRUST, with no regulariser.
- `trust-noreg`: L_prev only (beta = 0, no CIP/CSR); dynamic mask and selective update unchanged.
The xi x beta sensitivity is a sweep of `trust` itself (`trust bench --sweep`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import gradients
from trust_unlearn.methods.trust import Trust, TrustConfig
from trust_unlearn.neurons import mask_size


@dataclass
class StaticConfig(TrustConfig):
    mask_every: int = 0


@register_method("trust-static")
class TrustStatic(Trust):
    config_cls = StaticConfig


@register_method("trust-noise-saliency")
class TrustNoiseSaliency(Trust):
    needs_scorer = False  # saliency from the noise-prediction loss

    def saliency_gradients(self) -> dict[str, torch.Tensor]:
        grads = gradients(self.ctx.diffusion_loss(self.cfg.saliency_batch), self.params)
        self.ctx.average(list(grads.values()))
        return grads


@dataclass
class ZeroConfig(TrustConfig):
    reg: str = "none"


@register_method("trust-zero")
class TrustZero(Trust):
    config_cls = ZeroConfig

    def refresh_mask(self, k: int) -> None:
        """Locate the concept neurons as TRUST does, then set their rows to zero."""
        super().refresh_mask(k)
        with torch.no_grad():
            for name, p in self.params.items():
                p[self.mask[name]] = 0

    def step(self, k: int) -> dict:
        log = super().step(k)
        if log.get("mask_updated"):
            log["zeroed"] = mask_size(self.mask)
        return log


@dataclass
class NoRegConfig(TrustConfig):
    reg: str = "none"
    beta: float = 0.0


@register_method("trust-noreg")
class TrustNoReg(Trust):
    config_cls = NoRegConfig
