"""The benchmark file: schema, `--set` overrides, matrix expansion and the errors a user sees.

    from pieceboard.config import load_config
    config = load_config("benchmarks/demo.toml", overrides=["defaults.epochs=1"])
    for cell in config.cells: print(cell.id)

Every mistake is a `ConfigError` whose message names the file, the table and the key; the command line turns
it into one line on stderr and exit code 2, before anything trains.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from pieceboard._console import PieceboardError
from pieceboard.batches import CROP_SCALE, POLICIES

MLP_NAME = "pieceboard_mlp"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# accelerate's set_seed passes the seed to numpy's legacy np.random.seed, which takes 0 <= seed < 2**32 only.
SEED_LIMIT = 2**32
# The benchmark name and every cell id name a folder; a file or folder name holds at most 255 bytes (NAME_MAX on
# Linux and macOS). Keep room for what pieceboard adds around a name: the temporary name of an atomic write
# (`.NAME.` + 8 random characters, `pieceboard._io.atomic_write_text`) and an extension such as `.json` or `.png`.
MAX_NAME_BYTES = 200
TRIAL_MARK = "~"  # a trial's id is its cell's id, this mark and its tuned values: mlp@16px~lr0.003


class ConfigError(PieceboardError):
    """A benchmark file, or an override of it, is invalid."""


def _not_blank(path: str) -> str:
    # Path("") is the current directory: an empty value would silently read or write there.
    if not path.strip():
        raise PydanticCustomError("blank_path", 'an empty path is refused; write "." for the current directory')
    return path


PathText = Annotated[str, AfterValidator(_not_blank)]


class _Table(BaseModel):
    # strict: `batch_size = true` or `epochs = "10"` is a mistake to report, not a value to coerce.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


class BenchmarkTable(_Table):
    """`[benchmark]`: what the study is called and where it writes."""

    name: str = Field("benchmark", description="Names the study; the output defaults to results/<name>.")
    output: PathText | None = Field(None, description="Output folder; default results/<name>.")
    wandb: Literal["auto", "online", "offline", "off"] = Field(
        "auto", description="Weights & Biases: auto = online with an API key, otherwise offline files."
    )
    wandb_project: str | None = Field(None, description="W&B project; default: the benchmark name.")
    jobs: PositiveInt | Literal["auto"] = Field(
        "auto", description="Cells trained at once, each in its own process; auto: every core, or 4 per GPU."
    )
    threads: PositiveInt | Literal["auto"] = Field(
        "auto", description="CPU threads of each cell's process; auto: 1 on a CPU (see docs: figures and load)."
    )
    parallel: Literal["data", "cells"] = Field(
        "data",
        description="Under a multi-process launch: data = every process trains each cell together; cells = each "
        "process runs its own share of the cells.",
    )
    # How cells are kept, not what they train: here rather than among the settings, so that changing one never makes
    # a stored result "different" and it is no matrix axis.
    checkpoint_every: int = Field(
        1, ge=0, description="Epochs between checkpoints of a cell in training (resumed after a kill); 0: none."
    )
    keep_checkpoints: bool = Field(False, description="Keep each cell's last checkpoint after it completes.")
    keep_models: Literal["best", "all", "none"] = Field(
        "best", description="Which trained models are kept as timm folders: the leader's, every cell's, or none."
    )


class DataTable(_Table):
    """`[data]`: the folder and how it is split."""

    path: PathText = Field(..., description="A folder of class folders, or builtin:digits.")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, allow_inf_nan=False, description="Share of each class held out for testing."
    )
    split: Literal["grouped", "random"] = Field(
        "grouped", description="grouped keeps every near-duplicate group on one side; random is the study's split."
    )
    split_seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="Seed of the stratified split.")
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="Share of each class's training images held out for validation (curves, tuning); 0: none.",
    )
    cache_dir: PathText | None = Field(None, description="Decoded-image cache; default $PIECEBOARD_CACHE or ~/.cache.")


AugmentName = Literal[("hflip", "crop", *POLICIES)]


class TrainSettings(_Table):
    """`[defaults]`, and what each `[[runs]]` entry or `[matrix]` axis may change."""

    epochs: int = Field(10, gt=0, description="Passes over the training split.")
    batch_size: int = Field(32, gt=0, description="Global batch: split across processes.")
    image_size: int = Field(200, ge=8, le=2048, description="Images are resized to this square size.")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="Through timm's optimizer factory.")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="Learning rate of the global batch.")
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False, description="Not applied to biases and norm layers.")
    scheduler: Literal["cosine", "step", "none"] = Field("cosine", description="Per-step LR schedule.")
    warmup_epochs: int = Field(0, ge=0, description="Linear warm-up epochs (cosine and step schedules).")
    precision: Literal["no", "bf16", "fp16", "auto"] = Field("auto", description="Mixed precision.")
    channels_last: bool | Literal["auto"] = Field("auto", description="Memory layout for convnets.")
    augment: list[AugmentName] = Field(
        default_factory=list,
        description="Training-batch augmentations on the device: hflip, crop (random resized), and at most one "
        "policy of torchvision: randaugment, trivialaugment, autoaugment.",
    )
    crop_scale: list[float] = Field(
        default_factory=lambda: list(CROP_SCALE),
        min_length=2,
        max_length=2,
        description="Area range of `crop`, as fractions of the image: [smallest, largest].",
    )
    mixup: float = Field(0.0, ge=0, allow_inf_nan=False, description="Mixup alpha (timm.data.Mixup); 0: off.")
    cutmix: float = Field(0.0, ge=0, allow_inf_nan=False, description="CutMix alpha (timm.data.Mixup); 0: off.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False, description="Label smoothing of the loss.")
    ema: float = Field(
        0.0, ge=0, lt=1, allow_inf_nan=False, description="Decay of a moving average of the weights (timm's "
        "ModelEmaV3), which is evaluated instead of the trained weights; 0: off.",
    )  # fmt: skip
    clip_grad: float = Field(0.0, ge=0, allow_inf_nan=False, description="Clip the gradient norm to this; 0: off.")
    drop_path: float = Field(
        0.0, ge=0, lt=1, allow_inf_nan=False, description="Stochastic depth (timm's drop_path_rate) of models with it."
    )
    log_every: int = Field(20, gt=0, description="Batches between train-loss logs.")
    seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="Seed of weights init and data order.")
    graphs: bool | Literal["auto"] = Field(
        "auto", description="Capture the train and eval steps (torch.compile, CUDA graphs); auto: on a GPU if it pays."
    )

    @field_validator("augment")
    @classmethod
    def _one_policy(cls, value: list[str]) -> list[str]:
        policies = [name for name in value if name in POLICIES]
        if len(policies) > 1:
            names = " or ".join(f'"{name}"' for name in policies)
            raise PydanticCustomError("policies", "at most one policy: choose {names}", {"names": names})
        if len(set(value)) < len(value):
            raise PydanticCustomError("repeated", "each augmentation at most once")
        return value

    @field_validator("crop_scale")
    @classmethod
    def _area_range(cls, value: list[float]) -> list[float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise PydanticCustomError("crop_scale", "expected [smallest, largest] with 0 < smallest <= largest <= 1")
        return value


SETTING_KEYS = tuple(TrainSettings.model_fields)
# Settings added after results were first stored. At these values a cell trains exactly as it did before the setting
# existed, so a stored configuration without them is the same experiment (see results.comparable_config).
ADDED_SETTINGS = {
    key: TrainSettings.model_fields[key].get_default(call_default_factory=True)
    for key in ("crop_scale", "mixup", "cutmix", "label_smoothing", "ema", "clip_grad", "drop_path")
}
ADDED_DATA = {"val_fraction": 0.0}

# A run may change any setting; None means "take it from [defaults]". Generated, so the two never drift.
_RunSettings = create_model(
    "_RunSettings",
    __base__=_Table,
    **{key: (info.annotation | None, None) for key, info in TrainSettings.model_fields.items()},
)


class RunTable(_RunSettings):
    """One `[[runs]]` entry: a model, a fine-tune mode, and settings that differ from `[defaults]`."""

    name: str = Field(..., description="Unique; a single safe path component.")
    model: str = Field(..., description="Any timm model name, or pieceboard_mlp.")
    mode: Literal["scratch", "finetune", "linear_probe"] = Field("finetune", description="How weights start/train.")
    weights: PathText | None = Field(None, description="Local pretrained weights (.safetensors).")


# Every setting may be searched: a list of values to try. Generated, like _RunSettings.
_TuneSpace = create_model(
    "_TuneSpace", __base__=_Table, **{key: (list[Any] | None, None) for key in TrainSettings.model_fields}
)


class TuneTable(_TuneSpace):
    """`[tune]`: settings searched for every cell on the validation split, and the budget each cell gets."""

    trials: PositiveInt | None = Field(
        None, description="Random search: this many combinations drawn from the grid; default: every combination."
    )
    trial_epochs: PositiveInt | None = Field(None, description="Epochs of each trial; default: the run's epochs.")
    search_seed: int = Field(0, ge=0, lt=SEED_LIMIT, description="Seed of the random draw of trials.")

    @property
    def space(self) -> dict[str, list[Any]]:
        """The settings searched, with their values, in settings order."""
        return {k: v for k, v in self.model_dump(include=set(SETTING_KEYS)).items() if v is not None}

    def combinations(self) -> list[dict[str, Any]]:
        """The values each trial tries: the whole grid, or `trials` combinations of it drawn with `search_seed`."""
        space = self.space
        grid = [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]
        if self.trials is None or self.trials == len(grid):
            return grid
        drawn = np.random.default_rng(self.search_seed).choice(len(grid), size=self.trials, replace=False)
        return [grid[i] for i in sorted(drawn)]


class _File(_Table):
    benchmark: BenchmarkTable = Field(default_factory=BenchmarkTable)
    data: DataTable
    defaults: TrainSettings = Field(default_factory=TrainSettings)
    runs: list[RunTable] = Field(..., min_length=1)
    matrix: dict[str, list[Any]] = Field(default_factory=dict)
    tune: TuneTable | None = None


@dataclass(frozen=True)
class Cell:
    """One point of the run matrix, or one trial of it: a run with every setting resolved."""

    id: str
    run: str
    model: str
    mode: str
    weights: str | None
    settings: TrainSettings
    trial_of: str | None = None  # for a tuning trial: the id of the cell it tries settings for

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as stored in result.json."""
        trial = {"trial_of": self.trial_of} if self.trial_of else {}
        return {"run": self.run, "model": self.model, "mode": self.mode, "weights": self.weights} | (
            self.settings.model_dump() | trial
        )

    @classmethod
    def from_dict(cls, cell_id: str, config: dict[str, Any]) -> Cell:
        """The cell a stored configuration (`to_dict`, with or without `data` and `tune`) describes."""
        settings = TrainSettings.model_validate({key: config[key] for key in SETTING_KEYS})
        return cls(
            cell_id, config["run"], config["model"], config["mode"], config["weights"], settings,
            config.get("trial_of"),
        )  # fmt: skip


@dataclass
class Config:
    """A validated benchmark file."""

    path: Path | None
    benchmark: BenchmarkTable
    data: DataTable
    defaults: TrainSettings
    runs: list[RunTable]
    matrix: dict[str, list[Any]]
    tune: TuneTable | None = None
    cells: list[Cell] = field(default_factory=list)
    trials: dict[str, list[Cell]] = field(default_factory=dict)  # each cell's tuning trials, by cell id

    def tuning(self, cell: Cell) -> dict[str, Any] | None:
        """How a cell is tuned, as its result stores it: `[tune]` (the space; `trials`, `trial_epochs` and
        `search_seed` as written, None where left out) and the budget this gives the cell (its trials, and the epochs
        over all of them)."""
        if self.tune is None:
            return None
        trials = self.trials[cell.id]
        return {
            "space": self.tune.space,
            "trials": self.tune.trials,
            "trial_epochs": self.tune.trial_epochs,
            "search_seed": self.tune.search_seed,
            "budget": {"trials": len(trials), "epochs": sum(trial.settings.epochs for trial in trials)},
        }

    @property
    def output(self) -> Path:
        """Where results go: `[benchmark] output`, else `results/<name>`."""
        return Path(self.benchmark.output or Path("results") / self.benchmark.name).expanduser()


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | None = None, models: bool = True) -> Config:
    """Read, override, validate and expand a benchmark.

    Args:
        source: A TOML file, or the same content as a dict.
        overrides: `KEY=VALUE` strings with dotted keys, e.g. `defaults.epochs=3` or `runs.mlp.lr=0.01`.
        models: Also check that timm knows every model name. False checks everything else without importing timm
            (and torch), which takes seconds: a mistake in the file is told at once (`check_bench_file`).

    Returns:
        The validated config with its matrix expanded into `cells`.

    Raises:
        ConfigError: Naming the file, table and key of the first problems found.
    """
    if isinstance(source, dict):
        path, raw = None, copy.deepcopy(source)  # overrides must not leak into the caller's dict
    else:
        path = Path(source)
        raw = _read_toml(path)
    where = str(path) if path else "<config>"
    for item in overrides or []:
        _apply_override(raw, item, where)
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe_all(exc.errors(), raw, where))) from None
    config = Config(path, parsed.benchmark, parsed.data, parsed.defaults, parsed.runs, parsed.matrix, parsed.tune)
    _check_axes(config.matrix, where)
    _check_runs(config, where, models)
    config.cells = expand(config, where)
    if config.tune is not None:
        _check_tune(config, where)
        config.trials = {cell.id: expand_trials(cell, config.tune, where) for cell in config.cells}
    return config


def check_bench_file(argv: list[str]) -> None:
    """Parse a `pieceboard bench` command line and check its benchmark file, all but the model names, before torch
    is imported (`pieceboard bench` and `python -m pieceboard.bench` call this first).

    A mistake is one line on stderr (from process 0 only, under a launcher) and exit code 2; `--help` and
    `--version` are answered here too.
    """
    from pieceboard._console import bench_parser, print_error

    args = bench_parser().parse_args(argv)
    try:
        load_config(args.file, args.overrides, models=False)
    except ConfigError as exc:
        if int(os.environ.get("RANK", 0)) == 0:  # under torchrun every process stops; one says why
            print_error(exc)
        sys.exit(2)


def load_data_table(path: str, overrides: list[str] | None = None) -> DataTable:
    """The `[data]` table of a folder named on the command line (`check-data FOLDER`), with `data.*` overrides.

    Raises:
        ConfigError: An override of another table, of `data.path`, or a value the table refuses.
    """
    raw: dict[str, Any] = {"data": {"path": path}}
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if not key.startswith("data.") or key == "data.path":
            raise ConfigError(
                f"--set {item!r}: with a folder, only the [data] settings apply (data.test_fraction, data.split, "
                f"data.split_seed, data.cache_dir); give a benchmark file to check it with its other settings"
            )
        _apply_override(raw, item, "--set")
    try:
        return DataTable.model_validate(raw["data"])
    except ValidationError as exc:
        errors = [err | {"loc": ("data", *err["loc"])} for err in exc.errors()]
        raise ConfigError("\n".join(_describe_all(errors, raw, "--set"))) from None


def _read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a benchmark file (a .toml file, e.g. benchmarks/demo.toml)")
    if not path.is_file():
        raise ConfigError(f"{path}: no such benchmark file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _parse_value(text: str) -> Any:
    # TOML literals (3, 1e-3, true, [50, 200], "x"); anything else is taken as a bare string.
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_override(raw: dict[str, Any], item: str, where: str) -> None:
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. defaults.epochs=3")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):  # runs.<name or index>
            node = _find_run(node, part, item, where)
        else:
            node = node.setdefault(part, {} if parts[depth + 1 :] else None)
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: depth + 1])} in {where} is not a table")
    if isinstance(node, list):
        raise ConfigError(f"--set {item!r}: name a run and a key, e.g. runs.<name>.epochs=3")
    node[parts[-1]] = _parse_value(text.strip())


def _find_run(runs: list[Any], part: str, item: str, where: str) -> dict[str, Any]:
    for run in runs:  # a name wins over a position
        if isinstance(run, dict) and run.get("name") == part:
            return run
    if part.isdigit() and int(part) < len(runs) and isinstance(runs[int(part)], dict):
        return runs[int(part)]
    names = [r.get("name") for r in runs if isinstance(r, dict)]
    raise ConfigError(f"--set {item!r}: {where} has no run named {part!r} (runs: {', '.join(map(str, names))})")


def _table_name(loc: tuple[Any, ...], raw: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """Turn a pydantic location into ('[[runs]] 'name'', rest-of-location)."""
    if not loc:
        return "top level", ()
    if loc[0] == "runs" and len(loc) > 1 and isinstance(loc[1], int):
        runs = raw.get("runs") or []
        run = runs[loc[1]] if loc[1] < len(runs) and isinstance(runs[loc[1]], dict) else {}
        label = f"'{run['name']}'" if isinstance(run.get("name"), str) else f"#{loc[1] + 1}"
        return f"[[runs]] {label}", loc[2:]
    return f"[{loc[0]}]", loc[1:]


_FIELD_NAMES = {
    name
    for model in (BenchmarkTable, DataTable, TrainSettings, RunTable, TuneTable, _File)
    for name in model.model_fields
}


def _describe_all(errors: list[dict[str, Any]], raw: dict[str, Any], where: str) -> list[str]:
    """One line per key: pydantic reports a union (e.g. `true | "auto"`) once per member; merge those."""
    merged: dict[tuple, dict[str, Any]] = {}
    for err in errors:
        loc = []
        for part in err["loc"]:  # keep keys and list positions, drop union-member tags such as 'bool'
            if not (isinstance(part, int) or part in _FIELD_NAMES):
                break
            loc.append(part)
        key = tuple(err["loc"]) if err["type"] == "extra_forbidden" else tuple(loc)
        if key in merged and merged[key]["type"] != "extra_forbidden":
            merged[key]["text"] += f", or {_message(err)}"
        else:
            merged[key] = dict(err, loc=key, text=_message(err))
    return [_describe(err, raw, where) for err in merged.values()]


def _message(err: dict[str, Any]) -> str:
    """pydantic's message, starting in lower case, with the expected choices spelt as TOML strings ("auto")."""
    text = err["msg"]
    if err["type"] == "literal_error":
        text = re.sub(r"'([^']*)'", r'"\1"', text)
    return text[:1].lower() + text[1:]


def toml_value(value: Any, limit: int = 80) -> str:
    """A value as a TOML file spells it (`true`, `"text"`, `[1, 2]`, `inf`), cut short past `limit` characters."""
    text = _toml(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string: double quotes, escapes on one line
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_toml, value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    return repr(value)


def _describe(err: dict[str, Any], raw: dict[str, Any], where: str) -> str:
    table, rest = _table_name(tuple(err["loc"]), raw)
    key = ".".join(str(p) for p in rest)
    if err["type"] == "extra_forbidden":
        valid = _valid_keys(tuple(err["loc"][:-1]))
        hint = difflib.get_close_matches(str(rest[-1] if rest else err["loc"][-1]), valid, n=1)
        if not rest:
            return f"{where}: unknown table [{err['loc'][-1]}]" + (f"; did you mean [{hint[0]}]?" if hint else "")
        suffix = f"; did you mean '{hint[0]}'?" if hint else f"; valid keys: {', '.join(valid)}"
        return f"{where}: {table}: unknown key '{key}'{suffix}"
    if err["type"] == "missing" and not rest:
        return f"{where}: {'[[runs]]' if err['loc'][0] == 'runs' else table}: missing table; the file needs one"
    if err["type"] == "missing":
        return f"{where}: {table}: missing required key '{key}'"
    if tuple(err["loc"]) == ("runs",):
        return f"{where}: [[runs]]: {err['text']}; add at least one [[runs]] table"
    return f"{where}: {table}: key '{key}': {err['text']} (got {toml_value(err['input'])})"


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    models: dict[str, type[BaseModel]] = {
        "benchmark": BenchmarkTable,
        "data": DataTable,
        "defaults": TrainSettings,
        "runs": RunTable,
        "tune": TuneTable,
    }
    if not loc:
        return list(_File.model_fields)
    model = models.get(str(loc[0]))
    return list(model.model_fields) if model else []


def is_mlp(model_name: str) -> bool:
    """Whether a model name (with or without a `.tag`) is pieceboard's MLP."""
    import timm.models

    return timm.models.get_arch_name(model_name) == MLP_NAME


def unknown_model(name: str) -> str | None:
    """None if timm (or pieceboard, for its MLP) can build `name`; otherwise the error, with the nearest names."""
    import timm  # slow to import: only when validating

    if is_mlp(name) or timm.is_model(name):
        return None
    near = difflib.get_close_matches(name, sorted({*timm.list_models(), MLP_NAME}), n=5, cutoff=0.6)
    return f"unknown model '{name}'" + (f"; nearest timm names: {', '.join(near)}" if near else "")


def _shorten(name: str, head: int = 24, tail: int = 16) -> str:
    # A too-long name in a message keeps its start and end (a cell id's end is its matrix labels).
    return name if len(name) <= head + tail + 1 else f"{name[:head]}…{name[-tail:]}"


def _name_too_long(name: str) -> str | None:
    size = len(name.encode("utf-8"))
    if size <= MAX_NAME_BYTES:
        return None
    return f"{size} bytes, too long for a folder name (at most {MAX_NAME_BYTES})"


def _check_runs(config: Config, where: str, models: bool = True) -> None:
    name = config.benchmark.name
    if not SAFE_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: [benchmark]: key 'name': must be one safe path component (letters, digits, . _ + -), "
            f"since the output defaults to results/<name> (got {toml_value(name)})"
        )
    if problem := _name_too_long(name):
        raise ConfigError(f"{where}: [benchmark]: key 'name': {problem}, since the output defaults to results/<name>")
    seen: set[str] = set()
    for run in config.runs:
        table = f"{where}: [[runs]] '{_shorten(run.name)}'"
        if not SAFE_NAME.fullmatch(run.name):
            raise ConfigError(
                f"{table}: key 'name': must be one safe path component (letters, digits, . _ + -; no '/', '@' or "
                "spaces), since it names the run's result folder"
            )
        if problem := _name_too_long(run.name):
            raise ConfigError(f"{table}: key 'name': {problem}, since it names the run's result folder")
        if run.name in seen:
            raise ConfigError(f"{table}: key 'name': duplicate run name; every run needs its own")
        seen.add(run.name)
        if models and (problem := unknown_model(run.model)):
            raise ConfigError(f"{table}: key 'model': {problem}")
        if run.weights is not None and run.mode == "scratch":
            raise ConfigError(f"{table}: key 'weights': a scratch run starts from random weights; remove it")
        for axis in config.matrix:
            if getattr(run, axis, None) is not None:
                raise ConfigError(f"{table}: key '{axis}': also a [matrix] axis; set it in one place only")


def _axis_label(key: str, value: Any) -> str:
    if key == "image_size":
        return f"{value}px"
    if key == "batch_size":
        return f"bs{value}"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "+".join(map(str, value)) or f"no-{key}"
    return f"{key}{value}"


def _check_axes(matrix: dict[str, list[Any]], where: str) -> None:
    for axis, values in matrix.items():
        if axis not in SETTING_KEYS:
            hint = difflib.get_close_matches(axis, SETTING_KEYS, n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f"; axes can be: {', '.join(SETTING_KEYS)}"
            if axis in ("model", "mode", "weights", "name"):
                extra = f"; '{axis}' belongs to each [[runs]] table (add one run per {axis})"
            raise ConfigError(f"{where}: [matrix]: unknown axis '{axis}'{extra}")
        if not values:
            raise ConfigError(f"{where}: [matrix]: axis '{axis}' has no values")


def expand(config: Config, where: str = "<config>") -> list[Cell]:
    """Cross every run with the `[matrix]` axes into cells with readable ids.

    Args:
        config: A config whose tables are validated.
        where: The file name used in error messages.

    Returns:
        One cell per run and combination of axis values, in file order.
    """
    _check_axes(config.matrix, where)
    cells = []
    base = config.defaults.model_dump()
    axes = list(config.matrix)
    for run in config.runs:
        own = {k: v for k, v in run.model_dump(include=set(SETTING_KEYS)).items() if v is not None}
        for combo in itertools.product(*(config.matrix[a] for a in axes)):
            values = base | own | dict(zip(axes, combo, strict=True))
            try:
                settings = TrainSettings.model_validate(values)
            except ValidationError as exc:
                first = exc.errors()[0]
                key = ".".join(map(str, first["loc"]))
                table = "[matrix]" if first["loc"][0] in axes else f"[[runs]] '{run.name}'"
                raise ConfigError(
                    f"{where}: {table}: key '{key}': {_message(first)} (got {toml_value(first['input'])})"
                ) from None
            labels = [_axis_label(a, v) for a, v in zip(axes, combo, strict=True)]
            cell_id = run.name + ("@" + "-".join(labels) if labels else "")
            if problem := _name_too_long(cell_id):
                raise ConfigError(
                    f"{where}: [[runs]] '{_shorten(run.name)}': key 'name': the cell id '{_shorten(cell_id)}' is "
                    f"{problem}, since it names the cell's result folder; shorten the run name or the [matrix] values"
                )
            cells.append(Cell(cell_id, run.name, run.model, run.mode, run.weights, settings))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{where}: [matrix]: two cells would both be named '{dup}'; make axis values distinct")
    return cells


def _check_tune(config: Config, where: str) -> None:
    tune = config.tune
    space = tune.space
    if not space:
        raise ConfigError(f"{where}: [tune]: no setting to search; add one, e.g. lr = [3e-4, 1e-3, 3e-3]")
    if config.data.val_fraction == 0:
        raise ConfigError(
            f"{where}: [tune]: trials are compared on the validation split, and there is none; set [data] "
            "val_fraction (e.g. 0.1), so that the test split stays unseen until each run's final score"
        )
    for key, values in space.items():
        if not values:
            raise ConfigError(f"{where}: [tune]: key '{key}' has no values")
        if key in config.matrix:
            raise ConfigError(f"{where}: [tune]: key '{key}': also a [matrix] axis; set it in one place only")
        for run in config.runs:
            if getattr(run, key) is not None:
                raise ConfigError(
                    f"{where}: [[runs]] '{_shorten(run.name)}': key '{key}': also a [tune] key, which every run "
                    "searches; set it in one place only"
                )
    if "epochs" in space and tune.trial_epochs is not None:
        raise ConfigError(
            f"{where}: [tune]: key 'trial_epochs': epochs is searched, so each trial trains for the epochs it tries; "
            "remove one of them"
        )
    grid = math.prod(len(values) for values in space.values())
    if tune.trials is not None and tune.trials > grid:
        raise ConfigError(
            f"{where}: [tune]: key 'trials': {tune.trials} trials, but the grid has {grid} combinations; lower it, "
            "or leave it out to try every combination"
        )


def expand_trials(cell: Cell, tune: TuneTable, where: str = "<config>") -> list[Cell]:
    """The tuning trials of one cell: its settings with each combination of `[tune]` values.

    Every cell gets the same combinations and the same epochs per trial (`trial_epochs`, else the cell's own), so
    every run is tuned with the same budget.

    Raises:
        ConfigError: A value the setting does not take, or two trials with one id.
    """
    trials = []
    base = cell.settings.model_dump()
    for combination in tune.combinations():
        epochs = {"epochs": tune.trial_epochs} if tune.trial_epochs is not None else {}
        try:
            settings = TrainSettings.model_validate(base | combination | epochs)
        except ValidationError as exc:
            first = exc.errors()[0]
            key = ".".join(map(str, first["loc"]))
            got = toml_value(first["input"])
            raise ConfigError(f"{where}: [tune]: key '{key}': {_message(first)} (got {got})") from None
        labels = "-".join(_axis_label(key, value) for key, value in combination.items())
        trial_id = f"{cell.id}{TRIAL_MARK}{labels}"
        if problem := _name_too_long(trial_id):
            raise ConfigError(
                f"{where}: [tune]: the trial id '{_shorten(trial_id)}' is {problem}, since it names the trial's "
                "result folder; shorten the run name or the [matrix] or [tune] values"
            )
        trials.append(Cell(trial_id, cell.run, cell.model, cell.mode, cell.weights, settings, trial_of=cell.id))
    ids = [trial.id for trial in trials]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{where}: [tune]: two trials would both be named '{dup}'; make the values distinct")
    return trials
