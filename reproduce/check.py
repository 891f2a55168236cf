"""The reproduction check: the headline numbers of a new run against the committed reference.

``compare(reference_dir, run_dir)`` reads, from both folders' ``tables/``, every table named in
:data:`HEADLINES` (Table 1, Table 2, the extractor comparison and the gates) and compares them cell
by cell, rows matched by their key columns. A number is **within** when

    |now - committed| <= max(SPREAD_FACTOR x committed seed std, floor of that metric)

where the seed std is the committed spread over decoder (or U-Net) seeds: the ``<metric>_std``
column of rows whose spread is over seeds, the ``± s`` of a ``m ± s`` cell, or the std over the
rows of one method that differ only in their seed. Where the committed spread is not over seeds
(a std over test pairs, a single-seed table) only the floor applies. Pass/fail verdicts (gates,
chosen learning rates) must be the **same**. A table, row or column missing from the run is
reported as **missing**, never skipped silently.

``python -m reproduce.check REFERENCE RUN`` compares two result folders and writes
``RUN/reproduction_check.{md,csv}``; ``python -m reproduce`` runs it after every fresh run.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SPREAD_FACTOR = 2.0
CHECK_STEM = "reproduction_check"
#: statuses that make the check fail
FAILING = ("OUTSIDE", "DIFFERS", "missing")
_PM = re.compile(r"^\s*([-+]?[0-9.]+(?:e[-+]?\d+)?)\s*±\s*([0-9.]+(?:e[-+]?\d+)?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Headline:
    """One committed table whose numbers a fresh run must reproduce.

    ``spread``: where the committed seed std of a number comes from: ``"std_columns"`` (column
    ``X_std`` beside ``X_mean`` or ``X``; counted as a seed spread only on rows whose
    ``spread_column`` mentions seeds), ``"plus_minus"`` (cells ``m ± s`` over seeds), ``"rows"``
    (std over the rows that share ``group``, i.e. differ only in their seed) or ``None``.
    ``metrics``: the numeric columns compared (None: every numeric column not in ``exclude``).
    ``verdicts``: columns compared as text (must be equal). ``floors``: per-column absolute floor
    of the tolerance (``default_floor`` otherwise).
    """

    title: str
    notebook: str
    table: str
    key: tuple[str, ...]
    spread: str | None = None
    metrics: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()
    spread_column: str | None = None
    group: tuple[str, ...] = ()
    skip_rows: tuple[str, ...] = ()  # key prefixes of rows that are not measured (e.g. the paper's numbers)
    default_floor: float = 0.01
    floors: dict = field(default_factory=dict)

    def floor(self, column: str) -> float:
        return float(self.floors.get(column, self.default_floor))


#: The headline tables (written by notebooks 03, 04 and 05) and how each is compared.
HEADLINES: tuple[Headline, ...] = (
    Headline("Table 1 (style transfer)", "03_style_transfer", "table1_style_transfer", ("method",),
             spread="std_columns", spread_column="spread_over",
             exclude=("seeds", "cis_contents", "ms_per_image"),  # counts and timing, not results
             floors={"cis_mean": 0.05, "style_accuracy": 0.05}),
    Headline("Gate A (warm start, notebook 03)", "03_style_transfer", "gate_a_warm_start", ("AdaIN layer",),
             metrics=("edge_ssim", "bone_dice_rank", "l1"), verdicts=("gate A passed",),
             floors={"l1": 0.005}),
    Headline("Gate B (convergence, notebook 03)", "03_style_transfer", "gate_b_convergence", ("method", "seed"),
             spread="rows", group=("method",), metrics=("last_fifth", "previous_fifth", "change"),
             verdicts=("lr", "gate B passed"), floors={"last_fifth": 0.05, "previous_fifth": 0.05, "change": 0.02}),
    Headline("Table 2 (segmentation)", "04_segmentation", "table2_segmentation", ("key",),
             spread="plus_minus", skip_rows=("paper",), default_floor=1.0,  # percentage points
             metrics=("PA source (%)", "mIoU source (%)", "Dice source (%)",
                      "PA target (%)", "mIoU target (%)", "Dice target (%)")),
    Headline("Table 2, held-out styles (segmentation)", "04_segmentation", "table2_segmentation_held_out", ("key",),
             spread="plus_minus", default_floor=1.0,
             metrics=("Dice source (%)", "PA target (%)", "mIoU target (%)", "Dice target (%)")),
    Headline("Extractor comparison (notebook 05)", "05_extractors", "extractor_comparison",
             ("backbone", "content loss"), exclude=("outputs",), verdicts=("gate A (warm start)",),
             floors={"CIS ↑": 0.05, "style classifier accuracy ↑": 0.07}),
    Headline("Extractor gate A (notebook 05)", "05_extractors", "extractor_gate_a", ("backbone",),
             metrics=("edge SSIM (≥ 0.6)", "bone Dice, rank (≥ 0.85)", "L1 to the slice"), verdicts=("gate A",),
             floors={"L1 to the slice": 0.005}),
    Headline("Extractor gate B (notebook 05)", "05_extractors", "extractor_gate_b",
             ("backbone", "content loss", "seed"), metrics=("loss, previous fifth", "loss, last fifth", "relative fall"),
             verdicts=("lr", "gate B (plateaued)"),
             floors={"loss, previous fifth": 0.05, "loss, last fifth": 0.05, "relative fall": 0.02}),
)

COLUMNS = ("table", "row", "metric", "committed", "seed_std", "now", "difference", "tolerance", "status")


def _number(value) -> float | None:
    """A float from a number or a ``m ± s`` / ``+1.5 [..]`` cell; None when there is none."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return None if math.isnan(float(value)) else float(value)
    match = _PM.match(str(value))
    if match:
        return float(match.group(1))
    try:
        return float(str(value))
    except ValueError:
        return None


def _plus_minus_std(value) -> float | None:
    match = _PM.match(str(value)) if isinstance(value, str) else None
    return float(match.group(2)) if match else None


def _text(value) -> str:
    """A verdict cell as comparable text (1e-3 and 0.001 are the same lr; NaN is empty)."""
    number = None if isinstance(value, bool) else _number(value)
    if number is not None and not isinstance(value, str):
        return f"{number:.6g}"
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def _read(path: Path):
    import pandas as pd

    return pd.read_csv(path, keep_default_na=True)


def _row_key(row, key: tuple[str, ...]) -> str:
    return " / ".join(_text(row[k]) for k in key)


def _seed_std(spec: Headline, table, row, metric: str) -> float | None:
    """The committed spread of ``metric`` over seeds for this row, or None when it has none."""
    if spec.spread == "plus_minus":
        return _plus_minus_std(row[metric])
    if spec.spread == "std_columns":
        if spec.spread_column and "seed" not in str(row.get(spec.spread_column, "")):
            return None
        base = metric[: -len("_mean")] if metric.endswith("_mean") else metric
        std = _number(row.get(base + "_std")) if base + "_std" in table.columns else None
        return std
    if spec.spread == "rows":
        mask = (table[list(spec.group)].astype(str) == [str(row[g]) for g in spec.group]).all(axis=1)
        values = [v for v in (_number(x) for x in table.loc[mask, metric]) if v is not None]
        if len(values) < 2:
            return None
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return None


def _metric_columns(spec: Headline, table) -> list[str]:
    if spec.metrics is not None:
        return list(spec.metrics)
    skip = set(spec.key) | set(spec.exclude) | set(spec.verdicts)
    out = []
    for column in table.columns:
        if column in skip or column.endswith("_std") or column.startswith("paper"):
            continue
        if any(_number(v) is not None for v in table[column]):
            out.append(column)
    return out


def _result(spec, row, metric, committed=None, std=None, now=None, diff=None, tol=None, status="") -> dict:
    return {"table": spec.title, "row": row, "metric": metric, "committed": committed, "seed_std": std,
            "now": now, "difference": diff, "tolerance": tol, "status": status}


def compare_table(spec: Headline, reference_dir: Path, run_dir: Path) -> list[dict]:
    """The comparison rows of one headline table (see :data:`COLUMNS`)."""
    ref_path = Path(reference_dir) / "tables" / f"{spec.table}.csv"
    run_path = Path(run_dir) / "tables" / f"{spec.table}.csv"
    if not ref_path.is_file():
        return [_result(spec, "-", "-", status="no reference")]
    if not run_path.is_file():
        return [_result(spec, "-", "-", status=f"missing: the run wrote no tables/{run_path.name}")]
    ref, now = _read(ref_path), _read(run_path)
    absent_keys = [k for k in spec.key if k not in now.columns or k not in ref.columns]
    if absent_keys:
        return [_result(spec, "-", "-", status=f"missing: key column(s) {', '.join(absent_keys)}")]
    now_rows = {}
    for _, row in now.iterrows():
        now_rows.setdefault(_row_key(row, spec.key), row)
    ref_keys, out = set(), []
    for _, row in ref.iterrows():
        key = _row_key(row, spec.key)
        if key in ref_keys or any(key.startswith(p) for p in spec.skip_rows):
            continue
        ref_keys.add(key)
        other = now_rows.get(key)
        if other is None:
            out.append(_result(spec, key, "-", status="missing: row not in the run"))
            continue
        for column in spec.verdicts:
            if column not in ref.columns:
                continue
            a, b = _text(row[column]), _text(other[column]) if column in now.columns else None
            status = "missing: column not in the run" if b is None else ("same" if a == b else "DIFFERS")
            out.append(_result(spec, key, column, committed=a, now=b, status=status))
        for column in _metric_columns(spec, ref):
            if column not in ref.columns:
                continue
            committed = _number(row[column])
            if committed is None:
                continue  # nothing committed to reproduce (an empty reference cell)
            if column not in now.columns:
                out.append(_result(spec, key, column, committed, status="missing: column not in the run"))
                continue
            value = _number(other[column])
            std = _seed_std(spec, ref, row, column)
            tol = max(SPREAD_FACTOR * std if std is not None else 0.0, spec.floor(column))
            if value is None:
                out.append(_result(spec, key, column, committed, std, None, None, tol, "missing: no number in the run"))
                continue
            diff = value - committed
            status = "within" if abs(diff) <= tol * (1 + 1e-9) else "OUTSIDE"
            out.append(_result(spec, key, column, committed, std, value, diff, tol, status))
    for key in now_rows:
        if key not in ref_keys and not any(key.startswith(p) for p in spec.skip_rows):
            out.append(_result(spec, key, "-", status="not in the reference (new row)"))
    return out


def compare(reference_dir: str | Path, run_dir: str | Path, headlines=HEADLINES,
            notebooks: set[str] | None = None) -> list[dict]:
    """Every headline table of ``reference_dir`` against ``run_dir``; ``notebooks`` (stems, e.g.
    after ``--only``) limits the check to the tables of those notebooks (matched by number)."""
    numbers = None if notebooks is None else {n.split("_", 1)[0] for n in notebooks}
    rows = []
    for spec in headlines:
        if numbers is not None and spec.notebook.split("_", 1)[0] not in numbers:
            continue
        rows += compare_table(spec, Path(reference_dir), Path(run_dir))
    return rows


def parameter_differences(reference_dir: str | Path, run_dir: str | Path) -> list[str]:
    """Notebooks whose parameters in the run's ``runs.json`` differ from the reference's (a check
    against a reference made with other parameters compares different experiments)."""
    import json

    def entries(folder):
        path = Path(folder) / "runs.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("notebooks") or {}
        except (OSError, ValueError):
            return {}

    ref, now = entries(reference_dir), entries(run_dir)
    out = []
    for stem in sorted(set(ref) & set(now)):
        a = {k: v for k, v in (ref[stem].get("parameters") or {}).items() if k != "results_dir"}
        b = {k: v for k, v in (now[stem].get("parameters") or {}).items() if k != "results_dir"}
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if changed:
            out.append(f"{stem}: " + ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in changed))
    return out


def failed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if str(r["status"]).startswith(FAILING)]


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per table: how many numbers are within / outside, verdicts same / different, missing."""
    out = {}
    for r in rows:
        s = out.setdefault(r["table"], {"table": r["table"], "numbers": 0, "within": 0, "OUTSIDE": 0,
                                        "verdicts same": 0, "verdicts DIFFER": 0, "missing": 0, "other": 0})
        status = str(r["status"])
        if status in ("within", "OUTSIDE"):
            s["numbers"] += 1
            s[status] += 1
        elif status == "same":
            s["verdicts same"] += 1
        elif status == "DIFFERS":
            s["verdicts DIFFER"] += 1
        elif status.startswith("missing"):
            s["missing"] += 1
        else:
            s["other"] += 1
    return list(out.values())


def rule_text(headlines=HEADLINES) -> str:
    floors = "; ".join(
        f"{h.title}: {h.default_floor:g}" + "".join(f", {c} {v:g}" for c, v in h.floors.items()) for h in headlines)
    return (f"A number is **within** when |now − committed| ≤ max({SPREAD_FACTOR:g} × committed seed std, floor). "
            "The seed std is the committed spread over decoder / U-Net seeds (Table 1's `*_std` columns on rows "
            "whose spread is over seeds, Table 2's `± s`, gate B's std over the seeds of one method); rows whose "
            "committed spread is over test pairs or that have one seed get the floor alone. Verdicts (gates "
            "passed, chosen lr) must be the **same**. Differences, confidence intervals and p-values derived "
            "from these numbers are not compared separately. Floors (absolute, in the table's unit; default, "
            f"then per column): {floors}.")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(rows: list[dict], reference_dir, run_dir, headlines=HEADLINES) -> str:
    from .report import markdown_table

    bad = failed(rows)
    verdict = "PASSED" if not bad else f"FAILED ({len(bad)} of {len(rows)} entries outside, different or missing)"
    out = [f"# Reproduction check: {verdict}", "",
           f"- committed reference: `{reference_dir}`", f"- this run: `{run_dir}`"]
    changed = parameter_differences(reference_dir, run_dir)
    if changed:
        out += ["- **the reference was made with other parameters** (differences are expected where they matter):"]
        out += [f"  - {line}" for line in changed]
    out += ["", rule_text(headlines), "",
           markdown_table(summary_rows(rows)) if rows else "_No headline table was compared._", ""]
    if bad:
        out += ["## Outside, different or missing", "",
                markdown_table([{c: _fmt(r[c]) for c in COLUMNS} for r in bad]), ""]
    for title in dict.fromkeys(r["table"] for r in rows):
        out += [f"## {title}", "", markdown_table([{c: _fmt(r[c]) for c in COLUMNS if c != "table"}
                                                  for r in rows if r["table"] == title]), ""]
    return "\n".join(out).rstrip() + "\n"


def console_summary(rows: list[dict], md_path: Path | None = None, limit: int = 15,
                    changed_parameters: list[str] | None = None) -> str:
    """A few lines for the terminal: per table counts, then the first failing entries."""
    bad = failed(rows)
    lines = [f"reproduction check: {'PASSED' if not bad else 'FAILED'} "
             f"(within = |now - committed| <= max({SPREAD_FACTOR:g} x committed seed std, floor); "
             "verdicts must be the same)"]
    for line in changed_parameters or []:
        lines.append(f"  note: the reference ran with other parameters: {line}")
    unreferenced = {r["table"] for r in rows if r["status"] == "no reference"}
    for s in summary_rows(rows):
        if s["table"] in unreferenced:
            lines.append(f"  {s['table']}: no committed table, not checked")
            continue
        parts = [f"{s['within']}/{s['numbers']} numbers within"]
        if s["verdicts same"] or s["verdicts DIFFER"]:
            parts.append(f"{s['verdicts same']}/{s['verdicts same'] + s['verdicts DIFFER']} verdicts same")
        if s["missing"]:
            parts.append(f"{s['missing']} missing")
        if s["other"]:
            parts.append(f"{s['other']} other (no reference / new rows)")
        lines.append(f"  {s['table']}: " + ", ".join(parts))
    for r in bad[:limit]:
        if r["difference"] is not None:
            lines.append(f"  {r['status']}: {r['table']} | {r['row']} | {r['metric']}: committed "
                         f"{_fmt(r['committed'])}, now {_fmt(r['now'])}, difference {r['difference']:+.4g} "
                         f"(tolerance {_fmt(r['tolerance'])})")
        elif r["status"] == "DIFFERS":
            lines.append(f"  DIFFERS: {r['table']} | {r['row']} | {r['metric']}: committed {r['committed']!s}, "
                         f"now {r['now']!s}")
        else:
            where = " | ".join(str(x) for x in (r["table"], r["row"], r["metric"]) if x != "-")
            lines.append(f"  MISSING: {where}: {str(r['status']).split(': ', 1)[-1]}")
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    if md_path is not None:
        lines.append(f"  full table: {md_path}")
    return "\n".join(lines)


def write_check(reference_dir: str | Path, run_dir: str | Path, out_dir: str | Path | None = None,
                headlines=HEADLINES, notebooks: set[str] | None = None) -> tuple[list[dict], Path, Path]:
    """Compare, then write ``reproduction_check.csv`` and ``.md`` into ``out_dir`` (default the run)."""
    import pandas as pd

    rows = compare(reference_dir, run_dir, headlines, notebooks)
    out_dir = Path(out_dir or run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{CHECK_STEM}.csv", out_dir / f"{CHECK_STEM}.md"
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(csv_path, index=False)
    md_path.write_text(markdown(rows, reference_dir, run_dir, headlines), encoding="utf-8")
    return rows, csv_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce.check",
                                     description="Compare the headline tables of a run with a committed reference.")
    parser.add_argument("reference", help="committed results folder, e.g. results/cpu")
    parser.add_argument("run", help="the run's results folder, e.g. results/runs/cpu-20261202T170000Z")
    parser.add_argument("--out", help="where to write reproduction_check.{csv,md} (default: the run folder)")
    args = parser.parse_args(argv)
    rows, _, md_path = write_check(args.reference, args.run, args.out)
    print(console_summary(rows, md_path, changed_parameters=parameter_differences(args.reference, args.run)))
    return 3 if failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
