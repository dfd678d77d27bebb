"""Violation of expectation: is the world model surprised by impossible events?

The surprise of a model step is the mean squared distance between the predicted
next state and the state encoded from what was actually observed. Segments of
held-out episodes are replayed in the simulator with their recorded actions, once
as recorded and once with an event injected before one action:

- ``teleport``: the whole simulator state jumps to that of another episode;
- ``teleport_<group>``: only the state entries of one of the env's ``state_groups``
  jump (Reacher: ``arm`` = joint angles and velocities, ``target`` = target position);
- ``colour``: the colours of every moving body change (physically possible: a
  change of appearance, not of motion).

A perturbation is detected when its surprise at the step that contains it exceeds
the unperturbed segment's; ``auroc`` scores that over many segments.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.registry import EnvSpec


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``positives`` against ``negatives`` (ties count one half)."""
    neg, pos = np.asarray(negatives, dtype=np.float64).ravel(), np.asarray(positives, dtype=np.float64).ravel()
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError(f"auroc needs scores on both sides, got {len(neg)} negatives and {len(pos)} positives")
    scores = np.concatenate([neg, pos])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    return float((ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))


def perturbation_names(spec: EnvSpec) -> list[str]:
    """The perturbations this env supports: teleports of its state groups, a whole-state teleport, colour."""
    return [f"teleport_{g}" for g, _ in spec.state_groups] + ["teleport", "colour"]


def _recolour(model) -> callable:
    """Rotate the RGB channels of every geom (and material) on a moving body; returns an undo."""
    geoms = np.flatnonzero(model.geom_bodyid != 0)
    mats = np.unique(model.geom_matid[geoms][model.geom_matid[geoms] >= 0])
    saved = model.geom_rgba.copy(), model.mat_rgba.copy()
    model.geom_rgba[geoms, :3] = model.geom_rgba[geoms][:, [2, 0, 1]]
    model.mat_rgba[mats, :3] = model.mat_rgba[mats][:, [2, 0, 1]]

    def undo():
        model.geom_rgba[:], model.mat_rgba[:] = saved

    return undo


def replay(env, spec: EnvSpec, start_state: np.ndarray, actions: np.ndarray, perturbation: str | None = None,
           at: int = 0, other_state: np.ndarray | None = None) -> np.ndarray:
    """Images ``(len(actions) + 1, H, W, C)`` of a segment replayed from ``start_state``.

    With ``perturbation``, the event happens just before action ``at`` (so image
    ``at + 1`` is the first to show it); teleports take their values from ``other_state``.
    """
    base = env.unwrapped
    groups = dict(spec.state_groups)
    if perturbation is not None and perturbation not in perturbation_names(spec):
        raise ValueError(f"unknown perturbation {perturbation!r}; {spec.name} supports {perturbation_names(spec)}")
    env.reset(seed=0)
    base.set_state(start_state)
    frames, undo = [base.render()], None
    try:
        for i, action in enumerate(actions):
            if perturbation is not None and i == at:
                if perturbation == "colour":
                    undo = _recolour(base.model)
                else:
                    state = base.get_state()
                    idx = list(groups[perturbation[len("teleport_") :]]) if perturbation != "teleport" else slice(None)
                    state[idx] = np.asarray(other_state)[idx]
                    base.set_state(state)
            obs, *_ = env.step(action)
            frames.append(obs)
    finally:
        if undo is not None:
            undo()
    return np.stack(frames)


def segment_frames(model, steps: int) -> int:
    """Images in a segment of ``steps`` model steps: ``(steps + h - 1) * k + 1``."""
    return (steps + model.history - 1) * model.cfg.action_block + 1


def event_action(model, step: int) -> int:
    """The action before which an event is injected so that it happens inside model step ``step``."""
    k = model.cfg.action_block
    return (step + model.history - 1) * k + k // 2


@torch.no_grad()
def surprise(model, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per model-step surprise ``(B, R)`` of image sequences ``(B, (R+h-1)*k + 1, C, H, W)`` uint8
    and their actions ``(B, (R+h-1)*k, A)``: the distance between the predicted and the encoded
    newest latent after each action block."""
    k, h = model.cfg.action_block, model.history
    B, n = frames.shape[:2]
    R = (n - 1) // k - h + 1
    if R < 1 or segment_frames(model, R) != n or actions.shape[1] != n - 1:
        raise ValueError(f"need (R+h-1)*k + 1 images and one action fewer (k={k}, h={h}), got {n} images, "
                         f"{actions.shape[1]} actions")
    z = model.latents(frames[:, :: k])  # (B, R+h, d) at the block boundaries
    blocks = actions.reshape(B, R + h - 1, -1)
    states = model.window_states(z, blocks)[:, :-1]
    pred = model.newest(model.predict(states, blocks[:, h - 1 :]))
    return ((pred - z[:, h:]) ** 2).mean(-1)
