"""The ``ctxstyle`` command: ``train``, ``stylize``, ``weights`` and ``data``."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from pathlib import Path

from ctxstyle.errors import CtxStyleError, InputError

#: Failures the command answers with one line and exit status 2 (``--debug`` adds the traceback);
#: anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (CtxStyleError, OSError, MemoryError)
#: Where ``train --method`` caches its decoders unless ``--checkpoints`` says otherwise.
DEFAULT_CHECKPOINTS = "runs/checkpoints"


def _train(args) -> None:
    from ctxstyle.stylize import check_writable

    if args.method:
        from ctxstyle.experiments.recipe import (GATE_BONE_DICE, GATE_EDGE_SSIM, Recipe, method_config,
                                                 reconstruction_scores, trained_decoders, val_pairs, warm_start)
        from ctxstyle.train import check_architecture

        if args.plain:
            raise InputError("--plain", "goes with --config: --method trains as the experiments do (with ctxstyle.fast)")
        if args.output_dir or args.no_resume:
            raise InputError("--method", "--output-dir and --no-resume go with --config; --method trains into "
                             "--checkpoints (delete a cached run's folder there to train it again)")
        recipe = Recipe.from_yaml(args.recipe) if args.recipe else Recipe()
        check_architecture(method_config(args.method, recipe, lr=recipe.lrs[0], seed=recipe.seeds[0],
                                         init_decoder="warm start"), args.recipe or "recipe")
        checkpoints = args.checkpoints or DEFAULT_CHECKPOINTS
        check_writable(Path(checkpoints) / "run")
        seed = recipe.seeds[0] if args.seed is None else args.seed
        gate = reconstruction_scores(warm_start(recipe, checkpoints, progress=not args.quiet), val_pairs(recipe))
        if not gate["passed"]:  # gate A: nothing a method learns from this warm start keeps the anatomy
            raise InputError(args.recipe or "recipe", f"gate A failed: the warm start reaches edge SSIM "
                             f"{gate['edge_ssim']:.3f} (needs >= {GATE_EDGE_SSIM}) and bone Dice (rank) "
                             f"{gate['bone_dice_rank']:.3f} (needs >= {GATE_BONE_DICE}) on the validation patient; "
                             "train it longer (warm_iterations) before any method")
        stylizer = trained_decoders(args.method, recipe, checkpoints, seeds=[seed], progress=not args.quiet)[seed]
        print(stylizer.checkpoint)
        return
    if args.seed is not None or args.recipe or args.checkpoints:
        raise InputError("--config", "--seed, --recipe and --checkpoints go with --method; with --config set "
                         "seed and output_dir in the YAML file (or --output-dir)")
    from ctxstyle.experiments.presets import config_from_yaml
    from ctxstyle.train import CHECKPOINT_LAST, check_architecture, train

    cfg = config_from_yaml(args.config)
    check_architecture(cfg, args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    check_writable(Path(cfg.output_dir) / CHECKPOINT_LAST)
    path = train(cfg, resume=not args.no_resume, progress=not args.quiet, fast=not args.plain)
    print(path)


def _stylize(args) -> None:
    from ctxstyle.stylize import stylize_files

    written = stylize_files(
        [args.content], args.styles, args.output, args.checkpoint,
        alpha=args.alpha, style_weights=args.style_weights,
        window=tuple(args.window) if args.window else None,
        style_window=tuple(args.style_window) if args.style_window else None,
        overwrite=args.overwrite, new_study=args.new_study, max_memory_gib=args.max_memory,
        progress=not args.quiet, fast=not args.plain,
    )
    for path in written:
        print(path)


def _weights(args) -> None:
    from ctxstyle.backbones.weights import resolve_weights

    for arch in args.arch:
        _, provenance = resolve_weights(arch)
        print(json.dumps(provenance.to_dict(), indent=2))


def _data(args) -> None:
    from ctxstyle import data

    if args.action == "verify":
        root = Path(args.dest) if args.dest else data.data_dir()
        checked = data.verify_checksums(root)
        table = data.checksum_table(root)[0]
        print(f"{root}: all {len(checked)} files match {table} (data version {data.data_version(root)})")
    elif args.action == "fetch":
        print(data.fetch(args.dest, force=args.force))
    elif args.action == "figures":
        from ctxstyle.data.figures import make_figures

        print(json.dumps(make_figures(args.dest, force=args.force), indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxstyle", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    debug = argparse.ArgumentParser(add_help=False)  # --debug also after the command
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", parents=[debug],
                       help="train a decoder: a method with the project's recipe (warm start, lr chosen "
                       "on validation), or one run from a YAML config (resumes when interrupted)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--method", choices=["ours", "adain", "contextual"],
                      help="train this method with the recipe of ctxstyle.experiments.recipe (cached by config hash)")
    what.add_argument("--config", help="YAML file with TrainConfig fields, optionally `preset: ours|adain|contextual` "
                                        "(one run, no warm start or lr choice)")
    p.add_argument("--recipe", help="with --method: YAML file with Recipe fields (default: the Recipe defaults)")
    p.add_argument("--seed", type=int, help="with --method: decoder seed (default: the recipe's first)")
    p.add_argument("--checkpoints", help=f"with --method: folder of the cached decoders (default: {DEFAULT_CHECKPOINTS})")
    p.add_argument("--output-dir", help="with --config: override the config's output_dir")
    p.add_argument("--no-resume", action="store_true", help="with --config: start again even if a checkpoint exists (default: resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--plain", action="store_true",
                   help="with --config: the plain method code, without ctxstyle.fast (slower)")
    p.set_defaults(func=_train)

    p = sub.add_parser("stylize", parents=[debug], help="stylize a PNG, NIfTI or DICOM file (or a folder of them)")
    p.add_argument("content", help="content file or folder")
    p.add_argument("styles", nargs="+", help="one or more style images (PNG, NIfTI, DICOM) or folders")
    p.add_argument("-o", "--output", required=True, help="output file (single input) or folder")
    p.add_argument("--checkpoint", required=True, help="decoder checkpoint from `ctxstyle train`")
    p.add_argument("--alpha", type=float, default=1.0, help="content/style trade-off in [0, 1]")
    p.add_argument("--style-weights", type=float, nargs="+", help="blend weights, one per style image")
    p.add_argument("--window", type=float, nargs=2, metavar=("LEVEL", "WIDTH"),
                   help="HU window that maps CT content to [0, 1] and back (default: the source style's)")
    p.add_argument("--style-window", type=float, nargs=2, metavar=("LEVEL", "WIDTH"),
                   help="HU window for CT style references (default: --window)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs, an input itself included (default: refuse)")
    p.add_argument("--new-study", action="store_true",
                   help="DICOM: a new StudyInstanceUID per input study (default: keep the study; "
                        "each input series always gets a new SeriesInstanceUID)")
    p.add_argument("--max-memory", type=float, metavar="GIB",
                   help="memory budget of a stylization batch; larger images are refused "
                        "(default: ctxstyle.stylize.DEFAULT_MAX_MEMORY_GIB, 4 GiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no timing line")
    p.add_argument("--plain", action="store_true", help="the plain method code, without ctxstyle.fast (slower)")
    p.set_defaults(func=_stylize)

    p = sub.add_parser("weights", parents=[debug], help="resolve pretrained weights and print their provenance")
    p.add_argument("arch", nargs="*", default=["vgg19"])
    p.set_defaults(func=_weights)

    p = sub.add_parser("data", parents=[debug], help="verify or fetch the spine CT data, or draw its figures "
                       "(results/data and the generated block of docs/DATA.md, unless --dest)")
    p.add_argument("action", choices=["verify", "fetch", "figures"])
    p.add_argument("--dest", help="data folder to verify / fetch target / figure folder (verify: default the data "
                                  "folder the project reads; fetch: default CTXSTYLE_DATA, else the cache's data/spine-ct)")
    p.add_argument("--force", action="store_true",
                   help="fetch: download every file again, replacing files whose checksum differs; "
                        "figures: replace existing figure files")
    p.set_defaults(func=_data)
    return parser


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def error_line(exc: BaseException) -> str:
    """One line naming the file (or option) and the problem."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return _one_line(f"{exc.filename}: {exc.strerror or exc}")
    if isinstance(exc, MemoryError):
        return _one_line(f"not enough memory {exc}")
    return _one_line(str(exc) or type(exc).__name__)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"ctxstyle: warning: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one line, without the source line
        warnings.simplefilter("always", UserWarning)  # every run says what it skipped
        try:
            args.func(args)
        except EXPECTED_ERRORS as exc:
            if args.debug:
                traceback.print_exc()
            print(f"ctxstyle {args.command}: error: {error_line(exc)}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
