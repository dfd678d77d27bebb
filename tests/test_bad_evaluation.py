"""Bad inputs and faults, evaluation: fail before any work, keep what is done, draw distinct tasks."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import envs
from experiments import plan, report
from experiments.conf import load
from tests.conftest import dataset_args
from worldmodel.checkpoint import CheckpointError
from worldmodel.evaluation import RandomAgent, TaskJournal, evaluate_agent, sample_goal_tasks
from worldmodel.files import LockedError, writable_dir



# --- fail early, keep what is done -------------------------------------------------------------

def plan_config(tmp_path, dataset, *overrides):
    return load("plan", [*dataset_args(dataset), "episodes=4", "budget=5", "goal_offset=10", "progress=false",
                         "model=", "videos=0", f"output_dir={tmp_path}/out", *overrides])


def test_an_output_dir_that_is_a_file_fails_before_any_work(tmp_path):
    (tmp_path / "out").write_text("")
    cfg = load("plan", [f"data.root={tmp_path}/data", "model=", f"output_dir={tmp_path}/out"])
    with pytest.raises(NotADirectoryError, match="output_dir .* is a file"):
        plan.run(cfg)
    assert not (tmp_path / "data").exists()  # nothing was collected


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_output_dir_fails_before_any_work(tmp_path):
    (tmp_path / "out").mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="not writable"):
        writable_dir(tmp_path / "out", "output_dir")


def test_a_model_that_does_not_fit_the_env_fails_before_collecting(tmp_path):
    cfg = load("plan", [f"data.root={tmp_path}/data", "env.image_size=96", f"output_dir={tmp_path}/out"])
    with pytest.raises(ValueError, match=r"trained on reacher with other settings: env.image_size=64 \(asked: 96\)"):
        plan.run(cfg)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("override, key", [("planners=[cem,cem]", "planners"), ("baselines=[zero,zero]", "baselines"),
                                           ("only_tasks=[1,1,1]", "only_tasks")])
def test_an_agent_or_task_named_twice_is_refused(tmp_path, override, key):
    with pytest.raises(ValueError, match=rf"{key}=.* more than once"):
        load("plan", ["model=", f"output_dir={tmp_path}/out", override])


def test_a_budget_of_no_steps_is_refused(tmp_path):
    from worldmodel.evaluation.protocol import GoalTask

    with pytest.raises(ValueError, match="budget must be >= 1"):
        load("plan", ["model=", f"output_dir={tmp_path}/out", "budget=0"])
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="a task's budget is >= 1 env steps"):
        GoalTask(-1, -1, np.zeros(2), np.zeros(2), image, budget=0)


def test_a_model_trained_on_another_env_is_refused(tmp_path):
    cfg = load("plan", ["env=pointmaze", "model=models/reacher", f"output_dir={tmp_path}/out"])
    with pytest.raises(ValueError, match="trained on env 'reacher', not 'pointmaze'"):
        plan.run(cfg)


def test_probing_a_model_trained_on_another_env_is_refused_before_collecting(tmp_path):
    from experiments import probe

    cfg = load("probe", ["env=pointmaze", "model=models/reacher", f"data.root={tmp_path}/data"])
    with pytest.raises(ValueError, match="model models/reacher was trained on env 'reacher', not 'pointmaze'"):
        probe.run(cfg)
    assert not (tmp_path / "data").exists()


def test_a_model_trained_on_another_maze_layout_is_refused(tmp_path):
    import json

    (tmp_path / "model").mkdir()
    kwargs = load("plan", ["env=pointmaze"]).env.env_kwargs()
    (tmp_path / "model" / "config.json").write_text(json.dumps({"env": "pointmaze", "env_kwargs": kwargs}))
    cfg = load("plan", ["env=pointmaze", "env.maze=large", f"model={tmp_path}/model", f"output_dir={tmp_path}/out"])
    with pytest.raises(ValueError, match="env.maze='medium' \\(asked: 'large'\\)"):
        plan.run(cfg)


def test_maze_protocol_settings_are_checked_in_the_config():
    with pytest.raises(ValueError, match="protocol must be one of"):
        load("plan", ["protocol=mazes"])
    with pytest.raises(ValueError, match="distance bin needs 1 <= lo <= hi"):
        load("plan", ["env=pointmaze", "bins.far.lo=0"])
    with pytest.raises(ValueError, match="env.maze must be one of \\['large', 'medium'\\], got 'huge'"):
        load("plan", ["env=pointmaze", "env.maze=huge"])
    with pytest.raises(ValueError, match="planners lists 'cma'"):
        load("plan", ["env=pointmaze", "planners=[cem,cma]"])


def test_a_missing_encoder_checkpoint_fails_before_collecting(tmp_path):
    from experiments import train_dynamics

    cfg = load("train_dynamics", [f"data.root={tmp_path}/data", f"encoder_checkpoint={tmp_path}/none",
                                  f"out_dir={tmp_path}/run"])
    with pytest.raises(CheckpointError, match="does not exist"):
        train_dynamics.run(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_more_tasks_than_the_heldout_episodes_can_hold_fail_in_the_config():
    with pytest.raises(ValueError, match=r"hold at most 760 \(episode, start\) pairs"):
        load("plan", ["data.heldout_episodes=10", "episodes=1000"])


def test_a_model_without_a_slow_level_fails_before_collecting_and_names_the_way_out(tmp_path):
    """The hierarchy is on by default: a model trained without a slow level is refused with the two
    ways on (train one, or hierarchy=false), not planned flat without a word."""
    from tests.models import tiny_world_model

    tiny_world_model(block=5).save_pretrained(tmp_path / "model")
    cfg = load("plan", [f"data.root={tmp_path}/data", f"model={tmp_path}/model", f"output_dir={tmp_path}/out"])
    with pytest.raises(FileNotFoundError, match=r"no slow level at .*model/slow.*train_slow\.py.*hierarchy=false"):
        plan.run(cfg)
    assert not (tmp_path / "data").exists()


def test_a_slow_level_trained_on_another_env_or_layout_is_refused_before_collecting(tmp_path):
    """Every shipped slow level has the same level-1 layout, so the layout check alone would let a
    Reacher plan run with the maze's slow level; the env it was trained on decides."""
    cases = [(["env=reacher", "slow_model=models/pointmaze/slow"], "trained on env 'pointmaze', not 'reacher'"),
             (["env=pointmaze", "env.maze=large", "slow_model=models/pointmaze/slow"],
              r"slow level models/pointmaze/slow was trained on pointmaze with other settings: env.maze='medium'")]
    for overrides, message in cases:
        cfg = load("plan", [*overrides, f"data.root={tmp_path}/data", f"output_dir={tmp_path}/out"])
        with pytest.raises(ValueError, match=message):
            plan.run(cfg)
    assert not (tmp_path / "data").exists()


def test_a_slow_model_without_the_hierarchy_is_refused():
    with pytest.raises(ValueError, match="slow_model='models/reacher/slow' .* hierarchy=false"):
        load("plan", ["hierarchy=false", "slow_model=models/reacher/slow"])


def test_a_missing_model_fails_before_collecting(tmp_path):
    cfg = load("plan", [f"data.root={tmp_path}/data", f"model={tmp_path}/none", f"output_dir={tmp_path}/out"])
    with pytest.raises(FileNotFoundError, match="not found"):
        plan.run(cfg)
    assert not (tmp_path / "data").exists()


def test_an_interrupted_evaluation_keeps_its_tasks_and_resumes_to_the_same_result(tiny_dataset, tmp_path, capsys):
    full = plan.run(plan_config(tmp_path / "a", tiny_dataset))
    cfg = plan_config(tmp_path / "b", tiny_dataset)
    original = plan.evaluate_agent
    calls = {"n": 0}

    def interrupted(*args, **kwargs):  # Ctrl-C after the first two random-agent tasks
        on_result = kwargs["on_result"]

        def counting(i, r):
            on_result(i, r)
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

        return original(*args, **{**kwargs, "on_result": counting})

    plan.evaluate_agent = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            plan.run(cfg)
    finally:
        plan.evaluate_agent = original
    (journal,) = (tmp_path / "b" / "out").glob("*.tasks.jsonl")
    assert len(journal.read_text().splitlines()) == 3  # the header and two tasks
    assert "resume=true" in capsys.readouterr().err
    with open(journal, "a") as f:
        f.write('{"agent": "random", "ind')  # a line cut short by a kill
    resumed = plan.run(plan_config(tmp_path / "b", tiny_dataset, "resume=true"))
    assert "resuming" in capsys.readouterr().out
    assert not journal.exists()  # finished: moved next to the result, marked finished
    assert json.loads(Path(resumed["task_journal"]).read_text().splitlines()[-1])["finished"] is True
    strip = lambda r: {k: v for k, v in r.items() if k not in ("mean_act_ms",)}  # noqa: E731
    assert [strip(r) for r in resumed["results"]] == [strip(r) for r in full["results"]]


def test_resuming_an_evaluation_with_other_settings_is_refused(tiny_dataset, tmp_path):
    header = {"task_seed": 0, "episodes": 4}
    TaskJournal(tmp_path / "j.jsonl", header)
    with pytest.raises(ValueError, match="task_seed: 0 -> 1"):
        TaskJournal(tmp_path / "j.jsonl", {**header, "task_seed": 1}, resume=True)
    TaskJournal(tmp_path / "j.jsonl", header)  # without resume: the old journal is kept aside
    assert (tmp_path / "j.prev-1.jsonl").exists()
    TaskJournal(tmp_path / "j.jsonl", header)  # and again: the first one kept aside stays
    assert (tmp_path / "j.prev-1.jsonl").exists() and (tmp_path / "j.prev-2.jsonl").exists()


def test_a_journal_cut_by_a_kill_resumes_and_keeps_appending_whole_lines(tiny_dataset, tmp_path):
    from worldmodel.evaluation import EpisodeResult

    task = sample_goal_tasks(tiny_dataset.split("heldout"), envs.get_spec("reacher"), 1, 10, np.random.default_rng(0))[0]
    result = EpisodeResult(True, 3, 0.01, 0.01, [0.1, 0.1, 0.1])
    journal = TaskJournal(tmp_path / "j.jsonl", {"seed": 0})
    journal.append("cem", 0, task, result)
    with open(journal.path, "a") as f:
        f.write('{"agent": "cem", "index": 1, "succ')  # killed mid-line
    with pytest.raises(LockedError, match=f"an evaluation with these settings in .* is in use by process {os.getpid()}"):
        TaskJournal(tmp_path / "j.jsonl", {"seed": 0}, resume=True)  # a second evaluation, same settings, same place
    journal.release()  # as at the end of plan.run (or when its process dies)
    again = TaskJournal(tmp_path / "j.jsonl", {"seed": 0}, resume=True)
    assert list(again.done["cem"]) == [0]
    again.append("cem", 1, task, result)
    again.release()
    third = TaskJournal(tmp_path / "j.jsonl", {"seed": 0}, resume=True)
    assert sorted(third.done["cem"]) == [0, 1] and third.done["cem"][1] == result


def test_two_evaluations_into_one_output_dir_in_the_same_second_keep_both_results(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(report.time, "strftime", lambda *a: "20260101-000000")  # both finish "in the same second"
    monkeypatch.setattr(report.os, "getpid", lambda: 111)
    first = plan.run(plan_config(tmp_path, tiny_dataset, "baselines=[zero]"))
    monkeypatch.setattr(report.os, "getpid", lambda: 222)  # another process
    second = plan.run(plan_config(tmp_path, tiny_dataset, "baselines=[zero]"))
    assert first["result"] != second["result"] and first["task_journal"] != second["task_journal"]
    for run in (first, second):
        assert json.loads(Path(run["result"]).read_text())["results"] == run["results"]
        assert Path(run["task_journal"]).exists()


@pytest.mark.parametrize("tamper", ["edit", "remove", "swap"])
def test_a_journal_edited_by_hand_is_refused_not_counted(tiny_dataset, tmp_path, tamper):
    from worldmodel.evaluation import EpisodeResult

    task = sample_goal_tasks(tiny_dataset.split("heldout"), envs.get_spec("reacher"), 1, 10, np.random.default_rng(0))[0]
    journal = TaskJournal(tmp_path / "j.jsonl", {"seed": 0})
    for i, ok in enumerate([True, False, False]):
        journal.append("cem", i, task, EpisodeResult(ok, 3, 0.01, 0.01, [0.1, 0.1, 0.1]))
    journal.release()
    lines = journal.path.read_text().splitlines()
    if tamper == "edit":  # a failure turned into a success, its chain hash kept
        lines[2] = lines[2].replace('"success": false', '"success": true')
    elif tamper == "remove":
        del lines[2]
    else:
        lines[2], lines[3] = lines[3], lines[2]
    journal.path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line [23] was edited, moved or removed after it was written"):
        TaskJournal(tmp_path / "j.jsonl", {"seed": 0}, resume=True)


def test_each_task_has_its_own_seed_so_resuming_gives_the_same_results(tiny_dataset):
    spec = envs.get_spec("reacher")
    env = envs.EnvConfig(episode_steps=20).make(max_episode_steps=5)
    tasks = sample_goal_tasks(tiny_dataset.split("heldout"), spec, 4, 10, np.random.default_rng(0))
    rand = RandomAgent(env.action_space, np.random.default_rng(0))
    _, full = evaluate_agent(env, spec, tasks, rand, 5, progress=False, seed=3)
    _, resumed = evaluate_agent(env, spec, tasks, rand, 5, progress=False, seed=3, done={0: full[0], 1: full[1]})
    assert [r.best_goal_error for r in resumed] == [r.best_goal_error for r in full]
    _, other = evaluate_agent(env, spec, tasks, rand, 5, progress=False, seed=4)
    assert [r.best_goal_error for r in other] != [r.best_goal_error for r in full]
    env.close()


# --- statistics -------------------------------------------------------------------------------------

def test_tasks_are_distinct_pairs(tiny_dataset):
    spec = envs.get_spec("reacher")
    tasks = sample_goal_tasks(tiny_dataset.split("heldout"), spec, 20, 10, np.random.default_rng(0))
    assert len({(t.episode, t.start) for t in tasks}) == 20


def test_more_tasks_than_the_split_holds_is_refused(tiny_dataset):
    spec = envs.get_spec("reacher")  # 2 episodes x 11 starts at most
    with pytest.raises(ValueError, match=r"asked for 40 tasks, but the held-out split holds only \d+ distinct"):
        sample_goal_tasks(tiny_dataset.split("heldout"), spec, 40, 10, np.random.default_rng(0))


@pytest.fixture(scope="module")
def tiny_reacher_model(tmp_path_factory):
    """A tiny world model that says it was trained on Reacher with the shipped model's env settings."""
    from tests.models import tiny_world_model
    from worldmodel.checkpoint import load_config

    path = tmp_path_factory.mktemp("tiny") / "model"
    trained = load_config("models/reacher")
    tiny_world_model(block=5).save_pretrained(path, extra={k: trained[k] for k in ("env", "env_kwargs")})
    return path


def test_videos_of_two_evaluations_in_one_output_dir_never_overwrite_each_other(tiny_dataset, tiny_reacher_model,
                                                                                 tmp_path, monkeypatch):
    monkeypatch.setattr(report.time, "strftime", lambda *a: "20260101-000000")  # both in the same second
    runs = []
    for pid in (111, 222):
        monkeypatch.setattr(report.os, "getpid", lambda pid=pid: pid)
        runs.append(plan.run(plan_config(tmp_path, tiny_dataset, f"model={tiny_reacher_model}", "hierarchy=false",
                                         "baselines=[]", "videos=1", "episodes=1", "mpc.cem.samples=8",
                                         "mpc.cem.elites=2", "mpc.cem.iterations=1")))
    first, second = (run["videos"] for run in runs)
    assert first and second and not set(first) & set(second)
    assert all(Path(v).exists() for v in first + second)  # the first run's JSON still points at its own GIFs


def test_restarts_without_resume_keep_every_earlier_journal(tmp_path, capsys):
    header = {"seed": 0}
    for n in range(3):  # three starts that were each interrupted
        TaskJournal(tmp_path / "j.jsonl", header).release()
    assert sorted(p.name for p in tmp_path.glob("j*.jsonl")) == ["j.jsonl", "j.prev-1.jsonl", "j.prev-2.jsonl"]
    assert "its tasks are kept in" in capsys.readouterr().err


def test_a_task_with_a_budget_of_no_steps_is_refused():
    from worldmodel.evaluation.protocol import GoalTask

    with pytest.raises(ValueError, match="a task's budget is >= 1 env steps .* got 0"):
        GoalTask(-1, -1, np.zeros(4), np.zeros(4), np.zeros((4, 4, 3), np.uint8), budget=0)


def test_a_slow_level_of_another_level1_model_of_the_same_env_and_layout_is_refused_before_collecting(
        tiny_reacher_model, tmp_path):
    """The shipped Reacher slow level has the tiny model's layout and env: only its lineage tells them apart."""
    cfg = load("plan", [f"model={tiny_reacher_model}", "slow_model=models/reacher/slow", f"data.root={tmp_path}/data",
                        f"output_dir={tmp_path}/out"])
    with pytest.raises(ValueError, match=r"slow level models/reacher/slow was trained on the latents of the level-1 "
                                         r"model 'models/reacher' \(weights sha256 .*train_slow.py model="):
        plan.run(cfg)
    assert not (tmp_path / "data").exists()


def test_a_bad_variant_is_refused_in_the_config_before_any_work():
    with pytest.raises(ValueError, match=r"variants.fast=.*planner must be one of \['cem', 'gradient', 'icem', "
                                         r"'mppi', 'policy'\], got 'ceem'"):
        load("plan", ["+variants.fast.planner=ceem"])
    with pytest.raises(ValueError, match=r"variants.fast=.*need 2 <= elites <= samples"):
        load("plan", ["+variants.fast.cem.samples=4"])


def test_the_result_records_the_weights_of_every_model_it_planned_with(tiny_dataset, tiny_reacher_model, tmp_path):
    from worldmodel.files import file_sha256

    summary = plan.run(plan_config(tmp_path, tiny_dataset, f"model={tiny_reacher_model}", "hierarchy=false",
                                   "baselines=[]", "episodes=1", "mpc.cem.samples=8", "mpc.cem.elites=2",
                                   "mpc.cem.iterations=1"))
    saved = json.loads(Path(summary["result"]).read_text())
    assert saved["model_weights_sha256"] == file_sha256(tiny_reacher_model / "model.safetensors")
