"""One prepared check of the GPU path, end to end, in a few minutes on one GPU.

    python benchmarks/gpu_check.py [--out results/gpu_check] [--tiny]

Stages (each timed; a failing stage is recorded and the next one still runs):

1. ``collect``: a small Reacher dataset (train / val / the protocol's 100 held-out episodes);
2. ``pretrain``: JEPA pretraining of the small ViT, bf16 autocast + ``torch.compile``;
3. ``dynamics``: the world model on that encoder (features computed on the GPU), bf16 + compile;
4. ``plan``: the goal-image protocol on its first tasks (task seed 0) with the shipped model
   on the GPU, next to random torques; and the freshly trained model on the same tasks;
5. ``latency``: ms per replan of the default CEM, and with 10x the samples;
6. ``dmc_latency``: the shipped DMC reacher model, ms per replan of our CEM and of the peers';
7. ``batched``: the shipped model on the 100 held-out tasks at ``batch_tasks`` 1 and 50 (``plan.py``'s
   default): tasks per second, planning seconds, and how many tasks end otherwise than one by one.

Writes ``gpu_check.json`` (every number, the device, the errors) and prints a table.
``--tiny`` shrinks every stage to run on a CPU in about a minute (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import envs
from experiments.conf import load
from experiments.provenance import device_description, git_commit, write_json
from planners.mpc import LatentMPCAgent, MPCConfig
from worldmodel.data import CollectConfig, DataConfig, open_dataset
from worldmodel.data.collect import build_dataset
from worldmodel.dynamics import DynamicsConfig, DynamicsObjective, DynamicsTrainConfig, WindowBatches, WorldModel
from worldmodel.dynamics import validate
from worldmodel.evaluation import RandomAgent, evaluate_agent, sample_goal_tasks, task_seed
from worldmodel.jepa import EncoderConfig, JEPAConfig, JEPATrainConfig, PretrainObjective
from worldmodel.training import Trainer, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: torch.device, n: int, dtype: torch.dtype, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def collect(args, root: Path) -> dict:
    data = DataConfig(train_episodes=args.train_episodes, val_episodes=20, heldout_episodes=args.heldout_episodes,
                      num_envs=args.num_envs, root=str(root), minari=False)
    cfg = CollectConfig(env=envs.EnvConfig(episode_steps=100), data=data)
    start = time.perf_counter()
    path = build_dataset(cfg, progress=False)
    seconds = time.perf_counter() - start
    frames = sum(s["frames"] for s in open_dataset(path, verify=False).manifest["splits"].values())
    return {"path": str(path), "frames": frames, "seconds": seconds, "frames_per_s": frames / seconds,
            "num_envs": args.num_envs}


def throughput(log: list[dict], batch: int) -> float:
    """Samples/s between the second log row and the last (the first includes compilation)."""
    a, b = log[1], log[-1]
    return batch * (b["step"] - a["step"]) / (b["seconds"] - a["seconds"])


def pretrain(args, dataset, out: Path, device: torch.device) -> tuple[dict, object]:
    size = "tiny" if args.tiny else "small"
    model_cfg = JEPAConfig(encoder=EncoderConfig(size=size), predictor_width=32 if args.tiny else 96,
                           predictor_heads=2 if args.tiny else 3)
    cfg = JEPATrainConfig(steps=args.pretrain_steps, batch_size=args.pretrain_batch, warmup_steps=20,
                          log_every=max(1, args.pretrain_steps // 10), checkpoint_every=args.pretrain_steps,
                          device=device.type, progress=False)
    trainer = Trainer(PretrainObjective(model_cfg, cfg, dataset.split("train")), cfg, out / "pretrain")
    start = time.perf_counter()
    log = trainer.run()
    return {"encoder": size, "steps": cfg.steps, "batch": cfg.batch_size, "seconds": time.perf_counter() - start,
            "first_loss": log[0]["jepa"], "final_loss": log[-1]["jepa"], "images_per_s": throughput(log, cfg.batch_size),
            "amp_bf16": cfg.amp and device.type == "cuda", "compile": cfg.compile and device.type == "cuda",
            "final_emb_std": log[-1]["emb_std"]}, trainer.model.frozen_encoder


def dynamics(args, dataset, vit, out: Path, device: torch.device) -> tuple[dict, WorldModel]:
    train = dataset.split("train")
    torch.manual_seed(0)
    model = WorldModel.build(DynamicsConfig(), action_dim=2, vit=vit.float().eval()).to(device)
    sync(device)
    start = time.perf_counter()
    tables = {"train": model.encoder.prepare(train, seed=0, progress=False)}
    sync(device)
    encode_s = time.perf_counter() - start
    tables["val"] = model.encoder.feature_table(dataset.split("val"), progress=False)
    cfg = DynamicsTrainConfig(steps=args.dynamics_steps, log_every=max(1, args.dynamics_steps // 10),
                              checkpoint_every=args.dynamics_steps, device=device.type, progress=False)
    batches = {s: WindowBatches(model, dataset.split(s), tables[s], cfg.rollout_steps) for s in tables}
    before = validate(model, batches["val"])
    start = time.perf_counter()
    log = Trainer(DynamicsObjective(model, cfg, batches["train"], batches["val"]), cfg, out / "dynamics").run()
    after = validate(model, batches["val"])
    return {"steps": cfg.steps, "batch": cfg.batch_size, "seconds": time.perf_counter() - start,
            "encode_frames_per_s": len(tables["train"]) / encode_s, "windows_per_s": throughput(log, cfg.batch_size),
            "val_one_step_before": before["one_step"], "val_one_step": after["one_step"],
            "val_rollout": after["rollout"], "latent_std": after["latent_std"]}, model.eval()


def plan(args, dataset, models: dict[str, WorldModel]) -> dict:
    spec = envs.get_spec("reacher")
    tasks = sample_goal_tasks(dataset.split("heldout"), spec, args.tasks, 25, np.random.default_rng(0))
    env = envs.make_env("reacher", max_episode_steps=50)
    out = {"tasks": args.tasks, "goal_offset": 25, "budget": 50}
    random = RandomAgent(env.action_space, np.random.default_rng(1))
    summary, _ = evaluate_agent(env, spec, tasks, random, 50, progress=False)
    out["random"] = {"successes": summary["successes"]}
    for name, model in models.items():
        agent = LatentMPCAgent(model, MPCConfig(), env.action_space.low, env.action_space.high,
                               torch.Generator().manual_seed(0))
        summary, per_task = evaluate_agent(env, spec, tasks, agent, 50, progress=False)
        out[name] = {"successes": summary["successes"], "median_best_goal_error": summary["median_best_goal_error"],
                     "ms_per_replan": 1000 * float(np.mean(agent.plan_seconds)), "replans": len(agent.plan_seconds),
                     "per_task_success": [r.success for r in per_task]}
    env.close()
    return out


def latency(model: WorldModel, replans: int, env_name: str = "reacher",
            configs: dict[str, MPCConfig] | None = None) -> dict:
    """Median ms per replan of each MPC setting (default: our CEM with 300 and with 3000 samples)."""
    env = envs.make_env(env_name, max_episode_steps=1)
    low, high = env.action_space.low, env.action_space.high
    env.close()
    if configs is None:
        configs = {}
        for samples in (300, 3000):
            cfg = MPCConfig()
            cfg.cem.samples, cfg.cem.elites = samples, samples // 10
            configs[f"cem_{samples}x{cfg.cem.iterations}_ms"] = cfg
    rng = np.random.default_rng(0)
    size = model.image_shape[-1]
    out = {}
    for name, cfg in configs.items():
        agent = LatentMPCAgent(model, cfg, low, high, torch.Generator().manual_seed(0))
        agent.reset(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        for i in range(replans + 3):
            if i == 3:
                agent.plan_seconds.clear()
            agent.history.clear()
            agent.history.add_frame(rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8))
            agent.replan()
        out[name] = 1000 * float(np.median(agent.plan_seconds))
    return out


def dmc_latency(replans: int, device: torch.device) -> dict:
    """DMC reacher's shipped model: ms per replan of our CEM and of the peers' (LeWM: under a second
    per plan on a GPU), with the settings ``plan.py env=dmc_reacher`` uses."""
    cfg = load("plan", ["env=dmc_reacher"])
    model = WorldModel.from_pretrained(ROOT / "models" / "dmc_reacher", device)
    configs = {"ours": cfg.mpc, **cfg.variants}
    return latency(model, replans, "dmc_reacher",
                   {f"{k}_cem_{m.cem.samples}x{m.cem.iterations}_ms": m for k, m in configs.items()})


def batched(args, dataset, model: WorldModel) -> dict:
    """The protocol's tasks played one by one and in batches (one env per task of a batch): wall seconds,
    tasks per second, planning seconds, successes, and the tasks whose outcome or length differ."""
    spec = envs.get_spec("reacher")
    n = args.batched_tasks
    tasks = sample_goal_tasks(dataset.split("heldout"), spec, n, 25, np.random.default_rng(0))
    tasks = [t.__class__(**{**t.__dict__, "seed": task_seed(0, i)}) for i, t in enumerate(tasks)]
    out, per, mpc = {"tasks": n}, {}, load("plan", []).mpc
    for size in (1, min(50, n)):
        env_list = [envs.make_env("reacher", max_episode_steps=50) for _ in range(size)]
        agent = LatentMPCAgent(model, mpc, env_list[0].action_space.low,
                               env_list[0].action_space.high, torch.Generator().manual_seed(0))
        start = time.perf_counter()
        summary, per[size] = evaluate_agent(env_list, spec, tasks, agent, 50, progress=False)
        wall = time.perf_counter() - start
        for env in env_list:
            env.close()
        out[f"batch_{size}"] = {"wall_s": wall, "tasks_per_s": n / wall, "plan_s": float(np.sum(agent.plan_seconds)),
                                "successes": summary["successes"]}
    one, many = per[1], per[min(50, n)]
    out["tasks_differing"] = sum((a.success, a.steps) != (b.success, b.steps) for a, b in zip(one, many))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "results/gpu_check"))
    parser.add_argument("--tiny", action="store_true", help="shrink every stage (a CPU smoke test of this script)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    t = args.tiny
    args.train_episodes, args.heldout_episodes = (12, 100) if t else (300, 100)
    args.num_envs = 2 if t else min(12, os.cpu_count() or 1)
    args.pretrain_steps, args.pretrain_batch = (20, 16) if t else (600, 256)
    args.dynamics_steps = 20 if t else 2000
    args.tasks, args.replans = (2, 2) if t else (20, 20)
    args.batched_tasks = 4 if t else 100
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": device_description(), "torch": torch.__version__, "commit": git_commit(), "tiny": t,
              "stages": {}, "errors": {}}
    if device.type == "cuda":
        result["matmul_tflops"] = {"bf16_8192": matmul_tflops(device, 8192, torch.bfloat16),
                                   "fp32_4096": matmul_tflops(device, 4096, torch.float32)}
    root = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    state: dict = {}

    def stage(name, fn):
        start = time.perf_counter()
        try:
            value = fn()
            result["stages"][name], extra = value if isinstance(value, tuple) else (value, None)
            state[name] = extra
        except Exception:  # a report script: record the failure, run the other stages
            result["errors"][name] = traceback.format_exc()[-3000:]
            print(f"[{name}] FAILED\n{result['errors'][name]}", flush=True)
        print(f"[{name}] {time.perf_counter() - start:.1f} s: {json.dumps(result['stages'].get(name), default=str)[:600]}",
              flush=True)
        write_json(out / "gpu_check.json", result)

    stage("collect", lambda: collect(args, root))
    dataset = open_dataset(result["stages"]["collect"]["path"], verify=False) if "collect" in result["stages"] else None
    if dataset is not None:
        stage("pretrain", lambda: pretrain(args, dataset, root, device))
    if state.get("pretrain") is not None:
        stage("dynamics", lambda: dynamics(args, dataset, state["pretrain"], root, device))
    shipped = WorldModel.from_pretrained(ROOT / "models" / "reacher", device)
    if dataset is not None:
        models = {"shipped": shipped, **({"fresh": state["dynamics"]} if state.get("dynamics") is not None else {})}
        stage("plan", lambda: plan(args, dataset, models))
    stage("latency", lambda: latency(shipped, args.replans))
    stage("dmc_latency", lambda: dmc_latency(args.replans, device))
    if dataset is not None:
        stage("batched", lambda: batched(args, dataset, shipped))
    write_json(out / "gpu_check.json", result)
    report(result)
    print(f"written to {out / 'gpu_check.json'}")


def report(result: dict) -> None:
    """The short table printed last."""
    s = result["stages"]
    print(f"\n{result['device']}, torch {result['torch']}, commit {result['commit'][:12]}")
    if "matmul_tflops" in result:
        print(f"matmul: bf16 {result['matmul_tflops']['bf16_8192']:.0f} TFLOP/s, fp32 "
              f"{result['matmul_tflops']['fp32_4096']:.0f} TFLOP/s")
    if "collect" in s:
        print(f"collect: {s['collect']['frames']} frames at {s['collect']['frames_per_s']:.0f} frames/s "
              f"({s['collect']['num_envs']} envs)")
    if "pretrain" in s:
        p = s["pretrain"]
        print(f"pretrain ({p['encoder']}, batch {p['batch']}, {p['steps']} steps, {p['seconds']:.0f} s): "
              f"{p['images_per_s']:.0f} images/s, JEPA loss {p['first_loss']:.3f} -> {p['final_loss']:.3f}")
    if "dynamics" in s:
        d = s["dynamics"]
        print(f"dynamics ({d['steps']} steps, {d['seconds']:.0f} s): {d['windows_per_s']:.0f} windows/s, features "
              f"{d['encode_frames_per_s']:.0f} frames/s, val one-step MSE {d['val_one_step_before']:.3f} -> "
              f"{d['val_one_step']:.3f}")
    if "plan" in s:
        p = s["plan"]
        for name in ("shipped", "fresh"):
            if name in p:
                print(f"plan, {name} model: {p[name]['successes']}/{p['tasks']} tasks, {p[name]['ms_per_replan']:.1f} "
                      f"ms per replan (random torques: {p['random']['successes']}/{p['tasks']})")
    if "latency" in s:
        print("latency: " + ", ".join(f"{k} {v:.1f}" for k, v in s["latency"].items()))
    if "dmc_latency" in s:
        print("DMC reacher latency: " + ", ".join(f"{k} {v:.1f}" for k, v in s["dmc_latency"].items()))
    if "batched" in s:
        b = s["batched"]
        print("batched evaluation: " + ", ".join(f"{k.replace('_', ' ')} {v['tasks_per_s']:.2f} tasks/s "
                                                 f"({v['successes']}/{b['tasks']})" for k, v in b.items()
                                                 if k.startswith("batch_"))
              + f"; {b['tasks_differing']} tasks end otherwise")
    print(f"errors: {list(result['errors']) or 'none'}")


if __name__ == "__main__":
    main()
