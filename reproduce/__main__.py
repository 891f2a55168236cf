"""``python -m reproduce [--profile smoke|cpu|paper|auto] [--force] [--only 03] [--results-dir DIR]``."""

from __future__ import annotations

import argparse
import logging
import sys

from . import runner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce", description="Run notebooks/NN_*.ipynb headless with "
                                     "papermill and write <results-dir>/REPORT.md.")
    parser.add_argument("--profile", default="auto", help="smoke, cpu, paper or auto "
                        "(paper with a CUDA GPU, else cpu; default)")
    parser.add_argument("--force", action="store_true", help="re-run notebooks even if unchanged")
    parser.add_argument("--only", action="append", metavar="PREFIX",
                        help="run only notebooks whose stem starts with PREFIX (repeatable, or comma-separated)")
    parser.add_argument("--results-dir", help="results folder (default results/<profile>)")
    parser.add_argument("--notebooks", default=str(runner.NOTEBOOKS_DIR), help="notebook folder")
    parser.add_argument("--dry-run", action="store_true", help="print each notebook's parameters, run nothing")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    only = [p for item in args.only or [] for p in item.split(",") if p]
    return runner.run(args.profile, force=args.force, only=only or None, notebooks_dir=args.notebooks,
                      results_dir=args.results_dir, dry_run=args.dry_run,
                      progress=False if args.no_progress else None)


if __name__ == "__main__":
    sys.exit(main())
