"""Checkpoints as directories, written atomically.

::

    <dir>/
      config.json           everything needed to rebuild the model (+ provenance)
      model.safetensors     the model's weights
      training_state/       only for resuming: optimizer.pt, rng.pt, state.json

A checkpoint is written to ``<dir>.tmp-<pid>`` and renamed over ``<dir>`` once
complete, so a kill never leaves a half-written checkpoint under the final name
(:func:`recover_checkpoint` puts back the previous one when a kill fell between the two
renames). ``config.json`` records the sha256 of ``model.safetensors``; loading checks it and
that every weight is finite, so a file overwritten in place is refused, not used.
Loading never unpickles arbitrary objects (``weights_only=True``, safetensors).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from worldmodel.files import file_sha256, stale_leftovers

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "training_state"
CHECKSUM = "weights_sha256"  # config.json key: the sha256 of model.safetensors
DISK_SLACK = 1 << 20  # bytes: a write that failed with less free than this ran out of disk


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
    need = sum(v.numel() * v.element_size() for v in weights.values())
    if training_state is not None:  # Adam keeps two moments per weight
        need *= 3
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise OSError(errno.ENOSPC, f"no room for checkpoint {path}: it needs about {need / 1e6:.0f} MB, "
                                    f"{path.parent} has {free / 1e6:.0f} MB free; free some space or choose another "
                                    f"out_dir (the previous checkpoint is kept)")
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps({**config, CHECKSUM: file_sha256(tmp / WEIGHTS)}, indent=2))
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
    except BaseException as err:
        # a full disk: an OSError from safetensors or json, a RuntimeError ("unexpected pos") from torch.save
        full = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or (
            isinstance(err, (OSError, RuntimeError)) and shutil.disk_usage(path.parent).free < DISK_SLACK)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise OSError(errno.ENOSPC, f"no space left on the device while writing checkpoint {path} ({err}); "
                                        f"nothing half-written is left and the previous checkpoint is kept; free "
                                        f"some space or choose another out_dir") from None
        raise
    return path


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a directory written by training "
                              f"or save_pretrained)")
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path} is not a checkpoint: no {CONFIG} (expected a directory written by training)")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / CONFIG} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / CONFIG} holds a {type(config).__name__}, expected a JSON object")
    return config


def load_weights(path: str | Path, allow_unverified: bool = False) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint, checked against the sha256 its ``config.json`` records. A checkpoint
    that records none is refused (its weights could be anything) unless ``allow_unverified``; then it
    is checked for finiteness only."""
    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS}")
    expected = load_config(path).get(CHECKSUM)
    if expected is None and not allow_unverified:
        raise CheckpointError(f"checkpoint {path}: {CONFIG} records no {CHECKSUM}, so {WEIGHTS} cannot be checked "
                              f"(the key was removed, or the checkpoint predates it); load it with "
                              f"allow_unverified=true only if you trust the file, and save it again to record one")
    if expected is not None and file_sha256(path / WEIGHTS) != expected:
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} does not match the sha256 in {CONFIG} "
                              f"({expected[:12]}...): the file was changed or corrupted after it was written")
    try:
        weights = load_file(path / WEIGHTS)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"checkpoint {path}: {WEIGHTS} is corrupt ({err})") from None
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path}: {len(bad)} weight tensors hold NaN or inf values "
                              f"(first: {bad[:3]}); the checkpoint is corrupt or its run diverged")
    return weights


def recover_checkpoint(path: str | Path) -> list[str]:
    """Tidy the leftovers of interrupted :func:`save_checkpoint` calls next to ``path``; returns what
    was done.

    A kill between the two renames leaves ``<path>.old-<pid>`` (the previous checkpoint, complete)
    and no ``<path>``: it is put back. Unfinished ``<path>.tmp-<pid>`` of dead processes are removed.
    """
    path = Path(path)
    done = []
    for tmp in stale_leftovers(path.parent, path.name, ("tmp",)):
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed the unfinished {tmp.name}")
    olds = stale_leftovers(path.parent, path.name, ("old",))
    if olds and not path.exists():
        os.rename(olds[-1], path)
        done.append(f"restored {path.name} from {olds[-1].name} (a kill fell between its renames)")
        olds = olds[:-1]
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
        done.append(f"removed the superseded {old.name}")
    return done


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


def build_fitting(path: str | Path, build: Callable[[], torch.nn.Module], weights: dict[str, torch.Tensor],
                  what: str) -> torch.nn.Module:
    """``build()`` with ``weights`` loaded, its sizes checked against the weights' on the meta device
    first, so that a config asking for sizes its weights do not have allocates nothing; ``what``
    (e.g. ``the world model``) names the model in errors."""
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}/config.json does not describe {what}: {err}") from None
    wrong = [f"{k}: config {shapes[k]}, weights {tuple(v.shape)}" for k, v in weights.items()
             if k in shapes and shapes[k] != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path}: the sizes in config.json do not fit the weights ({len(wrong)} tensors; "
                              f"first: {wrong[0]}); the config was edited or belongs to other weights")
    model = build()
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit {what} its config.json describes ({err})") from None
    return model
