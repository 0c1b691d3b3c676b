"""I2P-style prompt files: user-supplied prompt sets as CSV (`prompt, seed, case_number`, extra columns kept).

The format of the I2P-derived sets that unlearning papers evaluate nudity on (ESD, SalUn,
UnlearnDiffAtk): one row per image to generate, with the seed that makes it reproducible.

    case_number,prompt,evaluation_seed,evaluation_guidance,categories
    0,"a photo of a person at the beach",2734,7.5,sexual
    1,"an oil painting of a forest",123,7.5,

Columns (names are matched case-insensitively, surrounding spaces ignored):
  prompt         required, non-empty text
  seed           required: an integer in [0, 2**63); also read from `evaluation_seed` or `sd_seed`
                 (I2P / ESD naming). Integer-valued floats ("42.0", as pandas writes them) are accepted.
  case_number    optional: an integer id, unique in the file; rows are numbered 0, 1, ... when absent
  guidance       optional: float CFG scale; also `evaluation_guidance` or `sd_guidance_scale`;
                 empty = the model's default
  anything else  kept as text in `extra` (e.g. `categories`, `nudity_percentage`) and written back
Every problem is a `UserError` naming the file, the line and what to fix. See docs/nudity.md.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from trust_unlearn.errors import UserError

SEED_COLUMNS = ("seed", "evaluation_seed", "sd_seed")
GUIDANCE_COLUMNS = ("guidance", "evaluation_guidance", "sd_guidance_scale")
MAX_SEED = 2**63


@dataclass
class PromptRecord:
    prompt: str
    seed: int
    case_number: int
    guidance: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def categories(self) -> list[str]:
        """I2P's comma-separated `categories` column as a list (empty when absent)."""
        return [c.strip() for c in self.extra.get("categories", "").split(",") if c.strip()]


def _pick(columns: list[str], names: tuple[str, ...], path: Path, what: str) -> str | None:
    found = [c for c in columns if c in names]
    if len(found) > 1:
        raise UserError(f"{path}: several {what} columns {found}; keep one of them")
    return found[0] if found else None


def _seed(text: str, path: Path, line: int) -> int:
    raw = (text or "").strip()
    if not raw:
        raise UserError(f"{path}, line {line}: empty seed; every row needs an integer seed (0 <= seed < 2**63)")
    try:
        value = int(raw)
    except ValueError:
        try:
            number = float(raw)
        except ValueError:
            raise UserError(f"{path}, line {line}: seed {raw!r} is not an integer") from None
        if not math.isfinite(number) or number != int(number):
            raise UserError(f"{path}, line {line}: seed {raw!r} is not an integer") from None
        value = int(number)
    if not 0 <= value < MAX_SEED:
        raise UserError(f"{path}, line {line}: seed {value} is out of range; use 0 <= seed < 2**63")
    return value


def _case(text: str, path: Path, line: int) -> int:
    raw = (text or "").strip()
    try:
        number = float(raw)
        if not math.isfinite(number) or number != int(number):
            raise ValueError
        return int(number)
    except ValueError:
        raise UserError(f"{path}, line {line}: case_number {raw!r} is not an integer") from None


def _guidance(text: str, path: Path, line: int) -> float | None:
    raw = (text or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"{path}, line {line}: guidance {raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{path}, line {line}: guidance {raw!r} must be a finite number >= 0")
    return value


def read_prompt_file(path: str | Path) -> list[PromptRecord]:
    """Rows of an I2P-style CSV, validated, in file order."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"prompt file {path} does not exist")
    if path.is_dir():
        raise UserError(f"prompt file {path} is a folder; pass a .csv file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"prompt file {path} is not UTF-8 text; save it as UTF-8 CSV") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"prompt file {path} is empty; it needs a header row with at least `prompt` and `seed`") from None
    except csv.Error as err:
        raise UserError(f"prompt file {path}: not valid CSV ({err})") from None
    columns = [h.strip().lower() for h in header]
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise UserError(f"{path}: duplicate column(s) {dup} in the header")
    seed_col = _pick(columns, SEED_COLUMNS, path, "seed")
    guid_col = _pick(columns, GUIDANCE_COLUMNS, path, "guidance")
    missing = [name for name, col in (("prompt", "prompt" if "prompt" in columns else None),
                                      ("seed (or evaluation_seed / sd_seed)", seed_col)) if col is None]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; the header has {columns}. "
                        "An I2P-style file needs `prompt` and `seed` (optional `case_number`, `evaluation_guidance`, "
                        "`categories`, ...)")
    special = {"prompt", "case_number", seed_col, guid_col}
    records, cases = [], {}
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line
            if len(row) != len(columns):
                raise UserError(f"{path}, line {line}: {len(row)} fields but the header has {len(columns)}; "
                                "quote prompts that contain commas")
            values = dict(zip(columns, row))
            prompt = values["prompt"].strip()
            if not prompt:
                raise UserError(f"{path}, line {line}: empty prompt; give every row some text or delete the row")
            case = _case(values["case_number"], path, line) if "case_number" in values else len(records)
            if case in cases:
                raise UserError(f"{path}, line {line}: case_number {case} already used on line {cases[case]}")
            cases[case] = line
            records.append(PromptRecord(
                prompt=prompt, seed=_seed(values[seed_col], path, line), case_number=case,
                guidance=_guidance(values[guid_col], path, line) if guid_col else None,
                extra={c: values[c] for c in columns if c not in special},
            ))
    except csv.Error as err:
        raise UserError(f"prompt file {path}, line {reader.line_num}: not valid CSV ({err})") from None
    if not records:
        raise UserError(f"prompt file {path} has a header but no prompts")
    return records


def write_prompt_file(path: str | Path, records: list[PromptRecord]) -> Path:
    """Write records as `case_number,prompt,seed[,evaluation_guidance][,extra columns...]` (UTF-8, quoted as needed)."""
    path = Path(path)
    extras: list[str] = []
    for r in records:
        extras += [k for k in r.extra if k not in extras]
    with_guidance = any(r.guidance is not None for r in records)
    header = ["case_number", "prompt", "seed"] + (["evaluation_guidance"] if with_guidance else []) + extras
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in records:
            row = [r.case_number, r.prompt, r.seed]
            if with_guidance:
                row.append("" if r.guidance is None else repr(float(r.guidance)))
            writer.writerow(row + [r.extra.get(k, "") for k in extras])
    return path


def prompts_and_seeds(records: list[PromptRecord]) -> tuple[list[str], list[int]]:
    """What `pipeline.generate(model, prompts, seeds)` takes."""
    return [r.prompt for r in records], [r.seed for r in records]


def with_category(records: list[PromptRecord], category: str) -> list[PromptRecord]:
    """Rows whose I2P `categories` include `category` (e.g. 'sexual')."""
    return [r for r in records if category.strip().lower() in (c.lower() for c in r.categories)]
