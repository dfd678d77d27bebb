"""Violation of expectation: is the world model surprised by impossible events?

The surprise of a model step is the mean squared distance between the predicted
next state and the state encoded from what was actually observed. Segments of
held-out episodes are replayed in the simulator with their recorded actions, once
as recorded and once with an event injected before one action:

- ``teleport``: the whole simulator state jumps to that of another episode;
- ``teleport_<group>``: only the state entries of one of the env's ``state_groups``
  jump (Reacher: ``arm`` = joint angles and velocities, ``target`` = target position);
- ``colour``: the colours of every moving body change (physically possible: a
  change of appearance, not of motion); an env drawn without MuJoCo supplies its own
  ``recolour()`` (returning an undo).

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
    """Rotate the RGB channels of every geom (and material) and visible site on a moving body (the
    maze's ball is drawn by its site); returns an undo."""
    geoms = np.flatnonzero(model.geom_bodyid != 0)
    sites = np.flatnonzero(model.site_bodyid != 0)
    mats = np.unique(model.geom_matid[geoms][model.geom_matid[geoms] >= 0])
    saved = model.geom_rgba.copy(), model.mat_rgba.copy(), model.site_rgba.copy()
    model.geom_rgba[geoms, :3] = model.geom_rgba[geoms][:, [2, 0, 1]]
    model.mat_rgba[mats, :3] = model.mat_rgba[mats][:, [2, 0, 1]]
    model.site_rgba[sites, :3] = model.site_rgba[sites][:, [2, 0, 1]]

    def undo():
        model.geom_rgba[:], model.mat_rgba[:], model.site_rgba[:] = saved

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
    spec.set_state(env, start_state)
    frames, undo = [base.render()], None
    try:
        for i, action in enumerate(actions):
            if perturbation is not None and i == at:
                if perturbation == "colour":
                    undo = base.recolour() if hasattr(base, "recolour") else _recolour(base.model)
                else:
                    state = spec.get_state(env)
                    idx = list(groups[perturbation[len("teleport_") :]]) if perturbation != "teleport" else slice(None)
                    state[idx] = np.asarray(other_state)[idx]
                    spec.set_state(env, state)
            obs, *_ = env.step(action)
            frames.append(obs)
    finally:
        if undo is not None:
            undo()
    return np.stack(frames)


@torch.no_grad()
def surprise(model, frames: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per model-step surprise ``(B, R)`` of image sequences ``(B, n, C, H, W)`` uint8 forming whole
    windows of ``R`` model steps (``n = model.layout.window_frames(R)``) and their ``n - 1`` actions
    ``(B, n - 1, A)``: the distance between the predicted and the encoded newest latent after each
    action block."""
    L = model.layout
    R = L.steps_in(frames.shape[1])
    if actions.shape[1] != frames.shape[1] - 1:
        raise ValueError(f"need one action fewer than images, got {frames.shape[1]} images and "
                         f"{actions.shape[1]} actions")
    z = model.latents(frames[:, L.boundaries(R)])  # (B, R+h, d) at the block boundaries
    blocks = L.blocks(actions.to(z.dtype))
    states = L.window_states(z, blocks)[:, :-1]
    pred = L.newest(model.predict(states, L.step_blocks(blocks)))
    return ((pred - L.step_latents(z)) ** 2).mean(-1)
