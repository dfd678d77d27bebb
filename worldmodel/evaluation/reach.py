"""How close, in a world model's latent space, is "at the goal"?

A planner predicts latents; the protocol's success test measures a physical goal error. The reach
threshold links the two: images of pairs of simulator states whose goal error is within the success
tolerance (drawn uniformly in ``[0, tolerance]``), their newest frame latents, and a quantile of the
squared distance between those (mean over latent dimensions, the planners' goal distance). A plan
predicted to come within the threshold of the goal is predicted to succeed.

The pairs are made in the simulator, from the env's own reset states: the state is moved along a
random direction of the coordinates the goal error reads (found by finite differences), as far as
the drawn error, so nothing the success test ignores (velocities, a target marker) changes.
"""

from __future__ import annotations

import numpy as np
import torch

from envs.registry import EnvSpec


def perturbed(spec: EnvSpec, state: np.ndarray, error: float, rng: np.random.Generator) -> np.ndarray:
    """``state`` moved along a random direction of the coordinates ``spec.goal_error`` reads, until the
    goal error between the two is ``error`` (bisection; the largest move found not beyond it)."""
    steps = 1e-4 * np.eye(len(state))
    read = [j for j in range(len(state)) if spec.goal_error(state, state + steps[j]) > 0]
    if not read:
        raise ValueError(f"env {spec.name!r}: goal_error reads no coordinate of the state")
    direction = np.zeros_like(state, dtype=np.float64)
    direction[read] = rng.standard_normal(len(read))
    direction /= np.linalg.norm(direction)
    lo, hi = 0.0, 1e-3
    while spec.goal_error(state, state + hi * direction) < error and hi < 1e3:
        lo, hi = hi, 2 * hi
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spec.goal_error(state, state + mid * direction) <= error else (lo, mid)
    return (state + lo * direction).astype(state.dtype)


@torch.no_grad()
def reach_threshold(env, spec: EnvSpec, model, quantile: float, pairs: int = 64, seed: int = 0) -> dict:
    """The reach threshold of ``model`` (a level-1 world model: ``encode``, ``newest``, ``layout``) on
    ``env`` (made from ``spec``): ``{"threshold", "quantile", "pairs", "tolerance", "distances"}``."""
    if not 0 < quantile <= 1 or pairs < 1:
        raise ValueError(f"need 0 < quantile <= 1 and pairs >= 1, got {quantile} and {pairs}")
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(pairs):
        env.reset(seed=int(rng.integers(2**31 - 1)))
        state = spec.get_state(env)
        other = perturbed(spec, state, float(rng.uniform(0, spec.success_threshold)), rng)
        for s in (state, other):
            spec.set_state(env, s)
            images.append(env.unwrapped.render())
    z = still_latents(model, np.stack(images))
    distances = ((z[0::2] - z[1::2]) ** 2).mean(-1).double().cpu().numpy()
    return {"threshold": float(np.quantile(distances, quantile)), "quantile": quantile, "pairs": pairs,
            "tolerance": spec.success_threshold, "distances": distances.tolist()}


def still_latents(model, images: np.ndarray, batch: int = 64) -> torch.Tensor:
    """The newest frame latent ``(N, latent_dim)`` of each image ``(N, H, W, C)`` seen as a still scene."""
    L, out = model.layout, []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).permute(0, 3, 1, 2)  # (B, C, H, W)
        frames = x[:, None].expand(-1, L.history, -1, -1, -1).to(model.device)
        actions = torch.zeros(len(x), L.span, L.action_dim, device=model.device, dtype=model.dtype)
        out.append(model.newest(model.encode(frames, actions)))
    return torch.cat(out)
