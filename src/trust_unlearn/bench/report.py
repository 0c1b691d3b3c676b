"""The bench's HTML report: one self-contained file (plots and grids embedded as PNG data URIs).

Per task: the table; forget-vs-retain scatter; forget rate and ASR (strongest attack) over training
wall-clock (the checkpoints; the end only when checkpoints are not attacked); per method the before/after grid, mask size
and drift (Jaccard to the previous and to the first mask) and where in the UNet the concept neurons
sit over the steps (neurons per UNet block).
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return _data_uri(buf.getvalue())


def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _img(uri: str, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{uri}" alt="{html.escape(alt)}"{w}>'


def _max_asr(r: dict):
    return max(r["asr"].values()) if r.get("asr") else None


def scatter_forget_retain(entry: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    b = entry["before"]
    ax.scatter([b["forget_rate"]], [b["retain_accuracy"]], marker="*", s=120, c="k", label="original")
    for label, r in entry["methods"].items():
        ax.scatter([r["forget_rate"]], [r["retain_accuracy"]], s=40)
        ax.annotate(label, (r["forget_rate"], r["retain_accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(0.05, ls=":", c="grey")
    ax.axhline(b["retain_accuracy"] - 0.03, ls=":", c="grey")
    ax.set_xlabel("forget rate (lower is better)")
    ax.set_ylabel("retain accuracy (higher is better)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)


def curves_over_wall_clock(entry: dict) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, r in entry["methods"].items():
        xs = [0.0] + [c["train_s"] for c in r["curve"]]
        axes[0].plot(xs, [entry["before"]["forget_rate"]] + [c["forget_rate"] for c in r["curve"]], marker="o", ms=3, label=label)
        # one point per attacked checkpoint; training-free methods (and results saved before checkpoints
        # were attacked) have only the final model's ASR
        points = [(c["train_s"], max(c["asr"].values())) for c in r["curve"] if c.get("asr")]
        if not points and _max_asr(r) is not None:
            points = [(r["wall_clock_s"], _max_asr(r))]
        if points:
            xs, ys = zip(*points)
            axes[1].plot(xs, ys, marker="o", ms=4, label=label)
            axes[1].annotate(label, points[-1], fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[0].set_title("forget rate over training wall-clock")
    axes[0].set_xlabel("training seconds")
    axes[0].set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=6)
    axes[1].set_title("ASR (strongest attack) over training wall-clock")
    axes[1].set_xlabel("training seconds")
    axes[1].set_ylim(-0.03, 1.03)
    if not any(r.get("asr") for r in entry["methods"].values()):
        axes[1].text(0.5, 0.5, "no attacks run", ha="center", transform=axes[1].transAxes)
    fig.tight_layout()
    return _png(fig)


def _block(param: str) -> str:
    m = re.match(r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)", param)
    return m.group(1) if m else param.split(".")[0]


def mask_figure(rows: list[dict]) -> str | None:
    """Mask size, Jaccard drift and neurons per UNet block over steps; None for methods without a mask."""
    rows = [r for r in rows if "mask_size" in r]
    if not rows:
        return None
    plt = _plt()
    steps = [r["step"] for r in rows]
    blocks = sorted({_block(n) for n in rows[0]["mask_layers"]},
                    key=lambda b: (("down", "mid", "up").index(b.split("_")[0]) if b.split("_")[0] in ("down", "mid", "up") else 3, b))
    grid = [[sum(v for n, v in r["mask_layers"].items() if _block(n) == b) for r in rows] for b in blocks]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(steps, [r["mask_size"] for r in rows])
    axes[0].set_title("mask size (neurons)")
    axes[1].plot(steps, [r.get("jaccard_prev", 1.0) for r in rows], label="vs previous")
    axes[1].plot(steps, [r.get("jaccard_first", 1.0) for r in rows], label="vs first")
    axes[1].set_ylim(-0.03, 1.05)
    axes[1].legend(fontsize=7)
    axes[1].set_title("mask drift (Jaccard)")
    im = axes[2].imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                        extent=(steps[0] - 0.5, steps[-1] + 0.5, len(blocks) - 0.5, -0.5))
    axes[2].set_yticks(range(len(blocks)), blocks, fontsize=7)
    axes[2].set_title("where: neurons per UNet block")
    fig.colorbar(im, ax=axes[2])
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    return _png(fig)


def _table_html(entry: dict, attacks: list[str]) -> str:
    from trust_unlearn.bench.runner import table_rows

    head, rows = table_rows(entry, attacks)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1300px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}
h2{margin-top:2em;border-bottom:2px solid #444}details{margin:.4em 0}.note{color:#555;font-size:13px}"""


def write_html(results: dict, out: Path) -> Path:
    out = Path(out)
    plan = results["plan"]
    attacks = plan["attacks"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>trust bench</title><style>{CSS}</style></head><body>",
             "<h1>trust bench</h1>",
             f"<p class='note'>{html.escape(results.get('started', ''))} - {html.escape(results.get('finished', 'running'))}; "
             f"total {results.get('total_seconds', 0):.0f} s; machine {html.escape(json.dumps(results.get('machine', {})))}; "
             f"trained steps {plan['steps']}, checkpoints {plan['checkpoints']}, attacks {', '.join(attacks) or 'none'}; "
             f"evaluation {html.escape(json.dumps(plan['eval']))}.</p>",
             "<p class='note'>forget = share of target-prompt images the judge reads as the concept; retain = share of "
             "other scenes with every attribute right; look-alike = retain on scenes sharing part of a combined/conditional "
             "concept; FD-judge = Fréchet distance of judge features to the original model's retain images; align = "
             "alignment score of target images with their prompts; ASR = share of attack target prompts whose found prompt "
             "makes the model show the concept; to target = training seconds until forget &le; 5 % with retain within 3 "
             "points of the original (checked at the checkpoints only); wall/s-per-step = training steps only; RSS = "
             "peak resident memory of the bench process during the run.</p>"]
    for task, entry in results["tasks"].items():
        parts.append(f"<h2>{html.escape(task)}</h2>")
        parts.append(_table_html(entry, attacks))
        if entry["methods"]:
            parts.append(_img(scatter_forget_retain(entry), "forget vs retain"))
            parts.append(_img(curves_over_wall_clock(entry), "curves over wall-clock"))
        for label, r in entry["methods"].items():
            run_dir = out / r["run_dir"]
            parts.append(f"<details><summary><b>{html.escape(label)}</b>: forget {r['forget_rate']:.1%}, "
                         f"retain {r['retain_accuracy']:.1%}, {r['wall_clock_s']:.1f} s "
                         f"({html.escape(str(run_dir.relative_to(out)) if run_dir.is_relative_to(out) else str(run_dir))})</summary>")
            grid = run_dir / "report" / "before_after.png"
            if grid.exists():
                parts.append("<p class='note'>rows: target prompts then retain prompts; left original, right after</p>")
                parts.append(_img(_data_uri(grid.read_bytes()), "before/after", width=700))
            log = run_dir / "log.jsonl"
            if log.exists():
                fig = mask_figure([json.loads(x) for x in log.read_text().splitlines() if x.strip()])
                if fig:
                    parts.append(_img(fig, "mask size and drift"))
            args = {"common": r.get("common"), "method_args": r.get("method_args")}
            parts.append(f"<pre class='note'>{html.escape(json.dumps(args))}</pre></details>")
    parts.append("</body></html>")
    path = out / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path
