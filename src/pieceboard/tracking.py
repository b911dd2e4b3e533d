"""Weights & Biases: one W&B run per matrix cell, grouped by benchmark, from the main process only.

The mode is decided before `wandb.init` is called, because an init without an API key may prompt for a login
(and hang every process) or wait for a network that is not there:

- `off`: W&B is never imported.
- `offline`: files under OUTPUT/wandb; upload later with `wandb sync OUTPUT/wandb/offline-run-*`.
- `online`: needs `wandb login` or WANDB_API_KEY (checked before anything trains, see `check_mode`).
- `auto` (default): WANDB_MODE when set, else online when an API key is configured, else offline.

W&B never costs a cell: a run that W&B cannot start online is logged offline instead, and one it cannot start at all
(or a failure while logging) is trained without W&B; each says so once, through `warn`.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import netrc
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pieceboard._console import PieceboardError, one_line
from pieceboard._io import pid_alive

WANDB = "wandb"  # OUTPUT/wandb: W&B's files
PRIVATE_TEMP = "pieceboard-"  # <temp>/pieceboard-<host>.<pid>: see `import_wandb_privately`
# W&B's own rule for project names (wandb.Settings.validate_project), checked here without importing wandb.
PROJECT_CHARACTERS, PROJECT_LENGTH = "/\\#?%:", 128


def _logged_in() -> bool:
    """Whether W&B has an API key: WANDB_API_KEY, or a ~/.netrc entry for its host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(setting: str) -> str:
    """online, offline or off, from the `[benchmark] wandb` setting and the environment."""
    if setting != "auto":
        return setting
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline"):
        return env
    if env in ("disabled", "off", "dryrun"):
        return "off" if env != "dryrun" else "offline"
    return "online" if _logged_in() else "offline"


def check_mode(mode: str, project: str) -> None:
    """What would stop W&B at the first cell, found before anything trains.

    Raises:
        PieceboardError: `online` without a login, or a project name W&B refuses.
    """
    if mode == "off":
        return
    if mode == "online" and not _logged_in():
        raise PieceboardError(
            '[benchmark] wandb = "online" needs a W&B login (`wandb login`, or WANDB_API_KEY); use "offline" to '
            'write the runs under the output folder and upload them later with `wandb sync`, or "off"'
        )
    bad = sorted({c for c in project if c in PROJECT_CHARACTERS})
    if bad or not project or len(project) > PROJECT_LENGTH:
        raise PieceboardError(
            f"[benchmark] wandb_project {project!r}: W&B project names are 1 to {PROJECT_LENGTH} characters without "
            f"{' '.join(PROJECT_CHARACTERS)}" + (f" (found {' '.join(bad)})" if bad else "")
        )


def import_wandb_privately() -> None:
    """Import wandb now, with the temporary folders it makes at import in a folder of this process's own.

    wandb makes `tmp*wandb-media` and `tmp*wandb-artifacts` in the system's temporary folder when it is imported
    (timm imports it, so every benchmark process does, W&B on or off) and removes them at a normal exit only: a
    killed benchmark left them behind for good. Here they go into `<temp>/pieceboard-<host>.<pid>`, removed at exit
    too, and by the next benchmark process on this host when this one was killed. Nothing else about the temporary
    folder changes: `tempfile.tempdir` is set for the import only.
    """
    if WANDB in sys.modules or importlib.util.find_spec(WANDB) is None:
        return
    base = Path(tempfile.gettempdir())
    prefix = f"{PRIVATE_TEMP}{socket.gethostname()}."
    for stale in base.glob(f"{prefix}*"):
        pid = stale.name[len(prefix) :]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = base / f"{prefix}{os.getpid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # runs after wandb's own cleanup (registered later)
    previous, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        importlib.import_module(WANDB)
    finally:
        tempfile.tempdir = previous


def benchmark_process(argv: list[str]) -> bool:
    """Whether a command line (`sys.orig_argv`) runs a benchmark or one of its workers."""
    if "-m" in argv:
        return argv[argv.index("-m") + 1 :][:1] in (["pieceboard.bench"], ["pieceboard.jobs"])
    return len(argv) > 2 and Path(argv[1]).name == "pieceboard" and argv[2] == "bench"


class Tracker:
    """Logs train loss, per-epoch evaluation and final metrics of each cell to its own W&B run.

    Args:
        mode: online, offline or off (`resolve_mode`).
        project: The W&B project.
        output: The benchmark's output folder; W&B writes under OUTPUT/wandb.
        group: The W&B group (the benchmark's name).
        active: False on processes that must not log (every rank but the main one).
        warn: Called with one line when W&B falls back (offline, or off) so that the benchmark goes on.
    """

    def __init__(
        self,
        mode: str,
        project: str,
        output: Path,
        group: str,
        active: bool = True,
        warn: Callable[[str], None] | None = None,
    ):
        self.mode = mode if active else "off"
        self.project, self.output, self.group = project, output, group
        self.warn = warn or (lambda text: None)
        self.run: Any = None

    def describe(self) -> str | None:
        """One line for the start of a benchmark: where runs go, how to upload them, how to turn W&B off."""
        where = self.output / WANDB
        off = '[benchmark] wandb = "off" turns W&B off'
        if self.mode == "offline":
            return (
                f"W&B offline: runs are written to {where}; upload them with `wandb sync {where}/offline-run-*`; {off}"
            )
        if self.mode == "online":
            return f"W&B online: runs go to project '{self.project}' (files under {where}); {off}"
        return None

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        """Open the W&B run of one cell (closing any previous one first); falls back rather than failing the cell."""
        if self.mode == "off":
            return
        self.finish()
        try:
            import wandb

            self.run = self._init(wandb, run_id, config)
        except Exception as exc:  # W&B's own errors (login, network, settings) must not cost the cell
            if self.mode == "online":
                self.warn(
                    f"W&B could not start online ({one_line(exc)}); the runs are logged offline instead: upload them "
                    f"with `wandb sync {self.output / WANDB}/offline-run-*`"
                )
                self.mode = "offline"
                self.start(run_id, config)
            else:
                self.warn(f"W&B could not start ({one_line(exc)}); the cells are trained without W&B logging")
                self.mode = "off"

    def _init(self, wandb: Any, run_id: str, config: dict[str, Any]) -> Any:
        self.output.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=self.project,
            name=run_id,
            group=self.group,
            config=config,
            dir=str(self.output),
            mode=self.mode,
            reinit="finish_previous",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, event: dict[str, Any]) -> None:
        """Log a train-loss event or an epoch's evaluation, at the optimizer update it happened."""
        if self.run is None or event["event"] == "note":  # a note (a resume) is a line for a person, not a figure
            return
        step = event["update"]
        if event["event"] == "train":
            values = {"train/loss": event["train/loss"], "train/lr": event["train/lr"]}
        else:  # test figures, or validation figures (val_loss, val_accuracy, ...) with a validation split
            keys = ("train_loss", "test_loss", "accuracy", "f1_macro", "val_loss", "val_accuracy", "val_f1_macro")
            values = {f"eval/{k}": event[k] for k in (*keys, "epoch") if k in event}
        try:
            self.run.log(values, step=step)
        except Exception as exc:  # a W&B failure mid-cell: the cell goes on without W&B
            self._give_up(exc)

    def finish(self, summary: dict[str, Any] | None = None, failed: bool = False) -> None:
        """Write the final metrics into the run summary and close it."""
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            if summary:
                run.summary.update(summary)
            run.finish(exit_code=1 if failed else 0)
        except Exception as exc:
            self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        self.warn(f"W&B failed while logging ({one_line(exc)}); the cells are trained without W&B logging")
        self.run, self.mode = None, "off"
