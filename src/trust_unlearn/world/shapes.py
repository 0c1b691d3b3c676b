"""The shapes world: a seeded procedural generator of 32x32 RGB images, one shape per image.

Rendering is vectorised in torch (2x supersampled, then average-pooled for anti-aliasing), so a
fresh batch of 64 images costs a few milliseconds and training never sees the same image twice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow")
BACKGROUNDS = ("plain", "striped")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS}
IMAGE_SIZE = 32
# Shape radius in units of half the image (diameter 11.5-18 px at 32 px): what the testbed was trained on.
TRAIN_RADIUS = (0.36, 0.56)
# Every size a generator may produce, down to 4 px across, up to 27 px: what the judges must read.
JUDGE_RADIUS = (0.125, 0.85)

_RGB = {
    "red": (0.86, 0.12, 0.10),
    "green": (0.12, 0.70, 0.18),
    "blue": (0.12, 0.22, 0.88),
    "yellow": (0.95, 0.85, 0.10),
}


@dataclass(frozen=True)
class Scene:
    """The attributes of one image (what the judge must recover)."""

    shape: str
    colour: str
    background: str

    def index(self) -> tuple[int, int, int]:
        return SHAPES.index(self.shape), COLOURS.index(self.colour), BACKGROUNDS.index(self.background)


def all_scenes() -> list[Scene]:
    return [Scene(s, c, b) for s in SHAPES for c in COLOURS for b in BACKGROUNDS]


def random_scenes(n: int, generator: torch.Generator) -> list[Scene]:
    idx = torch.randint(0, len(all_scenes()), (n,), generator=generator).tolist()
    scenes = all_scenes()
    return [scenes[i] for i in idx]


def _shape_mask(kind: torch.Tensor, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Inside-masks for rotated, centred coordinates x, y (B,H,W) and radius r (B,1,1)."""
    circle = (x**2 + y**2) <= r**2
    half = r * 0.82
    square = (x.abs() <= half) & (y.abs() <= half)
    # equilateral triangle with circumradius r: three half-planes
    tri = torch.ones_like(circle)
    for k in range(3):
        a = math.pi / 2 + k * 2 * math.pi / 3
        tri &= (x * math.cos(a) + y * math.sin(a)) >= -r * 0.5
    arm = r * 0.33
    cross = ((x.abs() <= r) & (y.abs() <= arm)) | ((y.abs() <= r) & (x.abs() <= arm))
    masks = torch.stack([circle, square, tri, cross], dim=1)  # B,4,H,W
    return masks.gather(1, kind.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[1:])).squeeze(1)


def render(scenes: list[Scene], generator: torch.Generator, size: int = IMAGE_SIZE,
           radius: tuple[float, float] = TRAIN_RADIUS, overhang: float = 0.0, foreground: str = "shape") -> torch.Tensor:
    """Render scenes as float images in [0, 1], shape (B, 3, size, size); random size, place, rotation.

    `radius` is the range of the shape's radius in units of half the image; `overhang` the largest share
    of the radius that may leave the frame (0: always fully inside, up to a 0.05 margin). `foreground`
    "blob" draws an amorphous lump of the scene's colour instead of its shape, "none" the background only:
    the off-distribution images a judge must abstain on.
    """
    n = len(scenes)
    ss = size * 2
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    kind = torch.tensor([SHAPES.index(s.shape) for s in scenes])
    radius = radius[0] + (radius[1] - radius[0]) * u(n)  # in units of half the image
    reach = (0.95 - radius * (1 - overhang)).clamp(min=0.0)
    centre = (u(n, 2) * 2 - 1) * reach.unsqueeze(1)
    angle = u(n) * 2 * math.pi
    coords = (torch.arange(ss, dtype=torch.float32) + 0.5) / ss * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    dx = xx.unsqueeze(0) - centre[:, 0, None, None]
    dy = yy.unsqueeze(0) - centre[:, 1, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    rx, ry = dx * cos + dy * sin, -dx * sin + dy * cos
    inside = _shape_mask(kind, rx, ry, radius[:, None, None]).float().unsqueeze(1)
    if foreground == "blob":
        # a disc whose edge a coarse random field pushes in and out by up to ~the radius: lobes, no corners
        field = F.interpolate(torch.randn(n, 1, 7, 7, generator=generator), size=(ss, ss), mode="bicubic", align_corners=False)
        dist = (rx**2 + ry**2).sqrt() / radius[:, None, None]
        inside = ((1 - dist).unsqueeze(1) + 0.9 * field > 0).float()
    elif foreground == "none":
        inside = torch.zeros_like(inside)

    # background: neutral greys, plain or two-tone stripes at a random angle and period
    base = 0.62 + 0.3 * u(n, 1, 1, 1)
    tint = (u(n, 3, 1, 1) - 0.5) * 0.06
    bg = (base + tint).expand(n, 3, ss, ss).clone()
    striped = torch.tensor([s.background == "striped" for s in scenes])
    if striped.any():
        theta = u(n) * math.pi
        period = 0.25 + 0.2 * u(n)
        phase = u(n)
        proj = xx.unsqueeze(0) * theta.cos()[:, None, None] + yy.unsqueeze(0) * theta.sin()[:, None, None]
        band = (torch.frac(proj / period[:, None, None] + phase[:, None, None]) < 0.5).float()
        dark = (base - 0.35 - 0.1 * u(n, 1, 1, 1)).clamp(min=0.05)
        stripes = band.unsqueeze(1) * (base + tint) + (1 - band.unsqueeze(1)) * (dark + tint)
        bg = torch.where(striped.view(-1, 1, 1, 1), stripes, bg)

    rgb = torch.tensor([_RGB[s.colour] for s in scenes]).view(n, 3, 1, 1)
    fg = (rgb + (u(n, 3, 1, 1) - 0.5) * 0.12).clamp(0, 1)
    img = inside * fg + (1 - inside) * bg
    return F.avg_pool2d(img, 2).clamp(0, 1)


def labels(scenes: list[Scene]) -> torch.Tensor:
    """(B, 3) long tensor of (shape, colour, background) indices."""
    return torch.tensor([s.index() for s in scenes], dtype=torch.long)
