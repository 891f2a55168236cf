"""``python -m reproduce``: a fresh, checked run (default) or a regeneration of the reference."""

from __future__ import annotations

import argparse
import logging
import sys

from . import runner
from .watchdog import DEFAULT_WINDOW_S

EPILOG = """\
two paths:
  python -m reproduce [--profile P] [--reuse [DIR]] [--only 03]
      (make reproduce) runs every notebook of the profile into a NEW folder
      results/runs/<profile>-<UTC time>/ (not committed), then checks its headline numbers
      (Table 1, Table 2, the extractor table, the gates) against the committed results/<profile>,
      which it never writes (except its local checkpoints/ cache with --reuse, which such a run
      adds to): reproduction_check.md and .csv in the run folder, a summary here.
      Nothing is reused unless --reuse is given.
  python -m reproduce --update-reference [--profile P] [--force] [--only 03]
      (maintainers) regenerates the committed results/<profile> in place, skipping notebooks whose
      notebook, parameters, library and upstream notebooks are unchanged since their last run
      (--force re-runs them). --results-dir DIR does the same into another folder.

environment: CTXSTYLE_IDLE_KERNEL_S (default %(window)g; 0 turns it off) is how many seconds a kernel
whose processes use no CPU while a cell runs is given before it is killed and its notebook run
once more (reproduce/watchdog.py).

exit status: 0 ok; 1 a notebook failed; 2 bad profile or selection; 3 the reproduction check
found a number outside the committed seed spread, a changed verdict or a missing table.
""" % {"window": DEFAULT_WINDOW_S}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reproduce", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run notebooks/NN_*.ipynb headless with papermill, write REPORT.md, and check a fresh "
                    "run against the committed results.")
    parser.add_argument("--profile", default="auto", help="smoke, cpu, paper or auto "
                        "(paper with a CUDA GPU, else cpu; default)")
    parser.add_argument("--only", action="append", metavar="PREFIX",
                        help="run only notebooks whose stem starts with PREFIX (repeatable, or comma-separated); "
                             "a fresh run then checks only their tables")
    parser.add_argument("--reuse", nargs="?", const=True, default=False, metavar="CHECKPOINTS",
                        help="fresh run: load trained decoders and U-Nets from the reference's checkpoints/ "
                             "(or from CHECKPOINTS) instead of training them; new ones are added there")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--update-reference", action="store_true",
                       help="regenerate the committed results/<profile> in place (maintainers)")
    where.add_argument("--results-dir", help="run into this folder in place, like --update-reference")
    parser.add_argument("--force", action="store_true",
                        help="with --update-reference / --results-dir: re-run notebooks even if unchanged")
    parser.add_argument("--notebooks", default=str(runner.NOTEBOOKS_DIR), help="notebook folder")
    parser.add_argument("--results-root", default=str(runner.RESULTS_ROOT),
                        help="results folder (default results/): the reference is <root>/<profile>, "
                             "fresh runs go to <root>/runs/")
    parser.add_argument("--dry-run", action="store_true", help="print each notebook's parameters, run nothing")
    parser.add_argument("--no-progress", action="store_true",
                        help="print only a line per notebook (no cells, output, progress bars or heartbeat)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    only = [p for item in args.only or [] for p in item.split(",") if p] or None
    progress = False if args.no_progress else None
    in_place = args.update_reference or args.results_dir
    if not in_place:
        if args.force:
            print("note: --force changes nothing in a fresh run (every selected notebook runs); "
                  "--update-reference --force re-runs notebooks in the committed results/<profile>")
        return runner.fresh_run(args.profile, reuse=args.reuse, only=only, notebooks_dir=args.notebooks,
                                results_root=args.results_root, progress=progress, dry_run=args.dry_run)
    if args.reuse:
        parser.error("--reuse applies to a fresh run; in place, a folder's own checkpoints/ are reused")
    return runner.run(args.profile, force=args.force, only=only, notebooks_dir=args.notebooks,
                      results_root=args.results_root, results_dir=args.results_dir, dry_run=args.dry_run,
                      progress=progress)


if __name__ == "__main__":
    sys.exit(main())
