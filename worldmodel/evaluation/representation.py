"""What a world model's latents know: probes on frames and on open-loop rollouts, and surprise.

1. Frame probes: linear and MLP probes fitted on states of training episodes, scored on
   held-out episodes (R^2, Pearson r, median error in physical units), for the world
   model's latent state and for baselines (the encoder's own probe representations, a
   randomly initialised encoder of the same pipeline, raw downsampled pixels). Every
   representation is stacked like the model's state (``history`` frames one action block
   apart, and the actions between them), so velocities are readable from all.
2. Rollout probes: the world-model probes applied to open-loop predicted states (recorded
   actions) at horizons 0..H, next to the same probes on the encoded true frames.
3. Surprise: per-step prediction error on replayed held-out segments, with and without
   injected events (teleports, colour change); detection AUROC per event.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from envs.registry import EnvSpec
from worldmodel.data.episodes import Episodes
from worldmodel.dynamics.layout import StateLayout
from worldmodel.dynamics.model import WorldModel
from worldmodel.dynamics.objective import WindowBatches
from worldmodel.evaluation.surprise import auroc, perturbation_names, replay, surprise
from worldmodel.probes import PROBES, MLPProbe, Targets, score


def state_frames(episodes: Episodes, layout: StateLayout) -> np.ndarray:
    """Frames of ``episodes`` that end a full state (``layout.span`` steps of their episode before them)."""
    return layout.state_frames(episodes.frame_starts, episodes.lengths)


def stack_states(features: np.ndarray, episodes: Episodes, rows: np.ndarray, layout: StateLayout) -> np.ndarray:
    """Per-frame ``features`` stacked like the world model's states: the features of frames
    ``row - (h-1)k, ..., row - k, row`` and the ``(h-1)k`` actions between them."""
    steps = rows - np.searchsorted(episodes.frame_starts, rows, side="right") + 1  # step index of frame ``row``
    parts = [features[rows + offset] for offset in layout.state_offsets()]
    parts += [np.asarray(episodes.actions[steps + offset]) for offset in layout.state_action_offsets()]
    return np.concatenate(parts, 1)


@torch.no_grad()
def pixel_features(episodes: Episodes, size: int, batch: int = 1024) -> np.ndarray:
    """Frames average-pooled to ``size x size`` RGB, in [0, 1], flattened."""
    out = []
    for i in range(0, len(episodes.obs), batch):
        obs = torch.from_numpy(np.array(episodes.obs[i : i + batch])).permute(0, 3, 1, 2).float() / 255
        out.append(F.adaptive_avg_pool2d(obs, size).flatten(1).numpy())
    return np.concatenate(out)


@torch.no_grad()
def table_latents(encoder, table, batch: int = 2048) -> np.ndarray:
    """Frame latents (EMA head) ``(F, latent_dim)`` of a whole feature table, in batches on the encoder's device."""
    return torch.cat([encoder.latents(table[i : i + batch].to(encoder.device), target=True).float().cpu()
                      for i in range(0, len(table), batch)]).numpy()


def representations(model: WorldModel, train: Episodes, test: Episodes, baselines: list[str], full_train: Episodes,
                    pixel_size: int = 16, seed: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """Per-frame representations ``name -> (train (F, d), test (F', d))`` and the model's feature tables.

    ``world_model``: the frame latents; then what the encoder offers (``encoder``: the frozen
    features under the head); ``random_encoder``: the same pipeline at a random init (its
    projection fitted on ``full_train``); ``pixels``: downsampled frames.
    """
    enc = model.encoder
    tables = {s: enc.feature_table(ep, progress=progress) for s, ep in (("train", train), ("test", test))}
    reps = {"world_model": (table_latents(enc, tables["train"]), table_latents(enc, tables["test"]))}
    extra = [enc.probe_representations(tables[s]) for s in ("train", "test")]
    reps.update({name: (extra[0][name], extra[1][name]) for name in extra[0]})
    if "random_encoder" in baselines:
        rand = enc.random_baseline(full_train, seed)
        rtables = [rand.feature_table(ep, progress=progress) for ep in (train, test)]
        rand.set_statistics(rtables[0])
        reps["random_encoder"] = tuple(table_latents(rand, t) for t in rtables)
    if "pixels" in baselines:
        reps["pixels"] = tuple(pixel_features(ep, pixel_size) for ep in (train, test))
    return reps, tables


def frame_probes(reps: dict, targets: Targets, train: Episodes, test: Episodes, layout: StateLayout,
                 probes: list[str], mlp_steps: int = 3000, seed: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """Every probe kind on every representation; returns the scores and the fitted world-model probes."""
    rtr, rte = state_frames(train, layout), state_frames(test, layout)
    vtr, vte = targets.values(train, rtr), targets.values(test, rte)
    ytr = targets.table(vtr)
    results, fitted = {}, {}
    for name, (ftr, fte) in tqdm(reps.items(), desc="frame probes", disable=not progress):
        xtr, xte = stack_states(ftr, train, rtr, layout), stack_states(fte, test, rte, layout)
        for kind in probes:
            probe = MLPProbe(steps=mlp_steps, seed=seed) if kind == "mlp" else PROBES[kind]()
            probe.fit(xtr, ytr)
            results[f"{name}/{kind}"] = {"representation": name, "probe": kind, "dims": xtr.shape[1],
                                         **score(targets, probe.predict(xte), vte)}
            if name == "world_model":
                fitted[kind] = probe
    return results, fitted


@torch.no_grad()
def rollout_probes(model: WorldModel, probes: dict, targets: Targets, test: Episodes, table, horizon: int,
                   window_stride: int = 3) -> dict:
    """Probe errors of open-loop predicted states vs the encoded true frames, per horizon (model steps
    0..``horizon``), on held-out windows starting every ``window_stride`` frames."""
    L = model.layout
    batches = WindowBatches(model, test, table, horizon)
    index = np.arange(0, len(batches.sampler), window_stride)
    x, a = batches.get(index)
    x, a = x.to(model.device), a.to(device=model.device, dtype=model.dtype)
    true = L.window_states(model.encoder.latents(x, target=True), a)  # (B, R+1, state_dim)
    pred = torch.cat([true[:, :1], model.rollout(true[:, 0], L.step_blocks(a))], 1)
    frames = batches.sampler.rows(index)[0][:, L.newest_frames(horizon)]  # (B, R+1): each state's newest frame
    out = {"horizon_env_steps": L.boundary_positions(horizon + 1).tolist(), "windows": len(index),
           "latent_mse": ((pred - true) ** 2).mean((0, 2)).tolist(), "probes": {}}
    pred, true = pred.double().cpu().numpy(), true.double().cpu().numpy()
    for kind, probe in probes.items():
        per = {"rollout": [], "true_frames": []}
        for r in range(horizon + 1):
            values = targets.values(test, frames[:, r])
            for key, states in (("rollout", pred), ("true_frames", true)):
                errs = targets.errors(probe.predict(states[:, r]), values)
                per[key].append({k: float(np.median(v)) for k, v in errs.items()})
        out["probes"][kind] = per
    return out


def surprise_test(model: WorldModel, spec: EnvSpec, env, test: Episodes, segments: int, steps: int, event_step: int,
                  seed: int = 0, progress: bool = True) -> dict:
    """Surprise traces of ``segments`` replayed held-out segments of ``steps`` model steps, unperturbed
    and with each event (injected inside model step ``event_step``); detection AUROC per event."""
    L, m = model.layout, event_step
    n = L.window_frames(steps)  # images per segment
    at = L.event_action(m)  # the event happens inside model step m
    rng = np.random.default_rng(seed)
    usable = np.flatnonzero(test.lengths + 1 >= n)
    if len(usable) < 2:
        raise ValueError(f"surprise segments need {n} frames; fewer than two held-out episodes are that long")
    names = ["none"] + perturbation_names(spec)
    traces = {p: [] for p in names}
    for _ in tqdm(range(segments), desc="surprise", disable=not progress):
        e = int(rng.choice(usable))
        t = int(rng.integers(0, test.lengths[e] + 1 - n + 1))
        f0, s0 = int(test.frame_starts[e] + t), int(test.step_starts[e] + t)
        other = int(rng.choice(usable[usable != e]))
        other_state = np.asarray(test.states[test.frame_starts[other] + rng.integers(0, test.lengths[other] + 1)])
        actions = np.asarray(test.actions[s0 : s0 + n - 1])
        runs = [replay(env, spec, np.asarray(test.states[f0]), actions, None if p == "none" else p, at, other_state)
                for p in names]  # the same segment, unperturbed and with each event
        frames = torch.from_numpy(np.stack(runs)).permute(0, 1, 4, 2, 3).to(model.device)
        a = torch.from_numpy(actions).to(device=model.device, dtype=model.dtype).expand(len(names), -1, -1)
        for p, trace in zip(names, surprise(model, frames, a).float().cpu().numpy()):
            traces[p].append(trace)
    traces = {p: np.stack(v) for p, v in traces.items()}
    base = traces["none"][:, m]
    return {
        "segments": segments, "model_steps": steps, "event_step": m, "event_before_action": at,
        "auroc": {p: auroc(base, traces[p][:, m]) for p in names[1:]},
        "median_surprise_at_event": {p: float(np.median(traces[p][:, m])) for p in names},
        "median_trace": {p: np.median(v, 0).tolist() for p, v in traces.items()},
        "q25_trace": {p: np.quantile(v, 0.25, 0).tolist() for p, v in traces.items()},
        "q75_trace": {p: np.quantile(v, 0.75, 0).tolist() for p, v in traces.items()},
    }
