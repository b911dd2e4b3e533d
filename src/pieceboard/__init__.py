"""pieceboard: benchmark image classifiers on your own folder of images.

import pieceboard
results = pieceboard.run("benchmarks/demo.toml", output="results/demo", overrides=["defaults.epochs=1"])
print(pieceboard.Leaderboard.from_dir("results/demo").to_markdown())
"""

from importlib.metadata import version

from pieceboard import models as _models  # noqa: F401  (registers pieceboard_mlp in timm's registry)
from pieceboard._console import PieceboardError
from pieceboard.config import Cell, Config, ConfigError, load_config
from pieceboard.leaderboard import Leaderboard
from pieceboard.results import RunResult, load_results

__version__ = version("pieceboard")


def __getattr__(name: str):
    # `run` lives in pieceboard.bench; importing it lazily keeps `python -m pieceboard.bench` free of runpy's
    # "found in sys.modules" warning.
    if name == "run":
        from pieceboard.bench import run

        return run
    raise AttributeError(f"module 'pieceboard' has no attribute {name!r}")


__all__ = [
    "Cell",
    "Config",
    "ConfigError",
    "Leaderboard",
    "PieceboardError",
    "RunResult",
    "__version__",
    "load_config",
    "load_results",
    "run",
]
