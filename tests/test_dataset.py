import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_collect_config
from worldmodel.data import (
    DatasetError,
    UniformPolicy,
    WindowSampler,
    build_dataset,
    collect_episodes,
    ensure_dataset,
    episode_seeds,
    open_dataset,
    write_dataset,
)

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_describes_the_collection(tiny_dataset):
    m = tiny_dataset.manifest
    assert m["env"]["gym_id"] == "hjepa/PixelReacher-v0" and m["env"]["version"] == 0
    assert m["image_size"] == 64 and m["policy"]["name"] == "uniform"
    assert m["seed"] != m["eval_seed"]
    assert {s: m["splits"][s]["episodes"] for s in m["splits"]} == {"train": 6, "val": 2, "heldout": 2}
    assert m["splits"]["train"]["steps"] == 6 * 20 and m["splits"]["train"]["frames"] == 6 * 21
    assert len(m["checksum"]) == 64


def test_splits_are_disjoint_by_episode(tiny_dataset):
    seeds = {s: set(tiny_dataset.split(s).seeds.tolist()) for s in tiny_dataset.split_names}
    assert not seeds["train"] & seeds["val"]
    assert not (seeds["train"] | seeds["val"]) & seeds["heldout"]
    assert seeds["heldout"] == set(episode_seeds(tiny_dataset.manifest["eval_seed"], 2).tolist())


def test_stored_frames_match_the_stored_states(tiny_dataset):
    """Each stored frame is what the simulator renders at the stored state."""
    import envs

    ep = tiny_dataset.split("heldout").episode(1)
    env = envs.make_env("reacher")
    env.reset(seed=0)
    for t in (0, 7, 20):
        env.unwrapped.set_state(ep["states"][t])
        assert np.array_equal(env.unwrapped.render(), ep["obs"][t])
    env.close()


def test_dataset_reads_back_identical_to_what_was_written(tmp_path):
    episodes = collect_episodes("reacher", UniformPolicy(), episode_seeds(3, 3), episode_steps=12, num_envs=1,
                                progress=False)
    path = write_dataset(tmp_path / "ds", {"train": episodes}, {"note": "test"}, minari_env_id="hjepa/PixelReacher-v0")
    back = open_dataset(path).split("train")
    for name, array in episodes.arrays().items():
        got = back.arrays()[name]
        assert got.dtype == array.dtype and np.array_equal(got, array), name
    # The Minari copy holds the same episodes.
    import minari

    md = minari.MinariDataset(open_dataset(path).minari_path("train"))
    for e, mep in enumerate(md.iterate_episodes()):
        ours = episodes.episode(e)
        assert np.array_equal(mep.observations, ours["obs"])
        assert np.array_equal(mep.actions, ours["actions"])
        assert np.array_equal(mep.infos["joint_angles"], ours["physics.joint_angles"])
    assert md.total_episodes == 3


def test_collection_does_not_depend_on_num_envs():
    seeds = episode_seeds(11, 3)
    one = collect_episodes("reacher", UniformPolicy(), seeds, episode_steps=8, num_envs=1, progress=False)
    two = collect_episodes("reacher", UniformPolicy(), seeds, episode_steps=8, num_envs=2, progress=False)
    for name, array in one.arrays().items():
        assert np.array_equal(array, two.arrays()[name]), name


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "manifest"])
def test_corrupted_dataset_is_refused(tiny_dataset, tmp_path, damage):
    import shutil

    path = Path(shutil.copytree(tiny_dataset.path, tmp_path / "copy"))
    target = path / "train" / "obs.npy"
    if damage == "flip":
        with open(target, "r+b") as f:
            f.seek(target.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        match = "checksum mismatch for train/obs.npy"
    elif damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(target.stat().st_size - 10)
        match = "train/obs.npy has .* bytes"
    elif damage == "delete":
        target.unlink()
        match = "train/obs.npy listed in the manifest is missing"
    else:
        m = json.loads((path / "manifest.json").read_text())
        m["files"]["train/obs.npy"]["sha256"] = "0" * 64
        (path / "manifest.json").write_text(json.dumps(m))
        match = "was edited after the dataset was written"
    with pytest.raises(DatasetError, match=match):
        open_dataset(path)


def test_missing_dataset_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no manifest.json"):
        open_dataset(tmp_path / "empty")


def test_existing_dataset_is_never_overwritten(tiny_dataset):
    with pytest.raises(FileExistsError):
        write_dataset(tiny_dataset.path, {}, {})


KILL_DURING_WRITE = """
import os, signal, sys
import worldmodel.data.storage as storage
from tests.conftest import tiny_collect_config
from worldmodel.data import build_dataset

def die(*args, **kwargs):  # the arrays are on disk, the Minari copy and manifest are not
    os.kill(os.getpid(), signal.SIGKILL)

storage._write_minari = die
build_dataset(tiny_collect_config(sys.argv[1], name="killed", num_envs=1))
"""


def test_collection_killed_while_writing_leaves_no_complete_looking_dataset(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(tmp_path)], cwd=ROOT, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed").exists()
    (partial,) = tmp_path.glob("killed.partial-*")
    assert (partial / "train" / "obs.npy").exists()
    with pytest.raises(DatasetError, match="unfinished write"):
        open_dataset(partial)
    # A fresh run is not blocked by the debris and produces a complete dataset.
    ds = open_dataset(build_dataset(tiny_collect_config(tmp_path, name="killed", num_envs=1, minari=False)))
    assert ds.manifest["splits"]["train"]["episodes"] == 6


def test_collection_killed_while_collecting_leaves_nothing(tmp_path):
    cmd = [sys.executable, str(ROOT / "experiments" / "collect.py"), f"data.root={tmp_path}", "data.name=killed",
           "data.train_episodes=400", "data.num_envs=1", "progress=true", f"hydra.run.dir={tmp_path}/hydra"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.set_blocking(proc.stderr.fileno(), False)
    progress, deadline = b"", time.monotonic() + 120
    while not re.search(rb"train:.*\| *[1-9]\d*/\d+", progress):  # wait until frames are being collected
        assert proc.poll() is None and time.monotonic() < deadline, progress[-500:]
        progress += proc.stderr.read() or b""
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(tmp_path.glob("killed*"))


def test_planning_collects_only_the_held_out_split_and_it_is_the_same_episodes(tiny_dataset, tmp_path):
    cfg = tiny_collect_config(tmp_path)  # the tiny dataset's settings, in an empty root
    path = ensure_dataset(cfg, splits=("heldout",))
    assert path.name == cfg.heldout_dataset_name and [p.name for p in tmp_path.iterdir() if p.name != ".collect.lock"] == [path.name]
    heldout = open_dataset(path)
    assert list(heldout.manifest["splits"]) == ["heldout"]
    a, b = heldout.split("heldout").arrays(), tiny_dataset.split("heldout").arrays()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # with the full dataset present, it is used for every split
    assert ensure_dataset(tiny_collect_config(tiny_dataset.path.parent), splits=("heldout",)) == tiny_dataset.path


def test_windows_follow_the_episodes(tiny_dataset):
    train = tiny_dataset.split("train")
    sampler = WindowSampler(train, window=5)
    assert len(sampler) == 6 * (21 - 5 + 1)
    w = sampler.sample(16, torch.Generator().manual_seed(0))
    assert w.obs.shape == (16, 5, 3, 64, 64) and w.obs.dtype == torch.uint8
    assert w.actions.shape == (16, 4, 2) and w.states.shape == (16, 5, 8)
    # Every window lies inside one episode: its frames and actions are consecutive rows.
    for b in range(16):
        f = int(np.flatnonzero((train.states.astype(np.float32) == w.states[b, 0].numpy()).all(1))[0])
        e = int(np.searchsorted(train.frame_starts, f, side="right") - 1)
        t = f - int(train.frame_starts[e])
        assert t + 5 <= train.lengths[e] + 1
        ep = train.episode(e)
        assert torch.equal(w.obs[b], torch.from_numpy(np.array(ep["obs"][t : t + 5])).permute(0, 3, 1, 2))
        assert torch.equal(w.actions[b], torch.from_numpy(np.array(ep["actions"][t : t + 4])))


def test_window_sampling_is_seeded(tiny_dataset):
    sampler = WindowSampler(tiny_dataset.split("train"), window=3)
    a = sampler.sample(8, torch.Generator().manual_seed(5))
    b = sampler.sample(8, torch.Generator().manual_seed(5))
    assert torch.equal(a.obs, b.obs)
    stream = sampler.iterate(8, torch.Generator().manual_seed(5))
    assert torch.equal(next(stream).obs, a.obs)
    stream.close()


def test_window_longer_than_episodes_is_refused(tiny_dataset):
    with pytest.raises(ValueError, match="window of 22 frames is longer than every episode.*21 frames"):
        WindowSampler(tiny_dataset.split("train"), window=22)


def test_correlated_policy_dataset_builds(tmp_path):
    from worldmodel.data import PolicyConfig

    cfg = tiny_collect_config(tmp_path, policy=PolicyConfig(name="correlated"), train_episodes=2, val_episodes=0,
                              heldout_episodes=0, num_envs=1, minari=False)
    ds = open_dataset(build_dataset(cfg))
    assert ds.manifest["policy"] == {"beta": 0.8, "sigma": 0.3, "name": "correlated"}
    assert ds.split_names == ["train"]


def test_relative_dataset_root_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_collect_config("data", train_episodes=1, val_episodes=0, heldout_episodes=0, num_envs=1)
    path = build_dataset(cfg)
    assert open_dataset(Path("data") / path.name).split("train").num_episodes == 1


def test_train_and_val_are_the_episodes_of_one_draw_split_by_episode(tiny_dataset):
    """Each split is collected from its own seeds; together they are the draw of train + val episodes,
    split by a seeded permutation, episode for episode and frame for frame."""
    cfg = tiny_collect_config(None)
    n_train, n_val = cfg.data.train_episodes, cfg.data.val_episodes
    fit = collect_episodes(cfg.env.name, cfg.data.policy.build(), episode_seeds(cfg.data.seed, n_train + n_val),
                           cfg.env.episode_steps, cfg.env.env_kwargs(), num_envs=2, progress=False)
    order = np.random.default_rng(cfg.data.seed).permutation(n_train + n_val)
    for split, ids in (("train", order[:n_train]), ("val", order[n_train:])):
        expected, got = fit.select(np.sort(ids)), tiny_dataset.split(split)
        for name, array in expected.arrays().items():
            assert np.array_equal(np.asarray(got.arrays()[name]), array), (split, name)
