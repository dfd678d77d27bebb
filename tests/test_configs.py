import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from envs import UnknownEnvError
from experiments.conf import load
from worldmodel.data import CollectConfig


def test_collect_config_composes_with_overrides():
    cfg = load("collect", ["env=reacher", "data.policy.name=correlated", "env.image_size=96", "data.train_episodes=7",
                           "data.seed=3"])
    assert isinstance(cfg, CollectConfig)
    assert cfg.env.name == "reacher" and cfg.env.image_size == 96
    assert cfg.data.policy.name == "correlated" and cfg.data.policy.beta == 0.8
    assert cfg.data.train_episodes == 7 and cfg.data.seed == 3
    assert cfg.dataset_name.startswith("reacher-correlated-96px-7x100-s3-")  # + a hash of every setting


def test_the_default_stages_read_one_collection_and_hold_their_tasks_out_of_it():
    """collect.py's default dataset is the one pretraining, distillation, probes and plan.py read (a
    mismatch would collect a second copy), and its held-out episodes are drawn with another seed."""
    names = {name: (c := load(name)).data.dataset_name(c.env)
             for name in ("collect", "pretrain", "distill_dynamics", "probe", "plan")}
    assert len(set(names.values())) == 1, names
    cfg = load("collect")
    assert cfg.data.seed != cfg.data.eval_seed
    other = load("collect", ["data.eval_seed=7"])
    assert other.dataset_name != cfg.dataset_name  # the held-out split is part of the name


@pytest.mark.parametrize("override", ["env.imagesize=64", "data.trian_episodes=3", "data.policy.beta2=1",
                                      "train_episodes=3"])
def test_unknown_keys_are_rejected(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError),
                       match="imagesize|trian_episodes|beta2|train_episodes"):
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
        load("pretrain", [f"env.image_size={size}", f"model.encoder.patch_size={patch}"])


def test_same_train_and_eval_seed_is_rejected():
    with pytest.raises(ValueError, match="eval_seed"):
        load("collect", ["data.seed=5", "data.eval_seed=5"])
