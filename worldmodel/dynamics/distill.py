"""A cheaper predictor for planning, distilled from a trained world model.

A sampling planner spends nearly all its time in the predictor (CEM's samples x iterations x
horizon calls of an MLP), so its width sets the cost of a replan. The student is a world model
with the teacher's frame encoder and head (shared, fixed: the same latents, the same goal costs)
and a narrower predictor, trained to reproduce the teacher's open-loop rollouts:

- from the states of dataset windows (the teacher's EMA-head latents);
- under the action blocks a planner tries: a ``random_actions`` fraction drawn as CEM's first
  iteration draws them (a Gaussian of one half-width around the box's centre, clipped to the box),
  the rest the data's own blocks moved by a Gaussian of ``action_noise`` half-widths (clipped);
- loss terms on the newest latent: ``rollout`` (the student's own rollout against the teacher's,
  step by step) and ``one_step`` (from the teacher's states).

Validation reports both terms and, against the data's true latents, the student's and the
teacher's rollout error (``val_data_rollout``, ``val_teacher_data_rollout``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.dynamics.model import WorldModel
from worldmodel.dynamics.objective import WindowBatches
from worldmodel.dynamics.predictor import BlockPredictor
from worldmodel.training.distributed import rank_slice
from worldmodel.training.loop import OptimConfig


@dataclass
class DistillTrainConfig(OptimConfig):
    """Optimisation of the student (the :class:`OptimConfig` fields, with its own defaults).

    Attributes:
        horizon: model steps per distilled rollout (at least the planner's horizon).
        random_actions: fraction of rollouts under CEM-like random action blocks (the rest: the
            data's blocks, moved by ``action_noise``).
        action_noise: std of the Gaussian added to the data's actions, in half-widths of the box.
        val_windows: fixed validation windows scored at every log step.
    """

    steps: int = 8000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    log_every: int = 100
    horizon: int = 5
    random_actions: float = 0.5
    action_noise: float = 0.2
    val_windows: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if self.horizon < 1 or self.val_windows < 1:
            raise ValueError(f"horizon and val_windows must be >= 1, got {self.horizon}, {self.val_windows}")
        if not 0 <= self.random_actions <= 1 or self.action_noise < 0:
            raise ValueError(f"need 0 <= random_actions <= 1 and action_noise >= 0, got {self.random_actions}, "
                             f"{self.action_noise}")


def student_of(teacher: WorldModel, hidden: int, depth: int) -> WorldModel:
    """A world model with ``teacher``'s frame encoder and head (the same module, frozen) and a fresh
    predictor of ``hidden`` units x ``depth`` layers (initialised from the global torch generator)."""
    if hidden < 1 or depth < 1:
        raise ValueError(f"the student's hidden and depth must be >= 1, got {hidden}, {depth}")
    if teacher.inverse is not None:
        raise ValueError("the teacher has an inverse-dynamics head; distillation keeps the predictor only")
    cfg = replace(teacher.cfg, hidden=hidden, depth=depth, dropout=0.0)
    predictor = BlockPredictor(teacher.layout, hidden, depth).to(teacher.device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return WorldModel(teacher.encoder, predictor, teacher.layout, cfg)


class DistillObjective:
    """The student's distance to the teacher's rollouts on windows of the train split.

    Args:
        teacher: the trained world model (fixed).
        student: from :func:`student_of` (its predictor is trained).
        cfg: optimisation settings.
        train, val: windows of ``cfg.horizon`` model steps of the train and val splits.
        low, high: the action box ``(action_dim,)`` (the data's range).
    """

    def __init__(self, teacher: WorldModel, student: WorldModel, cfg: DistillTrainConfig, train: WindowBatches,
                 val: WindowBatches, low: torch.Tensor, high: torch.Tensor):
        if student.encoder is not teacher.encoder:
            raise ValueError("the student must share the teacher's frame encoder (build it with student_of)")
        if train.R != cfg.horizon or val.R != cfg.horizon:
            raise ValueError(f"windows of {train.R} and {val.R} model steps for a horizon of {cfg.horizon}")
        if not bool((high > low).all()):
            raise ValueError(f"the action box needs high > low in every dimension, got {low.tolist()}, {high.tolist()}")
        self.teacher, self.model, self.cfg = teacher.eval(), student, cfg
        self.train_batches, self.val_batches = train, val
        self.low, self.high = low.float(), high.float()
        self.generators = {"windows": torch.Generator().manual_seed(cfg.seed),
                           "actions": torch.Generator().manual_seed(cfg.seed + 1)}
        self.val = self._fixed(val, cfg.val_windows)

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.predictor.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def actions(self, blocks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Action blocks ``(B, R, block_dim)`` to distil on, from the data's ``blocks`` of the same shape."""
        L, cfg = self.model.layout, self.cfg
        B, R = blocks.shape[:2]
        steps = blocks.reshape(B, R, L.action_block, L.action_dim)
        centre, half = (self.high + self.low) / 2, (self.high - self.low) / 2
        noise = torch.randn(steps.shape, generator=generator)
        random = centre + half * noise
        moved = steps + cfg.action_noise * half * noise
        pick = torch.rand((B, 1, 1, 1), generator=generator) < cfg.random_actions
        out = torch.where(pick, random, moved)
        return torch.maximum(torch.minimum(out, self.high), self.low).reshape(B, R, L.block_dim)

    def _fixed(self, windows: WindowBatches, n: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        x, a = windows.sample(n, g)
        return x, a, self.actions(self.model.layout.step_blocks(a), g)

    def batch(self, rank: int, world: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        x, a = self.train_batches.sample(self.cfg.batch_size, self.generators["windows"])
        acts = self.actions(self.model.layout.step_blocks(a), self.generators["actions"])
        part = rank_slice(self.cfg.batch_size, rank, world)
        return x[part].to(device), a[part].to(device), acts[part].to(device)

    def terms(self, student: WorldModel, x: torch.Tensor, a: torch.Tensor, acts: torch.Tensor
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Loss terms of windows (features ``x``, data blocks ``a``) under action blocks ``acts``;
        also the teacher's latents of ``x`` and its states along ``acts``."""
        L = student.layout
        with torch.no_grad():
            z = self.teacher.encoder.latents(x, target=True)
            s0 = L.window_states(z, a)[:, 0]
            target = self.teacher.rollout(s0, acts, check_inputs=False)
        rollout = F.mse_loss(L.newest(student.rollout(s0, acts, check_inputs=False)), L.newest(target))
        inputs = torch.cat([s0[:, None], target[:, :-1]], dim=1)
        one_step = F.mse_loss(L.newest(student.predict(inputs, acts, check_inputs=False)), L.newest(target))
        return {"rollout": rollout, "one_step": one_step}, z, target

    def loss(self, model: WorldModel, batch) -> dict[str, torch.Tensor]:
        terms, _, _ = self.terms(model, *batch)
        return {"loss": terms["rollout"] + terms["one_step"], **terms}

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The loss terms on the fixed validation windows, and both models' rollout error against the
        data's true latents under the data's own actions (standardised latents; 1.0 = the mean)."""
        was_training = self.model.training
        self.model.eval()
        device = self.model.device
        x, a, acts = (t.to(device) for t in self.val)
        terms, z, _ = self.terms(self.model, x, a, acts)
        L = self.model.layout
        s0, true_acts, truth = L.window_states(z, a)[:, 0], L.step_blocks(a), L.step_latents(z)
        data = {name: F.mse_loss(L.newest(m.rollout(s0, true_acts, check_inputs=False)), truth).item()
                for name, m in (("data_rollout", self.model), ("teacher_data_rollout", self.teacher))}
        self.model.train(was_training)
        return {**{k: v.item() for k, v in terms.items()}, **data}

    def log(self, step: int, out: dict) -> dict[str, float]:
        return {f"val_{k}": v for k, v in self.validate().items()}

    def check(self, step: int, row: dict) -> None:
        pass

    def config(self) -> dict:
        return self.model.config()

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass


def action_box(actions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-dimension range ``(low, high)`` of a split's actions ``(steps, action_dim)``; a clear
    error where a dimension never varies (there is no box to sample in)."""
    a = np.asarray(actions, dtype=np.float32)
    low, high = torch.from_numpy(a.min(0)), torch.from_numpy(a.max(0))
    if not bool((high > low).all()):
        raise ValueError(f"the data's actions do not vary in every dimension (min {low.tolist()}, max "
                         f"{high.tolist()}); distillation samples actions in that box")
    return low, high
