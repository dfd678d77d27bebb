import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import dataset_args
from tests.models import tiny_jepa, tiny_jepa_train
from worldmodel.jepa import JEPA, EncoderConfig, JEPAConfig, MaskConfig, PretrainObjective, ViTEncoder, apply_masks
from worldmodel.jepa import sample_masks
from worldmodel.jepa.masks import patch_content
from worldmodel.training import RepresentationCollapse, Trainer, ema_momentum, ema_update, embedding_stats

ROOT = Path(__file__).resolve().parents[1]
GRID = (8, 8)


def pretrainer(train, out_dir, **settings) -> Trainer:
    cfg = tiny_jepa_train(**settings)
    return Trainer(PretrainObjective(tiny_jepa(), cfg, train), cfg, out_dir)


def is_rectangle(idx: torch.Tensor, grid=GRID) -> bool:
    rows, cols = idx // grid[1], idx % grid[1]
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    return len(idx) == h * w


def test_block_masks_are_disjoint_rectangles_within_their_scales():
    ctx, targets = sample_masks(torch.Generator().manual_seed(0), 32, GRID)
    n = GRID[0] * GRID[1]
    assert len(targets) == 4 and ctx.shape[0] == 32
    for tgt in targets:
        # rounding a block of 9.6-12.8 patches to whole rows and columns
        assert 0.1 * n <= tgt.shape[1] <= 0.25 * n
        for b in range(32):
            assert is_rectangle(tgt[b])
            assert not set(ctx[b].tolist()) & set(tgt[b].tolist())
    assert 4 <= ctx.shape[1] <= n
    for b in range(32):
        assert len(set(ctx[b].tolist())) == ctx.shape[1]


def test_masks_are_a_pure_function_of_the_generator():
    a = sample_masks(torch.Generator().manual_seed(3), 8, GRID)
    b = sample_masks(torch.Generator().manual_seed(3), 8, GRID)
    c = sample_masks(torch.Generator().manual_seed(4), 8, GRID)
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    assert not torch.equal(a[0], c[0]) or not all(torch.equal(x, y) for x, y in zip(a[1], c[1]))


def test_random_masks_are_scattered_and_disjoint():
    ctx, targets = sample_masks(torch.Generator().manual_seed(0), 16, GRID, MaskConfig(strategy="random"))
    assert sum(not is_rectangle(t[b]) for t in targets for b in range(16)) > 32
    for t in targets:
        for b in range(16):
            assert not set(ctx[b].tolist()) & set(t[b].tolist())


def test_content_biased_blocks_cover_the_content_and_keep_their_contract():
    content = torch.zeros(16, *GRID)
    content[torch.arange(16), torch.arange(16) % 8, (3 * torch.arange(16)) % 8] = 1.0  # one object patch each
    cell = (torch.arange(16) % 8) * GRID[1] + (3 * torch.arange(16)) % 8
    ctx, targets = sample_masks(torch.Generator().manual_seed(0), 16, GRID, MaskConfig(content_bias=1.0), content)
    for tgt in targets:
        for b in range(16):
            assert cell[b].item() in tgt[b].tolist() and is_rectangle(tgt[b])
            assert not set(ctx[b].tolist()) & set(tgt[b].tolist())
    _, uniform = sample_masks(torch.Generator().manual_seed(0), 16, GRID)
    hits = sum(cell[b].item() in t[b].tolist() for t in uniform for b in range(16))
    assert hits < 0.6 * 64  # placed uniformly, a block covers a given patch far less often
    # an empty frame falls back to uniform placement; no bias ignores the weights
    sample_masks(torch.Generator().manual_seed(0), 2, GRID, MaskConfig(content_bias=1.0), torch.zeros(2, *GRID))
    with_weights = sample_masks(torch.Generator().manual_seed(5), 4, GRID, MaskConfig(), content[:4])
    without = sample_masks(torch.Generator().manual_seed(5), 4, GRID, MaskConfig())
    assert torch.equal(with_weights[0], without[0])


def test_content_bias_needs_weights_and_a_valid_value():
    with pytest.raises(ValueError, match="needs per-patch content of shape"):
        sample_masks(torch.Generator().manual_seed(0), 2, GRID, MaskConfig(content_bias=0.5))
    with pytest.raises(ValueError, match="content_bias must be in"):
        MaskConfig(content_bias=1.5)
    with pytest.raises(ValueError, match="'blocks' strategy"):
        MaskConfig(strategy="random", content_bias=0.5)


def test_patch_content_measures_distance_from_the_background():
    background = torch.full((3, 16, 16), 255.0)
    images = torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)
    images[1, :, 8:, :8] = 0  # the bottom-left patch of a 2 x 2 grid
    content = patch_content(images, background, 8)
    assert content.shape == (2, 2, 2) and content[0].abs().sum() == 0
    assert content[1, 1, 0] == 255 and content[1].sum() == 255
    with pytest.raises(ValueError, match="does not match"):
        patch_content(images, background[:, :8], 8)


def test_content_biased_pretraining_targets_the_scene_and_resumes_exactly(tiny_dataset, tmp_path):
    train, cpu = tiny_dataset.split("train"), torch.device("cpu")
    biased_cfg = tiny_jepa(masks=MaskConfig(content_bias=1.0))
    biased = PretrainObjective(biased_cfg, tiny_jepa_train(), train)
    uniform = PretrainObjective(tiny_jepa(), tiny_jepa_train(), train)
    (images, _, b_tgt), (same_images, _, u_tgt) = biased.batch(0, 1, cpu), uniform.batch(0, 1, cpu)
    assert torch.equal(images, same_images)
    content = patch_content(images, biased.background, biased_cfg.encoder.patch_size).flatten(1)
    covered = [torch.cat([content.gather(1, t) for t in tgt], 1).mean() for tgt in (b_tgt, u_tgt)]
    assert covered[0] > 1.5 * covered[1]

    def trainer(out):
        cfg = tiny_jepa_train(steps=12, checkpoint_every=6)
        return Trainer(PretrainObjective(biased_cfg, cfg, train), cfg, out)

    full_log = trainer(tmp_path / "a").run()
    trainer(tmp_path / "b").run(until=6)
    resumed = trainer(tmp_path / "b")
    assert resumed.resume() and resumed.step == 6
    assert [r["jepa"] for r in resumed.run()] == [r["jepa"] for r in full_log]


def test_apply_masks_gathers_tokens():
    x = torch.arange(2 * 5 * 3).view(2, 5, 3)
    idx = torch.tensor([[4, 0], [1, 1]])
    assert torch.equal(apply_masks(x, idx), torch.stack([x[0, [4, 0]], x[1, [1, 1]]]))


def test_context_encoder_sees_only_kept_patches():
    enc = ViTEncoder(EncoderConfig(size="tiny"))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    keep = torch.tensor([[0, 1, 2], [5, 6, 7]])
    out = enc(images, keep)
    # changing pixels of a patch that is not kept changes nothing
    changed = images.clone()
    changed[:, :, 56:, 56:] = 0  # patch 63
    assert torch.equal(out, enc(changed, keep))
    assert not torch.equal(enc(images), enc(changed))


def test_bad_image_shape_is_a_clear_error():
    enc = ViTEncoder(EncoderConfig(size="tiny"))
    with pytest.raises(ValueError, match=r"images must have shape \(B, 3, 64, 64\), got \(2, 3, 32, 32\)"):
        enc(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_ema_equals_its_formula_and_schedule():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    w_t, w_o = target.weight.detach().clone(), online.weight.detach().clone()
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, 0.9 * w_t + 0.1 * w_o)
    assert ema_momentum(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert ema_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert ema_momentum(100, 100, 0.996, 1.0) == pytest.approx(1.0)


def test_target_encoder_receives_no_gradient():
    model = JEPA(tiny_jepa())
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    ctx, tgt = sample_masks(torch.Generator().manual_seed(0), 4, GRID)
    model(images, ctx, tgt)["loss"].backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.predictor.parameters())


def test_default_predictor_is_narrower_and_shallower_than_the_encoder():
    model = JEPA(JEPAConfig())
    assert model.predictor.width < model.encoder.width
    assert len(model.predictor.blocks) <= len(model.encoder.vit.blocks)
    with pytest.raises(ValueError, match="exceeds the encoder width"):
        JEPAConfig(predictor_width=1024)


def test_loss_decreases_on_a_tiny_dataset(tiny_dataset, tmp_path):
    log = pretrainer(tiny_dataset.split("train"), tmp_path).run()
    first, last = np.mean([r["jepa"] for r in log[:2]]), np.mean([r["jepa"] for r in log[-2:]])
    assert last < 0.6 * first


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    train = tiny_dataset.split("train")
    full = pretrainer(train, tmp_path / "a")
    full_log = full.run()
    pretrainer(train, tmp_path / "b").run(until=20)  # "killed" after step 20
    resumed = pretrainer(train, tmp_path / "b")
    assert resumed.resume() and resumed.step == 20
    log = resumed.run()
    assert [r["step"] for r in log] == [r["step"] for r in full_log]
    assert [r["jepa"] for r in log] == [r["jepa"] for r in full_log]  # bit for bit
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_collapse_monitor_fires_on_a_constant_encoder(tiny_dataset, tmp_path):
    trainer = pretrainer(tiny_dataset.split("train"), tmp_path)
    width = trainer.model.encoder.width
    trainer.model.target_encoder.forward = lambda images, keep=None: torch.ones(len(images), 64, width)
    with pytest.raises(RepresentationCollapse, match="collapsed at step 20"):
        trainer.run()
    assert embedding_stats(torch.ones(8, 4))["effective_rank"] == 0.0


DDP_SCRIPT = """
import json, sys, torch
from tests.test_jepa import pretrainer
from worldmodel.data import open_dataset
from worldmodel.training import shutdown_distributed
torch.set_num_threads(1)
trainer = pretrainer(open_dataset(sys.argv[1]).split("train"), sys.argv[2], steps=6, log_every=1)
log = trainer.run()
if trainer.rank == 0:
    json.dump([r["jepa"] for r in log], open(sys.argv[3], "w"))
shutdown_distributed()
"""


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_dataset, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    base = [str(script), str(tiny_dataset.path)]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MUJOCO_GL": "egl"}
    single = subprocess.run([sys.executable, *base, str(tmp_path / "s"), str(tmp_path / "s.json")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = subprocess.run([*torchrun, *base, str(tmp_path / "d"), str(tmp_path / "d.json")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = json.loads((tmp_path / "s.json").read_text()), json.loads((tmp_path / "d.json").read_text())
    # Step 1 sees identical weights and data: only the reduction order differs.
    assert two[0] == pytest.approx(one[0], rel=1e-5)
    np.testing.assert_allclose(two, one, rtol=1e-3)


def test_pretrain_entry_point_runs_end_to_end(tiny_dataset, tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "pretrain_encoder.py"), "env=reacher",
           *dataset_args(tiny_dataset), "model.encoder.size=tiny", "model.predictor_width=32",
           "model.predictor_depth=1", "model.predictor_heads=2", "train.steps=12", "train.batch_size=8",
           "train.warmup_steps=2", "train.log_every=2", "train.checkpoint_every=6", "train.progress=false",
           "probe_train_frames=64", "probe_test_frames=32", f"out_dir={tmp_path}/run", f"hydra.run.dir={tmp_path}/h"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["collapsed"] is None
    assert set(summary["probe"]) == {"pretrained", "random_init"}
    # the probe reads what one frame shows, as the env declares it: angles and positions, no velocities
    assert set(summary["probe"]["pretrained"]["r2_by_quantity"]) == {"joint_angles", "fingertip_xy", "target_xy"}
    assert (run / "loss.png").stat().st_size > 0 and (run / "checkpoint" / "model.safetensors").exists()
    config = json.loads((run / "checkpoint" / "config.json").read_text())
    assert JEPAConfig.from_dict(config["model"]).encoder.size == "tiny"
    # a second run refuses to overwrite, and --resume continues (here: already finished)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "pass --resume" in again.stderr
    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout


def test_ablate_entry_point_writes_the_table(tiny_dataset, tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "ablate.py"), *dataset_args(tiny_dataset),
           "model.encoder.size=tiny", "model.predictor_width=32", "model.predictor_depth=1", "model.predictor_heads=2",
           "train.steps=4", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=2", "train.progress=false",
           "probe_train_frames=64", "probe_test_frames=32", f"ablate_out={tmp_path}/ab"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "ab" / "ablation.json").read_text())
    assert [r["overrides"] for r in rows] == [[], ["model.masks.strategy=random"], ["model.targets=pixels"],
                                             ["model.ema=false"], ["model.predictor_width=0"]]
    table = (tmp_path / "ab" / "ablation.md").read_text()
    assert table.count("\n| ") == 6  # header + 5 variants


def test_the_vc_guard_rises_when_every_image_looks_alike():
    torch.manual_seed(0)
    model = JEPA(tiny_jepa(vc_weight=1.0))
    ctx, tgt = sample_masks(torch.Generator().manual_seed(0), 1, GRID)
    ctx, tgt = ctx.expand(8, -1), [t.expand(8, -1) for t in tgt]  # one mask for all: only the images differ
    varied = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    same = varied[:1].expand(8, -1, -1, -1).contiguous()
    out_same, out_varied = model(same, ctx, tgt), model(varied, ctx, tgt)
    assert out_same["vc"] > 0.98 and out_varied["vc"] < out_same["vc"]  # no spread across images: the full hinge
    assert out_varied["loss"].item() == pytest.approx((out_varied["jepa"] + out_varied["vc"]).item())
    out_varied["loss"].backward()
    assert model.encoder.vit.patch_embed.proj.weight.grad.abs().sum() > 0
