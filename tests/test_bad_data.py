"""Bad inputs and faults, datasets and caches: a request is answered with what was asked for, or refused."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from tests.conftest import tiny_collect_config
from tests.models import tiny_world_model
from worldmodel.data import CollectConfig, DataConfig, DatasetError, PolicyConfig, ensure_dataset, open_dataset
from worldmodel.data.storage import MANIFEST, manifest_checksum
from worldmodel.dynamics import FeatureCache

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


# --- datasets: a request is answered with what was asked for, or refused ---------------------------

@pytest.mark.parametrize("change", [{"eval_seed": 2024}, {"heldout_episodes": 50}, {"env": envs.EnvConfig(antialias=False)},
                                    {"policy": PolicyConfig(name="correlated", beta=0.5)},
                                    {"env": envs.EnvConfig(episode_steps=50)}])
def test_every_setting_that_changes_the_heldout_data_changes_its_name(change):
    env = change.pop("env", envs.EnvConfig())
    base, other = CollectConfig(), CollectConfig(env=env, data=DataConfig(**change))
    assert other.heldout_dataset_name != base.heldout_dataset_name
    assert other.dataset_name != base.dataset_name


def test_settings_of_other_splits_leave_the_heldout_name_alone():
    more = CollectConfig(data=DataConfig(train_episodes=3000))
    assert more.heldout_dataset_name == CollectConfig().heldout_dataset_name
    assert more.dataset_name != CollectConfig().dataset_name


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


# --- names and manifests stay inside their directory; sizes within reason ---------------------------

@pytest.mark.parametrize("name", ["../../x", "/abs/path", "..", "a/b", "a\\b"])
def test_a_dataset_name_that_leaves_the_root_is_refused(name, tmp_path):
    with pytest.raises(ValueError, match=r"name must be one directory name inside the root .*got " + repr(name).replace("\\", "\\\\")):
        tiny_collect_config(tmp_path, name=name)


@pytest.mark.parametrize("rel", ["../outside.npy", "/etc/hostname"])
def test_a_manifest_naming_a_file_outside_its_dataset_is_refused_without_reading_it(tiny_dataset, tmp_path, rel):
    from worldmodel.data.storage import dataset_checksum

    path = copy_dataset(tiny_dataset, tmp_path / "d")
    (tmp_path / "d" / "outside.npy").write_bytes(b"secret")

    def forge(m):
        m["files"][rel] = {"bytes": 1, "sha256": "0" * 64}
        m["checksum"] = dataset_checksum(m["files"])

    edit_manifest(path, forge, keep_checksum_valid=True)
    with pytest.raises(DatasetError, match=r"lies outside .*only files inside it are read") as err:
        open_dataset(path, verify=True)
    assert "bytes" not in str(err.value)


@pytest.mark.parametrize("overrides, match", [
    ({"train_episodes": 10**9}, r"data.train_episodes must be in \[0, 10,000,000\], got 1,000,000,000"),
    ({"heldout_episodes": 10**8}, r"data.heldout_episodes must be in \[0, 10,000,000\]"),
    ({"seed": 2**70}, r"data.seed and data.eval_seed must be >= 0 and < 2\*\*63"),
    ({"eval_seed": 2**63}, r"data.seed and data.eval_seed must be >= 0 and < 2\*\*63"),
])
def test_counts_and_seeds_beyond_reason_are_refused_naming_the_key(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_collect_config(tmp_path, **overrides)


@pytest.mark.parametrize("overrides, match", [
    ({"image_size": 1_000_000}, r"env.image_size must be an integer in \[8, 1024\], got 1000000"),
    ({"episode_steps": 1_000_000}, r"env.episode_steps must be in \[1, 100,000\], got 1000000"),
])
def test_env_sizes_beyond_reason_are_refused_naming_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        envs.EnvConfig(**overrides)


def test_a_collection_larger_than_the_disk_is_refused_before_any_episode(tmp_path):
    import errno

    from worldmodel.data.collect import build_dataset

    cfg = tiny_collect_config(tmp_path, train_episodes=9_000_000, env=envs.EnvConfig(image_size=1024))
    sizing = r"\(data.train_episodes=9000000.*env.image_size=1024\)"
    with pytest.raises(OSError, match=rf"needs at least .* GB {sizing}; .* GB free") as err:
        build_dataset(cfg)
    assert err.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_a_read_only_feature_cache_is_named_before_any_work(tmp_path):
    (tmp_path / "cache").mkdir(mode=0o500)
    with pytest.raises(PermissionError, match=r"feature cache \(feature_cache=...\) .*cache is not writable"):
        FeatureCache(tmp_path / "cache", "data/train")


def test_a_feature_cache_on_a_read_only_disk_is_named_before_any_work(read_only_disk):
    """The same on a real read-only mount, which root cannot write to either (the test above skips as root)."""
    with pytest.raises(PermissionError, match=r"feature cache \(feature_cache=...\) .*ro/cache is not writable"):
        FeatureCache(read_only_disk / "cache", "data/train")


def test_a_real_disk_too_small_for_a_collection_is_refused_before_any_episode(small_disk):
    import errno

    from worldmodel.data.collect import build_dataset

    with pytest.raises(OSError, match=r"dataset .*disk/reacher.* needs at least 0.0 GB .*; .*disk has 0.0 GB free") as err:
        build_dataset(tiny_collect_config(small_disk))
    assert err.value.errno == errno.ENOSPC
    assert [p.name for p in small_disk.iterdir() if not p.name.startswith(".")] == []


def test_a_feature_cache_that_is_a_file_is_named_before_any_work(tmp_path):
    (tmp_path / "cache").write_text("")
    with pytest.raises(NotADirectoryError, match=r"feature cache \(feature_cache=...\) .*cache is a file"):
        FeatureCache(tmp_path / "cache", "data/train")


def test_a_second_run_needing_the_same_new_dataset_waits_for_the_first_and_uses_its_copy(tiny_dataset, tmp_path,
                                                                                           monkeypatch, capsys):
    import threading

    import worldmodel.data.collect as collect
    from worldmodel.files import DirectoryLock

    cfg = tiny_collect_config(tmp_path, name="d")
    first = DirectoryLock(tmp_path, "dataset root (a collection)", ".collect.lock").acquire()  # collecting now
    monkeypatch.setattr(collect, "build_dataset", lambda *a, **k: pytest.fail("collected a second time"))
    got = []
    second = threading.Thread(target=lambda: got.append(ensure_dataset(cfg)))
    second.start()
    second.join(timeout=2)
    assert second.is_alive() and not got  # waiting on the first
    shutil.copytree(tiny_dataset.path, tmp_path / "d")  # the first finishes its collection
    first.release()
    second.join(timeout=30)
    assert got == [tmp_path / "d"]
    assert "is in use by process" in capsys.readouterr().err
