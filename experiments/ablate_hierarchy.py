"""Ablations of the slow level: ``python experiments/ablate_hierarchy.py env=pointmaze [overrides ...]``.

Trains one slow level per variant on the same level-1 model and data (``train_slow.py``, resumable,
in ``ablate_out/<variant>``) and plans with each on the same tasks (``plan.py`` with
``flat=false``: only the hierarchical agent), then writes ``ablate_out/ablation.md`` and
``ablation.json``: the slow level's validation error and each variant's success, median final
distance, and planning time and FLOPs per control step. The flat planner runs once on the same
tasks, as the reference row.

Overrides go to both commands when both know the key (``env=...``, ``env.maze=...``, ``model=...``);
``plan.<key>=...`` goes only to ``plan.py`` and ``slow.<key>``/``train.<key>`` only to training.
Default evaluation: the far bin of the env's ``plan`` section, ``episodes=30``, CEM.
"""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.conf import load
from experiments.plan import run as plan
from experiments.provenance import write_json
from experiments.train_slow import run as train_slow
from worldmodel.hierarchy import SLOW_DIR

VARIANTS: dict[str, list[str]] = {
    "default: K=4, macro encoder (8), level-1 latent": [],
    "concatenated actions (no macro encoder)": ["slow.macro=concat"],
    "JEPA-pretrained temporal encoder": ["slow.state=jepa"],
    "K=2 (chunks of 10 env steps)": ["slow.chunk=2", "train.rollout_chunks=5", "plan.slow.horizon=10",
                                     "plan.slow.subgoal=6"],
}
TRAIN_ONLY = ("slow.", "train.", "jepa_train.", "macro_prior_chunks=")
PLAN_DEFAULTS = ["planners=[cem]", "baselines=[]", "episodes=30", "videos=0", "~bins.near", "~bins.mid"]


def split(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(training overrides, planning overrides) of command-line style overrides."""
    train = [o for o in overrides if not o.startswith("plan.")]
    plan_ = [o.removeprefix("plan.") for o in overrides if not o.lstrip("~+").startswith(TRAIN_ONLY)]
    return train, plan_


def main(argv: list[str]) -> None:
    out = Path(next((a.split("=", 1)[1] for a in argv if a.startswith("ablate_out=")), "runs/ablate_hierarchy"))
    common = [a for a in argv if not a.startswith("ablate_out=")]
    train_common, plan_common = split(common)
    rows = []
    for i, (name, switch) in enumerate(VARIANTS.items()):
        print(f"\n=== {name} ===", flush=True)
        train_over, plan_over = split(switch)
        run_dir = out / f"variant{i}"
        cfg = load("train_slow", train_common + train_over + [f"out_dir={run_dir}", "resume=true", "install=false"])
        trained = train_slow(cfg)
        first = i == 0  # the flat planner runs once, with the first variant
        pcfg = load("plan", PLAN_DEFAULTS + plan_common + plan_over + [
            f"slow_model={run_dir / SLOW_DIR}", f"flat={str(first).lower()}", f"output_dir={out}/plan"])
        result = plan(pcfg)
        for r in result["results"]:
            if not r["agent"].endswith("-hier"):
                rows.insert(0, {"variant": "flat (no slow level)", **agent_row(r)})
                continue
            v = trained["val"]
            rows.append({"variant": name, "overrides": switch, **agent_row(r),
                         "val_rollout_by_chunk": v["rollout_mse_by_chunk"],
                         "val_still_by_chunk": v["still_mse_by_chunk"],
                         "val_subgoal_by_chunk": v["subgoal_mse_by_chunk"]})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ablation.json", rows)
    (out / "ablation.md").write_text(markdown(rows, common))
    print("\n" + markdown(rows, common))


def agent_row(r: dict) -> dict:
    group = next(iter(r["groups"].values())) if r.get("groups") else r
    return {"successes": group["successes"], "episodes": group["episodes"], "wilson95": group["wilson95"],
            "median_final": group["median_final_goal_error"], "plan_ms_per_step": r.get("plan_ms_per_step"),
            "gflops_per_step": r.get("gflops_per_step")}


def markdown(rows: list[dict], common: list[str]) -> str:
    lines = [f"Slow-level ablations ({' '.join(common) or 'defaults'}); hierarchical CEM on the same tasks.", "",
             "| variant | success | Wilson 95 % | median final dist. | ms / step | GFLOP / step | "
             "slow rollout MSE, chunk 1 / last (nothing moves) | subgoal MSE, chunk 1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["wilson95"]
        val = (f"{r['val_rollout_by_chunk'][0]:.3f} / {r['val_rollout_by_chunk'][-1]:.3f} "
               f"({r['val_still_by_chunk'][0]:.2f} / {r['val_still_by_chunk'][-1]:.2f})"
               if "val_rollout_by_chunk" in r else "-")
        sub = f"{r['val_subgoal_by_chunk'][0]:.3f}" if "val_subgoal_by_chunk" in r else "-"
        lines.append(f"| {r['variant']} | {r['successes']}/{r['episodes']} | [{lo:.0%}, {hi:.0%}] | "
                     f"{r['median_final']:.2f} | {r['plan_ms_per_step'] or 0:.0f} | {r['gflops_per_step'] or 0:.3f} | "
                     f"{val} | {sub} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
