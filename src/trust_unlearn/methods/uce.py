"""UCE (Gandikota et al., WACV 2024): a closed-form edit of the cross-attention K/V projections.

For every `attn2.to_k` and `attn2.to_v` weight W (out x d_text), with c the text encoder's token
states (what cross-attention reads), UCE's `edit_model` solves
    W' = (lam * W + s_e * sum_{erase} v*_i c_i^T + s_p * sum_{preserve} W c_j c_j^T)
         (lam * I + s_e * sum_{erase} c_i c_i^T + s_p * sum_{preserve} c_j c_j^T)^-1,   v*_i = W c*_i.
Erase (UCE's old/new texts): the token states of the concept phrase from its last word onward (last
word, end token, padding), aligned position by position with those of the guide phrase (c*_i), so the
phrase's K/V become the guide's. Guide (UCE's --guided_concepts): the spec's anchor for the phrase (on
the testbed the concept with the anchors' substitution, "red circle" -> "blue circle"), else "" (UCE
without guided concepts: towards the unconditional). Preserve: every token of the empty prompt and
of every retain prompt keeps its K/V. lam = 0.5 (what UCE's script passes), s_e = 1,
s_p = max(0.1, 1 / number of preserved prompts, the empty one included). All in `step(0)`; run it
with `--steps 1`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from trust_unlearn.errors import UserError
from trust_unlearn.methods import register_method
from trust_unlearn.methods.base import RunContext
from trust_unlearn.pipeline import cross_attention_layers


@dataclass
class UceConfig:
    erase_concept: str | None = None  # the phrase to erase (UCE: --concepts); default: the spec's concept name
    guide_concept: str | None = None  # what it becomes (UCE: --guided_concepts); default: see default_guide
    lamb: float = 0.5  # ridge term keeping W' near W (UCE's train_erase.py passes 0.5)
    erase_scale: float = 1.0
    preserve_scale: float | None = None  # default max(0.1, 1 / number of preserved prompts, "" included)
    projections: str = "kv"  # which of to_k / to_v to edit ("kv", "k" or "v")

    def validate(self) -> "UceConfig":
        if self.lamb <= 0 or self.erase_scale < 0 or (self.preserve_scale is not None and self.preserve_scale < 0):
            raise UserError("need lamb > 0, erase_scale >= 0 and preserve_scale >= 0")
        if not self.projections or set(self.projections) - {"k", "v"}:
            raise UserError("projections must be 'kv', 'k' or 'v'")
        if self.erase_concept is not None and not self.erase_concept.strip():
            raise UserError("erase_concept is empty: give the concept phrase, e.g. erase_concept=circle, "
                            "or leave it unset")
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
    mat2 = lamb * torch.eye(d, dtype=torch.float64, device=w.device) + s_e * ci.T @ ci + s_p * cp.T @ cp
    return torch.linalg.solve(mat2, mat1.T).T.to(w.dtype)  # mat2 is symmetric


def default_guide(spec, erase: str) -> str:
    """The anchor phrase of `erase`: on the testbed the concept with the anchors' substitution
    ("circle on striped background" -> "triangle on striped background"), else the anchor the spec pairs
    with that exact prompt, else "" (UCE's default, towards the unconditional)."""
    if spec.world_concept and erase.lower() == spec.world_concept.lower():
        from trust_unlearn.world.concepts import anchor_substitution, parse_concept

        concept = parse_concept(erase)
        attr, value = anchor_substitution(concept)
        return re.sub(rf"\b{concept.attributes[attr]}\b", value, erase, count=1, flags=re.IGNORECASE)
    return dict(zip(spec.targets, spec.anchors)).get(erase, "")


@register_method("uce")
class Uce:
    config_cls = UceConfig

    def __init__(self, ctx: RunContext, cfg: UceConfig):
        self.ctx, self.cfg = ctx, cfg.validate()
        self.erase = (cfg.erase_concept or ctx.spec.name).strip()
        guide = cfg.guide_concept if cfg.guide_concept is not None else default_guide(ctx.spec, self.erase)
        self.guide = guide.strip()
        if self.guide.lower() == self.erase.lower():
            raise UserError(f"uce: guide_concept equals erase_concept ({self.erase!r}); nothing would change")
        self.preserve = ["", *dict.fromkeys(ctx.spec.retains)]
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
        """(erase phrase token states, aligned guide token states), each from its last word onward."""
        ctx = self.ctx
        old, new = ctx.token_states(ctx.text([self.erase, self.guide]))
        i, j = self._last_word(self.erase), self._last_word(self.guide)
        length = min(len(old) - i, len(new) - j)
        return old[i : i + length], new[j : j + length]

    def step(self, k: int) -> dict:
        if self.done:
            return {"edited": False}
        ctx, cfg = self.ctx, self.cfg
        erase_in, erase_as = self.edit_pairs()
        preserve = ctx.token_states(ctx.text(self.preserve)).flatten(0, 1)
        s_p = cfg.preserve_scale if cfg.preserve_scale is not None else max(0.1, 1 / len(self.preserve))
        with torch.no_grad():
            for p in self.params.values():
                p.copy_(uce_solve(p.detach(), erase_in, erase_as, preserve, cfg.lamb, cfg.erase_scale, s_p))
        self.done = True
        return {"edited": True, "erase_tokens": len(erase_in), "preserve_tokens": len(preserve)}

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state["done"])
