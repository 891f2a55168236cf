"""Build ``<results_dir>/REPORT.md`` from the run manifest and the notebooks' records."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    """CPU model, thread counts, GPU name, Python and torch versions of this machine."""
    from reproduce.benchmarks.machine import cpu_flags, cpu_model

    info = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_threads": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except ImportError:
        info.update(torch=None, gpu=None)
    return info


def machine_line(info: dict) -> str:
    """``AMD EPYC, 2 CPU threads (torch uses 2), GPU: none`` from :func:`machine_info`."""
    flags = f" ({info['cpu_flags']})" if info.get("cpu_flags") else ""
    return (f"{info.get('cpu')}{flags}, {info.get('cpu_threads')} CPU threads "
            f"(torch uses {info.get('torch_threads', '-')}), GPU: {info.get('gpu') or 'none'}")


def git_commit(repo: Path = REPO) -> str | None:
    """Short commit of the checkout (``+dirty`` with uncommitted tracked changes), or None."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def markdown_table(rows: list[dict]) -> str:
    """A GitHub Markdown table with the union of the rows' keys as columns."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = lambda v: "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(float(seconds), 60)
    return f"{int(minutes)} min {secs:.0f} s" if minutes else f"{secs:.1f} s"


def _table_markdown(results_dir: Path, paths: list[str]) -> str:
    """The Markdown version of a recorded table (its ``.md`` file, else the CSV rendered)."""
    files = [results_dir / p for p in paths]
    for candidate in [f for f in files if f.suffix == ".md"] + [f.with_suffix(".md") for f in files]:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8").strip()
    for f in files:
        if f.suffix == ".csv" and f.is_file():
            import pandas as pd

            return pd.read_csv(f).to_markdown(index=False)
    return f"_missing: {', '.join(paths)}_"


def _notebook_section(stem: str, entry: dict, record: dict | None, results_dir: Path) -> list[str]:
    out = [f"## {stem}", ""]
    status = entry.get("status", "not run by the runner")
    output = entry.get("output")
    out.append(f"- status: **{status}**, wall time {_duration(entry.get('wall_s'))}"
               + (f", finished {entry['finished']}" if entry.get("finished") else ""))
    if output:
        out.append(f"- executed notebook: [{output}]({output})")
    if entry.get("error"):
        out.append(f"- error: `{entry['error']}`")
    if record is None:
        out += ["- no record (the notebook did not call `ctxstyle.experiments.records.record_run`)", ""]
        return out
    params = record.get("parameters") or entry.get("parameters") or {}
    out += [f"- seeds: {record.get('seeds') or '-'}",
            f"- data version: {record.get('data_version') or '-'}",
            f"- weights provenance: `{json.dumps(record.get('weights_provenance'), default=str)}`",
            f"- parameters: `{json.dumps(params, default=str)}`"]
    if record.get("notes"):
        out += ["", record["notes"].strip()]
    for name, paths in (record.get("tables") or {}).items():
        out += ["", f"### {name}", "", _table_markdown(results_dir, paths)]
    if record.get("figures"):
        out += ["", "### Figures", ""]
        out += [f"![{Path(f).stem}]({f})" for f in record["figures"]]
    if record.get("paper_comparison"):
        out += ["", "### Paper vs measured", "", markdown_table(record["paper_comparison"])]
    out.append("")
    return out


def build_report(results_dir: str | Path) -> str:
    """The report's Markdown text."""
    results_dir = Path(results_dir)
    manifest_path = results_dir / "runs.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    entries = manifest.get("notebooks") or {}
    records = {p.stem: json.loads(p.read_text()) for p in sorted((results_dir / "records").glob("*.json"))}
    stems = sorted(set(entries) | set(records))
    info = machine_info()
    total = sum(e.get("wall_s") or 0 for e in entries.values())
    out = ["# ctxstyle reproduction report", "",
           f"- profile: **{manifest.get('profile', results_dir.name)}**",
           f"- date: {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
           f"- machine: {machine_line(info)}",
           f"- python {info['python']}, torch {info.get('torch') or '-'}, {info['platform']}",
           f"- ctxstyle commit: {git_commit() or 'unavailable'} (lib hash {manifest.get('lib_hash', '-')[:12]})",
           f"- total wall time (last run of each notebook): {_duration(total)}; "
           f"this invocation: {_duration(manifest.get('last_invocation_s'))}"]
    check = results_dir / "reproduction_check.md"
    if check.is_file():
        title = check.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        out.append(f"- {title} against the committed reference: [reproduction_check.md](reproduction_check.md)")
    out.append("")
    if stems:
        out += [markdown_table([{"notebook": s, "status": entries.get(s, {}).get("status", "-"),
                                 "wall time": _duration(entries.get(s, {}).get("wall_s")),
                                 "record": "yes" if s in records else "no"} for s in stems]), ""]
    else:
        out += ["No notebooks have run yet.", ""]
    for stem in stems:
        out += _notebook_section(stem, entries.get(stem, {}), records.get(stem), results_dir)
    return "\n".join(out).rstrip() + "\n"


def write_report(results_dir: str | Path) -> Path:
    """Write ``REPORT.md`` into ``results_dir``; return its path."""
    path = Path(results_dir) / "REPORT.md"
    path.write_text(build_report(results_dir), encoding="utf-8")
    return path


if __name__ == "__main__":  # python -m reproduce.report results/cpu
    print(write_report(sys.argv[1] if len(sys.argv) > 1 else REPO / "results" / "cpu"))
