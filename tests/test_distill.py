import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import dataset_args
from tests.models import tiny_world_model
from worldmodel.checkpoint import load_config, load_weights, save_checkpoint
from worldmodel.dynamics import WindowBatches, WorldModel
from worldmodel.dynamics.distill import DistillObjective, DistillTrainConfig, action_box, student_of
from worldmodel.training import Trainer

ROOT = Path(__file__).resolve().parents[1]


def distillation(dataset, tmp_path, hidden=32, **train):
    """A tiny teacher with non-trivial dynamics (a random, non-zero predictor) fitted on ``dataset``,
    a student of width ``hidden`` and their objective over windows of 2 model steps."""
    teacher = tiny_world_model(block=2, moving=True, project_dim=8)
    teacher.encoder.prepare(dataset.split("train"), seed=0, progress=False)
    batches = {s: WindowBatches(teacher, dataset.split(s), teacher.encoder.feature_table(dataset.split(s),
                                                                                          progress=False), 2)
               for s in ("train", "val")}
    cfg = DistillTrainConfig(**{**dict(steps=400, batch_size=32, horizon=2, warmup_steps=10, lr=3e-3, log_every=50,
                                       val_windows=64, progress=False), **train})
    torch.manual_seed(0)
    student = student_of(teacher, hidden, 2)
    low, high = action_box(dataset.split("train").actions)
    return teacher, student, DistillObjective(teacher, student, cfg, batches["train"], batches["val"], low, high), cfg


def test_the_student_learns_the_teachers_rollouts_and_keeps_its_latents(small_dataset, tmp_path):
    """Measured: validation rollout MSE to the teacher 0.12 -> 0.01 in 150 steps (hidden 16 vs the teacher's 64)."""
    teacher, student, objective, cfg = distillation(small_dataset, tmp_path)
    assert student.encoder is teacher.encoder and student.predictor.net[0].out_features == 32
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    before = objective.validate()
    Trainer(objective, cfg, tmp_path / "run").run()
    after = objective.validate()
    assert after["rollout"] < 0.3 * before["rollout"], (before, after)
    assert after["one_step"] < 0.3 * before["one_step"], (before, after)
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())  # the teacher is untouched
    loaded = WorldModel.from_pretrained(tmp_path / "run" / "checkpoint")
    assert loaded.cfg.hidden == 32 and loaded.cfg.depth == 2
    x = torch.randint(0, 256, (3, 2, 3, 64, 64), dtype=torch.uint8)
    assert torch.allclose(loaded.encode(x), teacher.encode(x))  # the same latents, so the same goal costs


def test_distilled_actions_stay_in_the_box_and_follow_the_data_without_noise(small_dataset, tmp_path):
    _, _, objective, _ = distillation(small_dataset, tmp_path, random_actions=0.5, action_noise=0.5)
    _, a = objective.train_batches.sample(256, torch.Generator().manual_seed(0))
    blocks = objective.model.layout.step_blocks(a)
    acts = objective.actions(blocks, torch.Generator().manual_seed(1))
    low, high = objective.low.repeat(2), objective.high.repeat(2)  # a block holds 2 env actions
    assert acts.shape == blocks.shape and bool((acts >= low).all() and (acts <= high).all())
    same = (acts == blocks).all(-1).all(-1).float().mean().item()
    assert same < 0.1  # noise moves the data's actions and random draws replace them
    _, _, exact, _ = distillation(small_dataset, tmp_path, random_actions=0.0, action_noise=0.0)
    assert torch.equal(exact.actions(blocks, torch.Generator().manual_seed(1)), blocks)


def test_distillation_refuses_what_it_cannot_do():
    teacher = tiny_world_model(block=2)
    with pytest.raises(ValueError, match="hidden and depth must be >= 1, got 0, 2"):
        student_of(teacher, 0, 2)
    with pytest.raises(ValueError, match="inverse-dynamics head"):
        student_of(tiny_world_model(block=2, inverse=True), 16, 2)
    with pytest.raises(ValueError, match=r"do not vary in every dimension"):
        action_box(np.stack([np.linspace(-1, 1, 10), np.zeros(10)], 1))
    with pytest.raises(ValueError, match="random_actions <= 1"):
        DistillTrainConfig(random_actions=1.5)


def test_distill_dynamics_writes_a_world_model_and_resumes_only_from_its_teacher(tiny_dataset, tmp_path):
    teacher_dir = tmp_path / "teacher"
    tiny_world_model(block=2, moving=True, project_dim=8).save_pretrained(teacher_dir)
    cmd = [sys.executable, str(ROOT / "experiments" / "distill_dynamics.py"), *dataset_args(tiny_dataset),
           f"model={teacher_dir}", "hidden=16", "depth=1", "train.batch_size=16",
           "train.horizon=2", "train.log_every=5", "train.val_windows=32", "train.progress=false",
           f"feature_cache={tmp_path}/cache", f"out_dir={tmp_path}/run", f"hydra.run.dir={tmp_path}/h"]
    out = subprocess.run([*cmd, "train.steps=10"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "predictor" in out.stdout and f"model={tmp_path}/run/checkpoint" in out.stdout
    config = load_config(tmp_path / "run" / "checkpoint")
    assert config["dynamics"]["hidden"] == 16 and config["distilled_from"] == str(teacher_dir)
    student, teacher = load_weights(tmp_path / "run" / "checkpoint"), load_weights(teacher_dir)
    assert all(torch.equal(v, teacher[k]) for k, v in student.items() if k.startswith("encoder."))
    # a teacher changed in place since is refused on resume: the student would learn another model
    weights = load_weights(teacher_dir)
    weights["predictor.net.0.bias"] += 1
    save_checkpoint(teacher_dir, load_config(teacher_dir), weights)
    out = subprocess.run([*cmd, "train.steps=20", "--resume", "resume_allow=[train.steps]"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "teacher_weights_sha256" in out.stderr, out.stderr[-2000:]


def test_the_shipped_reacher_model_is_distilled_from_the_teacher_shipped_beside_it():
    from worldmodel.files import file_sha256

    config = load_config(ROOT / "models" / "reacher")
    teacher = ROOT / config["distilled_from"]
    assert config["teacher_weights_sha256"] == file_sha256(teacher / "model.safetensors")
    assert config["dynamics"]["hidden"] < load_config(teacher)["dynamics"]["hidden"]
    student, weights = load_weights(ROOT / "models" / "reacher"), load_weights(teacher)
    encoder = [k for k in weights if k.startswith("encoder.")]
    assert encoder and all(torch.equal(student[k], weights[k]) for k in encoder)  # the same latents


def test_a_model_saved_in_fp16_can_keep_its_predictor_exact(tmp_path):
    model = tiny_world_model(block=2, moving=True)
    model.save_pretrained(tmp_path / "m", dtype=torch.float16, keep=("predictor.",))
    stored = load_weights(tmp_path / "m")
    assert all(v.dtype == torch.float32 for k, v in stored.items() if k.startswith("predictor."))
    assert all(v.dtype == torch.float16 for k, v in stored.items() if k.startswith("encoder.vit."))
    loaded = WorldModel.from_pretrained(tmp_path / "m")
    assert all(torch.equal(p, q) for p, q in zip(loaded.predictor.parameters(), model.predictor.parameters()))
    assert load_config(tmp_path / "m")["stored_full_precision"] == ["predictor."]
