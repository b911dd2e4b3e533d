"""The `pieceboard` command.

pieceboard bench benchmarks/demo.toml --set defaults.epochs=1
pieceboard leaderboard results/demo --format md
pieceboard prefetch benchmarks/all.toml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from pieceboard.config import PieceboardError


def _leaderboard(args: argparse.Namespace) -> int:
    from pieceboard.leaderboard import Leaderboard
    from pieceboard.results import RUNS

    output = Path(args.dir)
    if not (output / RUNS).is_dir():
        raise PieceboardError(f"{output}: no {RUNS}/ folder here; point at a benchmark's output folder")
    board = Leaderboard.from_dir(output)
    if args.format == "table":
        from pieceboard.bench import wide_console

        wide_console().print(board.table(title=str(output)))
    else:
        text = {"csv": board.to_csv, "md": board.to_markdown, "json": board.to_json}[args.format]()
        sys.stdout.write(text)
    return 0


def _prefetch(args: argparse.Namespace) -> int:
    import timm

    from pieceboard.config import load_config
    from pieceboard.models import WeightsError, resolve_weights

    config = load_config(args.file, args.overrides)
    for model in sorted({c.model for c in config.cells if c.mode != "scratch" and c.weights is None}):
        try:
            print(f"{model}: cached at {resolve_weights(model, 'finetune', None)}")
            continue
        except WeightsError:
            pass
        try:
            timm.create_model(model, pretrained=True)
        except Exception as exc:  # network or hub errors: say which model, keep going for the others
            raise PieceboardError(f"{model}: could not download pretrained weights ({exc})") from None
        print(f"{model}: downloaded to {resolve_weights(model, 'finetune', None)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    parser = argparse.ArgumentParser(prog="pieceboard", description="Benchmark image classifiers on your images.")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark file", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    board = sub.add_parser("leaderboard", help="render the leaderboard from stored results")
    board.add_argument("dir", help="a benchmark's output folder")
    board.add_argument("--format", choices=["table", "csv", "md", "json"], default="table")
    board.set_defaults(handler=_leaderboard)
    prefetch = sub.add_parser("prefetch", help="download every pretrained weight a benchmark needs (online)")
    prefetch.add_argument("file")
    prefetch.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    prefetch.set_defaults(handler=_prefetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pieceboard` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from pieceboard.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except PieceboardError as exc:
        from pieceboard.bench import print_error

        print_error(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
