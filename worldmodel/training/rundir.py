"""A training run's directory: one run at a time, resumed only as the run it holds.

``RunDirectory(out_dir, config, resume)`` is entered by the training entry points before
any work starts. It

- locks ``out_dir`` (a second run into the same directory fails at once, naming the
  process that holds it; the lock dies with its process);
- tidies what a kill left behind (a checkpoint caught between its two renames is put back);
- refuses to start a fresh run over an existing one (its checkpoint or log) unless
  ``resume`` is asked for;
- on resume, compares the run's settings with those stored in its checkpoint and refuses
  any change, naming the changed keys, unless each is listed in ``allow`` (e.g.
  ``resume_allow=[train.steps]`` to extend a run). Settings that never change what is
  computed (progress bars, logging and checkpoint intervals, the device) are not compared.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from worldmodel.checkpoint import load_config, recover_checkpoint
from worldmodel.files import DirectoryLock, changed_keys, flatten

RUN_KEY = "run"  # the checkpoint config.json key holding the run's settings
# Settings that do not change what a run computes: never compared on resume.
VOLATILE = ("resume", "resume_allow", "progress", "train.progress", "train.log_every", "train.checkpoint_every",
            "train.device", "train.logger", "num_envs", "out_dir", "root", "feature_cache", "minari")


class RunConfigChanged(ValueError):
    """``resume`` was asked for with settings other than those the run was started with."""


class RunDirectory:
    """Context manager around a training run's directory (see the module docstring).

    Args:
        path: the run directory (``out_dir``).
        config: the run's settings, JSON-able (stored in its checkpoints as ``run``).
        resume: continue the run in ``path`` when it has a checkpoint.
        allow: dotted keys allowed to differ on resume.
        parts: where under ``path`` the run keeps its checkpoints, each with its ``log.csv`` beside it
            (a run of several stages, e.g. ``("jepa", "dynamics")``; ``("",)``: ``path/checkpoint``).
            Every one is tidied, guarded against a fresh run and compared on resume.
    Once the data is opened, :meth:`check_dataset` compares its checksum with the checkpoint's.
    """

    def __init__(self, path: str | Path, config: dict[str, Any], resume: bool = False,
                 allow: list[str] | tuple[str, ...] = (), parts: tuple[str, ...] = ("",)):
        self.path, self.config, self.resume, self.allow = Path(path), config, resume, tuple(allow)
        self.checkpoints = tuple(self.path / part / "checkpoint" for part in parts)
        self.lock = DirectoryLock(self.path, "run directory")

    def __enter__(self) -> "RunDirectory":
        primary = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 holds the lock for all
        if primary:
            self.lock.acquire()
        try:
            for checkpoint in self.checkpoints if primary else []:
                for note in recover_checkpoint(checkpoint):
                    print(f"{checkpoint.parent}: {note}", file=sys.stderr)
            if self.resume:
                self.check_resume()
            elif any(c.exists() or (c.parent / "log.csv").exists() for c in self.checkpoints):
                raise FileExistsError(f"{self.path} holds a run already (a checkpoint or log.csv): pass --resume "
                                      f"(resume=true) to continue it, or choose another out_dir")
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def check_resume(self) -> None:
        """Raise :class:`RunConfigChanged` unless every checkpoint's run has these settings."""
        for checkpoint in self.checkpoints:
            if not checkpoint.exists():
                continue
            stored = load_config(checkpoint)
            if RUN_KEY not in stored:
                print(f"warning: {checkpoint} was written before runs recorded their settings; resuming "
                      f"without checking them", file=sys.stderr)
                continue
            changes = [c for c in changed_keys(strip(stored[RUN_KEY]), strip(self.config))
                       if c.split(":", 1)[0] not in self.allow]
            if changes:
                raise RunConfigChanged(
                    f"cannot resume {checkpoint} with other settings than it was started with: {'; '.join(changes)} "
                    f"(checkpoint -> now). Resume with the same settings, start a new out_dir, or allow the change "
                    f"explicitly with resume_allow=[{','.join(c.split(':', 1)[0] for c in changes)}]")

    def check_upstream(self, upstream: dict[str, str]) -> None:
        """On resume, refuse upstream checkpoints other than the ones the run started from: ``upstream`` maps
        a key of the checkpoints' config (e.g. ``level1_weights_sha256``) to the sha256 of the weights
        read now. A model trained further in place since gives other latents or features."""
        if not self.resume:
            return
        for checkpoint in (c for c in self.checkpoints if c.exists()):
            stored = load_config(checkpoint)
            for key, sha in upstream.items():
                if key in self.allow or stored.get(key, sha) == sha:
                    continue
                raise RunConfigChanged(f"cannot resume {checkpoint}: it was trained on an upstream checkpoint with "
                                       f"{key} {stored[key][:12]}..., the one read now has {sha[:12]}... (it was "
                                       f"changed in place since, e.g. trained further); start a new out_dir, or "
                                       f"allow it explicitly with resume_allow=[{key}]")

    def check_dataset(self, checksum: str) -> None:
        """On resume, refuse data other than the checkpoints' (by the dataset's checksum)."""
        if not self.resume or "dataset_checksum" in self.allow:
            return
        for checkpoint in (c for c in self.checkpoints if c.exists()):
            stored = load_config(checkpoint).get("dataset_checksum")
            if stored is not None and stored != checksum:
                raise RunConfigChanged(f"cannot resume {checkpoint} on other data: it trained on a dataset with "
                                       f"checksum {stored[:12]}..., this one has {checksum[:12]}... (allow it "
                                       f"explicitly with resume_allow=[dataset_checksum])")


def strip(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` flattened to dotted keys, without the :data:`VOLATILE` ones."""
    return {k: v for k, v in flatten(config).items() if k not in VOLATILE}
