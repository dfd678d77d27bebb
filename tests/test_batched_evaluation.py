"""Many tasks at once: the batched protocol plays each task as it would be played alone."""

import numpy as np
import pytest
import torch

import envs
from planners import CEMConfig
from planners.mpc import LatentMPCAgent, MPCConfig
from tests.models import tiny_world_model
from worldmodel.evaluation import ZeroAgent, batches_agent, evaluate_agent, run_task, sample_goal_tasks, task_seed


def agent():
    model = tiny_world_model(block=2, moving=True).eval()
    cfg = MPCConfig(horizon=3, receding_horizon=2, cem=CEMConfig(samples=24, elites=4, iterations=3))
    return LatentMPCAgent(model, cfg, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), torch.Generator())


@pytest.fixture(scope="module")
def setting(tiny_dataset):
    spec = envs.get_spec("reacher")
    tasks = sample_goal_tasks(tiny_dataset.split("heldout"), spec, 5, 5, np.random.default_rng(0))
    tasks = [t.__class__(**{**t.__dict__, "seed": task_seed(7, i)}) for i, t in enumerate(tasks)]
    tasks[1] = tasks[1].__class__(**{**tasks[1].__dict__, "budget": 3})  # one task ends early, mid-batch
    env_list = [envs.make_env("reacher", max_episode_steps=12) for _ in range(3)]
    yield spec, tasks, env_list
    for env in env_list:
        env.close()


def test_one_env_plays_the_tasks_one_by_one_exactly(setting):
    spec, tasks, env_list = setting
    summary, results = evaluate_agent(env_list[:1], spec, tasks, agent(), budget=8, progress=False)
    alone = agent()
    for task, result in zip(tasks, results):
        alone.seed(task.seed)
        reference = run_task(env_list[0], spec, task, alone, 8)
        assert (result.success, result.steps, result.final_goal_error) == (
            reference.success, reference.steps, reference.final_goal_error)
    assert summary["episodes"] == 5


def test_a_batch_of_tasks_gives_the_one_by_one_results(setting):
    spec, tasks, env_list = setting
    _, alone = evaluate_agent(env_list[:1], spec, tasks, agent(), budget=8, progress=False)
    finished = []
    batched_agent = agent()
    _, batched = evaluate_agent(env_list, spec, tasks, batched_agent, budget=8, progress=False, record={1, 4},
                                on_result=lambda i, r: finished.append(i))
    assert sorted(finished) == list(range(5)) and batches_agent(batched_agent)
    for a, b in zip(alone, batched):
        assert (a.success, a.steps) == (b.success, b.steps)
        assert a.final_goal_error == pytest.approx(b.final_goal_error, abs=1e-4)
        assert len(a.plan_seconds) == len(b.plan_seconds) and len(a.plan_flops) == len(b.plan_flops)
    assert batched[1].steps == 3 and len(batched[1].frames) == 4 and not batched[0].frames
    # per-task FLOPs of a batched replan are the one-task FLOPs
    assert batched[0].plan_flops[0] == pytest.approx(alone[0].plan_flops[0], rel=1e-6)


def test_a_batch_resumes_without_rerunning_finished_tasks(setting):
    spec, tasks, env_list = setting
    _, full = evaluate_agent(env_list, spec, tasks, agent(), budget=8, progress=False)
    ran = []
    _, resumed = evaluate_agent(env_list, spec, tasks, agent(), budget=8, progress=False,
                                done={0: full[0], 3: full[3]}, on_result=lambda i, r: ran.append(i))
    assert sorted(ran) == [1, 2, 4]
    assert [r.steps for r in resumed] == [r.steps for r in full]


def test_agents_that_do_not_batch_play_one_by_one_and_unseeded_batches_are_refused(setting):
    spec, tasks, env_list = setting
    zero = ZeroAgent(env_list[0].action_space)
    assert not batches_agent(zero)
    _, results = evaluate_agent(env_list, spec, tasks, zero, budget=8, progress=False)
    assert len(results) == 5
    unseeded = [t.__class__(**{**t.__dict__, "seed": None}) for t in tasks]
    with pytest.raises(ValueError, match="needs a seed per task"):
        evaluate_agent(env_list, spec, unseeded, agent(), budget=8, progress=False)


def test_plan_py_plays_batches_to_the_one_by_one_results(tiny_dataset, tmp_path):
    import json

    from experiments import plan
    from experiments.conf import load
    from tests.conftest import dataset_args

    tiny_world_model(block=5, moving=True).save_pretrained(tmp_path / "model")
    base = [*dataset_args(tiny_dataset), "episodes=4", "budget=6", "goal_offset=10", "progress=false",
            f"model={tmp_path}/model", "hierarchy=false", "baselines=[zero]", "videos=1",
            "mpc.cem.samples=16", "mpc.cem.elites=4", "mpc.cem.iterations=2"]
    one = plan.run(load("plan", [*base, f"output_dir={tmp_path}/one"]))
    many = plan.run(load("plan", [*base, "batch_tasks=3", f"output_dir={tmp_path}/many"]))

    def tasks(summary):
        lines = [json.loads(x) for x in open(summary["task_journal"]).read().splitlines()[1:]]
        return {(x["agent"], x["index"]): x for x in lines if "agent" in x}

    a, b = tasks(one), tasks(many)
    assert a.keys() == b.keys() and len(a) == 8
    for key in a:
        assert (a[key]["success"], a[key]["steps"]) == (b[key]["success"], b[key]["steps"])
        assert a[key]["final_goal_error"] == pytest.approx(b[key]["final_goal_error"], abs=1e-4)
    assert len(many["videos"]) == len(one["videos"]) == 1


@pytest.mark.slow
def test_two_ranks_merge_to_the_results_of_one_process(tiny_dataset, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import dataset_args

    root = Path(__file__).resolve().parents[1]
    tiny_world_model(block=5, moving=True).save_pretrained(tmp_path / "model")
    args = [str(root / "experiments" / "plan.py"), *dataset_args(tiny_dataset), "episodes=5", "budget=6",
            "goal_offset=10", "progress=false", f"model={tmp_path}/model", "hierarchy=false", "baselines=[random]",
            "videos=1", "mpc.cem.samples=16", "mpc.cem.elites=4", "mpc.cem.iterations=2", "batch_tasks=2"]
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    runs = {"one": [sys.executable], "two": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                              "--nproc_per_node=2"]}
    journals = {}
    for name, launcher in runs.items():
        out = subprocess.run([*launcher, *args, f"output_dir={tmp_path}/{name}", f"hydra.run.dir={tmp_path}/h{name}"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.count("result written to") == 1  # rank 0 alone reports
        (journal,) = (tmp_path / name).glob("plan-*.tasks.jsonl")  # one journal: the ranks' were merged into it
        lines = [json.loads(x) for x in journal.read_text().splitlines()]
        assert lines[-1] == {"finished": True, "chain": lines[-1]["chain"]}
        journals[name] = sorted(([{k: v for k, v in x.items() if k not in ("chain", "act_seconds", "plan_seconds")}
                                  for x in lines[1:-1]]), key=lambda x: (x["agent"], x["index"]))
        assert len(list((tmp_path / name / "videos").rglob("*.gif"))) == 1
    assert len(journals["one"]) == 10 and journals["two"] == journals["one"]
