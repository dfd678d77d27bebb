"""Checkpoints as directories, written atomically.

::

    <dir>/
      config.json           everything needed to rebuild the model (+ provenance)
      model.safetensors     the model's weights
      training_state/       only for resuming: optimizer.pt, rng.pt, state.json

A checkpoint is written to ``<dir>.tmp-<pid>`` and renamed over ``<dir>`` once
complete, so a kill never leaves a half-written checkpoint under the final name.
Loading never unpickles arbitrary objects (``weights_only=True``, safetensors).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "training_state"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


def save_checkpoint(
    path: str | Path,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (replacing an older one at ``path``).

    Args:
        config: JSON-serialisable model config and provenance.
        weights: the model's state dict.
        training_state: ``{"state": json-able dict, "optimizer": state dict, "rng":
            dict of tensors}`` for exact resumption; omitted for export-only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / WEIGHTS)
        if training_state is not None:
            (tmp / STATE).mkdir()
            (tmp / STATE / "state.json").write_text(json.dumps(training_state["state"], indent=2))
            torch.save(training_state["optimizer"], tmp / STATE / "optimizer.pt")
            torch.save(training_state["rng"], tmp / STATE / "rng.pt")
        old = path.parent / f"{path.name}.old-{os.getpid()}"
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path} is not a checkpoint: no {CONFIG} (expected a directory written by training)")
    try:
        return json.loads((path / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path / CONFIG} is not valid JSON: {err}") from None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        return load_file(path / WEIGHTS)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS}") from None
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} is corrupt ({err})") from None


def load_training_state(path: str | Path) -> dict[str, Any]:
    """The resume state of a checkpoint (``state``, ``optimizer``, ``rng``)."""
    d = Path(path) / STATE
    if not d.is_dir():
        raise CheckpointError(f"checkpoint {path} has no {STATE}/ to resume from")
    try:
        return {
            "state": json.loads((d / "state.json").read_text()),
            "optimizer": torch.load(d / "optimizer.pt", weights_only=True),
            "rng": torch.load(d / "rng.pt", weights_only=True),
        }
    except (OSError, json.JSONDecodeError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path}: {STATE} is unreadable ({err})") from None


def save_run(path: str | Path, config: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             generators: dict[str, torch.Generator], state: dict[str, Any],
             global_rng: dict[str, torch.Tensor] | None = None) -> Path:
    """Checkpoint a training run: weights, optimizer, generator states (the run's own and, as
    ``global_rng``, the global ones) and a JSON-able ``state``."""
    rng = {name: g.get_state() for name, g in generators.items()}
    rng.update({f"global.{k}": v for k, v in (global_rng or {}).items()})
    return save_checkpoint(path, config, model.state_dict(),
                           {"state": state, "optimizer": optimizer.state_dict(), "rng": rng})


def restore_run(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                generators: dict[str, torch.Generator]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load what :func:`save_run` wrote into ``model``, ``optimizer`` and ``generators``; returns
    ``state`` and the global generators' states."""
    ts = load_training_state(path)
    missing = [name for name in generators if name not in ts["rng"]]
    if missing:
        raise CheckpointError(f"checkpoint {path} holds no state of the generators {missing}; it is from another run")
    model.load_state_dict(load_weights(path))
    optimizer.load_state_dict(ts["optimizer"])
    for name, g in generators.items():
        g.set_state(ts["rng"][name])
    global_rng = {k[len("global."):]: v for k, v in ts["rng"].items() if k.startswith("global.")}
    return ts["state"], global_rng
