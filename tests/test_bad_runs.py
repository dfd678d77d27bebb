"""Bad inputs and faults, training runs and checkpoints: one run per directory, resumed only as itself;
corrupt or non-finite weights refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments.conf import load
from tests.models import tiny_world_model
from worldmodel.checkpoint import CheckpointError, load_config, load_weights, save_checkpoint
from worldmodel.dynamics import WorldModel
from worldmodel.files import DirectoryLock, LockedError
from worldmodel.training import RunConfigChanged, RunDirectory

ROOT = Path(__file__).resolve().parents[1]
DEAD_PID = 2**22 + 1  # above the largest pid_max Linux allows: never a live process


@pytest.fixture(scope="module")
def model():
    return tiny_world_model(block=2)


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


@pytest.mark.parametrize("key", ["encoder_weights_sha256", "level1_weights_sha256"])
def test_resume_refuses_an_upstream_checkpoint_changed_in_place(tmp_path, key):
    save_checkpoint(tmp_path / "checkpoint", {"run": run_config(), key: "a" * 64}, {"w": torch.zeros(2)})
    with RunDirectory(tmp_path, run_config(), resume=True) as run:
        with pytest.raises(RunConfigChanged, match=rf"trained on an upstream checkpoint with {key} aaaaaaaaaaaa\.\.\., "
                                                   rf"the one read now has bbbbbbbbbbbb.*resume_allow=\[{key}\]"):
            run.check_upstream({key: "b" * 64})
        run.check_upstream({key: "a" * 64})
    with RunDirectory(tmp_path, run_config(), resume=True, allow=[key]) as run:
        run.check_upstream({key: "b" * 64})


def test_a_fresh_run_never_overwrites_an_existing_one(tmp_path):
    (tmp_path / "log.csv").write_text("step\n5\n")  # a run killed before its first checkpoint
    with pytest.raises(FileExistsError, match="pass --resume"):
        with RunDirectory(tmp_path, run_config()):
            pass


def test_exporting_a_default_model_keeps_the_one_it_replaces_with_its_slow_level(tmp_path):
    from experiments.build_default_model import keep_previous

    target = tmp_path / "models" / "reacher"
    assert keep_previous(target) is None  # nothing there yet
    (target / "slow").mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "slow" / "config.json").write_text('{"kind": "slow"}')
    first = keep_previous(target)
    (target / "slow").mkdir(parents=True)  # a second export, then a third within the same second
    (target / "config.json").write_text("{}")
    second = keep_previous(target)
    assert not target.exists() and first != second and first.name.startswith("reacher.previous-")
    for kept in (first, second):
        assert json.loads((kept / "config.json").read_text()) == {} and (kept / "slow").is_dir()
    assert (first / "slow" / "config.json").read_text() == '{"kind": "slow"}'


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


# --- checkpoints: corrupt or non-finite weights are refused -------------------------------------------

def test_a_checkpoint_overwritten_in_place_is_refused(model, tmp_path):
    path = model.save_pretrained(tmp_path / "m")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4000:] = b"\xff" * 4000  # same size, NaN bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        WorldModel.from_pretrained(path)


def test_a_checkpoint_without_a_recorded_checksum_is_refused_unless_allowed_and_then_still_checked(model, tmp_path):
    path = model.save_pretrained(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config.pop("weights_sha256")  # tampered weights would otherwise load without a word
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"records no weights_sha256, so model.safetensors cannot be checked"):
        WorldModel.from_pretrained(path)
    assert WorldModel.from_pretrained(path, allow_unverified=True).state_dict().keys() == model.state_dict().keys()
    save_checkpoint(tmp_path / "c", {}, {"w": torch.tensor([1.0, float("nan")])})
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    config.pop("weights_sha256")
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="1 weight tensors hold NaN or inf"):
        load_weights(tmp_path / "c", allow_unverified=True)


def test_every_shipped_checkpoint_records_its_checksum():
    shipped = sorted((Path(__file__).parents[1] / "models").glob("**/config.json"))
    assert shipped and all("weights_sha256" in json.loads(p.read_text()) for p in shipped), shipped


@pytest.mark.parametrize("content, match", [("{not json", "is not valid JSON"), ("[1, 2]", "holds a list")])
def test_an_unreadable_checkpoint_config_is_refused(model, tmp_path, content, match):
    path = model.save_pretrained(tmp_path / "m")
    (path / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=match):
        WorldModel.from_pretrained(path)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        WorldModel.from_pretrained(tmp_path / "nowhere")


def test_a_model_is_refused_for_env_settings_it_was_not_trained_with_even_ones_it_never_named(tmp_path):
    import envs
    from experiments.runs import check_trained_env

    save_checkpoint(tmp_path / "m", {"env": "reacher", "env_kwargs": {"image_size": 64, "antialias": True}},
                    {"w": torch.zeros(2)})
    check_trained_env(envs.EnvConfig(), str(tmp_path / "m"))
    check_trained_env(envs.EnvConfig(antialias=False), str(tmp_path / "m"))  # rendering detail only
    with pytest.raises(ValueError, match=r"trained on reacher with other settings: env.camera_distance=None \(asked: 1.0\)"):
        check_trained_env(envs.EnvConfig(options={"camera_distance": 1.0}), str(tmp_path / "m"))


def test_every_shipped_model_and_slow_level_records_the_env_settings_it_was_trained_on():
    shipped = sorted((ROOT / "models").glob("**/config.json"))
    assert shipped and all("env_kwargs" in json.loads(p.read_text()) for p in shipped), shipped


def test_a_checkpoint_larger_than_the_free_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import errno
    import shutil

    save_checkpoint(tmp_path / "c", {"v": 1}, {"w": torch.zeros(4)})
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10))
    with pytest.raises(OSError, match=r"no room for checkpoint .*c: it needs about 0 MB, .* has 0 MB free") as err:
        save_checkpoint(tmp_path / "c", {"v": 2}, {"w": torch.zeros(1000)})
    assert err.value.errno == errno.ENOSPC
    assert json.loads((tmp_path / "c" / "config.json").read_text())["v"] == 1  # the previous one is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.parametrize("fault", ["enospc", "unexpected pos"])
def test_a_disk_that_fills_while_a_checkpoint_is_written_is_named_and_leaves_nothing_half_written(
        tmp_path, monkeypatch, fault):
    import errno
    import shutil

    import worldmodel.checkpoint as ckpt

    save_checkpoint(tmp_path / "c", {"v": 1}, {"w": torch.zeros(4)})
    usage = shutil.disk_usage(tmp_path)

    def full(*args, **kwargs):
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=0))  # the disk is now full
        if fault == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 509824 vs 509716")

    monkeypatch.setattr(ckpt.torch, "save", full)
    state = {"state": {}, "optimizer": {}, "rng": {}}
    with pytest.raises(OSError, match=r"no space left on the device while writing checkpoint .*c .*previous "
                                      r"checkpoint is kept") as err:
        save_checkpoint(tmp_path / "c", {"v": 2}, {"w": torch.zeros(4)}, training_state=state)
    assert err.value.errno == errno.ENOSPC
    assert json.loads((tmp_path / "c" / "config.json").read_text())["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.parametrize("given, flags", [
    (["slow=False", "env=pointmaze"], {"slow": False, "policy": True, "slow_only": False, "distill": None}),
    (["slow_only=TRUE"], {"slow": True, "policy": True, "slow_only": True, "distill": None}),
    (["slow=0", "train.steps=5", "distill=no", "policy=false"], {"slow": False, "policy": False, "slow_only": False,
                                                                  "distill": False}),
])
def test_build_default_model_reads_its_own_switches_in_any_boolean_spelling(given, flags):
    from experiments.build_default_model import own_flags

    assert own_flags(given)[0] == flags
    assert all(not o.startswith(("slow", "distill", "policy")) for o in own_flags(given)[1])


@pytest.mark.parametrize("given", ["slow=maybe", "slow"])
def test_build_default_model_names_a_bad_switch(given):
    from experiments.build_default_model import main

    with pytest.raises(ValueError, match=rf"'{given}': slow is this script's switch and takes true or false"):
        main([given])


def test_build_default_model_gives_each_stage_the_settings_it_has_and_refuses_a_setting_none_has():
    from experiments.build_default_model import has_key, main

    assert has_key("train_dynamics", "dynamics.pool") and not has_key("pretrain", "dynamics.pool")
    assert has_key("train_dynamics", "train.rollout_steps") and not has_key("pretrain", "train.rollout_steps")
    assert all(has_key(stage, "env.maze") for stage in ("pretrain", "train_slow"))  # an env's own settings
    with pytest.raises(ValueError, match=r"'dynamics.pooll=4': no stage's config has 'dynamics.pooll'"):
        main(["dynamics.pooll=4"])


# --- runs of several stages (train_slow.py: jepa/ and dynamics/) ---------------------------------------

STAGES = ("jepa", "dynamics")


def test_a_fresh_run_over_any_stage_of_a_multi_stage_run_is_refused(tmp_path):
    (tmp_path / "dynamics").mkdir()
    (tmp_path / "dynamics" / "log.csv").write_text("step\n5\n")  # stage 2 was killed before its first checkpoint
    with pytest.raises(FileExistsError, match="holds a run already.*pass --resume"):
        with RunDirectory(tmp_path, run_config(), parts=STAGES):
            pass
    assert (tmp_path / "dynamics" / "log.csv").read_text() == "step\n5\n"


def test_resuming_a_multi_stage_run_compares_the_settings_of_every_stage(tmp_path):
    fake_run(tmp_path / "jepa", run_config())
    fake_run(tmp_path / "dynamics", run_config(train={"steps": 10, "lr": 0.5}))  # stage 2 of another run
    with pytest.raises(RunConfigChanged, match=r"cannot resume .*dynamics/checkpoint .*train.lr: 0.5 -> 0.001"):
        with RunDirectory(tmp_path, run_config(), resume=True, parts=STAGES):
            pass


def test_resuming_a_stage_over_another_level1_model_or_other_data_is_refused(tmp_path):
    save_checkpoint(tmp_path / "dynamics" / "checkpoint", {"run": run_config(), "level1_weights_sha256": "a" * 64,
                                                           "dataset_checksum": "c" * 64}, {"w": torch.zeros(2)})
    with RunDirectory(tmp_path, run_config(), resume=True, parts=STAGES) as run:
        with pytest.raises(RunConfigChanged, match=r"dynamics/checkpoint: it was trained on an upstream checkpoint "
                                                   r"with level1_weights_sha256 aaaaaaaaaaaa"):
            run.check_upstream({"level1_weights_sha256": "b" * 64})
        with pytest.raises(RunConfigChanged, match=r"dynamics/checkpoint on other data"):
            run.check_dataset("d" * 64)


def test_a_stage_checkpoint_caught_between_its_renames_is_put_back(tmp_path, capsys):
    fake_run(tmp_path / "dynamics", run_config())
    os.rename(tmp_path / "dynamics" / "checkpoint", tmp_path / "dynamics" / f"checkpoint.old-{DEAD_PID}")
    with RunDirectory(tmp_path, run_config(), resume=True, parts=STAGES):
        assert load_config(tmp_path / "dynamics" / "checkpoint")["run"] == run_config()
    assert "restored checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["teacher_weights_sha256"])
def test_resuming_a_distillation_over_a_teacher_changed_in_place_is_refused(tmp_path, key):
    save_checkpoint(tmp_path / "checkpoint", {"run": run_config(), key: "a" * 64}, {"w": torch.zeros(2)})
    with RunDirectory(tmp_path, run_config(), resume=True) as run:
        with pytest.raises(RunConfigChanged, match=rf"{key} aaaaaaaaaaaa\.\.\., the one read now has bbbbbbbbbbbb"):
            run.check_upstream({key: "b" * 64})


# --- a real full disk: a small tmpfs -------------------------------------------------------------------

def test_a_real_full_disk_while_a_checkpoint_is_written_is_named_and_the_previous_one_kept(small_disk):
    import errno

    save_checkpoint(small_disk / "c", {"v": 1}, {"w": torch.zeros(4)})
    # the estimate (weights x 3) fits, the optimizer state written after the weights does not
    state = {"state": {}, "optimizer": {"m": torch.zeros(400_000)}, "rng": {}}
    with pytest.raises(OSError, match=r"no space left on the device while writing checkpoint .*disk/c .*previous "
                                      r"checkpoint is kept") as err:
        save_checkpoint(small_disk / "c", {"v": 2}, {"w": torch.zeros(60_000)}, training_state=state)
    assert err.value.errno == errno.ENOSPC
    assert json.loads((small_disk / "c" / "config.json").read_text())["v"] == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["c"]  # nothing half-written is left


def test_a_real_disk_too_small_for_a_checkpoint_is_refused_before_writing(small_disk):
    with pytest.raises(OSError, match=r"no room for checkpoint .*disk/c: it needs about 4 MB, .* MB free"):
        save_checkpoint(small_disk / "c", {"v": 1}, {"w": torch.zeros(1_000_000)})
    assert list(small_disk.iterdir()) == []


# --- distillation -------------------------------------------------------------------------------------

def test_distilling_a_model_of_another_env_is_refused_before_collecting(tmp_path):
    from experiments.distill_dynamics import run

    cfg = load("distill_dynamics", ["env=pointmaze", "model=models/reacher", f"data.root={tmp_path}/data",
                                    f"out_dir={tmp_path}/run"])
    with pytest.raises(ValueError, match="model models/reacher was trained on env 'reacher', not 'pointmaze'"):
        run(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_distillation_settings_are_checked_in_the_config():
    with pytest.raises(ValueError, match="hidden and depth must be >= 1, got 0, 3"):
        load("distill_dynamics", ["hidden=0"])
    with pytest.raises(ValueError, match="horizon and val_windows must be >= 1, got 0"):
        load("distill_dynamics", ["train.horizon=0"])
    with pytest.raises(ValueError, match=r"need 0 <= random_actions <= 1 and action_noise >= 0, got 0.5, -1.0"):
        load("distill_dynamics", ["train.action_noise=-1"])


def test_windows_longer_than_every_episode_name_the_steps_that_fit(tiny_dataset):
    from worldmodel.dynamics import WindowBatches

    model = tiny_world_model(block=5)  # episodes of 20 steps: 21 frames hold windows of up to 3 model steps
    table = torch.zeros(len(tiny_dataset.split("train").obs), 8)
    with pytest.raises(ValueError, match=r"windows of 4 model steps span 26 frames .* the longest episode has 21: "
                                         r"use 1 to 3 model steps per window \(train.rollout_steps"):
        WindowBatches(model, tiny_dataset.split("train"), table, 4)
    assert WindowBatches(model, tiny_dataset.split("train"), table, 3).R == 3
