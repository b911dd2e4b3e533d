"""Weights & Biases: one W&B run per matrix cell, grouped by benchmark, from the main process only.

The mode is decided before `wandb.init` is called, because an init without an API key may prompt for a login
(and hang every process) or wait for a network that is not there:

- `off`: W&B is never imported.
- `offline`: files under OUTPUT/wandb; upload later with `wandb sync OUTPUT/wandb/offline-run-*`.
- `online`: needs `wandb login` or WANDB_API_KEY.
- `auto` (default): WANDB_MODE when set, else online when an API key is configured, else offline.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any


def resolve_mode(setting: str) -> str:
    """online, offline or off, from the `[benchmark] wandb` setting and the environment."""
    if setting != "auto":
        return setting
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline"):
        return env
    if env in ("disabled", "off", "dryrun"):
        return "off" if env != "dryrun" else "offline"
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        found = netrc.netrc().authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        found = None
    return "online" if found else "offline"


class Tracker:
    """Logs train loss, per-epoch evaluation and final metrics of each cell to its own W&B run."""

    def __init__(self, mode: str, project: str, output: Path, group: str, active: bool = True):
        self.mode = mode if active else "off"
        self.project, self.output, self.group = project, output, group
        self.run: Any = None

    def start(self, run_id: str, config: dict[str, Any]) -> None:
        """Open the W&B run of one cell (closing any previous one first)."""
        if self.mode == "off":
            return
        import wandb

        self.finish()
        self.output.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
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
            self.run.log({"train/loss": event["train/loss"], "train/lr": event["train/lr"]}, step=step)
        else:
            keys = ("train_loss", "test_loss", "accuracy", "f1_macro", "epoch")
            self.run.log({f"eval/{k}": event[k] for k in keys}, step=step)

    def finish(self, summary: dict[str, Any] | None = None, failed: bool = False) -> None:
        """Write the final metrics into the run summary and close it."""
        if self.run is None:
            return
        if summary:
            self.run.summary.update(summary)
        self.run.finish(exit_code=1 if failed else 0)
        self.run = None
