"""A second, non-learned judge for the shapes world: reads shape, colour and background by geometry.

Nothing here is trained. Per image, the judge
  1. segments the object by chroma (the backgrounds are near-neutral greys, the shapes saturated): each
     pixel's colour off the grey axis, less the background's own small tint, projected on the object's
     colour gives a soft coverage `alpha` (0 background .. 1 object, anti-aliased edges in between).
     The object is the strongest 8-connected component of pixels with chroma > FG_CHROMA; components
     under MIN_AREA px are specks (no object found);
  2. reads the colour as the CIELAB hue of the object's core pixels, the nearest of the four world
     colours' calibrated reference hues; "none" only when no object is found;
  3. reads the shape by analysis by synthesis: for each of the four shapes it fits centre, size and
     rotation (damped Gauss-Newton from the alpha moments) so that an anti-aliased rendering of that
     shape matches alpha on the visible frame. What lies outside the frame is not compared, so shapes
     cut by the frame are read from their visible part. The four fit residuals (relative to the
     object's area) are the features: per shape class, a Gaussian of their logs conditional on the
     object's size (calibrated on renders); the nearest class (Mahalanobis) is the shape, and the shape
     is "none" when that class's own fit is worse than for `keep` (99.8 %) of clean calibration renders
     (amorphous blobs, blurred shapes), when there are several comparable objects (fragments) or when
     the object is smaller than TINY_AREA px;
  4. reads the background as striped when the luminance of the background pixels spreads widely.

The calibration (reference hues, background threshold, class Gaussians, abstention threshold) lives in
`geometric_calibration.json` beside this module; `calibrate()` recomputes it from seeded renders over the
full size range (`JUDGE_RADIUS`) and frame overhangs 0 / 0.15 / 0.3 (seeds 7_000_000 + k), and
`python -m trust_unlearn.evaluation.geometric` rewrites it. The judge only loads it. A shape with no
chroma (grey, white, black) is invisible to this judge: it reads as no object.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from trust_unlearn.evaluation.judges import register_judge
from trust_unlearn.world.shapes import BACKGROUNDS, COLOURS, SHAPES

CALIBRATION_PATH = Path(__file__).with_name("geometric_calibration.json")
CALIBRATION_SEED = 7_000_000  # calibration renders use seeds 7_000_000 + k: disjoint from small seeds
NONE = "none"

# segmentation
FG_CHROMA = 0.15  # a pixel whose chroma (off the grey axis, less the background tint) exceeds this may be object
MIN_AREA = 2.0  # soft area (px) below which a component is a speck (and no object is found)
TINY_AREA = 4.0  # an object smaller than this (px) is too tiny to have a readable shape
FRAGMENT_SHARE = 0.25  # a second component with this share of the largest's area: fragments, not one shape
# shape fit
SHARPNESS = 4.0  # slope of the anti-aliased edge model (sigmoid of signed distance in px); 4 ~ 1 px ramp
FIT_STEPS = 8
# area of each shape in units of r^2 (r: circumradius), as rendered by world.shapes._shape_mask
AREA_COEF = {"circle": math.pi, "square": (2 * 0.82) ** 2, "triangle": 3 * math.sqrt(3) / 4,
             "cross": 2 * (2 * 0.33 * 2) - (2 * 0.33) ** 2}
_TRI_ANGLES = [math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]

_STRUCT8 = np.ones((3, 3), dtype=bool)
_U = np.array([2.0, -1.0, -1.0]) / math.sqrt(6)  # chroma plane: the two axes orthogonal to grey (1, 1, 1)
_V = np.array([0.0, 1.0, -1.0]) / math.sqrt(2)


def _prepare(images: torch.Tensor) -> np.ndarray:
    images = images.detach().float().cpu()
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-2:] != (32, 32):
        images = F.interpolate(images, size=(32, 32), mode="area")
    return images.clamp(0, 1).numpy()


def _segment(img: np.ndarray) -> dict:
    """Per image (3, H, W): soft object coverage and what the colour and background readings need."""
    uv = np.tensordot(np.stack([_U, _V]), img, axes=(1, 0))  # (2, H, W)
    ch0 = np.sqrt((uv**2).sum(0))
    quiet = ch0 < 0.1
    tint = np.median(uv[:, quiet], axis=1) if quiet.sum() >= 8 else np.zeros(2)
    c = uv - tint[:, None, None]
    ch = np.sqrt((c**2).sum(0))
    lum = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    cand = ch > FG_CHROMA
    out = dict(found=False, alpha=np.zeros_like(ch), area=0.0, fragments=False, rgb=None, lum=lum,
               keep_out=ndimage.binary_dilation(cand, structure=_STRUCT8, iterations=2))
    if cand.any():
        lab, n = ndimage.label(cand, structure=_STRUCT8)
        strength = ndimage.sum_labels(ch, lab, index=np.arange(1, n + 1))
        order = np.argsort(strength)[::-1]
        comp = lab == order[0] + 1
        cmax = ch[comp].max()
        core = comp & (ch >= 0.8 * cmax)
        fvec = c[:, core].mean(1)
        f2 = float((fvec**2).sum())
        region = ndimage.binary_dilation(comp, structure=_STRUCT8, iterations=2)
        if n > 1:  # keep other components out of this object's region
            region &= ~ndimage.binary_dilation(cand & ~comp, structure=_STRUCT8)
            region |= comp
        alpha = np.clip(np.tensordot(fvec, c, axes=(0, 0)) / f2, 0.0, 1.0) * region
        area = float(alpha.sum())
        if area >= MIN_AREA:
            ys, xs = np.nonzero(alpha > 0.02)
            out.update(found=True, alpha=alpha.astype(np.float32), area=area,
                       box=(ys.min(), ys.max() + 1, xs.min(), xs.max() + 1),
                       rgb=img[:, core].mean(1))
            if n > 1:
                second = strength[order[1]] / strength[order[0]]
                out["fragments"] = bool(second >= FRAGMENT_SHARE and strength[order[1]] / max(cmax, 1e-6) >= MIN_AREA)
    return out


def _signed_distance(shape: str, qx: torch.Tensor, qy: torch.Tensor, r: torch.Tensor):
    """Signed distance (px, <0 inside) of shape-frame coordinates to `shape` of circumradius r, with its
    partial derivatives (d/dqx, d/dqy, d/dr). Polygons use the max-of-half-planes distance (sharp corners)."""
    if shape == "circle":
        rho = torch.sqrt(qx**2 + qy**2).clamp(min=1e-6)
        return rho - r, qx / rho, qy / rho, torch.full_like(qx, -1.0)
    if shape == "square":
        ax, ay = qx.abs(), qy.abs()
        xs = ax >= ay
        sd = torch.where(xs, ax, ay) - 0.82 * r
        return sd, torch.where(xs, qx.sign(), 0.0), torch.where(xs, 0.0, qy.sign()), torch.full_like(qx, -0.82)
    if shape == "triangle":
        planes = torch.stack([-(qx * math.cos(a) + qy * math.sin(a)) for a in _TRI_ANGLES])
        sd, k = planes.max(0)
        cos = torch.tensor([-math.cos(a) for a in _TRI_ANGLES])[k]
        sin = torch.tensor([-math.sin(a) for a in _TRI_ANGLES])[k]
        return sd - 0.5 * r, cos, sin, torch.full_like(qx, -0.5)
    if shape == "cross":
        ax, ay = qx.abs(), qy.abs()
        # arm along x: max(|x| - r, |y| - 0.33 r); arm along y: max(|x| - 0.33 r, |y| - r)
        a1x = (ax - r) >= (ay - 0.33 * r)
        d1 = torch.where(a1x, ax - r, ay - 0.33 * r)
        a2x = (ax - 0.33 * r) >= (ay - r)
        d2 = torch.where(a2x, ax - 0.33 * r, ay - r)
        one = d1 <= d2
        usex = torch.where(one, a1x, a2x)
        gr = torch.where(one, torch.where(a1x, -1.0, -0.33), torch.where(a2x, -0.33, -1.0))
        return (torch.minimum(d1, d2), torch.where(usex, qx.sign(), 0.0), torch.where(usex, 0.0, qy.sign()), gr)
    raise ValueError(shape)


def _model(shape: str, p: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, with_jacobian: bool = True):
    """Anti-aliased coverage of `shape` with params p (B, 4: cx, cy, r, angle) at pixel centres gx, gy (B, N);
    with its Jacobian (B, 4, N) when asked."""
    cx, cy, r, th = (p[:, i : i + 1] for i in range(4))
    cos, sin = torch.cos(th), torch.sin(th)
    dx, dy = gx - cx, gy - cy
    qx, qy = dx * cos + dy * sin, dy * cos - dx * sin
    sd, sx, sy, sr = _signed_distance(shape, qx, qy, r)
    m = torch.sigmoid(sd * -SHARPNESS)
    if not with_jacobian:
        return m, None
    dm = m * (m - 1) * SHARPNESS  # dm / d sd
    # chain rule through q = R(-angle) (p - c): dq/dcx = (-cos, sin), dq/dcy = (-sin, -cos), dq/dangle = (qy, -qx)
    jac = torch.stack([dm * (sy * sin - sx * cos), dm * -(sx * sin + sy * cos), dm * sr, dm * (sx * qy - sy * qx)], 1)
    return m, jac


def _moments(alpha: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor):
    """Area, centroid and the 3rd/4th complex angular moments of alpha (B, N) at pixel centres (B, N)."""
    area = alpha.sum(1).clamp(min=1e-6)
    cx, cy = (alpha * gx).sum(1) / area, (alpha * gy).sum(1) / area
    x, y = gx - cx[:, None], gy - cy[:, None]
    x2, y2, xy = x * x, y * y, x * y
    m3 = torch.complex((alpha * x * (x2 - 3 * y2)).sum(1), (alpha * y * (3 * x2 - y2)).sum(1))
    m4 = torch.complex((alpha * (x2 * x2 - 6 * x2 * y2 + y2 * y2)).sum(1), (alpha * 4 * xy * (x2 - y2)).sum(1))
    return area, cx, cy, m3, m4


def _initial(shape: str, moments) -> torch.Tensor:
    """Start from the alpha moments: centroid, size from the area, rotation from the 3rd/4th angular moment."""
    area, cx, cy, m3, m4 = moments
    if shape == "triangle":  # vertices at angle + 90 + k 120 degrees
        th = (torch.angle(m3) + math.pi / 2) / 3
    elif shape == "square":  # corners at angle + 45 + k 90 degrees
        th = (torch.angle(m4) - math.pi) / 4
    elif shape == "cross":  # arm tips at angle + k 90 degrees
        th = torch.angle(m4) / 4
    else:
        th = torch.zeros_like(cx)
    r = torch.sqrt(area / AREA_COEF[shape])
    return torch.stack([cx, cy, r, th], 1)


def _fit(shape: str, alpha: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, moments, steps: int = FIT_STEPS):
    """Damped Gauss-Newton fit of `shape` to alpha (B, N) at pixel centres gx, gy (B, N); (params, sum sq residual)."""
    best = _initial(shape, moments)
    m, jac = _model(shape, best, gx, gy)
    res = m - alpha
    best_loss = (res * res).sum(1)
    jtj, jtr = torch.bmm(jac, jac.mT), torch.bmm(jac, res.unsqueeze(-1)).squeeze(-1)
    lam = torch.full((alpha.shape[0],), 1e-2)
    eye = torch.eye(4) * 1e-4
    for _ in range(steps):
        h = jtj + lam[:, None, None] * torch.diag_embed(torch.diagonal(jtj, dim1=1, dim2=2)) + eye
        cand = best + torch.linalg.solve(h, -jtr)
        cand[:, 2] = cand[:, 2].clamp(min=0.5)
        m, jac = _model(shape, cand, gx, gy)
        res = m - alpha
        loss = (res * res).sum(1)
        ok = loss < best_loss
        best = torch.where(ok[:, None], cand, best)
        best_loss = torch.where(ok, loss, best_loss)
        jtj = torch.where(ok[:, None, None], torch.bmm(jac, jac.mT), jtj)
        jtr = torch.where(ok[:, None], torch.bmm(jac, res.unsqueeze(-1)).squeeze(-1), jtr)
        lam = torch.where(ok, lam * 0.3, lam * 4).clamp(1e-4, 1e4)
    return best, best_loss


WINDOWS = (12, 16, 20, 24, 32)  # fit windows (px): each object is fitted on the smallest that holds it
MARGIN = 3  # px of background kept around an object inside its window


def _fit_all(alphas: np.ndarray, boxes: np.ndarray, steps: int = FIT_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Fit every shape to every object. alphas (B, 32, 32), boxes (B, 4: y0, y1, x0, x1 of the object's support).
    Returns residuals (B, 4 shapes: sum of squares) and fitted params (B, 4 shapes, 4)."""
    n = len(alphas)
    resid, params = np.zeros((n, len(SHAPES)), np.float32), np.zeros((n, len(SHAPES), 4), np.float32)
    extent = np.maximum(boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]) + 2 * MARGIN
    size = np.array(WINDOWS)[np.minimum(np.searchsorted(WINDOWS, extent), len(WINDOWS) - 1)]
    for w in np.unique(size):
        idx = np.nonzero(size == w)[0]
        cy = (boxes[idx, 0] + boxes[idx, 1]) // 2
        cx = (boxes[idx, 2] + boxes[idx, 3]) // 2
        y0 = np.clip(cy - w // 2, 0, 32 - w)
        x0 = np.clip(cx - w // 2, 0, 32 - w)
        rows = (y0[:, None] + np.arange(w))[:, :, None]
        cols = (x0[:, None] + np.arange(w))[:, None, :]
        win = torch.from_numpy(alphas[idx[:, None, None], rows, cols].reshape(len(idx), -1))
        base = np.arange(w) + 0.5  # pixel centres, in px of the 32 x 32 frame
        gy, gx = (torch.from_numpy(np.broadcast_to(a, (len(idx), w, w)).reshape(len(idx), -1).astype(np.float32))
                  for a in (y0[:, None, None] + base[None, :, None], x0[:, None, None] + base[None, None, :]))
        mom = _moments(win, gx, gy)
        for k, shape in enumerate(SHAPES):
            p, loss = _fit(shape, win, gx, gy, mom, steps)
            resid[idx, k], params[idx, k] = loss.numpy(), p.numpy()
    return resid, params


def _lab_hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIELAB hue angle (degrees) and chroma C* of sRGB colours (..., 3) in [0, 1] (D65 white)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    a, b = 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])
    return np.degrees(np.arctan2(b, a)) % 360, np.hypot(a, b)


def _background_spread(lum: np.ndarray, keep_out: np.ndarray) -> float:
    """Spread (5th to 95th percentile) of the luminance of background pixels, away from any object."""
    bg = lum[~keep_out]
    if bg.size < 16:
        bg = lum.reshape(-1)
    lo, hi = np.percentile(bg, [5, 95])
    return float(hi - lo)


def _size_basis(log_area: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(log_area), log_area, log_area**2], -1)


def features(images: torch.Tensor, steps: int = FIT_STEPS) -> dict[str, np.ndarray]:
    """Per-image measurements (numpy arrays, first axis the batch) from which the judge reads:
    found (an object), fragments (several comparable objects), area (px, soft, visible part),
    resid (B, 4: fit residual per shape in SHAPES order, sum of squares / area), params (B, 4, 4: fitted
    cx, cy, r, angle in px / rad), hue and chroma (CIELAB, of the object's core), bg_spread (luminance)."""
    x = _prepare(images)
    n = len(x)
    segs = [_segment(im) for im in x]
    found = np.array([s["found"] for s in segs], bool)
    out = dict(found=found, fragments=np.array([s["fragments"] for s in segs], bool),
               area=np.array([s["area"] for s in segs], np.float32),
               resid=np.full((n, len(SHAPES)), np.nan, np.float32), params=np.full((n, len(SHAPES), 4), np.nan, np.float32),
               hue=np.full(n, np.nan, np.float32), chroma=np.zeros(n, np.float32), bg_spread=np.zeros(n, np.float32))
    for i, s in enumerate(segs):
        out["bg_spread"][i] = _background_spread(s["lum"], s["keep_out"])
    if found.any():
        idx = np.nonzero(found)[0]
        resid, params = _fit_all(np.stack([segs[i]["alpha"] for i in idx]), np.array([segs[i]["box"] for i in idx]), steps)
        out["resid"][idx] = resid / out["area"][idx, None]
        out["params"][idx] = params
        hue, chroma = _lab_hue(np.stack([segs[i]["rgb"] for i in idx]))
        out["hue"][idx], out["chroma"][idx] = hue, chroma
    return out


def _log_resid(resid: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(resid, 0.0) + 1e-3)


def _shape_scores(feats: dict, cal: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per image and shape class (B, 4 each): the squared Mahalanobis distance of all four log fit residuals
    from the class's size-conditional Gaussian (mean quadratic in log area, each residual's spread log-linear
    in log area, a fixed correlation), which picks the shape; and the class's own residual in standard units
    under that model (how much worse than usual the class's own shape fits), which decides abstention."""
    z = _log_resid(feats["resid"])
    basis = _size_basis(np.log(np.maximum(feats["area"], 1e-3)))
    dist, own = np.full((len(z), len(SHAPES)), np.inf), np.full((len(z), len(SHAPES)), np.inf)
    for k, shape in enumerate(SHAPES):
        c = cal["shape"]["classes"][shape]
        cov = np.array(c["cov"])
        u = (z - basis @ np.array(c["coef"])) / np.exp(basis[:, :2] @ np.array(c["log_scale"]))
        dist[:, k] = np.einsum("bi,ij,bj->b", u, np.linalg.inv(cov), u)
        own[:, k] = u[:, k] / math.sqrt(cov[k, k])
    return np.where(np.isnan(dist), np.inf, dist), np.where(np.isnan(own), np.inf, own)


def _read_features(feats: dict, cal: dict) -> list[dict[str, str]]:
    n = len(feats["found"])
    dist, own = (feats["dist"], feats["misfit"]) if "dist" in feats else _shape_scores(feats, cal)
    pred = np.argmin(dist, 1)
    misfit = own[np.arange(n), pred]
    hues = np.array([cal["colour"]["hue"][c] for c in COLOURS])
    out = []
    for i in range(n):
        background = BACKGROUNDS[1] if feats["bg_spread"][i] > cal["background"]["spread_threshold"] else BACKGROUNDS[0]
        if not feats["found"][i]:
            out.append({"shape": NONE, "colour": NONE, "background": background})
            continue
        dh = np.abs((feats["hue"][i] - hues + 180) % 360 - 180)
        colour = COLOURS[int(np.argmin(dh))]
        ok = (not feats["fragments"][i]) and feats["area"][i] >= TINY_AREA and misfit[i] <= cal["shape"]["max_misfit"]
        out.append({"shape": SHAPES[pred[i]] if ok else NONE, "colour": colour, "background": background})
    return out


CALIBRATION_N = 3000
CALIBRATION_OVERHANGS = (0.0, 0.15, 0.3)
CALIBRATION_CHUNK = 200
KEEP = 0.998  # share of clean calibration renders whose shape is read (not abstained on)


def _constants() -> dict:
    """The fixed design constants a calibration was made with (the judge's readings depend on them)."""
    return {"fg_chroma": FG_CHROMA, "min_area": MIN_AREA, "tiny_area": TINY_AREA, "fragment_share": FRAGMENT_SHARE,
            "sharpness": SHARPNESS, "fit_steps": FIT_STEPS, "windows": list(WINDOWS), "margin": MARGIN}


def _calibration_renders(n: int, seed: int):
    """Seeded renders over the full judge size range, chunks cycling through frame overhangs 0 / 0.15 / 0.3."""
    from trust_unlearn.world.shapes import JUDGE_RADIUS, random_scenes, render

    images, scenes = [], []
    for k, start in enumerate(range(0, n, CALIBRATION_CHUNK)):
        g = torch.Generator().manual_seed(seed + k)
        sc = random_scenes(min(CALIBRATION_CHUNK, n - start), g)
        images.append(render(sc, g, radius=JUDGE_RADIUS, overhang=CALIBRATION_OVERHANGS[k % len(CALIBRATION_OVERHANGS)]))
        scenes += sc
    return torch.cat(images), scenes


def calibrate(n: int = CALIBRATION_N, seed: int = CALIBRATION_SEED) -> dict:
    """Recompute the calibration from `n` seeded renders (seeds seed + k): reference hues, the striped/plain
    threshold, and each shape's size-conditional Gaussian of log fit residuals with the abstention threshold."""
    images, scenes = _calibration_renders(n, seed)
    feats = features(images)
    found = feats["found"]
    cal: dict = {"version": 1, "n": n, "seed": seed, "overhangs": list(CALIBRATION_OVERHANGS), "keep": KEEP,
                 "constants": _constants()}

    hue = {}
    for c in COLOURS:
        h = np.radians(feats["hue"][found & np.array([s.colour == c for s in scenes])])
        hue[c] = round(float(np.degrees(np.arctan2(np.sin(h).mean(), np.cos(h).mean())) % 360), 3)
    cal["colour"] = {"hue": hue}

    spread = feats["bg_spread"]
    striped = np.array([s.background == "striped" for s in scenes])
    plain_hi, striped_lo = float(np.quantile(spread[~striped], 0.999)), float(np.quantile(spread[striped], 0.001))
    cal["background"] = {"spread_threshold": round((plain_hi + striped_lo) / 2, 5),
                         "plain_q999": round(plain_hi, 5), "striped_q001": round(striped_lo, 5)}

    usable = found & ~feats["fragments"] & (feats["area"] >= TINY_AREA)
    z = _log_resid(feats["resid"])
    basis = _size_basis(np.log(np.maximum(feats["area"], 1e-3)))
    classes = {}
    for shape in SHAPES:
        sel = usable & np.array([s.shape == shape for s in scenes])
        coef, *_ = np.linalg.lstsq(basis[sel], z[sel], rcond=None)
        coef = np.round(coef, 6)
        d = z[sel] - basis[sel] @ coef
        # spread of each residual as a function of size: log |d| linear in log area (the constant is absorbed by cov)
        log_scale, *_ = np.linalg.lstsq(basis[sel, :2], np.log(np.abs(d) + 1e-6), rcond=None)
        log_scale = np.round(log_scale, 6)
        u = d / np.exp(basis[sel, :2] @ log_scale)
        cov = np.cov(u.T) + 1e-4 * np.eye(len(SHAPES))
        classes[shape] = {"coef": coef.tolist(), "log_scale": log_scale.tolist(), "cov": np.round(cov, 6).tolist(),
                          "n": int(sel.sum())}
    cal["shape"] = {"classes": classes}
    dist, own = _shape_scores(feats, cal)
    pred = dist[usable].argmin(1)
    misfit = own[usable][np.arange(len(pred)), pred]
    cal["shape"]["max_misfit"] = round(float(np.quantile(misfit, KEEP)), 4)
    truth = np.array([SHAPES.index(s.shape) for s in scenes])
    cal["shape"]["train_accuracy"] = round(float((pred == truth[usable]).mean()), 5)
    return cal


def load_calibration(path: str | Path | None = None) -> dict:
    return json.loads(Path(path or CALIBRATION_PATH).read_text())


@register_judge("geometric")
class GeometricJudge:
    """Reads shape, colour and background of shapes-world images by geometry (no learned weights).

    `read` returns, per image, {'shape', 'colour', 'background'} with world vocabulary values, or "none"
    for shape and colour: colour "none" when no object is found, shape "none" when the object's outline
    fits no shape well (blob, fragments, blurred, too tiny)."""

    def __init__(self, calibration: str | Path | dict | None = None, max_misfit: float | None = None,
                 batch_size: int = 512):
        """`calibration`: a dict or JSON path (default: the shipped one). `max_misfit`: override the calibrated
        abstention threshold (own-shape misfit in standard units; `float("inf")` reads the nearest shape
        for every object found, however poorly it fits)."""
        self.calibration = calibration if isinstance(calibration, dict) else load_calibration(calibration)
        if max_misfit is not None:
            self.calibration = {**self.calibration, "shape": {**self.calibration["shape"], "max_misfit": float(max_misfit)}}
        self.batch_size = batch_size

    def features(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-image measurements (see `features`), plus the shape scores: dist (B, 4: Mahalanobis distance
        to each class) and misfit (B, 4: each class's own-shape fit residual in standard units)."""
        parts = [features(images[i : i + self.batch_size]) for i in range(0, max(len(images), 1), self.batch_size)]
        feats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        feats["dist"], feats["misfit"] = _shape_scores(feats, self.calibration)
        return feats

    @torch.no_grad()
    def read(self, images: torch.Tensor) -> list[dict[str, str]]:
        """The judge's reading of each image (B, 3, H, W) in [0, 1]: {'shape', 'colour', 'background'}."""
        if len(images) == 0:
            return []
        return _read_features(self.features(images), self.calibration)


@register_judge("geometric-nearest")
class NearestGeometricJudge(GeometricJudge):
    """The geometric judge as `trust evaluate` grades generated images: it names the best-fitting shape of
    every object it finds, and abstains only on no object, fragments or a tiny one. The testbed's generated
    shapes are rounder and lumpier than renders: the strict judge abstains on ~80 % of the original model's
    images, so a forget rate by it would count most surviving circles as gone; naming the nearest shape
    counts a lumpy circle as a circle (the stricter test for a method)."""

    def __init__(self, calibration: str | Path | dict | None = None, batch_size: int = 512):
        super().__init__(calibration, max_misfit=math.inf, batch_size=batch_size)


def main() -> None:  # python -m trust_unlearn.evaluation.geometric: rewrite the shipped calibration
    cal = calibrate()
    CALIBRATION_PATH.write_text(json.dumps(cal, indent=1) + "\n")
    print(f"wrote {CALIBRATION_PATH}")


if __name__ == "__main__":
    main()
