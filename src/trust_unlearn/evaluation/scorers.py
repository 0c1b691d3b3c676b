"""Alignment scorers: A = cos(E_I(image), E_T(text)), differentiable in the image.

TRUST back-propagates A to find concept neurons. The testbed uses its own CLIP-like scorer; a real
SD checkpoint uses a `transformers.CLIPModel` from a local folder or a cached hub id.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from trust_unlearn.errors import UserError


class AlignmentScorer:
    """Interface: `score(images in [0, 1] (B,3,H,W), texts, keep=True) -> (B,)` cosine alignment. keep=False: a
    scorer with a text cache embeds these texts as one fresh batch and keeps none of them (what a probe merely
    compares against must not change the features training reads)."""

    def score(self, images: torch.Tensor, texts: list[str], keep: bool = True) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def prepare_texts(self, texts: list[str]) -> None:
        """Compute and keep these texts' features now, as one batch (a scorer without a text cache: nothing)."""

    def to(self, device):
        return self


class TestbedScorer(AlignmentScorer):
    def __init__(self, weights: str | Path | None = None):
        from safetensors.torch import load_file

        from trust_unlearn.testbed import SHIPPED_WEIGHTS, load_text_components
        from trust_unlearn.testbed.networks import Scorer

        path = Path(weights or SHIPPED_WEIGHTS / "scorer.safetensors")
        if not path.exists():
            raise UserError(f"scorer weights not found at {path}; run `trust testbed train`")
        self.net = Scorer().eval().requires_grad_(False)
        self.net.load_state_dict(load_file(path))
        self.tokenizer, self.encoder = load_text_components(64)
        self._text_cache: dict[str, torch.Tensor] = {}

    def text_features(self, texts: list[str], keep: bool = True) -> torch.Tensor:
        """(T, D) unit text features, cached per text (keep=False: all of them embedded now, none cached)."""
        from trust_unlearn.testbed.train import sentence_embeddings

        if not keep:
            unique = list(dict.fromkeys(texts))
            fresh = dict(zip(unique, self.net.embed_texts(sentence_embeddings(self.tokenizer, self.encoder, unique))))
            return torch.stack([fresh[t] for t in texts])
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            self._text_cache.update(zip(missing, self.net.embed_texts(sentence_embeddings(self.tokenizer, self.encoder, missing))))
        return torch.stack([self._text_cache[t] for t in texts])

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) unit image features of images in [0, 1], resized to the scorer's 32 x 32 first."""
        if images.shape[-1] != 32:
            images = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        return self.net.embed_images(images.float())

    def prepare_texts(self, texts):
        # a text's cached features depend on the batch it was first embedded in (padding to the longest)
        self.text_features(texts)

    def score(self, images, texts, keep=True):
        return (self.image_features(images) * self.text_features(texts, keep).to(images.device)).sum(-1)

    def to(self, device):
        self.net.to(device)
        self._text_cache = {k: v.to(device) for k, v in self._text_cache.items()}
        return self


class CLIPScorer(AlignmentScorer):
    """CLIP score with a `transformers.CLIPModel` (local folder or cached hub id; never downloads)."""

    MEAN = (0.48145466, 0.4578275, 0.40821073)
    STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, source: str):
        from transformers import CLIPModel, CLIPTokenizer

        try:
            self.model = CLIPModel.from_pretrained(source, local_files_only=True).eval().requires_grad_(False)
            self.tokenizer = CLIPTokenizer.from_pretrained(source, local_files_only=True)
        except OSError as err:
            raise UserError(f"CLIP scorer {source!r} not found locally: {str(err).splitlines()[0]}") from None
        self.size = self.model.config.vision_config.image_size

    def score(self, images, texts, keep=True):  # no text cache: every call embeds its texts
        dev = images.device
        x = F.interpolate(images.float(), size=(self.size, self.size), mode="bicubic", align_corners=False)
        x = (x - torch.tensor(self.MEAN, device=dev).view(1, 3, 1, 1)) / torch.tensor(self.STD, device=dev).view(1, 3, 1, 1)
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(dev)
        img = F.normalize(_features(self.model.get_image_features(pixel_values=x.to(self.model.dtype))), dim=-1)
        with torch.no_grad():
            txt = F.normalize(_features(self.model.get_text_features(**tokens)), dim=-1)
        return (img * txt).sum(-1).float()

    def to(self, device):
        self.model.to(device)
        return self


def _features(output) -> torch.Tensor:
    """transformers < 5 returns the projected features; 5.x returns an output whose pooler_output holds them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def load_scorer(name: str | None, is_testbed: bool) -> AlignmentScorer:
    """'testbed', or a CLIPModel folder / cached hub id. Outside the testbed a CLIP scorer is required."""
    if name in (None, "", "testbed"):
        if not is_testbed and name is None:
            raise UserError("this model is not the testbed: pass --scorer with a CLIPModel folder or cached hub id "
                            "(e.g. openai/clip-vit-large-patch14)")
        return TestbedScorer()
    return CLIPScorer(name)
