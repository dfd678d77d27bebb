"""Representation probes on frames and rollouts, and surprise: ``python experiments/probe.py env=reacher``.

1. Frame probes: linear and MLP probes fitted on states of training episodes, scored
   on held-out episodes (R^2, Pearson r, median error in physical units), for the
   world model's latent state, the encoder features under it, a randomly
   initialised encoder of the same architecture, and raw downsampled pixels. Every
   representation is stacked like the model's state (``history`` frames one action
   block apart, and the actions between them), so velocities are readable from all.
2. Rollout probes: the world-model probes applied to open-loop predicted states
   (recorded actions) at horizons 0..H, next to the same probes on the encoded true
   frames; plus the latent error per horizon.
3. Surprise: per-step prediction error on replayed held-out segments, with and
   without injected events (teleports, colour change); detection AUROC per event.

Writes ``probe-<env>-<time>.json``, ``probe-<env>-<time>.md`` and plots to ``output_dir``.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

import envs
from experiments.conf import CONFIG_DIR, to_object
from experiments.provenance import device_description, git_commit, write_json
from worldmodel.configs import ProbeConfig
from worldmodel.data import open_dataset
from worldmodel.data.collect import ensure_dataset
from worldmodel.data.episodes import Episodes
from worldmodel.dynamics import WindowBatches, encode_frames, fit_projection
from worldmodel.dynamics_trainer import load_world_model
from worldmodel.encoder import ViTEncoder
from worldmodel.pretrain import resolve_device
from worldmodel.probes import PROBES, MLPProbe, Targets, score
from worldmodel.surprise import auroc, event_action, perturbation_names, replay, segment_frames, surprise
from worldmodel.world_model import DynamicsConfig, LatentWorldModel


def state_rows(episodes: Episodes, span: int) -> np.ndarray:
    """Frames that end a full state, i.e. have ``span`` env steps of their episode before them."""
    return np.concatenate([s + np.arange(span, n + 1) for s, n in zip(episodes.frame_starts, episodes.lengths)])


def stack(features: np.ndarray, episodes: Episodes, rows: np.ndarray, history: int, k: int) -> np.ndarray:
    """States shaped like the world model's: the features of frames ``row - (h-1)k, ..., row - k, row``
    and the ``(h-1)k`` actions between them, ``(len(rows), h * d + (h-1) * k * A)``."""
    span = (history - 1) * k
    steps = rows - np.searchsorted(episodes.frame_starts, rows, side="right") + 1  # step index of frame ``row``
    parts = [features[rows - span + i * k] for i in range(history)]
    parts += [np.asarray(episodes.actions[steps - span + j]) for j in range(span)]
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
def head_latents(model: LatentWorldModel, features: torch.Tensor, batch: int = 2048) -> np.ndarray:
    """Frame latents (EMA head) of standardised features, in batches."""
    return torch.cat([model.embed(features[i : i + batch].to(model.device), target=True).cpu()
                      for i in range(0, len(features), batch)]).numpy()


def random_encoder_model(model: LatentWorldModel, train: Episodes, seed: int) -> LatentWorldModel:
    """The world model's feature pipeline (pooling, projection, standardisation) on a random-init encoder;
    for a world model with a trained conv encoder, that conv encoder at its random init."""
    torch.manual_seed(seed)
    if not model.frozen:
        return LatentWorldModel(None, model.cfg, model.action_dim, model.image_shape).to(model.device).eval()
    encoder = ViTEncoder(model.encoder.cfg).to(model.device)
    cfg = DynamicsConfig(**{**model.cfg.to_dict(), "latent_dim": 0})
    rand = LatentWorldModel(encoder, cfg, model.action_dim).to(model.device).eval()
    fit_projection(rand, train, frames=4000, seed=seed)
    return rand


def frame_probes(reps: dict, targets: Targets, train: Episodes, test: Episodes, history: int, k: int,
                 cfg: ProbeConfig):
    """Every probe kind on every representation; returns the scores and the fitted world-model probes."""
    span = (history - 1) * k
    rtr, rte = state_rows(train, span), state_rows(test, span)
    vtr, vte = targets.values(train, rtr), targets.values(test, rte)
    ytr = targets.table(vtr)
    results, fitted = {}, {}
    for name, (ftr, fte) in tqdm(reps.items(), desc="frame probes", disable=not cfg.progress):
        xtr, xte = stack(ftr, train, rtr, history, k), stack(fte, test, rte, history, k)
        for kind in cfg.probes:
            probe = MLPProbe(steps=cfg.mlp_steps, seed=cfg.probe_seed) if kind == "mlp" else PROBES[kind]()
            probe.fit(xtr, ytr)
            results[f"{name}/{kind}"] = {"representation": name, "probe": kind, "dims": xtr.shape[1],
                                         **score(targets, probe.predict(xte), vte)}
            if name == "world_model":
                fitted[kind] = probe
    return results, fitted


@torch.no_grad()
def rollout_probes(model: LatentWorldModel, probes: dict, targets: Targets, test: Episodes, raw: torch.Tensor,
                   cfg: ProbeConfig) -> dict:
    """Probe errors of open-loop predicted states vs the encoded true frames, per horizon."""
    h = model.history
    batches = WindowBatches(model, test, raw, cfg.horizon)
    index = np.arange(0, len(batches.sampler), cfg.window_stride)
    x, a = batches.get(index)
    true = model.window_states(model.embed(x, target=True), a)  # (B, R+1, state_dim)
    pred = torch.cat([true[:, :1], model.rollout(true[:, 0], a[:, h - 1 :])], 1)
    frames = batches.sampler.rows(index)[0][:, batches.boundaries[h - 1 :]]  # (B, R+1): each state's newest frame
    out = {"horizon_env_steps": (np.arange(cfg.horizon + 1) * model.cfg.action_block).tolist(), "windows": len(index),
           "latent_mse": ((pred - true) ** 2).mean((0, 2)).tolist(), "probes": {}}
    for kind, probe in probes.items():
        per = {"rollout": [], "true_frames": []}
        for r in range(cfg.horizon + 1):
            values = targets.values(test, frames[:, r])
            for key, states in (("rollout", pred), ("true_frames", true)):
                errs = targets.errors(probe.predict(states[:, r].double().numpy()), values)
                per[key].append({k: float(np.median(v)) for k, v in errs.items()})
        out["probes"][kind] = per
    return out


def surprise_test(model: LatentWorldModel, spec, env, test: Episodes, cfg: ProbeConfig, device) -> dict:
    """Surprise traces of replayed held-out segments, unperturbed and with each event; AUROC per event."""
    R, m = cfg.surprise_steps, cfg.event_step
    n = segment_frames(model, R)  # images per segment
    at = event_action(model, m)  # the event happens inside model step m
    rng = np.random.default_rng(cfg.probe_seed)
    usable = np.flatnonzero(test.lengths + 1 >= n)
    if len(usable) < 2:
        raise ValueError(f"surprise segments need {n} frames; fewer than two held-out episodes are that long")
    names = ["none"] + perturbation_names(spec)
    traces = {p: [] for p in names}
    for _ in tqdm(range(cfg.surprise_episodes), desc="surprise", disable=not cfg.progress):
        e = int(rng.choice(usable))
        t = int(rng.integers(0, test.lengths[e] + 1 - n + 1))
        f0, s0 = int(test.frame_starts[e] + t), int(test.step_starts[e] + t)
        other = int(rng.choice(usable[usable != e]))
        other_state = np.asarray(test.states[test.frame_starts[other] + rng.integers(0, test.lengths[other] + 1)])
        actions = np.asarray(test.actions[s0 : s0 + n - 1])
        runs = [replay(env, spec, np.asarray(test.states[f0]), actions, None if p == "none" else p, at, other_state)
                for p in names]  # the same segment, unperturbed and with each event
        frames = torch.from_numpy(np.stack(runs)).permute(0, 1, 4, 2, 3).to(device)
        a = torch.from_numpy(actions).float().expand(len(names), -1, -1).to(device)
        for p, trace in zip(names, surprise(model, frames, a).cpu().numpy()):
            traces[p].append(trace)
    traces = {p: np.stack(v) for p, v in traces.items()}
    base = traces["none"][:, m]
    return {
        "segments": cfg.surprise_episodes, "model_steps": R, "event_step": m, "event_before_action": at,
        "auroc": {p: auroc(base, traces[p][:, m]) for p in names[1:]},
        "median_surprise_at_event": {p: float(np.median(traces[p][:, m])) for p in names},
        "median_trace": {p: np.median(v, 0).tolist() for p, v in traces.items()},
        "q25_trace": {p: np.quantile(v, 0.25, 0).tolist() for p, v in traces.items()},
        "q75_trace": {p: np.quantile(v, 0.75, 0).tolist() for p, v in traces.items()},
    }


def run(cfg: ProbeConfig) -> dict:
    spec = envs.get_spec(cfg.env.name)
    dataset = open_dataset(ensure_dataset(cfg))
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(f"world model {cfg.model!r} not found (expected a checkpoint directory); build the "
                                f"default one with `python experiments/build_default_model.py`")
    device = resolve_device(cfg.device, 0)
    model = load_world_model(cfg.model, device)
    if model.image_shape[-1] != cfg.env.image_size:
        raise ValueError(f"model {cfg.model} takes {model.image_shape[-1]}px images, the dataset has "
                         f"{cfg.env.image_size}px")
    full_train, test = dataset.split("train"), dataset.split("heldout")
    rng = np.random.default_rng(cfg.probe_seed)
    picked = np.sort(rng.choice(full_train.num_episodes, min(cfg.train_probe_episodes, full_train.num_episodes),
                                replace=False))
    train = full_train.select(picked)
    targets = Targets.of(train, cfg.quantities or None)
    h = model.history

    raw = {s: encode_frames(model, ep, progress=cfg.progress) for s, ep in (("train", train), ("test", test))}
    enc = {s: model.standardise(r) for s, r in raw.items()}
    reps = {"world_model": tuple(head_latents(model, enc[s]) for s in ("train", "test"))}
    if model.frozen:  # the frozen features under the head (a conv model's features are the pixels)
        reps["encoder"] = tuple(enc[s].numpy() for s in ("train", "test"))
    if "random_encoder" in cfg.baselines:
        rand = random_encoder_model(model, full_train, cfg.probe_seed)
        rraw = [encode_frames(rand, ep, progress=cfg.progress) for ep in (train, test)]
        rand.set_latent_stats(rraw[0])
        reps["random_encoder"] = tuple(head_latents(rand, rand.standardise(r)) for r in rraw)
    if "pixels" in cfg.baselines:
        reps["pixels"] = tuple(pixel_features(ep, cfg.pixel_size) for ep in (train, test))
    frame, fitted = frame_probes(reps, targets, train, test, h, model.cfg.action_block, cfg)
    rollout = rollout_probes(model, fitted, targets, test, raw["test"], cfg)
    env = cfg.env.make(max_episode_steps=segment_frames(model, cfg.surprise_steps) + 1)
    surprise_result = surprise_test(model, spec, env, test, cfg, device)
    env.close()
    return {
        "env": spec.gym_id, "model": cfg.model, "dataset": str(dataset.path),
        "dataset_checksum": dataset.manifest["checksum"], "train_episodes": len(picked),
        "test_episodes": test.num_episodes, "history": h, "action_block": model.cfg.action_block,
        "quantities": [q.key for q in targets.quantities], "frame_probes": frame, "rollout": rollout,
        "surprise": surprise_result, "device": device_description(), "commit": git_commit(),
    }


def quantity_error(errors: dict[str, float], key: str) -> float:
    """One error per quantity: its distance (xy pairs), else the mean over its dimensions."""
    if f"{key}(distance)" in errors:
        return errors[f"{key}(distance)"]
    return float(np.mean([v for k, v in errors.items() if k.startswith(f"{key}[")]))


def quantity_r2(result: dict, key: str) -> float:
    """Mean R^2 over a quantity's probe columns."""
    return float(np.mean([v for c, v in result["r2"].items() if key in c]))


def markdown(summary: dict) -> str:
    qs = summary["quantities"]
    lines = [f"# Probes: {summary['model']} on {summary['env']}", "",
             f"{summary['train_episodes']} training / {summary['test_episodes']} held-out episodes; a state stacks "
             f"{summary['history']} frames one action block apart (and the actions between). R^2 (mean over a quantity's columns) / median error in physical units "
             "(angles: rad; positions: m, as a distance for xy pairs; velocities: rad/s).", "",
             "| representation | probe | dims | " + " | ".join(qs) + " |", "|---|---|---|" + "---|" * len(qs)]
    for r in summary["frame_probes"].values():
        cells = [f"{quantity_r2(r, q):.3f} / {quantity_error(r['median_error'], q):.4f}" for q in qs]
        lines.append(f"| {r['representation']} | {r['probe']} | {r['dims']} | " + " | ".join(cells) + " |")
    ro = summary["rollout"]
    for kind, per in ro["probes"].items():
        lines += ["", f"## Open-loop rollouts ({kind} probe, {ro['windows']} held-out windows): median error, "
                  "rollout vs true frames", "", "| env steps | latent MSE | " + " | ".join(qs) + " |",
                  "|---|---|" + "---|" * len(qs)]
        for i, steps in enumerate(ro["horizon_env_steps"]):
            cells = [f"{quantity_error(per['rollout'][i], q):.4f} / {quantity_error(per['true_frames'][i], q):.4f}"
                     for q in qs]
            lines.append(f"| {steps} | {ro['latent_mse'][i]:.4f} | " + " | ".join(cells) + " |")
    s = summary["surprise"]
    lines += ["", f"## Surprise ({s['segments']} held-out segments, event inside model step {s['event_step']})", "",
              "| event | detection AUROC | median surprise at the event |", "|---|---|---|",
              f"| none | - | {s['median_surprise_at_event']['none']:.4f} |"]
    for p, v in s["auroc"].items():
        lines.append(f"| {p} | {v:.3f} | {s['median_surprise_at_event'][p]:.4f} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, out: Path, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ro = summary["rollout"]
    for kind, per in ro["probes"].items():
        names = list(per["rollout"][0])
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
        for ax, name in zip(axes[0], names):
            ax.plot(ro["horizon_env_steps"], [p[name] for p in per["rollout"]], "o-", label="rollout")
            ax.plot(ro["horizon_env_steps"], [p[name] for p in per["true_frames"]], "s--", label="true frames")
            ax.set_title(name, fontsize=8)
            ax.set_xlabel("env steps")
        axes[0][0].set_ylabel("median error")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{stem}-rollout-{kind}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(str(path))
    s = summary["surprise"]
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = np.arange(1, s["model_steps"] + 1)
    for p, med in s["median_trace"].items():
        ax.plot(steps, med, "o-", label=p)
        ax.fill_between(steps, s["q25_trace"][p], s["q75_trace"][p], alpha=0.15)
    ax.axvline(s["event_step"] + 1, color="k", ls=":", label="event")
    ax.set_yscale("log")
    ax.set_xlabel("model step")
    ax.set_ylabel("surprise (median, IQR)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{stem}-surprise.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return paths + [str(path)]


@hydra.main(config_path=CONFIG_DIR, config_name="probe", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config: ProbeConfig = to_object(cfg)
    summary = run(config)
    out = Path(config.output_dir)
    stem = f"probe-{config.env.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    summary["plots"] = plot(summary, out, stem)
    table = markdown(summary)
    (out / f"{stem}.md").write_text(table)
    path = write_json(out / f"{stem}.json", summary)
    print(table)
    print(f"results written to {path} (+ .md, plots)")


if __name__ == "__main__":
    main()
