import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from envs import UnknownEnvError
from experiments.conf import load
from worldmodel.data import CollectConfig


def test_collect_config_composes_with_overrides():
    cfg = load("collect", ["env=reacher", "policy=correlated", "env.image_size=96", "train_episodes=7", "seed=3"])
    assert isinstance(cfg, CollectConfig)
    assert cfg.env.name == "reacher" and cfg.env.image_size == 96
    assert cfg.policy.name == "correlated" and cfg.policy.beta == 0.8
    assert cfg.train_episodes == 7 and cfg.seed == 3
    assert cfg.dataset_name.startswith("reacher-correlated-96px-7x100-s3-")  # + a hash of every setting


def test_the_default_stages_read_one_collection_and_hold_their_tasks_out_of_it():
    """collect.py's default dataset is the one pretraining, distillation, probes and plan.py read (a
    mismatch would collect a second copy), and its held-out episodes are drawn with another seed."""
    names = {name: load(name).dataset_name for name in ("collect", "pretrain", "distill_dynamics", "probe", "plan")}
    assert len(set(names.values())) == 1, names
    cfg = load("collect")
    assert cfg.seed != cfg.eval_seed
    assert load("collect", ["eval_seed=7"]).dataset_name != cfg.dataset_name  # the held-out split is part of the name


@pytest.mark.parametrize("override", ["env.imagesize=64", "trian_episodes=3", "policy.beta2=1"])
def test_unknown_keys_are_rejected(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="imagesize|trian_episodes|beta2"):
        load("collect", [override])


def test_unknown_env_group_is_rejected():
    with pytest.raises(ConfigCompositionException, match="env/pong"):
        load("collect", ["env=pong"])


def test_unknown_env_name_is_rejected():
    with pytest.raises(UnknownEnvError, match="unknown env 'pong'"):
        load("collect", ["env.name=pong"])


@pytest.mark.parametrize("size,patch", [(60, 8), (72, 16), (64, 0)])
def test_image_size_must_tile_into_patches(size, patch):
    with pytest.raises(ValueError, match=f"image size {size} must be a positive multiple of the patch size {patch}"):
        load("collect", [f"env.image_size={size}", f"patch_size={patch}"])


def test_same_train_and_eval_seed_is_rejected():
    with pytest.raises(ValueError, match="eval_seed"):
        load("collect", ["seed=5", "eval_seed=5"])
