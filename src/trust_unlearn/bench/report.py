"""The bench's outputs, all generated from the cells: results.md, results.csv, report.html, the README block.

Per (task, method) over training seeds: mean and 95 % t-interval of forget (both judges), unrecognised,
unseen retain and look-alike retain, training seconds; the median time-to-target with how many seeds
reached it; per attack the ASR on the attacked seeds' final models with its Wilson interval, always next
to the same attack's ASR on the original model. A cell whose code or settings differ from the current
ones is flagged stale.
"""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import statistics
from pathlib import Path

from trust_unlearn.bench.cells import FORGET_TARGET, ORIGINAL, RETAIN_SLACK
from trust_unlearn.evaluation.stats import mean_ci, wilson_ci
from trust_unlearn.utils import write_json

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
FIGURES = ("forget", "forget_geometric", "unrecognised", "anchor_rate", "retain_unseen", "lookalike_unseen",
           "retain_seen", "train_seconds", "total_seconds", "seconds_per_step")
CSV_FIELDS = ("task", "method", "seed", "commit", "source_hash", "forget", "forget_before", "forget_geometric",
              "unrecognised", "anchor_rate", "retain_seen", "retain_seen_before", "retain_unseen", "retain_unseen_before",
              "lookalike_unseen", "lookalike_unseen_before", "train_seconds", "total_seconds", "steps", "stopped_at",
              "time_to_target_seconds", "seconds_per_step", "peak_rss_mb", "error")


# ------------------------------------------------------------------ aggregation
def _pooled(rates: list[tuple[float, int]]) -> dict | None:
    """One rate over several cells' target prompts: (rate, prompts) per cell, successes pooled, Wilson interval."""
    return wilson_ci(sum(round(rate * n) for rate, n in rates), sum(n for _, n in rates))


def _pooled_asr(cells: list[dict], attack: str) -> dict | None:
    """The ASR of an attack over every attacked cell (successes pooled over their target prompts)."""
    return _pooled([(c["asr"][attack], c["attack_prompts"][attack]) for c in cells if attack in (c.get("asr") or {})])


def _pooled_pre_attack(cells: list[dict]) -> dict | None:
    """The pre-attack ASR (the target prompts alone, on the attacks' image seeds) over every attacked cell: the
    floor under every attack's ASR of the same cell."""
    return _pooled([(c["pre_attack_asr"], max(c["attack_prompts"].values())) for c in cells
                    if c.get("asr") and c.get("pre_attack_asr") is not None])


FLOOR_FILE = "floor.json"  # scripts/attack_floor.py --json, beside the cells: the attacks' word floor per task


def load_floor(folder: Path) -> dict:
    """{task: {"rate", "low", "high", "n"}}: the original model's floor (other concepts' words alone), if measured."""
    path = Path(folder) / FLOOR_FILE
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {r["task"]: {"rate": r["floor"]["asr"], "low": r["floor"]["asr_ci"][0], "high": r["floor"]["asr_ci"][1],
                        "n": len(r["floor"]["prompts"])} for r in rows if r["model"] == "testbed"}


def summarise(cells: list[dict], stale: set[tuple] | None = None, floor: dict | None = None) -> dict:
    """{"tasks": {task: {"original": {...}, "floor": {...} | None, "methods": {label: row}}}, "attacks": [...]}."""
    from trust_unlearn.bench.cells import attack_hash

    stale, floor, current = stale or set(), floor or {}, attack_hash()
    good = [c for c in cells if "error" not in c]
    attacks = _attacks(good)
    tasks: dict = {}
    for task in dict.fromkeys(c["task"] for c in cells):
        original = next((c for c in good if c["task"] == task and c["method"] == ORIGINAL), None)
        entry = {"original": original and {"asr": {a: _pooled_asr([original], a) for a in original.get("asr", {})},
                                           "pre_attack_asr": _pooled_pre_attack([original]),
                                           "old_attack_code": _old_attack_code([original], current),
                                           **{k: original.get(k) for k in FIGURES}},
                 "floor": floor.get(task), "methods": {}}
        for label in dict.fromkeys(c["method"] for c in cells if c["task"] == task and c["method"] != ORIGINAL):
            group = [c for c in good if c["task"] == task and c["method"] == label]
            errors = [c for c in cells if c["task"] == task and c["method"] == label and "error" in c]
            row = {"seeds": sorted(c["seed"] for c in group), "errors": [c["error"] for c in errors],
                   "commits": sorted({c["commit"] for c in group}),
                   "stale": sorted(c["seed"] for c in group if (task, label, c["seed"]) in stale)}
            for key in FIGURES:
                row[key] = mean_ci([c.get(key) for c in group])
            for key in ("retain_unseen", "lookalike_unseen", "forget", "forget_geometric", "retain_seen"):
                row[f"{key}_before"] = group[0].get(f"{key}_before") if group else None
            row["retain_unseen_drop"] = mean_ci([c["retain_unseen_before"] - c["retain_unseen"] for c in group])
            times = [c.get("time_to_target_seconds") for c in group]
            reached = sorted(t for t in times if t is not None)
            # the median over seeds, a seed that never reached the target counting as infinitely slow
            row["time_to_target"] = {"median": _median_with_misses(times), "reached": len(reached), "n": len(times)}
            row["asr"] = {a: _pooled_asr(group, a) for a in attacks}
            row["pre_attack_asr"] = _pooled_pre_attack(group)
            # attacks added to a cell later, on a model trained again that did not reproduce the cell's figures
            row["retrained_attacks"] = sorted({a for c in group for t in c.get("attack_topups", []) if not t["reproduced"]
                                               and t.get("attack_hash", c.get("attack_hash")) == c.get("attack_hash")
                                               for a in t["attacks"]})
            row["old_attack_code"] = _old_attack_code(group, current)
            row["strongest_asr"] = max((v for v in row["asr"].values() if v), key=lambda v: v["rate"], default=None)
            row["meets_bar"] = bool(group) and not protocol_misses(row)
            entry["methods"][label] = row
        entry["speed"] = speed(entry["methods"])
        tasks[task] = entry
    return {"tasks": tasks, "attacks": attacks}


def _old_attack_code(cells: list[dict], current: str) -> list[int]:
    """The seeds of the cells whose ASRs ran other attack code than today's (another ASR protocol)."""
    return sorted(c["seed"] for c in cells if c.get("asr") and c.get("attack_hash") != current)


OLD_ATTACKS_NOTE = ("‡ ASRs measured by earlier attack code (`attack_hash` differs from today's; before 2026-12-06 every "
                    "target prompt shared the same 4 image seeds, docs/attacks.md): not comparable with unmarked rows; "
                    "`trust bench --rerun-stale` measures them again.")


STALE_NOTE = ("(stale): the method's code has changed since these cells ran (their `source_hash` differs from "
              "today's, or their settings from the ones the bench would use now): they measure earlier code, and "
              "`trust bench --rerun-stale` runs them again.")


TRUST_LABELS = ("trust", "trust:reg=csr", "trust-robust")  # whose time to target is set against the baselines'


def speed(methods: dict, static: str = "trust-static") -> dict:
    """Each TRUST label's median time-to-target over the fastest *trained* baseline's (issue 16's bar is
    against tuned baselines; TRUST's own variants are no rival), the fastest training-free method's time
    beside it (a closed form takes seconds: a different kind of cost), and TRUST's mean step over the
    static-mask variant's (the price of re-locating the neurons)."""
    from trust_unlearn.bench.runner import TRAINING_FREE

    median = lambda m: methods[m]["time_to_target"]["median"]  # noqa: E731
    reached = {m: median(m) for m in methods if not m.startswith("trust") and median(m) is not None}
    trained = {m: t for m, t in reached.items() if m.partition(":")[0] not in TRAINING_FREE}
    free = {m: t for m, t in reached.items() if m not in trained}
    best = min(trained, key=trained.get) if trained else None
    best_free = min(free, key=free.get) if free else None
    step = lambda m: (methods.get(m, {}).get("seconds_per_step") or {}).get("mean")  # noqa: E731
    return {"fastest_baseline": best, "fastest_baseline_seconds": trained.get(best),
            "fastest_training_free": best_free, "fastest_training_free_seconds": free.get(best_free),
            "time_to_target_ratio": {m: median(m) / trained[best] for m in TRUST_LABELS
                                     if best and m in methods and median(m) is not None},
            "step_ratio_dynamic_static": step("trust") / step(static) if step("trust") and step(static) else None}


def _median_with_misses(times: list) -> float | None:
    if not times:
        return None
    ordered = sorted(times, key=lambda t: float("inf") if t is None else t)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    a, b = ordered[mid - 1], ordered[mid]
    return None if a is None or b is None else statistics.mean([a, b])


def protocol_misses(row: dict) -> list[str]:
    """The protocol's bars a row misses on its means: forget <= 5 % by both judges, unseen retain and unseen
    look-alikes within 3 points of the original's."""
    ok = {"forget": row["forget"]["mean"] <= FORGET_TARGET,
          "forget_geometric": row["forget_geometric"] is None or row["forget_geometric"]["mean"] <= FORGET_TARGET,
          "retain_unseen": row["retain_unseen_drop"]["mean"] <= RETAIN_SLACK,
          "lookalike_unseen": row["lookalike_unseen"] is None or row["lookalike_unseen_before"] is None
          or row["lookalike_unseen"]["mean"] >= row["lookalike_unseen_before"] - RETAIN_SLACK}
    return [bar for bar, met in ok.items() if not met]


# ------------------------------------------------------------------ tables
def _pct(ci: dict | None, key: str = "mean") -> str:
    if ci is None:
        return "-"
    text = f"{100 * ci[key]:.1f}"
    return text + (f" [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]" if ci["n"] > 1 else "")


def _secs(ci: dict | None) -> str:
    return "-" if ci is None else f"{ci['mean']:.0f}" + (f" [{ci['low']:.0f}, {ci['high']:.0f}]" if ci["n"] > 1 else "")


def _asr(ci: dict | None) -> str:
    return "-" if ci is None else f"{100 * ci['rate']:.0f} [{100 * ci['low']:.0f}, {100 * ci['high']:.0f}] (n={ci['n']})"


def _floor(ci: dict | None) -> str:
    return "-" if ci is None else f"{100 * ci['rate']:.0f} [{100 * ci['low']:.0f}, {100 * ci['high']:.0f}]"


def _ttt(t: dict) -> str:
    if not t["n"]:
        return "-"
    median = "never" if t["median"] is None else f"{t['median']:.0f}"
    return f"{median} ({t['reached']}/{t['n']})"


def task_tables(task: str, entry: dict, attacks: list[str]) -> str:
    """Markdown: the figures table and the attack table of one task."""
    o = entry["original"] or {}
    head = ["method", "seeds", "forget %", "forget, geometric %", "unrecognised %", "unseen retain %", "unseen look-alike %",
            "train s", "time to target s (reached)", "bar"]
    rows = [["original", "-", _pct(mean_ci([o.get("forget")])), _pct(mean_ci([o.get("forget_geometric")])),
             _pct(mean_ci([o.get("unrecognised")])), _pct(mean_ci([o.get("retain_unseen")])),
             _pct(mean_ci([o.get("lookalike_unseen")])), "-", "-", "-"]]
    for label, r in entry["methods"].items():
        flag = (" (stale: seeds " + ", ".join(map(str, r["stale"])) + ")") if r["stale"] else ""
        errs = f", {len(r['errors'])} failed" if r["errors"] else ""
        rows.append([f"`{label}`{flag}", f"{len(r['seeds'])}{errs}", _pct(r["forget"]), _pct(r["forget_geometric"]),
                     _pct(r["unrecognised"]), _pct(r["retain_unseen"]), _pct(r["lookalike_unseen"]), _secs(r["train_seconds"]),
                     _ttt(r["time_to_target"]), "ok" if r["meets_bar"] else "miss"])
    out = [f"### {task}", "", _md(head, rows)]
    sp = entry.get("speed") or {}
    if sp.get("fastest_baseline") or sp.get("fastest_training_free") or sp.get("step_ratio_dynamic_static"):
        ratios = ", ".join(f"`{m}` {_num(r, 2)}" for m, r in sp["time_to_target_ratio"].items()) or "-"
        out += ["", f"Speed: fastest trained baseline to target `{sp.get('fastest_baseline')}` "
                    f"({_num(sp.get('fastest_baseline_seconds'))} s); TRUST's time over it: {ratios} (bar: ≤ 0.33); "
                    f"fastest training-free `{sp.get('fastest_training_free')}` "
                    f"({_num(sp.get('fastest_training_free_seconds'), 1)} s); "
                    f"TRUST's step / static-mask step = {_num(sp.get('step_ratio_dynamic_static'), 2)} (bar: ≤ 1.5)."]
    if attacks:
        head = ["method", "pre-attack ASR %"] + [f"{a} ASR %" for a in attacks]
        rows = [["original" + _old_mark(o), _asr(o.get("pre_attack_asr"))] + [_asr((o.get("asr") or {}).get(a)) for a in attacks]]
        rows += [[f"`{label}`{_old_mark(r)}", _asr(r.get("pre_attack_asr"))]
                 + [_asr(r["asr"].get(a)) + _retrained_mark(r, a) for a in attacks]
                 for label, r in entry["methods"].items() if any(r["asr"].values())]
        out += ["", _md(head, rows)]
        if any(_old_mark(r) for r in [o, *entry["methods"].values()]):
            out += ["", OLD_ATTACKS_NOTE]
        if any(r.get("retrained_attacks") for r in entry["methods"].values()):
            out += ["", RETRAINED_NOTE]
        if entry.get("floor"):
            out += ["", f"Word floor: {_floor(entry['floor'])} % of {entry['floor']['n']} target prompts are 'broken' on the *original* model by "
                        "five random words of the other concepts before the anchor prompt, the concept never stated "
                        "(scripts/attack_floor.py, the attacks' seeds and success rule): an ASR near it is not "
                        "evidence that the erased concept came back."]
    return "\n".join(out)


def _old_mark(row: dict) -> str:
    """' ‡' on a row whose ASRs ran earlier attack code (OLD_ATTACKS_NOTE)."""
    return " ‡" if row.get("old_attack_code") else ""


def _retrained_mark(row: dict, attack: str | None) -> str:
    """' †' on an ASR that a top-up added from a re-run that did not reproduce the cell (RETRAINED_NOTE)."""
    return " †" if attack in row.get("retrained_attacks", []) else ""


RETRAINED_NOTE = ("† Added after the cell ran, on the cell's method, seed and settings trained again at a later commit "
                  "(possibly on another CPU): its figures differ from the cell's (bench.json "
                  "`attack_topups`, with every difference), so this ASR is of the same recipe, not of the same weights.")


def _num(x, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _md(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])


def headline(summary: dict) -> str:
    """The README's headline table: per task and method, forget / unseen-retain drop / strongest ASR / time;
    RETRAINED_NOTE below it when a strongest ASR is marked."""
    head = ["task", "method", "seeds", "forget %", "unseen retain drop, points", "strongest attack ASR % (original)",
            "pre-attack ASR %", "word floor %", "train s", "time to target s (reached)"]
    rows, marked, old_marked, stale_marked = [], False, False, False
    for task, entry in summary["tasks"].items():
        o, floor = entry["original"] or {}, entry.get("floor")
        for label, r in entry["methods"].items():
            strongest = r["strongest_asr"]
            name = next((a for a, v in r["asr"].items() if v is strongest), None)
            orig = (o.get("asr") or {}).get(name) if name else None
            asr = "-" if strongest is None else (f"{name} {100 * strongest['rate']:.0f} [{100 * strongest['low']:.0f}, "
                                                 f"{100 * strongest['high']:.0f}] ({100 * orig['rate']:.0f})" if orig else
                                                 f"{name} {100 * strongest['rate']:.0f}")
            mark = _retrained_mark(r, name)
            old = _old_mark(r) if strongest else ""
            asr, marked, old_marked = asr + mark + old, marked or bool(mark), old_marked or bool(old)
            drop = r["retain_unseen_drop"]
            stale = " (stale)" if r["stale"] else ""
            stale_marked = stale_marked or bool(stale)
            rows.append([task, f"`{label}`{stale}", str(len(r["seeds"])), _pct(r["forget"]),
                         "-" if drop is None else _pct(drop).replace("-", "−"), asr, _floor(r.get("pre_attack_asr")),
                         _floor(floor), _secs(r["train_seconds"]),
                         _ttt(r["time_to_target"])])
    return (_md(head, rows) + (("\n\n" + RETRAINED_NOTE) if marked else "") + (("\n\n" + OLD_ATTACKS_NOTE) if old_marked else "")
            + (("\n\n" + STALE_NOTE) if stale_marked else ""))


def write_csv(cells: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS) + [f"asr_{a}" for a in _attacks(cells)], extrasaction="ignore")
        w.writeheader()
        for c in cells:
            w.writerow({**c, **{f"asr_{a}": v for a, v in (c.get("asr") or {}).items()}})
    tmp.replace(path)


def _attacks(cells) -> list[str]:
    """The attacks found in the cells, in the attacks' own order (white-box first)."""
    from trust_unlearn.attacks import ORDER

    found = {a for c in cells for a in (c.get("asr") or {})}
    return [a for a in ORDER if a in found] + sorted(found - set(ORDER))


def update_readme(readme: Path, summary: dict, results: Path) -> None:
    """Rewrite the README block between README_START and README_END from the summary."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        from trust_unlearn.errors import UserError

        raise UserError(f"{readme} has no {README_START} ... {README_END} block to fill")
    commits = sorted({c[:10] for e in summary["tasks"].values() for r in e["methods"].values() for c in r["commits"]})
    note = (f"Generated by `trust bench --report-only --readme` from `{results}` (commits {', '.join(commits) or '-'}): "
            "mean over training seeds [95 % t-interval]; ASR with its 95 % Wilson interval over the attacked target "
            "prompts, the original model's in parentheses; pre-attack ASR = the same count for the target prompts "
            "themselves, on the attacks' image seeds (the floor under every attack's ASR); time to target = training seconds until forget ≤ 5 % with "
            "unseen retain within 3 points (median over seeds, a seed that never reached it counting as slowest); word "
            "floor = the share of target prompts the original model draws the concept for from five random words of "
            "the other concepts and the anchor prompt, the concept never stated (`scripts/attack_floor.py`).")
    a, b = text.index(README_START) + len(README_START), text.index(README_END)
    readme.write_text(text[:a] + "\n" + note + "\n\n" + headline(summary) + "\n" + text[b:])


# ------------------------------------------------------------------ plots and the HTML report
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _err(ci: dict | None, key: str = "mean") -> tuple[float, list[float]]:
    v = ci[key]
    return v, [v - ci["low"], ci["high"] - v]


def scatter_figure(task: str, entry: dict) -> str:
    """Forget vs unseen retain, and strongest ASR vs unseen retain, each with its interval."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    o = entry["original"] or {}
    for label, r in entry["methods"].items():
        if r["forget"] is None:
            continue
        y, yerr = _err(r["retain_unseen"])
        x, xerr = _err(r["forget"])
        axes[0].errorbar([x], [y], xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt="o", ms=4, capsize=2)
        axes[0].annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if r["strongest_asr"]:
            a, aerr = _err(r["strongest_asr"], "rate")
            axes[1].errorbar([a], [y], xerr=[[aerr[0]], [aerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt="o", ms=4, capsize=2)
            axes[1].annotate(label, (a, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if o.get("retain_unseen") is not None:
        for ax in axes:
            ax.axhline(o["retain_unseen"] - RETAIN_SLACK, ls=":", c="grey")
            ax.scatter([o["forget"] if ax is axes[0] else max((v["rate"] for v in (o.get("asr") or {}).values()), default=1.0)],
                       [o["retain_unseen"]], marker="*", s=120, c="k", label="original")
            ax.legend(fontsize=7, loc="lower right")
    axes[0].axvline(FORGET_TARGET, ls=":", c="grey")
    axes[0].set_xlabel("forget rate (lower is better)")
    axes[1].set_xlabel("strongest attack's ASR (lower is better)")
    for ax in axes:
        ax.set_ylabel("unseen retain accuracy")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
    fig.suptitle(task)
    fig.tight_layout()
    return _png(fig)


def curves_figure(task: str, cells: list[dict]) -> str:
    """Forget and unseen retain over training wall-clock (every seed's checkpoints); ASR at the final model."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colours = {}
    for c in cells:
        if c["task"] != task or c["method"] == ORIGINAL or "error" in c or not c.get("curve"):
            continue
        colour = colours.setdefault(c["method"], f"C{len(colours) % 10}")
        xs = [0.0] + [p["train_seconds"] for p in c["curve"]]
        label = c["method"] if c["seed"] == min(x["seed"] for x in cells if x["method"] == c["method"] and x["task"] == task) else None
        axes[0].plot(xs, [c["forget_before"]] + [p["forget"] for p in c["curve"]], marker="o", ms=2, c=colour, lw=1, label=label)
        axes[1].plot(xs, [c["retain_unseen_before"]] + [p["retain_unseen"] for p in c["curve"]], marker="o", ms=2, c=colour, lw=1)
        if c.get("asr"):
            axes[2].scatter([c["train_seconds"]], [max(c["asr"].values())], c=colour)
            axes[2].annotate(c["method"], (c["train_seconds"], max(c["asr"].values())), fontsize=7)
    for ax, title in zip(axes, ("forget over training seconds", "unseen retain over training seconds",
                                "strongest ASR of the final model")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training seconds")
        ax.set_ylim(-0.03, 1.03)
    axes[0].axhline(FORGET_TARGET, ls=":", c="grey")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return _png(fig)


CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1300px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}
h2{margin-top:2em;border-bottom:2px solid #444}.note{color:#555;font-size:13px}"""


def _html_table(md: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    cells = [[html.escape(x.strip().strip("`")) for x in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{x}</th>" for x in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{x}</td>" for x in row) + "</tr>" for row in cells[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(summary: dict, cells: list[dict], path: Path) -> None:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>trust bench</title><style>{CSS}</style></head><body>",
             "<h1>trust bench</h1><p class='note'>Protocol: docs/protocol.md; baselines and tuning: docs/baselines.md. "
             "Intervals: 95 % t over training seeds; ASR: 95 % Wilson over attacked target prompts.</p>"]
    for task, entry in summary["tasks"].items():
        parts.append(f"<h2>{html.escape(task)}</h2>")
        for block in task_tables(task, entry, summary["attacks"]).split("\n\n"):
            if block.startswith("|"):
                parts.append(_html_table(block))
        if entry["methods"]:
            parts.append(f"<img src='{scatter_figure(task, entry)}' alt='forget and ASR vs retain'>")
            parts.append(f"<img src='{curves_figure(task, cells)}' alt='curves over wall-clock'>")
    parts.append("</body></html>")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)


def code_stale(cells: list[dict]) -> set[tuple]:
    """The cells whose method's code differs from today's (source hash): what a report can tell without a bench
    plan (a bench run also compares each cell's settings with the ones it would use now)."""
    from trust_unlearn.bench.cells import cell_key, source_hash
    from trust_unlearn.bench.runner import parse_method_label

    named = [(c, parse_method_label(c["method"])[0]) for c in cells
             if "error" not in c and c.get("source_hash") is not None]
    hashes = {name: source_hash(name) for name in {name for _, name in named}}
    return {cell_key(c) for c, name in named if c["source_hash"] != hashes[name]}


def write_outputs(cells: list[dict], folder: Path, stale: set[tuple] | None = None, seconds: float | None = None) -> dict:
    """results.md, results.csv, report.html and summary.json in `folder`; returns the summary. Without `stale`,
    the cells whose code differs from today's are flagged."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(cells, code_stale(cells) if stale is None else stale, load_floor(folder))
    summary["seconds"] = seconds
    md = "\n\n".join(task_tables(t, e, summary["attacks"]) for t, e in summary["tasks"].items())
    (folder / "results.md").write_text("# trust bench\n\nGenerated from the cells; see report.html for the plots.\n\n" + md + "\n")
    write_csv(cells, folder / "results.csv")
    write_html(summary, cells, folder / "report.html")
    write_json(folder / "summary.json", summary)
    summary["markdown"] = md
    return summary


def load_cells(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text()).get("cells", [])
