"""The slow level: its verbs, its checkpoints, its training entry point and its place in plan.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import dataset_args
from tests.models import tiny_world_model
from worldmodel.checkpoint import CheckpointError
from worldmodel.dynamics import StateLayout
from worldmodel.hierarchy import SlowConfig, SlowModel, load_slow, slow_losses, time_masks
from worldmodel.hierarchy.objective import chunk_windows

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = StateLayout(latent_dim=6, history=2, action_block=2, action_dim=2)


def slow_model(**settings) -> SlowModel:
    torch.manual_seed(0)
    cfg = SlowConfig(**{**dict(chunk=3, macro_dim=4, window=4, width=16, depth=1, heads=2, hidden=32, layers=2),
                        **settings})
    return SlowModel(LAYOUT, cfg)


def window(slow: SlowModel, chunks: int, batch: int = 5):
    n = slow.state_window + chunks * slow.cfg.chunk
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, n, LAYOUT.latent_dim, generator=g), torch.randn(batch, n - 1, LAYOUT.block_dim, generator=g)


@pytest.mark.parametrize("state", ["latent", "jepa"])
@pytest.mark.parametrize("macro", ["encoder", "concat"])
def test_slow_verbs_have_the_documented_shapes(state, macro):
    slow = slow_model(state=state, macro=macro)
    z, a = window(slow, chunks=2)
    W = slow.state_window
    assert W == (4 if state == "jepa" else LAYOUT.history)
    s2 = slow.encode(z[:, :W], a[:, : W - 1])
    assert s2.shape == (5, slow.state_dim)
    m = slow.macro(a[:, W - 1 : W - 1 + slow.cfg.chunk].flatten(1))
    assert m.shape == (5, 4 if macro == "encoder" else 3 * LAYOUT.block_dim)
    macros = torch.stack([m, m], 1)
    states = slow.rollout(s2, macros)
    assert torch.allclose(states[:, 1], slow.predict(slow.predict(s2, m), m))
    assert slow.subgoal(states).shape == (5, 2, LAYOUT.history, LAYOUT.latent_dim)
    if state == "latent":  # the slow state is the level-1 latents at the boundary: the subgoal reads them back
        assert torch.equal(slow.subgoal(s2), z[:, :W][:, -LAYOUT.history :])
    assert slow.chunk_steps == 3 * LAYOUT.action_block


def test_an_untrained_slow_predictor_says_nothing_moves():
    slow = slow_model()
    z, a = window(slow, chunks=1)
    s2 = slow.encode(z[:, :2], a[:, :1])
    assert torch.equal(slow.predict(s2, torch.randn(5, 4)), s2)


def test_bad_inputs_name_the_expected_shapes():
    slow = slow_model()
    z, a = window(slow, chunks=1)
    with pytest.raises(ValueError, match=r"z must be level-1 latents \(B, 2, 6\)"):
        slow.encode(z[:, :3], a[:, :2])
    with pytest.raises(ValueError, match="a chunk has 12 action values"):
        slow.macro(torch.zeros(5, 10))
    with pytest.raises(ValueError, match="macros"):
        slow.rollout(torch.zeros(5, slow.state_dim), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="slow state must be one of"):
        SlowConfig(state="pixels")
    with pytest.raises(ValueError, match="macro must be one of"):
        SlowConfig(macro="pca")


def test_plan_coordinates_cover_the_macro_actions_of_the_data():
    slow = slow_model()
    g = torch.Generator().manual_seed(2)
    chunks = torch.randn(4000, slow.chunk_dim, generator=g) * 0.3 + 0.1
    slow.fit_macro_prior(chunks)
    m = slow.macro(chunks).detach()
    u = torch.randn(20000, slow.macro_dim, generator=g)
    drawn = slow.macro_from_plan(u).detach()  # standard normal plan coordinates give the data's mean and covariance
    assert torch.allclose(drawn.mean(0), m.mean(0), atol=0.03 * float(m.std(0).max()) + 1e-3)
    assert torch.allclose(torch.cov(drawn.T), torch.cov(m.T), rtol=0.1, atol=0.05 * float(m.var(0).max()))


def test_time_masks_hide_contiguous_blocks_and_keep_a_context():
    keep = time_masks(500, 8, num_targets=2, longest=3, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (500, 8) and (keep.sum(1) >= 2).all() and (~keep).any(1).all()
    hidden_runs = [(torch.diff(torch.cat([torch.tensor([1]), k.int(), torch.tensor([1])])) == -1).sum() for k in keep]
    assert max(hidden_runs) <= 2  # at most the two blocks (they may touch or overlap)
    small = time_masks(500, 3, num_targets=2, longest=2, generator=torch.Generator().manual_seed(1))
    assert ((~small).sum(1) == 1).all()  # a window of 3: one hidden, two visible, always


def test_slow_losses_are_finite_and_reach_every_trained_part():
    slow = slow_model(state="jepa")
    z, a = window(slow, chunks=2)
    zs, bs, chunks, frames = chunk_windows(slow, z, a)
    assert zs.shape == (5, 3, 4, 6) and chunks.shape == (5, 2, 3 * LAYOUT.block_dim) and frames.shape == (5, 3, 2, 6)
    torch.nn.init.normal_(slow.predictor[-1].weight, std=0.1)
    terms = slow_losses(slow, z, a)
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    for part in (slow.macro_encoder, slow.predictor, slow.state.readout):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in slow.state.target_encoder.parameters())  # the targets get no gradient


def test_slow_checkpoint_round_trip_and_bad_checkpoints(tmp_path):
    slow = slow_model(state="jepa")
    slow.fit_macro_prior(torch.randn(100, slow.chunk_dim))
    slow.save_pretrained(tmp_path / "m" / "slow")
    back = load_slow(tmp_path / "m" / "slow", LAYOUT)
    for (k, v), (_, w) in zip(slow.state_dict().items(), back.state_dict().items()):
        assert torch.equal(v, w), k
    with pytest.raises(CheckpointError, match="trained on a level-1 layout"):
        load_slow(tmp_path / "m" / "slow", StateLayout(latent_dim=6, history=2, action_block=5, action_dim=2))
    with pytest.raises(FileNotFoundError, match="no slow level at"):
        load_slow(tmp_path / "missing", LAYOUT)
    tiny_world_model().save_pretrained(tmp_path / "wm")
    with pytest.raises(CheckpointError, match="no slow-level checkpoint"):
        load_slow(tmp_path / "wm", LAYOUT)


def test_checkpoints_from_before_the_slow_state_was_a_part_load_into_it(tmp_path):
    """A JEPA slow level written with its temporal encoder, EMA target and readout at the top level
    (``encoder.*``, ``target_encoder.*``, ``readout.*``) loads into ``state.*`` unchanged."""
    from worldmodel.checkpoint import save_checkpoint
    slow = slow_model(state="jepa")
    old = {k.removeprefix("state."): v for k, v in slow.state_dict().items()}
    assert "target_encoder.norm.weight" in old and not any(k.startswith("state.") for k in old)
    save_checkpoint(tmp_path / "slow", slow.config(), old)
    back = load_slow(tmp_path / "slow", LAYOUT)
    assert back.state_dict().keys() == slow.state_dict().keys()
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in slow.state_dict().items())


@pytest.mark.parametrize("path", sorted((ROOT / "models").glob("*/slow")), ids=lambda p: p.parent.name)
def test_shipped_slow_levels_load(path):
    from worldmodel.files import file_sha256

    config = json.loads((path / "config.json").read_text())  # lineage: the level-1 model it was trained on
    assert config["level1_weights_sha256"] == file_sha256(path.parent / "model.safetensors")
    slow = SlowModel.from_pretrained(path)
    z = torch.zeros(1, slow.state_window, slow.layout.latent_dim)
    s2 = slow.encode(z, torch.zeros(1, slow.state_window - 1, slow.layout.block_dim))
    assert s2.shape == (1, slow.state_dim) and slow.subgoal(s2).shape == (1, slow.layout.history, slow.layout.latent_dim)


@pytest.mark.parametrize("layout, chunk", [("medium", 3), ("large", 2)])
def test_the_maze_subgoal_chunk_follows_the_layout_and_yields_to_an_override(layout, chunk):
    from experiments.conf import load
    assert load("plan", ["env=pointmaze", f"env.maze={layout}"]).slow.subgoal == chunk
    assert load("plan", ["env=pointmaze", f"env.maze={layout}", "slow.subgoal=4"]).slow.subgoal == 4


def test_nothing_outside_the_slow_model_asks_which_kind_of_state_it_has():
    """The ``latent`` and ``jepa`` slow states are two parts behind one interface; code elsewhere asks a
    capability (``state.pretrainable``), never the kind."""
    import ast
    kinds = {"latent", "jepa"}
    found = []
    for package in ("worldmodel", "planners", "experiments", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "model.py" and path.parent.name == "hierarchy":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                sides = [node.left, *node.comparators] if isinstance(node, ast.Compare) else []
                if (any(isinstance(c, ast.Constant) and c.value in kinds for c in sides)
                        and any(isinstance(c, ast.Attribute) and c.attr == "state" for c in sides)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_train_slow_resumes_installs_and_plan_runs_flat_and_hierarchical(tiny_dataset, tmp_path):
    model = tmp_path / "model"
    tiny_world_model(block=5).save_pretrained(model, extra={"env": "reacher"})
    data = dataset_args(tiny_dataset)
    train = [sys.executable, str(ROOT / "experiments" / "train_slow.py"), *data, f"model={model}", "slow.state=jepa",
             "slow.window=3", "slow.chunk=1", "slow.width=16", "slow.heads=2", "slow.depth=1", "slow.hidden=32",
             "slow.layers=1", "jepa_train.batch_size=8", "jepa_train.log_every=2", "jepa_train.steps=4",
             "jepa_train.progress=false", "train.batch_size=8", "train.log_every=2", "train.rollout_chunks=2",
             "train.progress=false", "macro_prior_chunks=50", f"out_dir={tmp_path}/run",
             f"feature_cache={tmp_path}/cache", f"hydra.run.dir={tmp_path}/h"]
    out = subprocess.run([*train, "train.steps=4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # both stages' checkpoints (jepa/, dynamics/) are guarded: no fresh run over them, no resume with other settings
    out = subprocess.run([*train, "train.steps=4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "holds a run already" in out.stderr, out.stderr[-2000:]
    out = subprocess.run([*train, "train.steps=4", "train.lr=0.5", "--resume"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and "cannot resume" in out.stderr and "train.lr" in out.stderr, out.stderr[-2000:]
    extend = [*train, "train.steps=6", "install=true", "--resume", "resume_allow=[train.steps,install]"]
    out = subprocess.run(extend, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout and "installed in" in out.stdout
    log = (tmp_path / "run" / "dynamics" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["2", "4", "6"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["val"]["rollout_mse_by_chunk"]) == 2 and summary["jepa"]["val_slow_std"] > 0
    assert (model / "slow" / "config.json").is_file()
    plan = [sys.executable, str(ROOT / "experiments" / "plan.py"), *data, f"model={model}",  # hierarchical by default
            "slow.horizon=2", "slow.cem.samples=10", "slow.cem.elites=2", "slow.cem.iterations=1",
            "episodes=2", "goal_offset=10", "budget=6", "mpc.cem.samples=10", "mpc.cem.elites=2",
            "mpc.cem.iterations=1", "videos=1", "baselines=[]", "progress=false", f"output_dir={tmp_path}/out",
            f"hydra.run.dir={tmp_path}/h2"]
    out = subprocess.run(plan, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (tmp_path / "out").glob("plan-reacher-*.json")
    summary = json.loads(result.read_text())
    results = summary["results"]
    assert [r["agent"] for r in results] == ["cem-mpc", "cem-hier"]
    assert summary["slow_model"] == f"{model}/slow" and len(summary["slow_weights_sha256"]) == 64
    for r in results:
        assert r["gflops_per_step"] > 0 and r["plan_ms_per_step"] > 0
    assert results[1]["gflops_per_step"] > results[0]["gflops_per_step"]  # the same level 1, plus the slow plans
    hier = results[1]  # the slow level's part of it, reported on its own
    assert 0 < hier["slow_gflops_per_step"] < hier["gflops_per_step"] and 0 < hier["slow_ms_per_step"] < hier["plan_ms_per_step"]
    assert "cem-hier" in out.stdout and "GFLOP" in out.stdout and "(slow level" in out.stdout
    # both tasks played at once (the default batch) end as they do one by one
    one = [*plan[:-2], "batch_tasks=1", f"output_dir={tmp_path}/one", f"hydra.run.dir={tmp_path}/h3"]
    out = subprocess.run(one, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]

    def journal(folder):
        (path,) = (tmp_path / folder).glob("plan-reacher-*.tasks.jsonl")
        lines = [json.loads(x) for x in path.read_text().splitlines()[1:]]
        return {(x["agent"], x["index"]): (x["success"], x["steps"], round(x["final_goal_error"], 4))
                for x in lines if "agent" in x}

    assert journal("out") == journal("one") and len(journal("one")) == 4
    # the hand-down rule `learned` needs <model>/reach, trained by train_reach.py on the same latents
    learned = [*plan[:-2], "slow.hand_down=learned", f"output_dir={tmp_path}/o1", f"hydra.run.dir={tmp_path}/h5"]
    out = subprocess.run(learned, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "train_reach.py" in out.stderr, out.stderr[-2000:]
    reach = [sys.executable, str(ROOT / "experiments" / "train_reach.py"), *data, f"model={model}", "reach.hidden=16",
             "reach.max_steps=8", "reach.bins=4", "train.steps=4", "train.batch_size=16", "train.log_every=2",
             "train.val_pairs=32", "train.progress=false", "install=true", f"out_dir={tmp_path}/reach",
             f"feature_cache={tmp_path}/cache", f"hydra.run.dir={tmp_path}/h6"]
    out = subprocess.run(reach, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "installed in" in out.stdout, out.stderr[-3000:]
    assert [row.split(",")[0] for row in (tmp_path / "reach" / "log.csv").read_text().splitlines()[1:]] == ["2", "4"]
    out = subprocess.run(learned, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (tmp_path / "o1").glob("plan-reacher-*.json")
    assert len(json.loads(result.read_text())["reach_weights_sha256"]) == 64
    missing = [*plan[:-2], f"slow_model={tmp_path}/nothing", f"output_dir={tmp_path}/o2", f"hydra.run.dir={tmp_path}/h3"]
    out = subprocess.run(missing, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "no slow level at" in out.stderr
    other = tmp_path / "other"  # the same layout, other weights: the slow level was not trained on its latents
    tiny_world_model(block=5, moving=True).save_pretrained(other, extra={"env": "reacher"})
    foreign = [f"model={other}" if a == f"model={model}" else a for a in plan[:-2]]
    foreign += [f"slow_model={model}/slow", f"output_dir={tmp_path}/o3", f"hydra.run.dir={tmp_path}/h4"]
    out = subprocess.run(foreign, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "was trained on the latents of the level-1 model" in out.stderr, out.stderr[-2000:]
