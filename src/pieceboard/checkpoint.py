"""Per-epoch checkpoints of a cell in training, so that a killed cell resumes from its last finished epoch.

    checkpoints = Checkpoints(run_dir(output, cell.id) / CHECKPOINT, cell.id, config, precision, every=1)
    progress = checkpoints.resume(run, accelerator, log) or Progress()   # train.fit, after setup
    checkpoints.save(run, accelerator, progress, log)                    # train.fit, after each epoch

A checkpoint is a folder holding `state.json` (the last finished epoch, the configuration it was trained with, what
the loop accumulated, and the name and size of its data file) and `epoch-<N>.pt`: the model, optimizer, schedule,
gradient scaler, graph-capture decision, the moving average of the weights (`ema`), and the random states of every
process (Python, NumPy, torch, CUDA, the run's augmentation generator and its augmentation policy's stream), loaded
back with `weights_only=True`. The data file is written atomically first and
`state.json` last, so a kill at any moment leaves the previous epoch's checkpoint whole; the files of other epochs
are removed afterwards. One process writes (the main one; the others' random states are gathered to it), every
process loads.

The data order needs no state: each epoch's order is drawn from (seed, epoch) (`batches.BatchLoader`), and a
checkpoint is only ever taken between epochs. So a resumed cell trains on exactly the batches, augmentations and
dropout masks an uninterrupted one would, and ends with the same figures (bitwise on a CPU, for the same number of
processes and threads).

accelerate's `save_state`/`load_state` are not used: every process writes its own random-state file into the
folder (no single writer, no commit point), `load_state` carries on silently when those files cannot be restored,
and registered objects come back through pickle without `weights_only`.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from pieceboard._io import StorageError, atomic_write_bytes, atomic_write_text, make_folder, require_space
from pieceboard.device import peak_memory_mb

if TYPE_CHECKING:
    from collections.abc import Callable

    from pieceboard.train import Setup

STATE = "state.json"
SPACE_MARGIN = 1 << 20  # bytes beyond the data file: state.json and the file system's own needs


@dataclass
class Progress:
    """What the epoch loop accumulates; a checkpoint stores it, so a resumed cell reports what an uninterrupted one
    would (timings add up the time spent in every process that trained it)."""

    epoch: int = 0  # the last finished epoch
    update: int = 0  # optimizer updates so far
    history: list[dict[str, float]] = field(default_factory=list)
    train_log: list[dict[str, float]] = field(default_factory=list)
    train_s: float = 0.0
    eval_s: float = 0.0
    evaluated: int = 0  # images scored (validation and test), for eval_img_s
    wait_s: float = 0.0
    trained_images: int = 0
    peak_mem_mb: float = 0.0  # the highest of the processes before a resume
    notes: list[str] = field(default_factory=list)  # resumes, and checkpoints that could not be written


def saved_epoch(folder: Path) -> int | None:
    """The epoch of the checkpoint stored in `folder` (`runs/<id>/checkpoint`), or None when there is none to read.

    Only what a line for a person needs (a cell whose worker died: what a rerun continues from); `resume` decides
    whether the checkpoint is used.
    """
    try:
        return int(json.loads((folder / STATE).read_text(encoding="utf-8"))["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys (`epochs`, `data.manifest_sha256`) whose values differ between two stored configurations."""
    keys = []
    for key in sorted(stored.keys() | current.keys()):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{key}.{sub}" for sub in sorted(a.keys() | b.keys()) if a.get(sub) != b.get(sub)]
        elif a != b:
            keys.append(key)
    return keys


def _rng_state(run: Setup) -> dict[str, Any]:
    key, *rest = np.random.get_state()[1:]  # ("MT19937", key, pos, has_gauss, gauss): plain values for weights_only
    state = {
        "python": random.getstate(),
        "numpy": [key.tolist(), *rest],
        "torch": torch.get_rng_state(),
        "augment": run.generator.get_state(),
    }
    if run.recipe is not None:  # an augmentation policy draws from a stream of its own (batches.Recipe)
        state["policy"] = run.recipe.policy_state
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], run: Setup) -> None:
    random.setstate(state["python"])
    key, *rest = state["numpy"]
    np.random.set_state(("MT19937", np.array(key, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    run.generator.set_state(state["augment"])
    if run.recipe is not None:
        run.recipe.policy_state = state["policy"]
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpoints:
    """The checkpoints of one cell: where they live, when to take one, and whether a stored one may be resumed.

    Args:
        folder: `runs/<id>/checkpoint`.
        run_id: The cell id, for the lines a person reads.
        config: The cell's stored configuration (result.json's `config`, with the manifest digest) without the
            keys that do not change what it trains (`results.comparable_config`): a checkpoint made with another
            one is not resumed.
        precision: The precision the cell resolved to (a checkpoint of another precision is not resumed).
        every: Epochs between checkpoints; 0 takes none (a stored one is still resumed).
    """

    def __init__(self, folder: Path, run_id: str, config: dict[str, Any], precision: str, every: int):
        self.folder, self.run_id, self.config, self.precision, self.every = folder, run_id, config, precision, every

    def _identity(self, accelerator: Accelerator) -> dict[str, Any]:
        """What must match between the process that saved and the one that resumes."""
        return {
            "config": self.config, "processes": accelerator.num_processes, "device": accelerator.device.type,
            "precision": self.precision,
        }  # fmt: skip

    def save(self, run: Setup, accelerator: Accelerator, progress: Progress, log: Callable[[dict], None]) -> None:
        """Take a checkpoint after `progress.epoch` when it is due: every `every` epochs, never after the last one.

        A checkpoint that cannot be written (a full disk) costs only itself: the cell trains on, the previous
        checkpoint stays whole, and one line says why (also kept in the result's notes).
        """
        epoch = progress.epoch
        if not self.every or epoch % self.every or epoch >= self.config["epochs"]:
            return
        rng = gather_object([_rng_state(run)])  # every process's, in process order; all take part
        if not accelerator.is_main_process:
            return
        progress.peak_mem_mb = max(progress.peak_mem_mb, peak_memory_mb(accelerator.device))
        training = {
            "model": accelerator.unwrap_model(run.model).state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "capture": run.capture.state_dict(),
            "rng": rng,
            "ema": run.ema.state_dict() if run.ema is not None else None,
        }
        try:
            self._write(epoch, training, progress, accelerator)
        except StorageError as exc:
            note = f"checkpoint of {self.run_id} after epoch {epoch} not written: {exc}"
            progress.notes.append(note)
            log({"event": "note", "text": note})

    def _write(self, epoch: int, training: dict[str, Any], progress: Progress, accelerator: Accelerator) -> None:
        buffer = io.BytesIO()
        torch.save(training, buffer)
        data = buffer.getbuffer()
        make_folder(self.folder)
        require_space(self.folder, data.nbytes + SPACE_MARGIN, f"the checkpoint of {self.run_id}")
        name = f"epoch-{epoch}.pt"
        atomic_write_bytes(self.folder / name, data)
        state = {"epoch": epoch, "id": self.run_id, "file": name, "bytes": data.nbytes}
        state |= self._identity(accelerator) | {"progress": asdict(progress)}
        atomic_write_text(self.folder / STATE, json.dumps(state, indent=1, allow_nan=True) + "\n")  # the commit
        for stale in self.folder.iterdir():  # earlier epochs, and temporary files of a write that was killed
            if stale.name not in (name, STATE):
                stale.unlink(missing_ok=True)

    def _usable(self, accelerator: Accelerator) -> tuple[dict[str, Any] | None, str | None]:
        """(state.json, None) when the stored checkpoint may be resumed; (None, why not) otherwise."""
        try:
            state = json.loads((self.folder / STATE).read_text(encoding="utf-8"))
            data = self.folder / state["file"]
            if not data.is_file() or data.stat().st_size != state["bytes"]:
                return None, f"its file {data.name} is missing or incomplete"
            stored = {key: state[key] for key in ("config", "processes", "device", "precision")}
            epoch = int(state["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return None, f"its {STATE} is unreadable ({type(exc).__name__}: {exc})"
        current = self._identity(accelerator)
        if changed := _differences(stored["config"], current["config"]):
            return None, f"it was made with another configuration or data ({', '.join(changed)} differ)"
        for key in ("processes", "device", "precision"):
            if stored[key] != current[key]:
                return None, f"it was made with {key} {stored[key]}, and this run has {current[key]}"
        if not 0 < epoch < self.config["epochs"]:
            return None, f"its epoch {epoch} is not one of 1 to {self.config['epochs'] - 1}"
        return state, None

    def resume(self, run: Setup, accelerator: Accelerator, log: Callable[[dict], None]) -> Progress | None:
        """Restore the stored checkpoint into `run` on every process, when there is one this cell may resume.

        Returns:
            The loop's progress after the checkpoint's epoch, or None (no checkpoint, or one that is not used: one
            line says why, and the cell trains from its first epoch).
        """
        decision: list[dict[str, Any] | None] = [None]
        if accelerator.is_main_process and (self.folder / STATE).exists():
            state, why = self._usable(accelerator)
            if state is not None:
                try:  # read once here, so that a damaged file is one line, not a failed cell
                    training = torch.load(self.folder / state["file"], map_location="cpu", weights_only=True)
                except Exception as exc:
                    state, why = None, f"its file could not be read ({type(exc).__name__}: {exc})"
            if why is not None:
                log({"event": "note", "text": f"not resuming {self.run_id} from its checkpoint: {why}; from epoch 1"})
            decision[0] = state
        if accelerator.num_processes > 1:
            broadcast_object_list(decision)
        state = decision[0]
        if state is None:
            return None
        if not accelerator.is_main_process:
            training = torch.load(self.folder / state["file"], map_location="cpu", weights_only=True)
        accelerator.unwrap_model(run.model).load_state_dict(training["model"])
        run.optimizer.load_state_dict(training["optimizer"])
        if run.scheduler is not None:
            run.scheduler.load_state_dict(training["scheduler"])
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(training["scaler"])
        run.capture.load_state_dict(training["capture"])
        if run.ema is not None:
            run.ema.load_state_dict(training["ema"])
        _set_rng_state(training["rng"][accelerator.process_index], run)
        progress = Progress(**state["progress"])
        progress.notes.append(f"resumed from the checkpoint of epoch {progress.epoch}")
        log({"event": "note", "text": f"resumed {self.run_id} from epoch {progress.epoch}"})
        return progress
