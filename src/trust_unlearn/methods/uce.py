"""UCE (Gandikota et al., WACV 2024): a closed-form edit of the cross-attention K/V projections.

For every `attn2.to_k` and `attn2.to_v` weight W (out x d_text), with c the text encoder's token
states (what cross-attention reads):
    W' = (lam * W + s_e * sum_{erase} W c*_i c_i^T + s_p * sum_{preserve} W c_j c_j^T)
         (lam * I + s_e * sum_{erase} c_i c_i^T + s_p * sum_{preserve} c_j c_j^T)^-1
Erase pairs, as in UCE's code: the token states of a target prompt from its last word onward
(last word, end token, padding), aligned position by position with those of its anchor prompt
(c*_i, so the target's K/V become the anchor's). Preserve: every token of every retain prompt
maps to its own original K/V. lam = 0.1, s_e = 1, s_p = max(0.1, 1 / #retain prompts) when unset
(UCE's defaults). All in `step(0)`; run it with `--steps 1`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import RunContext
from trust_unlearn.pipeline import cross_attention_layers


@dataclass
class UceConfig:
    lamb: float = 0.1  # ridge term keeping W' near W
    erase_scale: float = 1.0
    preserve_scale: float | None = None  # default max(0.1, 1 / number of retain prompts)
    projections: str = "kv"  # which of to_k / to_v to edit ("kv", "k" or "v")

    def validate(self) -> "UceConfig":
        if self.lamb <= 0 or self.erase_scale < 0 or (self.preserve_scale is not None and self.preserve_scale < 0):
            raise UserError("need lamb > 0, erase_scale >= 0 and preserve_scale >= 0")
        if not self.projections or set(self.projections) - {"k", "v"}:
            raise UserError("projections must be 'kv', 'k' or 'v'")
        return self


def kv_parameters(unet, projections: str = "kv") -> dict[str, torch.nn.Parameter]:
    out = {}
    for layer_name, layer in cross_attention_layers(unet).items():
        for p in projections:
            out[f"{layer_name}.to_{p}.weight"] = getattr(layer, f"to_{p}").weight
    return out


def uce_solve(w: torch.Tensor, erase_in: torch.Tensor, erase_out_in: torch.Tensor, preserve: torch.Tensor,
              lamb: float, s_e: float, s_p: float) -> torch.Tensor:
    """W' for inputs `erase_in` (n, d) that should produce W @ `erase_out_in` and `preserve` (m, d) unchanged."""
    w64 = w.double()
    ci, cs, cp = erase_in.double(), erase_out_in.double(), preserve.double()
    d = w.shape[1]
    mat1 = lamb * w64 + s_e * (w64 @ cs.T) @ ci + s_p * (w64 @ cp.T) @ cp
    mat2 = lamb * torch.eye(d, dtype=torch.float64) + s_e * ci.T @ ci + s_p * cp.T @ cp
    return torch.linalg.solve(mat2, mat1.T).T.to(w.dtype)  # mat2 is symmetric


@register_method("uce")
class Uce:
    config_cls = UceConfig

    def __init__(self, ctx: RunContext, cfg: UceConfig):
        self.ctx, self.cfg = ctx, cfg.validate()
        self.params = kv_parameters(ctx.unet, cfg.projections)
        ctx.unet.requires_grad_(False)
        self.done = False

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return self.params

    def _last_word(self, prompt: str) -> int:
        tok = self.ctx.pipe.tokenizer(prompt, padding="max_length", truncation=True,
                                      max_length=self.ctx.pipe.tokenizer.model_max_length, return_tensors="pt")
        return max(0, int(tok.attention_mask[0].sum()) - 2)

    def edit_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(target token states, aligned anchor token states), from each target's last word onward."""
        ctx = self.ctx
        olds, news = [], []
        for target, anchor in dict.fromkeys(zip(ctx.spec.targets, ctx.spec.anchors)):
            old, new = ctx.token_states(ctx.text([target]))[0], ctx.token_states(ctx.text([anchor]))[0]
            i, j = self._last_word(target), self._last_word(anchor)
            length = min(len(old) - i, len(new) - j)
            olds.append(old[i : i + length])
            news.append(new[j : j + length])
        return torch.cat(olds), torch.cat(news)

    def step(self, k: int) -> dict:
        if self.done:
            return {"edited": False}
        ctx, cfg = self.ctx, self.cfg
        erase_in, erase_as = self.edit_pairs()
        retains = list(dict.fromkeys(ctx.spec.retains))
        preserve = ctx.token_states(ctx.text(retains)).flatten(0, 1) if retains else erase_in[:0]
        s_p = cfg.preserve_scale if cfg.preserve_scale is not None else max(0.1, 1 / max(1, len(retains)))
        with torch.no_grad():
            for p in self.params.values():
                p.copy_(uce_solve(p.detach(), erase_in, erase_as, preserve, cfg.lamb, cfg.erase_scale, s_p))
        self.done = True
        return {"edited": True, "erase_tokens": len(erase_in), "preserve_tokens": len(preserve)}

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state["done"])
