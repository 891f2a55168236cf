"""The ``ctxstyle`` command: ``train``, ``stylize``, ``weights`` and ``data``."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import CtxStyleError, InputError


def _train(args) -> None:
    if args.method:
        from .recipe import Recipe, trained_decoders

        if args.output_dir or args.no_resume:
            raise InputError("--method", "--output-dir and --no-resume go with --config; --method trains into "
                             "--checkpoints (delete a cached run's folder there to train it again)")
        recipe = Recipe.from_yaml(args.recipe) if args.recipe else Recipe()
        seed = recipe.seeds[0] if args.seed is None else args.seed
        stylizer = trained_decoders(args.method, recipe, args.checkpoints, seeds=[seed], progress=not args.quiet)[seed]
        print(stylizer.checkpoint)
        return
    from .train import TrainConfig, train

    cfg = TrainConfig.from_yaml(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    path = train(cfg, resume=not args.no_resume, progress=not args.quiet)
    print(path)


def _stylize(args) -> None:
    from .stylize import stylize_files

    written = stylize_files(
        [args.content], args.styles, args.output, args.checkpoint,
        alpha=args.alpha, style_weights=args.style_weights,
        window=tuple(args.window) if args.window else None,
        style_window=tuple(args.style_window) if args.style_window else None,
    )
    for path in written:
        print(path)


def _weights(args) -> None:
    from .weights import resolve_weights

    for arch in args.arch:
        _, provenance = resolve_weights(arch)
        print(json.dumps(provenance.to_dict(), indent=2))


def _data(args) -> None:
    from . import data

    if args.action == "verify":
        root = data.data_dir()
        data.verify_checksums(root)
        print(f"{root}: all files match SHA256SUMS (data version {data.data_version(root)})")
    elif args.action == "fetch":
        print(data.fetch(args.dest))
    elif args.action == "figures":
        from .data.figures import make_figures

        print(json.dumps({k: str(v) for k, v in make_figures(args.dest).items()}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctxstyle", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a decoder: a method with the project's recipe (warm start, lr chosen "
                       "on validation), or one run from a YAML config (resumes when interrupted)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--method", choices=["ours", "adain", "contextual"],
                      help="train this method with the recipe of ctxstyle.recipe (cached by config hash)")
    what.add_argument("--config", help="YAML file with TrainConfig fields (one run, no warm start or lr choice)")
    p.add_argument("--recipe", help="with --method: YAML file with Recipe fields (default: the Recipe defaults)")
    p.add_argument("--seed", type=int, help="with --method: decoder seed (default: the recipe's first)")
    p.add_argument("--checkpoints", default="runs/checkpoints", help="with --method: folder of the cached decoders")
    p.add_argument("--output-dir", help="with --config: override the config's output_dir")
    p.add_argument("--no-resume", action="store_true", help="start again even if a checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("stylize", help="stylize a PNG, NIfTI or DICOM file (or a folder of them)")
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
    p.set_defaults(func=_stylize)

    p = sub.add_parser("weights", help="resolve pretrained weights and print their provenance")
    p.add_argument("arch", nargs="*", default=["vgg19"])
    p.set_defaults(func=_weights)

    p = sub.add_parser("data", help="verify or fetch the spine CT data, or draw its figures")
    p.add_argument("action", choices=["verify", "fetch", "figures"])
    p.add_argument("--dest", help="fetch target / figure folder")
    p.set_defaults(func=_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CtxStyleError as exc:
        print(f"ctxstyle {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
