"""End-to-end wall time of each reproduction profile, per notebook, from the runner's manifests.

``python -m reproduce.benchmarks --end-to-end-only`` (or ``python -m reproduce.benchmarks.end_to_end``)
reads ``results/<profile>/runs.json`` (written by :mod:`reproduce.runner`) for every profile that
has one and writes ``end_to_end.md`` and ``end_to_end.csv``. Cheap: rerun it after a new run.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"
DEFAULT_OUT = RESULTS / "benchmarks"
PROFILE_ORDER = ("smoke", "cpu", "paper")


def _fmt_s(seconds) -> str:
    if seconds is None:
        return ""
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def read_manifests(results: Path = RESULTS) -> dict[str, dict]:
    """``{profile: manifest}`` for every ``results/<profile>/runs.json``, known profiles first."""
    found = {p.parent.name: p for p in sorted(Path(results).glob("*/runs.json"))}
    order = [p for p in PROFILE_ORDER if p in found] + sorted(set(found) - set(PROFILE_ORDER))
    manifests = {}
    for profile in order:
        try:
            manifests[profile] = json.loads(found[profile].read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            manifests[profile] = {"error": f"unreadable {found[profile]}: {exc}", "notebooks": {}}
    return manifests


def rows_from(manifests: dict[str, dict]) -> list[dict]:
    rows = []
    for profile, manifest in manifests.items():
        for stem, entry in sorted((manifest.get("notebooks") or {}).items()):
            rows.append({"profile": profile, "notebook": stem, "status": entry.get("status", "?"),
                         "wall_s": entry.get("wall_s"), "finished": entry.get("finished", entry.get("started", ""))})
    return rows


def write(out: Path = DEFAULT_OUT, results: Path = RESULTS) -> Path:
    manifests = read_manifests(results)
    rows = rows_from(manifests)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "end_to_end.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["profile", "notebook", "status", "wall_s", "finished"])
        w.writeheader()
        w.writerows(rows)
    profiles = list(manifests)
    lines = ["# End to end: wall time per reproduction profile and notebook", "",
             "From `results/<profile>/runs.json` (the notebook runner's manifest: wall time of each notebook's "
             "last run). Regenerate after a run with `python -m reproduce.benchmarks --end-to-end-only`.", ""]
    if not profiles:
        lines += ["No `results/<profile>/runs.json` yet: run `python -m reproduce --profile smoke|cpu|paper` first.", ""]
    else:
        notebooks = sorted({r["notebook"] for r in rows})
        by = {(r["profile"], r["notebook"]): r for r in rows}
        lines += ["| notebook | " + " | ".join(profiles) + " |", "|---|" + "---:|" * len(profiles)]
        for nb in notebooks:
            cells = []
            for p in profiles:
                r = by.get((p, nb))
                if r is None:
                    cells.append("")
                else:
                    cells.append(_fmt_s(r["wall_s"]) + ("" if r["status"] == "ok" else f" ({r['status']})"))
            lines.append(f"| {nb} | " + " | ".join(cells) + " |")
        totals = []
        for p in profiles:
            walls = [r["wall_s"] for r in rows if r["profile"] == p and r["wall_s"] is not None]
            all_ok = all(r["status"] == "ok" for r in rows if r["profile"] == p)
            totals.append(f"**{_fmt_s(sum(walls))}**" + ("" if all_ok else " (not all ok)"))
        lines.append("| **sum of notebooks** | " + " | ".join(totals) + " |")
        lines.append("| last invocation | " + " | ".join(_fmt_s(manifests[p].get("last_invocation_s")) for p in profiles) + " |")
        lines.append("| manifest updated | " + " | ".join(str(manifests[p].get("updated", "")) for p in profiles) + " |")
        lines += ["", "A notebook's time is from its last actual run (a rerun skips unchanged notebooks and keeps their "
                  "time); 'last invocation' is the wall time of the runner's last call, skipped notebooks included.", ""]
        for p in profiles:
            if manifests[p].get("error"):
                lines.append(f"- {p}: {manifests[p]['error']}")
    (out / "end_to_end.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'end_to_end.md'} ({len(rows)} notebook runs in {len(profiles)} profiles)", flush=True)
    return out / "end_to_end.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.benchmarks.end_to_end", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--results", default=str(RESULTS), help="folder holding <profile>/runs.json")
    args = p.parse_args(argv)
    write(Path(args.out), Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
