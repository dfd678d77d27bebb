"""Tiny models for tests, built through the same constructors as the real ones."""

import torch

from worldmodel.dynamics import DynamicsConfig, WorldModel
from worldmodel.jepa import EncoderConfig, JEPAConfig, JEPATrainConfig, ViTEncoder


def tiny_world_model(block: int = 2, moving: bool = False, **settings) -> WorldModel:
    """A world model on a random tiny ViT (pool 2, no projection; no head unless ``latent_dim``);
    ``moving``: a non-zero last predictor layer (an untrained one says "nothing moves")."""
    torch.manual_seed(0)
    cfg = DynamicsConfig(**{**dict(pool=2, project_dim=0, latent_dim=0, action_block=block, hidden=64, depth=2),
                            **settings})
    model = WorldModel.build(cfg, 2, vit=ViTEncoder(EncoderConfig(size="tiny")))
    if moving:
        torch.nn.init.normal_(model.predictor.net[-1].weight, std=0.1)
    return model


def tiny_conv_world_model(block: int = 2) -> WorldModel:
    torch.manual_seed(0)
    cfg = DynamicsConfig(encoder="conv", latent_dim=8, conv_width=8, head_hidden=32, action_block=block, hidden=64,
                         depth=2, inverse=True)
    return WorldModel.build(cfg, 2, image_shape=(3, 64, 64))


def tiny_jepa(**kw) -> JEPAConfig:
    return JEPAConfig(encoder=EncoderConfig(size="tiny"), predictor_width=32, predictor_depth=1, predictor_heads=2, **kw)


def tiny_jepa_train(**kw) -> JEPATrainConfig:
    settings = dict(steps=40, batch_size=16, warmup_steps=4, lr=1e-3, log_every=4, checkpoint_every=20,
                    progress=False)
    settings.update(kw)
    return JEPATrainConfig(**settings)
