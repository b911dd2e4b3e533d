"""The `pieceboard` command.

pieceboard bench benchmarks/demo.toml --set defaults.epochs=1
pieceboard leaderboard results/demo --format md
pieceboard report results/demo
pieceboard compare results/demo mlp@16px mlp@32px
pieceboard prefetch benchmarks/all.toml
pieceboard predict results/demo/runs/mlp@32px/model photos/ --top 3

Each subcommand imports what it needs when it runs: torch, timm and the leaderboard's dependencies take seconds to
load, and `pieceboard --help` or `--version` need none of them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

from pieceboard._console import PieceboardError, version_text
from pieceboard.tracking import benchmark_process, import_wandb_privately

PROBE_TIMEOUT_S = 5.0  # for the one request that tells whether a weights server answers at all
ACC_FRACTION_HELP = "time to accuracy: the fraction of each run's best accuracy to reach (default 0.95)"


class _Source(NamedTuple):
    """Where timm downloads a model's weights from, and where a copy goes in the local cache."""

    server: str  # scheme://host, asked once whether it answers
    name: str  # the hub repository or the file's URL
    item: str  # what to copy: the repository's cache folder, or the file
    cache: Path  # where to copy it


def _output_dir(path: str) -> Path:
    from pieceboard.results import RUNS

    output = Path(path)
    if not (output / RUNS).is_dir():
        raise PieceboardError(f"{output}: no {RUNS}/ folder here; point at a benchmark's output folder")
    return output


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction in (0, 1], e.g. 0.95")
    return value


def _leaderboard(args: argparse.Namespace) -> int:
    from pieceboard.leaderboard import COLUMNS, SEED_COLUMNS, Leaderboard, pick_columns

    output = _output_dir(args.dir)
    columns = None
    if args.columns:
        try:
            columns = pick_columns(args.columns, SEED_COLUMNS if args.seeds else COLUMNS)
        except ValueError as exc:
            raise PieceboardError(f"--columns: {exc}") from None
    board = Leaderboard.from_dir(output, args.acc_fraction)
    if args.seeds and not board.seeds:
        raise PieceboardError(f"{output}: no configuration completed with two or more seeds; nothing for --seeds")
    if args.format == "table":
        from pieceboard._console import print_whole, wide_console

        console = wide_console()
        if not args.seeds:
            print_whole(console, board.table(title=str(output), width=console.width, columns=columns))
        if (seeds := board.seed_table(console.width, columns if args.seeds else None)) is not None:
            print_whole(console, seeds)
    else:
        text = {"csv": board.to_csv, "md": board.to_markdown, "json": board.to_json}[args.format](args.seeds, columns)
        sys.stdout.write(text)
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from pieceboard._console import wide_console
    from pieceboard._io import atomic_write_text, require_writable
    from pieceboard.check import check_data, render, usable

    if args.json:  # a place the report cannot be written is found before the images are decoded, not after
        require_writable(Path(args.json))
    console = wide_console()
    with console.status("decoding every image once and looking for copies..."):
        report = check_data(args.target, args.overrides)
    console.print(render(report))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report, indent=1) + "\n")
        console.print(f"written to {args.json}")
    return 0 if usable(report) else 2


def _report(args: argparse.Namespace) -> int:
    from pieceboard.report import write_report

    output = _output_dir(args.dir)
    try:
        path = write_report(output, mistakes_of=args.mistakes, acc_fraction=args.acc_fraction)
    except ValueError as exc:  # a --mistakes run that is not there
        raise PieceboardError(f"--mistakes {exc}") from None
    print(f"report: {path}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from pieceboard.compare import compare, find_run, load_run, tables

    output = _output_dir(args.dir)
    comparison = compare(load_run(find_run(output, args.run_a)), load_run(find_run(output, args.run_b)))
    if args.json:
        sys.stdout.write(json.dumps(comparison, indent=2) + "\n")
    else:
        from pieceboard._console import wide_console

        console = wide_console()
        for part in tables(comparison, console.width):
            console.print(part)
    return 0


def _prefetch(args: argparse.Namespace) -> int:
    import timm

    from pieceboard.config import load_config
    from pieceboard.models import WeightsError, resolve_weights

    config = load_config(args.file, args.overrides)
    failed = []
    servers: dict[str, str | None] = {}  # server -> why it cannot be reached (None: it answers); asked once each
    for model in sorted({c.model for c in config.cells if c.mode != "scratch" and c.weights is None}):
        try:
            print(f"{model}: cached at {resolve_weights(model, 'finetune', None)}")
            continue
        except WeightsError as exc:
            missing = str(exc)
        source = _weights_source(model)
        if source is None:  # no published weights: resolve_weights's message says what to do
            failed.append(missing)
            continue
        if source.server not in servers:
            servers[source.server] = _unreachable(source.server)
        if (why := servers[source.server]) is not None:
            failed.append(
                f"{model}: pretrained weights {source.name} are not in the cache and {source.server} cannot be "
                f'reached ({why}); set weights = "path/to/model.safetensors" in its run, or copy {source.item} from '
                f"the cache of a machine that is online into {source.cache}"
            )
            continue
        try:
            timm.create_model(model, pretrained=True)
        except Exception as exc:  # network or hub errors: name the model, keep going for the others
            failed.append(f"{model}: could not download pretrained weights ({type(exc).__name__}: {exc})")
            continue
        print(f"{model}: downloaded to {resolve_weights(model, 'finetune', None)}")
    if failed:
        raise PieceboardError("\n".join(failed))
    return 0


def _weights_source(model: str) -> _Source | None:
    """Where timm would download `model`'s weights from; None if it has no published weights."""
    from urllib.parse import urlsplit

    import huggingface_hub.constants
    import timm.models
    import torch.hub

    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None:
        return None
    if cfg.hf_hub_id:  # timm prefers the hub when a model has both
        repo = cfg.hf_hub_id.partition("@")[0]
        folder = "models--" + repo.replace("/", "--")  # huggingface_hub's cache layout
        return _Source(huggingface_hub.constants.ENDPOINT, repo, folder, Path(huggingface_hub.constants.HF_HUB_CACHE))
    if cfg.url:
        parts = urlsplit(cfg.url)
        checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
        return _Source(f"{parts.scheme}://{parts.netloc}", cfg.url, Path(parts.path).name, checkpoints)
    return None


def _unreachable(server: str) -> str | None:
    """Why `server` cannot be reached, from one request without retries; None if it answers at all."""
    import ssl
    import urllib.error
    import urllib.request

    import huggingface_hub.constants

    if server == huggingface_hub.constants.ENDPOINT and huggingface_hub.constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        urllib.request.urlopen(urllib.request.Request(server, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None  # an HTTP status is an answer: the server is there
    except urllib.error.URLError as exc:
        # A certificate this probe cannot check (a company's own CA, say) may still work for the hub's client.
        return None if isinstance(exc.reason, ssl.SSLError) else str(exc.reason)
    except OSError as exc:  # a timeout, or a connection closed without an answer
        return str(exc) or type(exc).__name__
    return None


def _predict(args: argparse.Namespace) -> int:
    from pieceboard._console import wide_console
    from pieceboard._io import atomic_write_text
    from pieceboard.predict import predict

    console, errors = wide_console(), wide_console(stderr=True)
    skipped: list[str] = []

    def skip(reason: str) -> None:
        skipped.append(reason)
        errors.print(f"skipped {reason}", markup=False, highlight=False, soft_wrap=True)

    rows = []
    for row in predict(args.model_dir, args.paths, args.top, args.batch_size, on_skip=skip):
        rows.append(row)
        ranked = ", ".join(f"{entry['class']} {entry['probability']:.4f}" for entry in row["top"])
        console.print(f"{row['path']}: {ranked}", markup=False, highlight=False, soft_wrap=True)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(rows, indent=1) + "\n")
        console.print(f"written to {args.json}", markup=False, highlight=False)
    return 1 if skipped else 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _parse_case(text: str) -> tuple[str, int]:
    model, sep, size = text.rpartition("@")
    if not sep or not size.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected MODEL@SIZE, e.g. resnet18@64")
    return model, int(size)


def _throughput(args: argparse.Namespace) -> int:
    from pieceboard import builtin
    from pieceboard._console import wide_console
    from pieceboard.config import unknown_model
    from pieceboard.throughput import DEFAULT_CASES, FULL_CASES, generate_folder, run_throughput, table

    cases = args.case or (DEFAULT_CASES + (FULL_CASES if args.full else []))
    for model, _ in cases:
        if problem := unknown_model(model):
            raise PieceboardError(f"--case: {problem}")
    if args.batch_size < 2 or (not args.data and args.images < args.batch_size):
        raise PieceboardError(f"--batch-size {args.batch_size}: must be 2 or more and at most --images ({args.images})")
    if args.data:
        try:
            folder = builtin.resolve(args.data)
        except ValueError as exc:
            raise PieceboardError(f"--data: {exc}") from None
    else:
        folder = generate_folder(builtin.cache_root() / "throughput" / f"mixed-{args.images}", images=args.images)
    console = wide_console()
    with console.status("measuring...") as status:

        def show(result):
            status.update(f"measured {result.model}@{result.image_size}px")
            console.print(
                f"{result.model}@{result.image_size}px: {result.train_img_s:.0f} img/s "
                f"(ceiling {result.synthetic_img_s:.0f}, seed pipeline {result.baseline_img_s:.0f})"
            )

        report = run_throughput(
            cases, folder, args.batch_size, args.precision, args.seconds, on_case=show, output=Path(args.output)
        )
    console.print(table(report))
    console.print(f"written to {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """All subcommands."""
    parser = argparse.ArgumentParser(prog="pieceboard", description="Benchmark image classifiers on your images.")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark file", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    board = sub.add_parser("leaderboard", help="render the leaderboard from stored results")
    board.add_argument("dir", help="a benchmark's output folder")
    board.add_argument("--format", choices=["table", "csv", "md", "json"], default="table")
    board.add_argument("--seeds", action="store_true", help="render the summary over seeds instead of the runs")
    board.add_argument(
        "--columns",
        metavar="A,B,...",
        help="only these columns, by field or header (e.g. id,f1_macro,p_vs_best); default: every one, or in a "
        "terminal as many as fit whole",
    )
    board.add_argument("--acc-fraction", type=_fraction, default=0.95, help=ACC_FRACTION_HELP)
    board.set_defaults(handler=_leaderboard)
    check = sub.add_parser(
        "check-data", help="dataset preflight: counts, bad files, sizes, near-duplicate groups across the split"
    )
    check.add_argument("target", help="a folder of class folders, builtin:digits, or a benchmark TOML file")
    check.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    check.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the benchmark file (with a folder: data.test_fraction, data.split, ...)",
    )
    check.set_defaults(handler=_check_data)

    report = sub.add_parser("report", help="write plots and report.html from stored results")
    report.add_argument("dir", help="a benchmark's output folder")
    report.add_argument("--acc-fraction", type=_fraction, default=0.95, help=ACC_FRACTION_HELP)
    report.add_argument(
        "--mistakes",
        action="append",
        default=[],
        metavar="RUN",
        help="also show the test images this run gets wrong (the leader's are always shown); repeatable",
    )
    report.set_defaults(handler=_report)
    pair = sub.add_parser("compare", help="compare two runs class by class, with a paired test")
    pair.add_argument("dir", help="a benchmark's output folder")
    pair.add_argument("run_a", metavar="RUN_A", help="a run id under DIR/runs/, or the path of a run folder")
    pair.add_argument("run_b", metavar="RUN_B", help="the same, for the other run")
    pair.add_argument("--json", action="store_true", help="print the comparison as JSON")
    pair.set_defaults(handler=_compare)
    prefetch = sub.add_parser(
        "prefetch", help="download every pretrained weight a benchmark needs (online); says at once when offline"
    )
    prefetch.add_argument("file")
    prefetch.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    prefetch.set_defaults(handler=_prefetch)
    speed = sub.add_parser(
        "throughput", help="data-path and model throughput against the ceiling and the seed pipeline"
    )
    speed.add_argument("--data", help="folder of class folders (default: a generated mixed-size PNG/JPEG set)")
    speed.add_argument("--images", type=int, default=1200, help="size of the generated set (default 1200)")
    speed.add_argument(
        "--case",
        action="append",
        type=_parse_case,
        metavar="MODEL@SIZE",
        help="a case to measure, e.g. resnet18@64 (repeatable; default: the standard cases)",
    )
    speed.add_argument("--full", action="store_true", help="add the 200 px cases")
    speed.add_argument("--batch-size", type=int, default=64)
    speed.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"], default="auto")
    speed.add_argument(
        "--seconds", type=float, help="timed seconds per measurement (default 4 on a CPU, 2 on a GPU: ~60 s in all)"
    )
    speed.add_argument("--output", default="results/throughput.json", help="JSON report path")
    speed.set_defaults(handler=_throughput)
    guess = sub.add_parser(
        "predict", help="classify images with a kept model, preprocessed exactly as its cell was trained and tested"
    )
    guess.add_argument("model_dir", metavar="MODEL_DIR", help="a kept model: OUTPUT/runs/<id>/model")
    guess.add_argument("paths", metavar="PATH", nargs="+", help="image files, or folders of them (recursively)")
    guess.add_argument("--top", type=_positive, default=1, metavar="K", help="the K most probable classes (default 1)")
    guess.add_argument("--json", metavar="FILE", help="also write the predictions as a JSON list")
    guess.add_argument("--batch-size", type=_positive, metavar="N", help="images per batch (default: the cell's)")
    guess.set_defaults(handler=_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pieceboard` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from pieceboard.config import check_bench_file

        check_bench_file(argv[1:])  # --help, --version and a mistake in the file are answered before torch loads
        if benchmark_process(getattr(sys, "orig_argv", [])):  # the console script (see pieceboard/__init__.py)
            import_wandb_privately()
        from pieceboard.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except PieceboardError as exc:
        from pieceboard._console import print_error

        print_error(exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
