"""Planning speed and success, side by side on the same tasks: the planner settings of ``plan.py`` today
against a reference (by default the earlier default: CEM 300 samples x 10 iterations, on the model the
default model was distilled from where it was, e.g. ``models/reacher-teacher`` for Reacher).

    python benchmarks/plan_latency.py [--env reacher] [--episodes 100] [--task-seed 0]
        [--before "mpc.planner=cem mpc.cem.samples=300 mpc.cem.elites=30 mpc.cem.iterations=10 mpc.warm_iterations=0
                   model=<the default model's teacher>"]
        [-- any plan.py override, e.g. mpc.icem.samples=80]

Runs ``experiments/plan.py`` twice on the same tasks, the flat agent with the reference's settings and
then with today's, one after the other, so their times are comparable. Prints success with its Wilson interval, ms per replan, ms and GFLOP per control step
for each, and the ratios; writes JSON. Take timings with nothing else heavy running.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.conf import load
from experiments.provenance import device_description, git_commit, write_json
from worldmodel.checkpoint import load_config

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "mpc.planner=cem mpc.cem.samples=300 mpc.cem.elites=30 mpc.cem.iterations=10 mpc.warm_iterations=0"


def run_plan(env: str, episodes: int, task_seed: int, overrides: list[str], out: Path) -> dict:
    """One ``plan.py`` run of the flat agent; its summary JSON."""
    cmd = [sys.executable, str(ROOT / "experiments" / "plan.py"), f"env={env}", "hierarchy=false", "baselines=[]",
           "videos=0", "progress=false", f"episodes={episodes}", f"task_seed={task_seed}", *overrides,
           f"output_dir={out}", f"hydra.run.dir={out}/hydra"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"plan.py failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    (result,) = out.glob("plan-*.json")
    return json.loads(result.read_text())


def reference(env: str, overrides: list[str]) -> list[str]:
    """The earlier default: CEM 300 x 10, on the model that ``plan.py``'s model was distilled from where
    it was (a distilled predictor is part of what made the default faster)."""
    model = load("plan", [f"env={env}", *overrides]).model
    teacher = load_config(model).get("distilled_from") if model else None
    return BEFORE.split() + ([f"model={teacher}"] if teacher else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="reacher")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--task-seed", type=int, default=0)
    parser.add_argument("--before", default=None, help="the reference's plan.py overrides, separated by spaces "
                                                        f"(default: {BEFORE}, and the default model's teacher)")
    parser.add_argument("--out", default="results/benchmarks/plan_latency.json")
    parser.add_argument("overrides", nargs="*", help="plan.py overrides for both agents' run (after --)")
    args = parser.parse_args()
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    old = args.before.split() if args.before is not None else reference(args.env, args.overrides)
    runs = {}
    for role, overrides in (("before", [*args.overrides, *old]), ("now", args.overrides)):
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_plan(args.env, args.episodes, args.task_seed, overrides, Path(tmp))
        (r,) = summary["results"]
        runs[role] = {"agent": r["agent"], "model": summary["model"], "mpc": summary["mpc"], "successes": r["successes"],
                      "episodes": r["episodes"], "wilson95": r["wilson95"], "ms_per_replan": r["mean_plan_ms"],
                      "ms_per_step": r["plan_ms_per_step"], "gflops_per_step": r["gflops_per_step"],
                      "replans": r["replans"], "tasks": [t["success"] for t in r["tasks"]]}
    now, before = runs["now"], runs["before"]
    if now["episodes"] != before["episodes"]:
        raise RuntimeError(f"the two runs saw {before['episodes']} and {now['episodes']} tasks")
    result = {"device": device_description(), "commit": git_commit(), "env": args.env, "episodes": args.episodes,
              "task_seed": args.task_seed, "overrides": args.overrides, "before_overrides": old,
              "now": now, "before": before,
              "speedup_per_replan": before["ms_per_replan"] / now["ms_per_replan"],
              "speedup_per_step": before["ms_per_step"] / now["ms_per_step"],
              "flop_ratio_per_step": before["gflops_per_step"] / now["gflops_per_step"]}
    print(f"device: {result['device']}; {args.env}, {args.episodes} tasks of task seed {args.task_seed}")
    print(f"{'':8} {'planner':16} {'success':>22} {'ms/replan':>10} {'ms/step':>8} {'GFLOP/step':>11}  model")
    for role, r in (("before", before), ("now", now)):
        lo, hi = r["wilson95"]
        p = r["mpc"][r["mpc"]["planner"]]
        name = f"{r['mpc']['planner']} {p.get('samples', '')}x{p.get('iterations', p.get('steps', ''))}"
        print(f"{role:8} {name:16} {r['successes']:>4}/{r['episodes']:<4} [{lo:.0%}, {hi:.0%}]{'':3} "
              f"{r['ms_per_replan']:>10.1f} {r['ms_per_step']:>8.1f} {r['gflops_per_step']:>11.3f}  {r['model']}")
    print(f"now is {result['speedup_per_replan']:.1f}x faster per replan, {result['speedup_per_step']:.1f}x per "
          f"control step, at {1 / result['flop_ratio_per_step']:.2f}x the FLOPs per step")
    print(f"written to {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
