"""Tests for pieceboard.config: the benchmark file's schema, `--set` overrides, matrix expansion and its errors.

Nothing here trains or reads data: loading a benchmark only validates it (model names are looked up in timm's
registry, which needs no network).
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pieceboard.config import MAX_NAME_BYTES, Cell, ConfigError, TrainSettings, load_config

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.toml"))

DATA = '[data]\npath = "data/onepiece"\n'
RUN_MLP = '[[runs]]\nname = "mlp"\nmodel = "pieceboard_mlp"\n'
MINIMAL = DATA + "\n" + RUN_MLP

# The example of DESIGN.md ("The benchmark file"), with a second run.
DESIGN_EXAMPLE = """\
[benchmark]
name = "onepiece"

[data]
path = "data/onepiece"
test_fraction = 0.2
split_seed = 0

[defaults]
epochs = 10
batch_size = 32
image_size = 200
optimizer = "adam"
lr = 1e-3
weight_decay = 1e-4
scheduler = "cosine"
precision = "auto"
log_every = 20

[[runs]]
name = "resnet18-finetune"
model = "resnet18"
mode = "finetune"

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"
epochs = 3
lr = 0.01

[matrix]
image_size = [50, 200]
batch_size = [32, 64]
"""

EXPECTED_DEFAULTS = {
    "epochs": 10,
    "batch_size": 32,
    "image_size": 200,
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "scheduler": "cosine",
    "warmup_epochs": 0,
    "precision": "auto",
    "channels_last": "auto",
    "augment": [],
    "crop_scale": [0.35, 1.0],
    "mixup": 0.0,
    "cutmix": 0.0,
    "label_smoothing": 0.0,
    "ema": 0.0,
    "clip_grad": 0.0,
    "drop_path": 0.0,
    "log_every": 20,
    "seed": 0,
    "graphs": "auto",
}


def _write(tmp_path: Path, text: str, name: str = "bench.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(source: Path | dict[str, Any], overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    return str(info.value)


def _minimal_dict() -> dict[str, Any]:
    return {"data": {"path": "data/x"}, "runs": [{"name": "mlp", "model": "pieceboard_mlp"}]}


# --- loading and defaults -------------------------------------------------------------------------------------


def test_a_config_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pieceboard.bench import main

    path = _write(tmp_path, MINIMAL.replace("[data]", "[data]\nbogus = 1"))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'bogus'" in err and "Traceback" not in err


def test_minimal_file_loads_with_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    config = load_config(path)

    assert config.path == path
    assert config.benchmark.name == "benchmark"
    assert config.benchmark.output is None
    assert config.benchmark.wandb == "auto"
    assert config.data.path == "data/onepiece"
    assert config.data.test_fraction == 0.2
    assert config.data.split_seed == 0
    assert config.data.val_fraction == 0.0
    assert config.data.cache_dir is None
    assert config.defaults.model_dump() == EXPECTED_DEFAULTS
    assert config.matrix == {}

    [run] = config.runs
    assert (run.name, run.model, run.mode, run.weights) == ("mlp", "pieceboard_mlp", "finetune", None)

    [cell] = config.cells
    assert isinstance(cell, Cell)
    assert cell.id == "mlp"
    assert (cell.run, cell.model, cell.mode, cell.weights) == ("mlp", "pieceboard_mlp", "finetune", None)
    assert cell.settings.model_dump() == EXPECTED_DEFAULTS
    assert cell.to_dict() == {"run": "mlp", "model": "pieceboard_mlp", "mode": "finetune", "weights": None} | (
        EXPECTED_DEFAULTS
    )


def test_output_defaults_to_results_name(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[benchmark]\nname = "onepiece"\n' + MINIMAL))
    assert config.output == Path("results") / "onepiece"
    assert load_config(_write(tmp_path, MINIMAL)).output == Path("results/benchmark")


def test_explicit_output_wins(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[benchmark]\nname = "onepiece"\noutput = "elsewhere/out"\n' + MINIMAL))
    assert config.output == Path("elsewhere/out")


def test_load_config_takes_a_dict() -> None:
    config = load_config(_minimal_dict())
    assert config.path is None
    assert config.data.path == "data/x"
    assert [c.id for c in config.cells] == ["mlp"]
    assert config.cells[0].settings.model_dump() == EXPECTED_DEFAULTS


def test_dict_errors_are_named_config() -> None:
    raw = _minimal_dict() | {"defaults": {"epoch": 3}}
    assert _error(raw) == "<config>: [defaults]: unknown key 'epoch'; did you mean 'epochs'?"


def test_file_and_dict_give_the_same_cells(tmp_path: Path) -> None:
    tomllib = pytest.importorskip("tomllib")
    from_file = load_config(_write(tmp_path, DESIGN_EXAMPLE))
    from_dict = load_config(tomllib.loads(DESIGN_EXAMPLE))
    assert from_dict.cells == from_file.cells
    assert from_dict.output == from_file.output


# --- matrix expansion -----------------------------------------------------------------------------------------


def test_design_example_expands_in_file_order(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, DESIGN_EXAMPLE))

    assert [c.id for c in config.cells] == [
        "resnet18-finetune@50px-bs32",
        "resnet18-finetune@50px-bs64",
        "resnet18-finetune@200px-bs32",
        "resnet18-finetune@200px-bs64",
        "mlp@50px-bs32",
        "mlp@50px-bs64",
        "mlp@200px-bs32",
        "mlp@200px-bs64",
    ]
    assert [(c.settings.image_size, c.settings.batch_size) for c in config.cells] == [
        (50, 32),
        (50, 64),
        (200, 32),
        (200, 64),
    ] * 2
    assert config.matrix == {"image_size": [50, 200], "batch_size": [32, 64]}
    assert config.output == Path("results/onepiece")


def test_run_settings_override_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, DESIGN_EXAMPLE))
    resnet = [c for c in config.cells if c.run == "resnet18-finetune"]
    mlp = [c for c in config.cells if c.run == "mlp"]

    assert {(c.settings.epochs, c.settings.lr) for c in resnet} == {(10, 1e-3)}
    assert {(c.settings.epochs, c.settings.lr) for c in mlp} == {(3, 0.01)}
    assert {(c.model, c.mode) for c in resnet} == {("resnet18", "finetune")}
    assert {(c.model, c.mode) for c in mlp} == {("pieceboard_mlp", "scratch")}
    # [defaults] itself is untouched by a run's own settings.
    assert (config.defaults.epochs, config.defaults.lr) == (10, 1e-3)
    # Settings nobody sets come from TrainSettings' defaults.
    assert {c.settings.warmup_epochs for c in config.cells} == {0}


def test_run_setting_that_is_a_matrix_axis_is_an_error(tmp_path: Path) -> None:
    text = DESIGN_EXAMPLE.replace('name = "mlp"\n', 'name = "mlp"\nimage_size = 64\n')
    path = _write(tmp_path, text)
    assert _error(path) == (f"{path}: [[runs]] 'mlp': key 'image_size': also a [matrix] axis; set it in one place only")


def test_no_matrix_cell_id_is_run_name(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[runs]]\nname = "resnet18-finetune"\nmodel = "resnet18"\nbatch_size = 8\n'
    config = load_config(_write(tmp_path, text))
    assert [c.id for c in config.cells] == ["mlp", "resnet18-finetune"]
    assert [c.settings.batch_size for c in config.cells] == [32, 8]


def test_other_axes_get_readable_distinct_labels(tmp_path: Path) -> None:
    text = MINIMAL + '\n[matrix]\nseed = [0, 1]\nlr = [1e-3, 1e-2]\noptimizer = ["adam", "sgd"]\n'
    config = load_config(_write(tmp_path, text))

    ids = [c.id for c in config.cells]
    assert ids == [
        "mlp@seed0-lr0.001-adam",
        "mlp@seed0-lr0.001-sgd",
        "mlp@seed0-lr0.01-adam",
        "mlp@seed0-lr0.01-sgd",
        "mlp@seed1-lr0.001-adam",
        "mlp@seed1-lr0.001-sgd",
        "mlp@seed1-lr0.01-adam",
        "mlp@seed1-lr0.01-sgd",
    ]
    assert len(set(ids)) == len(ids)
    cell = config.cells[-1]
    assert (cell.settings.seed, cell.settings.lr, cell.settings.optimizer) == (1, 0.01, "sgd")


def test_list_axis_labels(tmp_path: Path) -> None:
    text = MINIMAL + '\n[matrix]\naugment = [[], ["hflip"], ["hflip", "crop"]]\n'
    config = load_config(_write(tmp_path, text))
    assert [c.id for c in config.cells] == ["mlp@no-augment", "mlp@hflip", "mlp@hflip+crop"]
    assert [c.settings.augment for c in config.cells] == [[], ["hflip"], ["hflip", "crop"]]


def test_duplicate_cell_ids_are_an_error(tmp_path: Path) -> None:
    # 1e-3 and 0.001 are the same value: two cells would share the id mlp@lr0.001.
    path = _write(tmp_path, MINIMAL + "\n[matrix]\nlr = [1e-3, 0.001]\n")
    assert _error(path) == (f"{path}: [matrix]: two cells would both be named 'mlp@lr0.001'; make axis values distinct")


def test_invalid_matrix_value_names_matrix_run_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "\n[matrix]\nimage_size = [64, 4]\n")
    message = _error(path)
    assert message.startswith(f"{path}: [matrix]: key 'image_size': ")
    assert "greater than or equal to 8" in message
    assert message.endswith("(got 4)")


# --- --set overrides ------------------------------------------------------------------------------------------


def test_override_int_is_parsed(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, DESIGN_EXAMPLE), overrides=["defaults.epochs=3"])
    assert config.defaults.epochs == 3
    assert isinstance(config.defaults.epochs, int)
    assert {c.settings.epochs for c in config.cells if c.run == "resnet18-finetune"} == {3}
    # The run that sets its own epochs keeps them.
    assert {c.settings.epochs for c in config.cells if c.run == "mlp"} == {3}


def test_override_float_and_spaces(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), overrides=[" defaults.lr = 2e-4 ", "defaults.epochs=7"])
    assert config.defaults.lr == 2e-4
    assert config.cells[0].settings.epochs == 7


def test_override_bare_string(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), overrides=["data.path=/x"])
    assert config.data.path == "/x"
    config = load_config(_write(tmp_path, MINIMAL), overrides=["data.path=builtin:digits", "defaults.optimizer=sgd"])
    assert config.data.path == "builtin:digits"
    assert config.defaults.optimizer == "sgd"


def test_override_quoted_string(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), overrides=['data.path="/with space"'])
    assert config.data.path == "/with space"


def test_override_matrix_list(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, DESIGN_EXAMPLE), overrides=["matrix.image_size=[32,64]"])
    assert config.matrix == {"image_size": [32, 64], "batch_size": [32, 64]}
    assert [c.id for c in config.cells if c.run == "mlp"] == [
        "mlp@32px-bs32",
        "mlp@32px-bs64",
        "mlp@64px-bs32",
        "mlp@64px-bs64",
    ]


def test_override_creates_a_matrix(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), overrides=["matrix.image_size=[32, 64]"])
    assert [c.id for c in config.cells] == ["mlp@32px", "mlp@64px"]


def test_override_run_by_name(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, DESIGN_EXAMPLE), overrides=["runs.resnet18-finetune.lr=0.05"])
    assert {c.settings.lr for c in config.cells if c.run == "resnet18-finetune"} == {0.05}
    assert {c.settings.lr for c in config.cells if c.run == "mlp"} == {0.01}
    assert config.defaults.lr == 1e-3


def test_override_run_by_index(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, DESIGN_EXAMPLE), overrides=["runs.1.lr=0.5", "runs.0.mode=linear_probe"])
    assert {c.settings.lr for c in config.cells if c.run == "mlp"} == {0.5}
    assert {c.settings.lr for c in config.cells if c.run == "resnet18-finetune"} == {1e-3}
    assert config.runs[0].mode == "linear_probe"


def test_override_unknown_run(tmp_path: Path) -> None:
    path = _write(tmp_path, DESIGN_EXAMPLE)
    assert _error(path, ["runs.nope.lr=0.01"]) == (
        f"--set 'runs.nope.lr=0.01': {path} has no run named 'nope' (runs: resnet18-finetune, mlp)"
    )


@pytest.mark.parametrize("item", ["defaults.epochs", "=3", "defaults..epochs=3", ".epochs=3"])
def test_override_malformed(tmp_path: Path, item: str) -> None:
    assert _error(_write(tmp_path, MINIMAL), [item]) == (
        f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. defaults.epochs=3"
    )


def test_override_runs_without_a_run(tmp_path: Path) -> None:
    assert _error(_write(tmp_path, MINIMAL), ["runs.lr=1"]) == (
        "--set 'runs.lr=1': name a run and a key, e.g. runs.<name>.epochs=3"
    )


def test_override_through_a_value_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "\n[defaults]\nepochs = 4\n")
    assert _error(path, ["defaults.epochs.x=1"]) == (
        f"--set 'defaults.epochs.x=1': defaults.epochs in {path} is not a table"
    )


def test_override_result_is_validated(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    message = _error(path, ["defaults.epochs=0"])
    assert message.startswith(f"{path}: [defaults]: key 'epochs': ")
    assert "greater than 0" in message
    assert message.endswith("(got 0)")
    assert _error(path, ["defaults.epoch=3"]) == f"{path}: [defaults]: unknown key 'epoch'; did you mean 'epochs'?"


def test_override_adding_a_run_setting_that_is_an_axis(tmp_path: Path) -> None:
    path = _write(tmp_path, DESIGN_EXAMPLE)
    assert _error(path, ["runs.mlp.batch_size=16"]) == (
        f"{path}: [[runs]] 'mlp': key 'batch_size': also a [matrix] axis; set it in one place only"
    )


def test_overrides_leave_the_file_untouched(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    load_config(path, overrides=["defaults.epochs=3"])
    assert path.read_text(encoding="utf-8") == MINIMAL
    assert load_config(path).defaults.epochs == 10


def test_overrides_do_not_mutate_a_dict_source() -> None:
    raw = _minimal_dict()
    before = copy.deepcopy(raw)
    config = load_config(raw, overrides=["defaults.epochs=3", "runs.mlp.lr=0.5"])
    assert config.defaults.epochs == 3
    assert config.cells[0].settings.lr == 0.5
    assert raw == before


# --- errors ---------------------------------------------------------------------------------------------------

# (id, file text, exact start of the message after "<path>: ", fragments the message must also contain)
INVALID = [
    (
        "unknown-key",
        MINIMAL + "\n[defaults]\nepoch = 3\n",
        "[defaults]: unknown key 'epoch'; did you mean 'epochs'?",
        [],
    ),
    (
        "unknown-key-no-near-name",
        MINIMAL + "\n[defaults]\nzzzzzz = 3\n",
        "[defaults]: unknown key 'zzzzzz'; valid keys: epochs, batch_size, image_size,",
        ["log_every, seed"],
    ),
    (
        "unknown-key-data",
        DATA + "splitt = 0.2\n\n" + RUN_MLP,
        "[data]: unknown key 'splitt'; did you mean",
        [],
    ),
    (
        "unknown-key-run",
        MINIMAL + "epoch = 3\n",
        "[[runs]] 'mlp': unknown key 'epoch'; did you mean 'epochs'?",
        [],
    ),
    (
        "unknown-key-benchmark",
        '[benchmark]\nnmae = "x"\n' + MINIMAL,
        "[benchmark]: unknown key 'nmae'; did you mean 'name'?",
        [],
    ),
    ("unknown-table", MINIMAL + "\n[defualts]\nepochs = 3\n", "unknown table [defualts]; did you mean [defaults]?", []),
    ("unknown-table-no-near-name", MINIMAL + "\n[zzz]\nx = 1\n", "unknown table [zzz]", []),
    (
        "wrong-type",
        MINIMAL + '\n[defaults]\nepochs = "ten"\n',
        "[defaults]: key 'epochs': ",
        ["valid integer", '(got "ten")'],
    ),
    (
        "wrong-type-run",
        MINIMAL + 'lr = "fast"\n',
        "[[runs]] 'mlp': key 'lr': ",
        ["valid number", '(got "fast")'],
    ),
    (
        "test-fraction-0",
        '[data]\npath = "d"\ntest_fraction = 0\n\n' + RUN_MLP,
        "[data]: key 'test_fraction': ",
        ["greater than 0", "(got 0)"],
    ),
    (
        "test-fraction-1.5",
        '[data]\npath = "d"\ntest_fraction = 1.5\n\n' + RUN_MLP,
        "[data]: key 'test_fraction': ",
        ["less than 1", "(got 1.5)"],
    ),
    (
        "test-fraction-1",
        '[data]\npath = "d"\ntest_fraction = 1.0\n\n' + RUN_MLP,
        "[data]: key 'test_fraction': ",
        ["less than 1", "(got 1.0)"],
    ),
    (
        "split-seed-negative",
        '[data]\npath = "d"\nsplit_seed = -1\n\n' + RUN_MLP,
        "[data]: key 'split_seed': ",
        ["greater than or equal to 0", "(got -1)"],
    ),
    (
        "batch-size-0",
        MINIMAL + "\n[defaults]\nbatch_size = 0\n",
        "[defaults]: key 'batch_size': ",
        ["greater than 0", "(got 0)"],
    ),
    (
        "lr-negative",
        MINIMAL + "\n[defaults]\nlr = -0.1\n",
        "[defaults]: key 'lr': ",
        ["greater than 0", "(got -0.1)"],
    ),
    (
        "image-size-0",
        MINIMAL + "\n[defaults]\nimage_size = 0\n",
        "[defaults]: key 'image_size': ",
        ["greater than or equal to 8", "(got 0)"],
    ),
    (
        "image-size-huge",
        MINIMAL + "\n[defaults]\nimage_size = 4096\n",
        "[defaults]: key 'image_size': ",
        ["less than or equal to 2048", "(got 4096)"],
    ),
    ("missing-data-path", "[data]\ntest_fraction = 0.2\n\n" + RUN_MLP, "[data]: missing required key 'path'", []),
    ("run-missing-model", DATA + '[[runs]]\nname = "mlp"\n', "[[runs]] 'mlp': missing required key 'model'", []),
    ("run-missing-name", DATA + '[[runs]]\nmodel = "resnet18"\n', "[[runs]] #1: missing required key 'name'", []),
    (
        "bad-mode",
        MINIMAL + 'mode = "finetuned"\n',
        "[[runs]] 'mlp': key 'mode': ",
        ['"scratch", "finetune" or "linear_probe"', '(got "finetuned")'],
    ),
    (
        "bad-precision",
        MINIMAL + '\n[defaults]\nprecision = "fp32"\n',
        "[defaults]: key 'precision': ",
        ['"no", "bf16", "fp16" or "auto"', '(got "fp32")'],
    ),
    (
        "bad-precision-run",
        MINIMAL + 'precision = "fp8"\n',
        "[[runs]] 'mlp': key 'precision': ",
        ['"no", "bf16", "fp16" or "auto"', '(got "fp8")'],
    ),
    (
        "bad-optimizer",
        MINIMAL + '\n[defaults]\noptimizer = "lamb"\n',
        "[defaults]: key 'optimizer': ",
        ['"adam", "adamw" or "sgd"', '(got "lamb")'],
    ),
    (
        "bad-augment",
        MINIMAL + '\n[defaults]\naugment = ["flip"]\n',
        "[defaults]: key 'augment.0': ",
        ['"crop", "randaugment", "trivialaugment" or "autoaugment"', '(got "flip")'],
    ),
    (
        "bad-wandb",
        '[benchmark]\nwandb = "on"\n' + MINIMAL,
        "[benchmark]: key 'wandb': ",
        ['(got "on")'],
    ),
    (
        "unknown-model",
        DATA + '[[runs]]\nname = "r"\nmodel = "resnet81"\n',
        "[[runs]] 'r': key 'model': unknown model 'resnet81'; nearest timm names: ",
        [],
    ),
    (
        "duplicate-run-names",
        MINIMAL + "\n" + RUN_MLP,
        "[[runs]] 'mlp': key 'name': duplicate run name; every run needs its own",
        [],
    ),
    (
        "weights-with-scratch",
        MINIMAL + 'mode = "scratch"\nweights = "w.safetensors"\n',
        "[[runs]] 'mlp': key 'weights': a scratch run starts from random weights; remove it",
        [],
    ),
    ("empty-matrix-axis", MINIMAL + "\n[matrix]\nimage_size = []\n", "[matrix]: axis 'image_size' has no values", []),
    (
        "unknown-matrix-axis",
        MINIMAL + "\n[matrix]\nimagesize = [50, 200]\n",
        "[matrix]: unknown axis 'imagesize'; did you mean 'image_size'?",
        [],
    ),
    (
        "matrix-axis-not-a-list",
        MINIMAL + "\n[matrix]\nimage_size = 50\n",
        "[matrix]: key 'image_size': ",
        ["valid list", "(got 50)"],
    ),
]


@pytest.mark.parametrize(("text", "start", "fragments"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_file(tmp_path: Path, text: str, start: str, fragments: list[str]) -> None:
    path = _write(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}: {start}"), message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_unknown_model_suggests_nearest_timm_names(tmp_path: Path) -> None:
    path = _write(tmp_path, DATA + '[[runs]]\nname = "r"\nmodel = "resnet81"\n')
    message = _error(path)
    names = message.split("nearest timm names: ", 1)[1].split(", ")
    assert "resnet18" in names
    assert 1 <= len(names) <= 5


def test_unknown_model_far_from_everything(tmp_path: Path) -> None:
    path = _write(tmp_path, DATA + '[[runs]]\nname = "r"\nmodel = "qqqqqqqqqqqqqqqqqqqq"\n')
    assert _error(path) == f"{path}: [[runs]] 'r': key 'model': unknown model 'qqqqqqqqqqqqqqqqqqqq'"


def test_invalid_run_setting_names_the_run_and_key(tmp_path: Path) -> None:
    # A run's own settings are range-checked when its cells are resolved.
    path = _write(tmp_path, MINIMAL + "lr = -1\n")
    message = _error(path)
    assert message.startswith(f"{path}: ")
    assert "[[runs]] 'mlp': key 'lr': " in message
    assert "greater than 0" in message


@pytest.mark.parametrize("name", ["a/b", "..", "x y", "a@b", ".", "", "-a", "a\\b"])
def test_unsafe_run_names(tmp_path: Path, name: str) -> None:
    escaped = name.replace("\\", "\\\\")
    path = _write(tmp_path, DATA + f'[[runs]]\nname = "{escaped}"\nmodel = "pieceboard_mlp"\n')
    message = _error(path)
    assert message.startswith(f"{path}: [[runs]] '{name}': key 'name': must be one safe path component")


@pytest.mark.parametrize("name", ["resnet18-finetune", "vit_small.augreg", "a+b", "0", "Run.2"])
def test_safe_run_names(tmp_path: Path, name: str) -> None:
    config = load_config(_write(tmp_path, DATA + f'[[runs]]\nname = "{name}"\nmodel = "pieceboard_mlp"\n'))
    assert [c.id for c in config.cells] == [name]


def test_run_name_with_trailing_newline_is_unsafe(tmp_path: Path) -> None:
    path = _write(tmp_path, DATA + '[[runs]]\nname = "mlp\\n"\nmodel = "pieceboard_mlp"\n')
    assert "key 'name': must be one safe path component" in _error(path)


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = _write(tmp_path, '[data]\npath = "d"\ntest_fraction = 0\n\n[defaults]\nepoch = 3\n\n' + RUN_MLP)
    lines = _error(path).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert any("[data]: key 'test_fraction'" in line for line in lines)
    assert any("[defaults]: unknown key 'epoch'" in line for line in lines)


def test_invalid_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, "[data\npath = 1\n")
    message = _error(path)
    assert message.startswith(f"{path}: not valid TOML: ")
    assert "line 1" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[data]\npath = "caf\xe9"\n')
    assert _error(path).startswith(f"{path}: not valid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert _error(path) == f"{path}: no such benchmark file"
    assert _error(str(path)) == f"{path}: no such benchmark file"


def test_directory_is_not_a_benchmark_file(tmp_path: Path) -> None:
    # Issue 22: said "no such benchmark file", which a folder that is there is not.
    expected = f"{tmp_path}: is a folder, not a benchmark file (a .toml file, e.g. benchmarks/demo.toml)"
    assert _error(tmp_path) == expected


def test_an_unreadable_benchmark_file_is_one_line(tmp_path: Path, monkeypatch) -> None:
    # Issue 22: PermissionError traceback. (Tests run as root, who reads everything: the refusal is simulated.)
    path = _write(tmp_path, RUN_MLP)
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    assert _error(path) == f"{path}: cannot be read (Permission denied)"


def test_missing_data_table(tmp_path: Path) -> None:
    path = _write(tmp_path, RUN_MLP)
    message = _error(path)
    assert message.startswith(f"{path}: [data]")
    assert "''" not in message


@pytest.mark.parametrize("text", [DATA, "runs = []\n" + DATA], ids=["absent", "empty"])
def test_missing_runs(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}: [[runs]]")
    assert "''" not in message


def test_missing_runs_is_an_error(tmp_path: Path) -> None:
    # What the message says is covered (xfail) above; that it fails, and names the file, is not in doubt.
    for text in (DATA, "runs = []\n" + DATA):
        path = _write(tmp_path, text)
        message = _error(path)
        assert message.startswith(f"{path}: ")
        assert "runs" in message


@pytest.mark.parametrize("axis", ["model", "mode"])
def test_matrix_axis_that_is_a_run_key(tmp_path: Path, axis: str) -> None:
    path = _write(tmp_path, MINIMAL + f'\n[matrix]\n{axis} = ["resnet18", "scratch"]\n')
    assert _error(path).startswith(f"{path}: [matrix]: unknown axis '{axis}'")


def test_boolean_is_not_an_integer(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "\n[defaults]\nbatch_size = true\n")
    assert _error(path).startswith(f"{path}: [defaults]: key 'batch_size': ")


# --- limits a library would hit later: seeds, non-finite floats, empty paths, names too long for a file name ------


@pytest.mark.parametrize(
    ("table", "text", "key"),
    [
        ("[defaults]", MINIMAL + "\n[defaults]\nseed = {seed}\n", "seed"),
        ("[[runs]] 'mlp'", MINIMAL + "seed = {seed}\n", "seed"),
        ("[matrix]", MINIMAL + "\n[matrix]\nseed = [0, {seed}]\n", "seed"),
        ("[data]", '[data]\npath = "d"\nsplit_seed = {seed}\n\n' + RUN_MLP, "split_seed"),
    ],
    ids=["defaults", "run", "matrix", "split"],
)
def test_seeds_are_32_bit(tmp_path: Path, table: str, text: str, key: str) -> None:
    # accelerate's set_seed hands the seed to np.random.seed, which refuses 2**32 and above: every cell would fail.
    config = load_config(_write(tmp_path, text.format(seed=2**32 - 1)))
    largest = config.data.split_seed if key == "split_seed" else max(c.settings.seed for c in config.cells)
    assert largest == 2**32 - 1
    path = _write(tmp_path, text.format(seed=2**32))
    assert _error(path) == f"{path}: {table}: key '{key}': input should be less than 4294967296 (got 4294967296)"


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "+inf"])
@pytest.mark.parametrize("key", ["lr", "weight_decay"])
def test_training_floats_must_be_finite(tmp_path: Path, key: str, value: str) -> None:
    path = _write(tmp_path, MINIMAL + f"\n[defaults]\n{key} = {value}\n")
    shown = value.lstrip("+")
    assert _error(path) == f"{path}: [defaults]: key '{key}': input should be a finite number (got {shown})"


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_test_fraction_must_be_finite(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, f'[data]\npath = "d"\ntest_fraction = {value}\n\n' + RUN_MLP)
    assert _error(path) == f"{path}: [data]: key 'test_fraction': input should be a finite number (got {value})"


def test_non_finite_matrix_value_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + "\n[matrix]\nlr = [0.1, inf]\n")
    assert _error(path) == f"{path}: [matrix]: key 'lr': input should be a finite number (got inf)"


BLANK = 'an empty path is refused; write "." for the current directory'


@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_empty_data_path_is_refused(tmp_path: Path, value: str) -> None:
    # Path("") is the current directory: an empty path used to benchmark whatever folder the command ran in.
    path = _write(tmp_path, f'[data]\npath = "{value}"\n\n' + RUN_MLP)
    shown = '"\\t"' if value == "\t" else f'"{value}"'
    assert _error(path) == f"{path}: [data]: key 'path': {BLANK} (got {shown})"


def test_empty_data_path_from_set_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    assert _error(path, ["data.path="]) == f"{path}: [data]: key 'path': {BLANK} (got \"\")"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[benchmark]\noutput = ""\n' + MINIMAL, "[benchmark]: key 'output'"),
        (DATA + 'cache_dir = " "\n\n' + RUN_MLP, "[data]: key 'cache_dir'"),
        (MINIMAL + 'weights = ""\n', "[[runs]] 'mlp': key 'weights'"),
    ],
    ids=["output", "cache_dir", "weights"],
)
def test_other_empty_paths_are_refused(tmp_path: Path, text: str, where: str) -> None:
    path = _write(tmp_path, text)
    assert _error(path).startswith(f"{path}: {where}: {BLANK}")


def _run_named(name: str, matrix: str = "") -> str:
    return DATA + f'[[runs]]\nname = "{name}"\nmodel = "pieceboard_mlp"\n' + matrix


def test_run_name_at_the_limit_is_accepted(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, _run_named("r" * MAX_NAME_BYTES)))
    assert [len(c.id) for c in config.cells] == [MAX_NAME_BYTES]


def test_run_name_too_long_for_a_folder_is_refused(tmp_path: Path) -> None:
    # 300 characters used to pass validation and fail with "File name too long" when the first result was saved.
    path = _write(tmp_path, _run_named("r" * 300))
    assert _error(path) == (
        f"{path}: [[runs]] '{'r' * 24}…{'r' * 16}': key 'name': 300 bytes, too long for a folder name "
        f"(at most {MAX_NAME_BYTES}), since it names the run's result folder"
    )


def test_cell_id_too_long_for_a_folder_is_refused(tmp_path: Path) -> None:
    # The run name fits; `@16px-lr0.01` pushes the cell id, which names the result folder, past the limit.
    name = "r" * (MAX_NAME_BYTES - 5)
    path = _write(tmp_path, _run_named(name, "\n[matrix]\nimage_size = [16]\nlr = [0.01]\n"))
    message = _error(path)
    assert message == (
        f"{path}: [[runs]] '{'r' * 24}…{'r' * 16}': key 'name': the cell id '{'r' * 24}…{'r' * 4}@16px-lr0.01' is "
        f"{MAX_NAME_BYTES + 7} bytes, too long for a folder name (at most {MAX_NAME_BYTES}), since it names the "
        "cell's result folder; shorten the run name or the [matrix] values"
    )


def test_cell_ids_fit_a_file_name_with_the_atomic_write_prefix(tmp_path: Path) -> None:
    # The limit leaves room for atomic_write_text's temporary name (".NAME." + 8 characters) and an extension.
    from pieceboard._io import atomic_write_text

    config = load_config(_write(tmp_path, _run_named("r" * (MAX_NAME_BYTES - 5), "\n[matrix]\nimage_size = [16]\n")))
    [cell] = config.cells
    atomic_write_text(tmp_path / "out" / f"{cell.id}.json", "{}")
    assert (tmp_path / "out" / f"{cell.id}.json").read_text() == "{}"


def test_benchmark_name_too_long_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[benchmark]\nname = "{"b" * 256}"\n' + MINIMAL)
    assert _error(path) == (
        f"{path}: [benchmark]: key 'name': 256 bytes, too long for a folder name (at most {MAX_NAME_BYTES}), since "
        "the output defaults to results/<name>"
    )


# --- values are shown as TOML spells them ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[benchmark]\nwandb = true\n" + MINIMAL,
            '[benchmark]: key \'wandb\': input should be "auto", "online", "offline" or "off" (got true)',
        ),
        (
            MINIMAL + "\n[defaults]\nepochs = [1, 2]\n",
            "[defaults]: key 'epochs': input should be a valid integer (got [1, 2])",
        ),
        (
            MINIMAL + '\n[defaults]\nchannels_last = "yes"\n',
            '[defaults]: key \'channels_last\': input should be a valid boolean, or input should be "auto" (got "yes")',
        ),
        (
            MINIMAL + "\n[defaults]\nlog_every = false\n",
            "[defaults]: key 'log_every': input should be a valid integer (got false)",
        ),
        (
            MINIMAL + "\n[defaults]\nepochs = { n = 1 }\n",
            "[defaults]: key 'epochs': input should be a valid integer (got { n = 1 })",
        ),
    ],
    ids=["bool", "list", "string", "false", "inline-table"],
)
def test_values_are_shown_in_toml_spelling(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    assert _error(path) == f"{path}: {expected}"


def test_matrix_values_are_shown_in_toml_spelling(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + '\n[matrix]\nprecision = ["bf16", true]\n')
    assert _error(path) == (
        f'{path}: [matrix]: key \'precision\': input should be "no", "bf16", "fp16" or "auto" (got true)'
    )


def test_long_values_are_cut_short(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL + f"\n[defaults]\nepochs = {list(range(100))}\n")
    message = _error(path)
    assert message.endswith("…)") and len(message.split("(got ", 1)[1]) == 81


# --- the command line -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`python -m pieceboard.bench BAD.toml` on a file with `[defaults] epoch = 3`, run once for the module."""
    tmp_path = tmp_path_factory.mktemp("cli")
    _write(tmp_path, MINIMAL + "\n[defaults]\nepoch = 3\n", name="BAD.toml")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "pieceboard.bench", "BAD.toml"]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return proc, tmp_path


def test_cli_bad_file_exits_2_with_one_message(bad_cli_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, cwd = bad_cli_run
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pieceboard: error: BAD.toml: ")
    assert "unknown key 'epoch'; did you mean 'epochs'?" in lines[0]
    # Nothing ran: no results folder.
    assert sorted(p.name for p in cwd.iterdir()) == ["BAD.toml"]


def test_cli_message_names_the_table(bad_cli_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = bad_cli_run
    assert "BAD.toml: [defaults]: unknown key 'epoch'" in proc.stderr


# --- the shipped benchmarks -----------------------------------------------------------------------------------


def test_benchmarks_exist() -> None:
    assert BENCHMARKS, "no benchmarks/*.toml found"


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_shipped_benchmark_loads(path: Path) -> None:
    config = load_config(path)
    assert config.path == path
    assert config.runs
    expected_cells = len(config.runs) * math.prod(len(values) for values in config.matrix.values())
    assert len(config.cells) == expected_cells
    ids = [c.id for c in config.cells]
    assert len(set(ids)) == len(ids)
    assert {c.run for c in config.cells} == {r.name for r in config.runs}
    for cell in config.cells:
        assert isinstance(cell.settings, TrainSettings)
        assert cell.id.split("@", 1)[0] == cell.run
    if config.tune is not None:  # a tuned study: every cell the same trials, the same budget
        assert config.data.val_fraction > 0
        assert len({json.dumps(config.tuning(cell)["budget"]) for cell in config.cells}) == 1
        values = {tuple(t.id.split("~")[1] for t in config.trials[cell.id]) for cell in config.cells}
        assert len(values) == 1 and len(next(iter(values))) > 1


def test_the_study_is_shipped_untuned_and_tuned() -> None:
    plain, tuned = load_config(REPO / "benchmarks" / "all.toml"), load_config(REPO / "benchmarks" / "all-tuned.toml")
    assert [c.id for c in tuned.cells] == [c.id for c in plain.cells] and plain.tune is None
    assert tuned.tune.space["lr"] and {c.settings.epochs for c in tuned.cells} == {10}


def test_demo_benchmark_cells() -> None:
    config = load_config(REPO / "benchmarks" / "demo.toml")
    assert config.output == Path("results/demo")
    assert config.data.path == "builtin:digits"
    assert [c.id for c in config.cells] == [
        "mlp@16px",
        "mlp@32px",
        "resnet18-scratch@16px",
        "resnet18-scratch@32px",
        "mobilenetv3-scratch@16px",
        "mobilenetv3-scratch@32px",
    ]
    assert {c.settings.epochs for c in config.cells} == {3}
    assert {c.settings.batch_size for c in config.cells} == {64}


# --- [tune] and the recipe settings -------------------------------------------------------------------------------

TUNED = (
    DATA.replace("[data]\n", "[data]\nval_fraction = 0.1\n")
    + """
[defaults]
epochs = 6

[[runs]]
name = "mlp"
model = "pieceboard_mlp"
mode = "scratch"

[[runs]]
name = "r18"
model = "resnet18"
mode = "scratch"
epochs = 4

[matrix]
image_size = [16, 32]

[tune]
lr = [3e-4, 1e-3, 3e-3]
weight_decay = [0, 1e-4]
"""
)


def test_every_cell_gets_the_same_trials_with_the_same_budget(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, TUNED))
    assert [c.id for c in config.cells] == ["mlp@16px", "mlp@32px", "r18@16px", "r18@32px"]
    grid = [{"lr": lr, "weight_decay": wd} for lr in (3e-4, 1e-3, 3e-3) for wd in (0.0, 1e-4)]
    for cell in config.cells:
        trials = config.trials[cell.id]
        assert [{"lr": t.settings.lr, "weight_decay": t.settings.weight_decay} for t in trials] == grid
        assert {t.settings.epochs for t in trials} == {cell.settings.epochs}  # default: the run's own epochs
        assert all(t.trial_of == cell.id and t.id.startswith(f"{cell.id}~lr") for t in trials)
        # Everything else is the cell's.
        for trial in trials:
            rest = trial.settings.model_dump(exclude={"lr", "weight_decay"})
            assert rest == cell.settings.model_dump(exclude={"lr", "weight_decay"})
    assert config.trials["mlp@16px"][1].id == "mlp@16px~lr0.0003-weight_decay0.0001"
    assert config.tuning(config.cells[0]) == {
        "space": {"lr": [3e-4, 1e-3, 3e-3], "weight_decay": [0, 1e-4]},
        "trials": None,
        "trial_epochs": None,
        "search_seed": 0,
        "budget": {"trials": 6, "epochs": 36},
    }
    assert config.tuning(config.cells[2])["budget"] == {"trials": 6, "epochs": 24}  # r18 trains 4 epochs
    budget = load_config(_write(tmp_path, TUNED + "trial_epochs = 2\n"))
    assert {t.settings.epochs for group in budget.trials.values() for t in group} == {2}
    assert {c.settings.epochs for c in budget.cells} == {6, 4}  # the cells keep their epochs
    assert {json.dumps(budget.tuning(cell)["budget"]) for cell in budget.cells} == {'{"trials": 6, "epochs": 12}'}


def test_random_trials_are_a_seeded_draw_from_the_grid_shared_by_every_cell(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, TUNED + "trials = 4\nsearch_seed = 7\n"))
    drawn = {tuple(t.id.split("~")[1] for t in config.trials[c.id]) for c in config.cells}
    assert len(drawn) == 1 and len(next(iter(drawn))) == 4 and len(set(next(iter(drawn)))) == 4
    again = load_config(_write(tmp_path, TUNED + "trials = 4\nsearch_seed = 7\n"))
    assert [t.id for t in again.trials["mlp@16px"]] == [t.id for t in config.trials["mlp@16px"]]
    seeds = {
        tuple(
            t.id for t in load_config(_write(tmp_path, TUNED + f"trials = 4\nsearch_seed = {s}\n")).trials["r18@16px"]
        )
        for s in range(5)
    }
    assert len(seeds) > 1


def test_a_trial_is_stored_and_read_back_as_the_same_cell(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, TUNED))
    trial = config.trials["r18@32px"][3]
    stored = trial.to_dict() | {"data": {"path": "x"}, "tune": {}}
    assert stored["trial_of"] == "r18@32px" and Cell.from_dict(trial.id, stored) == trial
    cell = config.cells[0]
    assert "trial_of" not in cell.to_dict() and Cell.from_dict(cell.id, cell.to_dict()) == cell


@pytest.mark.parametrize(
    "change, message",
    [
        (("val_fraction = 0.1\n", ""), "[tune]: trials are compared on the validation split, and there is none"),
        (("image_size = [16, 32]", "image_size = [16, 32]\nlr = [1e-3]"), "[tune]: key 'lr': also a [matrix] axis"),
        (('mode = "scratch"\nepochs = 4', 'mode = "scratch"\nlr = 0.1'), "[[runs]] 'r18': key 'lr': also a [tune] key"),
        (
            ("weight_decay = [0, 1e-4]", "weight_decay = [0, 1e-4]\ntrials = 7"),
            "key 'trials': 7 trials, but the grid has 6",
        ),
        (
            ("weight_decay = [0, 1e-4]", "weight_decay = [0, 1e-4]\nlrr = [1]"),
            "[tune]: unknown key 'lrr'; did you mean 'lr'?",
        ),
        (
            ("weight_decay = [0, 1e-4]", "weight_decay = [-1]"),
            "[tune]: key 'weight_decay': input should be greater than",
        ),
        (("weight_decay = [0, 1e-4]", "weight_decay = []"), "[tune]: key 'weight_decay' has no values"),
        (("weight_decay = [0, 1e-4]", "weight_decay = 0"), "[tune]: key 'weight_decay': input should be a valid list"),
        (("lr = [3e-4, 1e-3, 3e-3]\nweight_decay = [0, 1e-4]", "trials = 2"), "[tune]: no setting to search"),
        (("lr = [3e-4, 1e-3, 3e-3]", "lr = [1e-3, 0.001]"), "two trials would both be named 'mlp@16px~lr0.001-"),
        (
            (
                "epochs = 4\n\n[matrix]\nimage_size = [16, 32]\n\n[tune]\n",
                "\n[tune]\nepochs = [2, 3]\ntrial_epochs = 1\n",
            ),
            "key 'trial_epochs': epochs is searched",
        ),
    ],
)
def test_tune_mistakes_are_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = TUNED.replace(*change)
    assert change[0] in TUNED
    assert message in _error(_write(tmp_path, text))


@pytest.mark.parametrize(
    "setting, message",
    [
        ('augment = ["randaugment", "autoaugment"]', 'at most one policy: choose "randaugment" or "autoaugment"'),
        ('augment = ["hflip", "hflip"]', "each augmentation at most once"),
        ("crop_scale = [0.5, 0.2]", "expected [smallest, largest] with 0 < smallest <= largest <= 1"),
        ("crop_scale = [0.5]", "key 'crop_scale': list should have at least 2 items"),
        ("label_smoothing = 1.0", "key 'label_smoothing': input should be less than 1"),
        ("mixup = -0.1", "key 'mixup': input should be greater than or equal to 0"),
        ("ema = 1", "key 'ema': input should be less than 1"),
    ],
)
def test_recipe_settings_are_checked(tmp_path: Path, setting: str, message: str) -> None:
    assert message in _error(_write(tmp_path, MINIMAL + f"\n[defaults]\n{setting}\n"))


def test_recipes_are_matrix_and_tune_axes(tmp_path: Path) -> None:
    text = TUNED.replace("image_size = [16, 32]", 'augment = [[], ["hflip", "crop"], ["trivialaugment"]]')
    text = text.replace("weight_decay = [0, 1e-4]", "label_smoothing = [0, 0.1]\nmixup = [0, 0.2]")
    config = load_config(_write(tmp_path, text))
    assert [c.id for c in config.cells][:3] == ["mlp@no-augment", "mlp@hflip+crop", "mlp@trivialaugment"]
    assert {(t.settings.label_smoothing, t.settings.mixup) for t in config.trials["mlp@hflip+crop"]} == {
        (0.0, 0.0), (0.0, 0.2), (0.1, 0.0), (0.1, 0.2)
    }  # fmt: skip
