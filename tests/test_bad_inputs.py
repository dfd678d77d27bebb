"""Bad inputs and faults: each is refused early with a message that names it, or handled as documented.

The classes (issue 12): a request answered with other data; numbers that are not numbers;
inputs outside the contract; failing late; statistics of the task draw.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from experiments import plan
from experiments.conf import load
from planners import CEM, MPPI, Bounds, CEMConfig, GradientConfig, GradientPlanner, MPPIConfig, NonFiniteCost
from planners.mpc import LatentMPCAgent, MPCConfig
from tests.conftest import dataset_args, tiny_collect_config
from tests.models import tiny_world_model
from worldmodel.checkpoint import CheckpointError, load_config, load_weights, save_checkpoint
from worldmodel.data import CollectConfig, DatasetError, PolicyConfig, ensure_dataset, open_dataset
from worldmodel.data.storage import MANIFEST, manifest_checksum
from worldmodel.dynamics import FeatureCache, WorldModel
from worldmodel.evaluation import RandomAgent, TaskJournal, evaluate_agent, sample_goal_tasks
from worldmodel.files import DirectoryLock, LockedError, writable_dir
from worldmodel.jepa import EncoderConfig, ViTEncoder
from worldmodel.training import OptimConfig, RunConfigChanged, RunDirectory, resolve_device

ROOT = Path(__file__).resolve().parents[1]
DEAD_PID = 2**22 + 1  # above the largest pid_max Linux allows: never a live process


@pytest.fixture(scope="module")
def model():
    return tiny_world_model(block=2)


def copy_dataset(dataset, tmp_path) -> Path:
    return Path(shutil.copytree(dataset.path, tmp_path / dataset.path.name))


def edit_manifest(path: Path, edit, keep_checksum_valid: bool = False) -> None:
    m = json.loads((path / MANIFEST).read_text())
    edit(m)
    if keep_checksum_valid:
        m["manifest_checksum"] = manifest_checksum(m)
    (path / MANIFEST).write_text(json.dumps(m))


# --- 1. a request is answered with what was asked for, or refused ----------------------------------

@pytest.mark.parametrize("change", [{"eval_seed": 2024}, {"heldout_episodes": 50}, {"env": envs.EnvConfig(antialias=False)},
                                    {"policy": PolicyConfig(name="correlated", beta=0.5)},
                                    {"env": envs.EnvConfig(episode_steps=50)}])
def test_every_setting_that_changes_the_heldout_data_changes_its_name(change):
    base, other = CollectConfig(), CollectConfig(**change)
    assert other.heldout_dataset_name != base.heldout_dataset_name
    assert other.dataset_name != base.dataset_name


def test_settings_of_other_splits_leave_the_heldout_name_alone():
    assert CollectConfig(train_episodes=3000).heldout_dataset_name == CollectConfig().heldout_dataset_name
    assert CollectConfig(train_episodes=3000).dataset_name != CollectConfig().dataset_name


def test_a_dataset_holding_other_data_than_requested_is_refused_naming_the_keys(tiny_dataset):
    other = tiny_collect_config(tiny_dataset.path.parent, eval_seed=2024).identity(("heldout",))
    with pytest.raises(DatasetError, match=r"heldout.seed: 1000 -> 2024"):
        open_dataset(tiny_dataset.path, verify=False, expect=other)
    ok = tiny_collect_config(tiny_dataset.path.parent).identity()
    assert open_dataset(tiny_dataset.path, verify=False, expect=ok).path == tiny_dataset.path


def test_an_explicit_name_holding_other_data_is_refused(tiny_dataset):
    cfg = tiny_collect_config(tiny_dataset.path.parent, name=tiny_dataset.path.name, heldout_episodes=50)
    from worldmodel.data import load_dataset

    with pytest.raises(DatasetError, match=r"heldout.episodes: 2 -> 50"):
        load_dataset(cfg, verify=False)


def test_an_edited_manifest_is_refused(tiny_dataset, tmp_path):
    path = copy_dataset(tiny_dataset, tmp_path)
    edit_manifest(path, lambda m: m.update(image_size=96))
    with pytest.raises(DatasetError, match="was edited after the dataset was written"):
        open_dataset(path, verify=False)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(image_size=96), r"manifest says 96x96 uint8 images"),
    (lambda m: m["splits"]["heldout"].update(episodes=50), r"2 episodes, manifest says 50"),
    (lambda m: m["splits"]["train"].update(frames=7), r"obs/states have 126/126 frames, manifest says 7"),
])
def test_a_manifest_that_disagrees_with_its_arrays_is_refused(tiny_dataset, tmp_path, edit, match):
    path = copy_dataset(tiny_dataset, tmp_path)
    edit_manifest(path, edit, keep_checksum_valid=True)  # even a consistent forgery is checked against the arrays
    with pytest.raises(DatasetError, match=match):
        open_dataset(path, verify=False)


def test_a_format_1_manifest_is_still_read_and_checked_against_its_arrays(tiny_dataset, tmp_path):
    path = copy_dataset(tiny_dataset, tmp_path)
    edit_manifest(path, lambda m: (m.update(format_version=1), m.pop("manifest_checksum")))
    assert open_dataset(path, verify=False).manifest["format_version"] == 1
    edit_manifest(path, lambda m: m["splits"]["heldout"].update(episodes=50))
    with pytest.raises(DatasetError, match="manifest says 50"):
        open_dataset(path, verify=False)


def test_unfinished_collections_of_dead_processes_are_removed_and_reported(tiny_dataset, capsys):
    stale = tiny_dataset.path.parent / f"{tiny_dataset.path.name}.partial-{DEAD_PID}"
    stale.mkdir()
    (stale / "obs.npy").write_bytes(b"half")
    assert ensure_dataset(tiny_collect_config(tiny_dataset.path.parent)) == tiny_dataset.path
    assert not stale.exists() and "no longer runs" in capsys.readouterr().err


def test_a_dataset_under_its_name_from_before_the_hash_is_used_only_when_it_matches(tiny_dataset, tmp_path, capsys):
    from worldmodel.data.collect import legacy_name

    cfg = tiny_collect_config(tmp_path)
    legacy = Path(shutil.copytree(tiny_dataset.path, tmp_path / legacy_name(cfg, ("train", "val", "heldout"))))
    assert ensure_dataset(cfg) == legacy and "named before dataset names carried a hash" in capsys.readouterr().err
    other = tiny_collect_config(tmp_path, eval_seed=7, num_envs=1)  # same legacy name, other held-out episodes
    assert legacy_name(other, ("train", "val", "heldout")) == legacy.name
    path = ensure_dataset(other, splits=("heldout",))  # not the legacy directory: a new held-out set
    assert path != legacy and "not using" in capsys.readouterr().err
    assert open_dataset(path).manifest["eval_seed"] == 7
    with pytest.raises(DatasetError):  # explicit names are used as given, and checked
        from worldmodel.data import load_dataset

        load_dataset(tiny_collect_config(tmp_path, name=legacy.name, val_episodes=3), verify=False)


def run_config(**changes) -> dict:
    return {"seed": 0, "train": {"steps": 10, "lr": 1e-3, "progress": True}, **changes}


def fake_run(path: Path, config: dict, checksum: str = "abc") -> None:
    save_checkpoint(path / "checkpoint", {"run": config, "dataset_checksum": checksum}, {"w": torch.zeros(2)})
    (path / "log.csv").write_text("step\n1\n")


def test_resume_refuses_changed_settings_naming_them_unless_allowed(tmp_path):
    fake_run(tmp_path, run_config())
    with pytest.raises(RunConfigChanged, match=r"train.steps: 10 -> 20.*resume_allow=\[train.steps\]"):
        with RunDirectory(tmp_path, run_config(train={"steps": 20, "lr": 1e-3}), resume=True):
            pass
    with RunDirectory(tmp_path, run_config(train={"steps": 20, "lr": 1e-3}), resume=True, allow=["train.steps"]):
        pass
    with RunDirectory(tmp_path, run_config(train={"steps": 10, "lr": 1e-3, "progress": False}), resume=True):
        pass  # progress bars do not change what a run computes


def test_resume_refuses_other_data(tmp_path):
    fake_run(tmp_path, run_config(), checksum="a" * 64)
    with RunDirectory(tmp_path, run_config(), resume=True) as run:
        with pytest.raises(RunConfigChanged, match="on other data"):
            run.check_dataset("b" * 64)
        run.check_dataset("a" * 64)


def test_a_fresh_run_never_overwrites_an_existing_one(tmp_path):
    (tmp_path / "log.csv").write_text("step\n5\n")  # a run killed before its first checkpoint
    with pytest.raises(FileExistsError, match="pass --resume"):
        with RunDirectory(tmp_path, run_config()):
            pass


def test_a_run_directory_in_use_is_locked(tmp_path):
    with RunDirectory(tmp_path, run_config()):
        with pytest.raises(LockedError, match=f"in use by process {os.getpid()}"):
            with RunDirectory(tmp_path, run_config()):
                pass
    with RunDirectory(tmp_path, run_config()):  # released on exit
        pass


def test_a_lock_dies_with_its_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"from worldmodel.files import DirectoryLock; import time; "
                               f"lock = DirectoryLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockedError, match=f"process {holder.pid}"):
        DirectoryLock(tmp_path).acquire()
    holder.kill()
    holder.wait()
    DirectoryLock(tmp_path).acquire().release()


def test_a_checkpoint_caught_between_its_renames_is_put_back(tmp_path, capsys):
    fake_run(tmp_path, run_config())
    os.rename(tmp_path / "checkpoint", tmp_path / f"checkpoint.old-{DEAD_PID}")
    (tmp_path / f"checkpoint.tmp-{DEAD_PID}").mkdir()
    with RunDirectory(tmp_path, run_config(), resume=True):
        assert load_config(tmp_path / "checkpoint")["run"] == run_config()
    assert not list(tmp_path.glob("checkpoint.*-*")) and "restored checkpoint" in capsys.readouterr().err


def test_resume_allow_must_name_real_settings():
    with pytest.raises(ValueError, match=r"resume_allow names unknown settings \['train.stpes'\]"):
        load("train_dynamics", ["resume_allow=[train.stpes]"])


def test_a_corrupt_or_stale_feature_cache_is_recomputed_not_used(model, tiny_dataset, tmp_path, capsys):
    cache = FeatureCache(tmp_path, "data/train")
    heldout = tiny_dataset.split("heldout")
    table = model.encoder.feature_table(heldout, cache, progress=False)
    (path,) = tmp_path.glob("features-*.npy")
    np.save(path, np.zeros_like(table.numpy()))  # zeroed in place
    again = model.encoder.feature_table(heldout, cache, progress=False)
    assert torch.equal(again, table) and "does not match its recorded checksum" in capsys.readouterr().err
    path.with_name(path.name + ".sha256").unlink()  # written by an older version: no record
    assert torch.equal(model.encoder.feature_table(heldout, cache, progress=False), table)
    assert "recomputing" in capsys.readouterr().err


# --- 2. numbers that are not numbers -----------------------------------------------------------

def test_a_checkpoint_overwritten_in_place_is_refused(model, tmp_path):
    path = model.save_pretrained(tmp_path / "m")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4000:] = b"\xff" * 4000  # same size, NaN bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        WorldModel.from_pretrained(path)


def test_non_finite_weights_are_refused_even_without_a_recorded_checksum(tmp_path):
    save_checkpoint(tmp_path / "c", {}, {"w": torch.tensor([1.0, float("nan")])})
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config.pop("weights_sha256")
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="1 weight tensors hold NaN or inf"):
        load_weights(tmp_path / "c")


@pytest.mark.parametrize("content, match", [("{not json", "is not valid JSON"), ("[1, 2]", "holds a list")])
def test_an_unreadable_checkpoint_config_is_refused(model, tmp_path, content, match):
    path = model.save_pretrained(tmp_path / "m")
    (path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        WorldModel.from_pretrained(path)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        WorldModel.from_pretrained(tmp_path / "nowhere")


def states_and_actions(model, n=3):
    obs = torch.randint(0, 255, (n, 3, 64, 64), dtype=torch.uint8)
    s = model.encode(obs)
    return s, torch.zeros(n, 4, model.block_dim)


@pytest.mark.parametrize("where", ["s0", "actions"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_rollout_refuses_non_finite_inputs_naming_them(model, where, value):
    s, a = states_and_actions(model)
    (s if where == "s0" else a)[1, 0, ...] = value
    n = 1 if where == "s0" else model.block_dim
    with pytest.raises(ValueError, match=f"{where} holds {n} non-finite values"):
        model.rollout(s, a)


def test_predict_and_encode_refuse_non_finite_inputs(model):
    s, a = states_and_actions(model)
    s[0, 0] = float("nan")
    with pytest.raises(ValueError, match="s holds 1 non-finite"):
        model.predict(s, a[:, 0])
    frames = torch.zeros(2, 2, 3, 64, 64, dtype=torch.uint8)
    actions = torch.full((2, model.layout.span, 2), float("nan"))
    with pytest.raises(ValueError, match="actions holds 8 non-finite"):
        model.encode(frames, actions)


@pytest.mark.parametrize("planner", [
    CEM(CEMConfig(samples=20, elites=4, iterations=2), 3, Bounds([-1.0], [1.0])),
    MPPI(MPPIConfig(samples=20, iterations=2), 3, Bounds([-1.0], [1.0])),
    GradientPlanner(GradientConfig(restarts=2, steps=2), 3, Bounds([-1.0], [1.0])),
], ids=["cem", "mppi", "gradient"])
def test_planners_raise_when_every_cost_is_not_finite(planner):
    nan_cost = lambda a: (a.sum((-1, -2)) * float("nan"))  # noqa: E731
    with torch.enable_grad():
        with pytest.raises(NonFiniteCost, match=r"every candidate's cost was NaN or inf for problems \[0, 1\]"):
            planner.plan(nan_cost, 2, torch.Generator().manual_seed(0))


def test_cem_plans_around_candidates_whose_cost_is_nan():
    def cost(a):  # NaN for candidates that push negative; otherwise distance to 0.5
        c = (a - 0.5).pow(2).sum((-1, -2))
        return torch.where(a[..., 0, 0] < 0, torch.full_like(c, float("nan")), c)

    cem = CEM(CEMConfig(samples=50, elites=5, iterations=4), 2, Bounds([-1.0], [1.0]))
    result = cem.plan(cost, 1, torch.Generator().manual_seed(0))
    assert torch.isfinite(result.cost).all() and result.actions[0, 0, 0] >= 0


def test_frame_features_that_are_not_finite_stop_before_training(tiny_dataset):
    broken = tiny_world_model(block=2)
    with torch.no_grad():
        next(broken.encoder.vit.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="frame features hold .* non-finite values"):
        broken.encoder.feature_table(tiny_dataset.split("heldout"), progress=False)


# --- 3. inputs outside the contract ------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_images_that_are_not_uint8_are_refused(model, dtype):
    frames = torch.zeros(2, 3, 64, 64, dtype=dtype)
    with pytest.raises(ValueError, match=f"frames must be uint8 images .*got {dtype}"):
        model.encode(frames)
    vit = ViTEncoder(EncoderConfig(size="tiny"))
    with pytest.raises(ValueError, match=r"images must be uint8 \(0-255\), got"):
        vit(frames)


def test_normalised_float_images_need_the_explicit_convention():
    vit = ViTEncoder(EncoderConfig(size="tiny"))
    assert vit(torch.zeros(1, 3, 64, 64), normalized=True).shape == (1, 64, vit.width)
    with pytest.raises(ValueError, match="normalized=True takes float images"):
        vit(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), normalized=True)


def agent(model) -> LatentMPCAgent:
    cfg = MPCConfig(horizon=2, receding_horizon=2, cem=CEMConfig(samples=8, elites=2, iterations=1))
    return LatentMPCAgent(model, cfg, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), torch.Generator())


@pytest.mark.parametrize("image, match", [
    (np.full((64, 64, 3), np.nan), r"goal image must be an \(H, W, C\) uint8 numpy image, got float64"),
    (np.zeros((64, 64, 3), np.float32), "got float32"),
    (np.zeros((32, 32, 3), np.uint8), r"must have shape \(64, 64, 3\) for this model, got \(32, 32, 3\)"),
    (np.zeros((3, 64, 64), np.uint8), r"must have shape \(64, 64, 3\)"),
    (torch.zeros(64, 64, 3, dtype=torch.uint8), "numpy image"),
])
def test_a_bad_goal_image_is_refused_by_the_agent(model, image, match):
    with pytest.raises(ValueError, match=match):
        agent(model).reset(image)


def test_a_bad_observation_is_refused_by_the_agent(model):
    a = agent(model)
    a.reset(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="observation must be"):
        a.act(np.zeros((64, 64, 3), np.float64))


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", "cuda:-1"])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ValueError, match=f"got '{name}'"):
        resolve_device(name)
    with pytest.raises(ValueError, match="device must be one of"):
        load("plan", [f"device={name}"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(name):
    with pytest.raises(RuntimeError, match=f"device={name} was asked for, but torch sees no CUDA GPU"):
        resolve_device(name)


@pytest.mark.parametrize("config, overrides, match", [
    ("collect", ["seed=-1"], "seed and eval_seed must be >= 0"),
    ("plan", ["eval_seed=-5"], "seed and eval_seed must be >= 0"),
    ("plan", ["task_seed=-1"], "videos and task_seed must be >= 0"),
    ("plan", ["videos=-1"], "videos and task_seed must be >= 0"),
    ("plan", ["episodes=0"], "episodes and budget must be >= 1"),
    ("plan", ["goal_offset=500"], r"goal_offset must be in \[1, env.episode_steps=100\]"),
    ("plan", ["baselines=[random,best]"], "unknown baseline 'best'"),
    ("plan", ["mpc.planner=ilqr"], "planner must be 'cem', 'mppi' or 'gradient'"),
    ("plan", ["mpc.cem.elites=1"], "need 2 <= elites <= samples"),
    ("plan", ["env=reacher", "env.image_size=60"], "multiple of the patch size"),
    ("collect", ["policy=correlated", "policy.beta=1.5"], r"policy.beta must be in \[0, 1\)"),
    ("pretrain", ["train.seed=-1"], "seed must be >= 0"),
    ("train_dynamics", ["projection_seed=-2"], "projection_seed must be >= 0"),
    ("probe", ["probe_seed=-1"], "probe_seed must be >= 0"),
    ("probe", ["event_step=9"], "event_step must be in"),
])
def test_config_values_are_checked_before_any_work(config, overrides, match):
    with pytest.raises(ValueError, match=match):
        load(config, overrides)


def test_an_unknown_env_is_refused_naming_the_known_ones():
    with pytest.raises(Exception, match="reacher"):
        load("plan", ["env.name=cheetah"])


def test_optim_config_refuses_bad_values():
    with pytest.raises(ValueError, match="min_lr <= lr"):
        OptimConfig(lr=1e-5, min_lr=1e-3)


# --- 4. fail early, keep what is done -------------------------------------------------------------

def plan_config(tmp_path, dataset, *overrides):
    return load("plan", [*dataset_args(dataset), "episodes=4", "budget=5", "goal_offset=10", "progress=false",
                         "model=", "videos=0", f"output_dir={tmp_path}/out", *overrides])


def test_an_output_dir_that_is_a_file_fails_before_any_work(tmp_path):
    (tmp_path / "out").write_text("")
    cfg = load("plan", [f"root={tmp_path}/data", "model=", f"output_dir={tmp_path}/out"])
    with pytest.raises(NotADirectoryError, match="output_dir .* is a file"):
        plan.run(cfg)
    assert not (tmp_path / "data").exists()  # nothing was collected


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_output_dir_fails_before_any_work(tmp_path):
    (tmp_path / "out").mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="not writable"):
        writable_dir(tmp_path / "out", "output_dir")


def test_a_model_that_does_not_fit_the_env_fails_before_collecting(tmp_path):
    cfg = load("plan", [f"root={tmp_path}/data", "env.image_size=96", f"output_dir={tmp_path}/out"])
    with pytest.raises(ValueError, match="takes 64px images, env gives 96px"):
        plan.run(cfg)
    assert not (tmp_path / "data").exists()


def test_a_missing_encoder_checkpoint_fails_before_collecting(tmp_path):
    from experiments import train_dynamics

    cfg = load("train_dynamics", [f"root={tmp_path}/data", f"encoder_checkpoint={tmp_path}/none",
                                  f"out_dir={tmp_path}/run"])
    with pytest.raises(CheckpointError, match="does not exist"):
        train_dynamics.run(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_more_tasks_than_the_heldout_episodes_can_hold_fail_in_the_config():
    with pytest.raises(ValueError, match=r"hold at most 760 \(episode, start\) pairs"):
        load("plan", ["heldout_episodes=10", "episodes=1000"])


def test_a_missing_model_fails_before_collecting(tmp_path):
    cfg = load("plan", [f"root={tmp_path}/data", f"model={tmp_path}/none", f"output_dir={tmp_path}/out"])
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
    assert Path(resumed["task_journal"]).read_text().splitlines()[-1] == '{"finished": true}'
    strip = lambda r: {k: v for k, v in r.items() if k not in ("mean_act_ms",)}  # noqa: E731
    assert [strip(r) for r in resumed["results"]] == [strip(r) for r in full["results"]]


def test_resuming_an_evaluation_with_other_settings_is_refused(tiny_dataset, tmp_path):
    header = {"task_seed": 0, "episodes": 4}
    TaskJournal(tmp_path / "j.jsonl", header)
    with pytest.raises(ValueError, match="task_seed: 0 -> 1"):
        TaskJournal(tmp_path / "j.jsonl", {**header, "task_seed": 1}, resume=True)
    TaskJournal(tmp_path / "j.jsonl", header)  # without resume: the old journal is kept aside
    assert (tmp_path / "j.prev.jsonl").exists()


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


# --- 5. statistics -------------------------------------------------------------------------------------

def test_tasks_are_distinct_pairs(tiny_dataset):
    spec = envs.get_spec("reacher")
    tasks = sample_goal_tasks(tiny_dataset.split("heldout"), spec, 20, 10, np.random.default_rng(0))
    assert len({(t.episode, t.start) for t in tasks}) == 20


def test_more_tasks_than_the_split_holds_is_refused(tiny_dataset):
    spec = envs.get_spec("reacher")  # 2 episodes x 11 starts at most
    with pytest.raises(ValueError, match=r"asked for 40 tasks, but the held-out split holds only \d+ distinct"):
        sample_goal_tasks(tiny_dataset.split("heldout"), spec, 40, 10, np.random.default_rng(0))
