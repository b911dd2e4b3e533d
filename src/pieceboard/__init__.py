"""pieceboard: benchmark image classifiers on your own folder of images.

import pieceboard
results = pieceboard.run("benchmarks/demo.toml", output="results/demo", overrides=["defaults.epochs=1"])
print(pieceboard.Leaderboard.from_dir("results/demo").to_markdown())

Every name below is imported on first use (PEP 562): the modules behind them import torch, timm and the leaderboard's
dependencies, which take seconds to load, and `import pieceboard` or `pieceboard --help` should not.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and mkdocstrings see; at run time `__getattr__` provides the same names
    from pieceboard._console import PieceboardError
    from pieceboard.bench import run
    from pieceboard.config import Cell, Config, ConfigError, load_config
    from pieceboard.leaderboard import Leaderboard
    from pieceboard.predict import load_model
    from pieceboard.results import RunResult, load_results

__version__ = version("pieceboard")

# `python -m pieceboard.bench` and its workers: wandb (which timm imports) is imported here, before any module of the
# benchmark imports timm, so that its temporary folders go where a killed benchmark's are found again.
if "-m" in getattr(sys, "orig_argv", []):  # only `python -m ...` can be one; `import pieceboard` stays light
    from pieceboard.tracking import benchmark_process, import_wandb_privately

    if benchmark_process(sys.orig_argv):
        import_wandb_privately()

_EXPORTS = {
    "Cell": "pieceboard.config",
    "Config": "pieceboard.config",
    "ConfigError": "pieceboard.config",
    "Leaderboard": "pieceboard.leaderboard",
    "PieceboardError": "pieceboard._console",
    "RunResult": "pieceboard.results",
    "load_config": "pieceboard.config",
    "load_model": "pieceboard.predict",
    "load_results": "pieceboard.results",
    "run": "pieceboard.bench",
}

__all__ = [
    "Cell",
    "Config",
    "ConfigError",
    "Leaderboard",
    "PieceboardError",
    "RunResult",
    "__version__",
    "load_config",
    "load_model",
    "load_results",
    "run",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pieceboard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups find it without coming back here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
