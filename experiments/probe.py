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

import numpy as np
from omegaconf import DictConfig

import envs
from experiments.conf import entry_point, to_object
from experiments.provenance import device_description, git_commit, write_json
from experiments.runs import check_trained_env
from experiments.schemas import ProbeConfig
from worldmodel.checkpoint import WEIGHTS
from worldmodel.data import load_dataset
from worldmodel.dynamics import WorldModel
from worldmodel.evaluation import frame_probes, representations, rollout_probes, surprise_test
from worldmodel.files import file_sha256, writable_dir
from worldmodel.probes import Targets
from worldmodel.training import resolve_device


def run(cfg: ProbeConfig) -> dict:
    spec = envs.get_spec(cfg.env.name)
    if not Path(cfg.model).is_dir():
        raise FileNotFoundError(f"world model {cfg.model!r} not found (expected a checkpoint directory); build the "
                                f"default one with `python experiments/build_default_model.py`")
    check_trained_env(cfg.env, cfg.model)
    model = WorldModel.from_pretrained(cfg.model, resolve_device(cfg.device))
    if model.image_shape[-1] != cfg.env.image_size:
        raise ValueError(f"model {cfg.model} takes {model.image_shape[-1]}px images, the dataset has "
                         f"{cfg.env.image_size}px")
    dataset = load_dataset(cfg, progress=cfg.progress)
    full_train, test = dataset.split("train"), dataset.split("heldout")
    rng = np.random.default_rng(cfg.probe_seed)
    picked = np.sort(rng.choice(full_train.num_episodes, min(cfg.train_probe_episodes, full_train.num_episodes),
                                replace=False))
    train = full_train.select(picked)
    targets = Targets.of(spec, train, cfg.quantities or None)
    reps, tables = representations(model, train, test, cfg.baselines, full_train, cfg.pixel_size, cfg.probe_seed,
                                   cfg.progress)
    frame, fitted = frame_probes(reps, targets, train, test, model.layout, cfg.probes, cfg.mlp_steps, cfg.probe_seed,
                                 cfg.progress)
    rollout = rollout_probes(model, fitted, targets, test, tables["test"], cfg.horizon, cfg.window_stride)
    env = cfg.env.make(max_episode_steps=model.layout.window_frames(cfg.surprise_steps) + 1)
    surprise_result = surprise_test(model, spec, env, test, cfg.surprise_episodes, cfg.surprise_steps,
                                    cfg.event_step, cfg.probe_seed, cfg.progress)
    env.close()
    units = {q.key: q.unit for q in targets.quantities}
    return {
        "env": spec.gym_id, "model": cfg.model, "model_weights_sha256": file_sha256(Path(cfg.model) / WEIGHTS),
        "dataset": str(dataset.path),
        "dataset_checksum": dataset.manifest["checksum"], "train_episodes": len(picked),
        "test_episodes": test.num_episodes, "history": model.layout.history,
        "action_block": model.layout.action_block, "quantities": [q.key for q in targets.quantities],
        "units": units, "frame_probes": frame, "rollout": rollout,
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
             f"{summary['history']} frames one action block apart (and the actions between). R^2 (mean over a "
             "quantity's columns) / median error in physical units (" + ", ".join(
                 f"{q}: {u}" for q, u in summary["units"].items()) + "; 2-d positions as a distance).", "",
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


@entry_point("probe")
def main(cfg: DictConfig) -> None:
    config: ProbeConfig = to_object(cfg)
    out = writable_dir(config.output_dir, "output_dir")  # checked before the (long) probing
    summary = run(config)
    stem = f"probe-{config.env.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    summary["plots"] = plot(summary, out, stem)
    table = markdown(summary)
    (out / f"{stem}.md").write_text(table)
    path = write_json(out / f"{stem}.json", summary)
    print(table)
    print(f"results written to {path} (+ .md, plots)")


if __name__ == "__main__":
    main()
