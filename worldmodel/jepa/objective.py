"""JEPA pretraining as an objective of the training loop: masked batches of frames, the
I-JEPA loss, the EMA target encoder's momentum schedule and the collapse monitor.

Every rank draws the same global batch of frames and masks from generators seeded
identically, and trains on its slice of it (see :mod:`worldmodel.training.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldmodel.data.episodes import Episodes
from worldmodel.data.windows import WindowSampler
from worldmodel.jepa.masks import patch_content, sample_masks
from worldmodel.jepa.model import JEPA, JEPAConfig, jepa_loss
from worldmodel.training.collapse import RepresentationCollapse, embedding_stats
from worldmodel.training.distributed import rank_slice
from worldmodel.training.loop import OptimConfig
from worldmodel.training.schedules import ema_momentum, ema_update


@dataclass
class JEPATrainConfig(OptimConfig):
    """Optimisation of JEPA pretraining (the :class:`OptimConfig` fields, with I-JEPA's defaults).

    Attributes:
        collapse_std: the monitor's threshold on the mean per-dimension std of target embeddings.
        collapse_patience: consecutive low-std log steps that stop training.
    """

    steps: int = 3000
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    grad_clip: float = 1.0
    collapse_std: float = 1e-3
    collapse_patience: int = 5

    def __post_init__(self):
        super().__post_init__()
        if self.collapse_std < 0 or self.collapse_patience < 1:
            raise ValueError(f"need collapse_std >= 0 and collapse_patience >= 1, got {self.collapse_std}, "
                             f"{self.collapse_patience}")


def make_optimizer(model: JEPA) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95); biases and norm gains (1-d parameters) are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "decay": True}, {"params": no_decay, "decay": False, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95))


class PretrainObjective:
    """I-JEPA on single frames of a split: ``loss(model, (images, context, targets))``."""

    def __init__(self, model_cfg: JEPAConfig, cfg: JEPATrainConfig, train: Episodes):
        self.model_cfg, self.cfg = model_cfg, cfg
        torch.manual_seed(cfg.seed)
        self.model = JEPA(model_cfg)
        self.sampler = WindowSampler(train, window=1)
        self.generators = {"data": torch.Generator().manual_seed(cfg.seed + 1),
                           "mask": torch.Generator().manual_seed(cfg.seed + 2)}
        self.low_std_checks = 0
        self.background = self._background() if model_cfg.masks.content_bias > 0 else None

    def _background(self, frames: int = 512) -> torch.Tensor:
        """The per-pixel median of ``frames`` training frames ``(C, H, W)``: the static scene that
        content-biased target blocks avoid (drawn from a generator of its own)."""
        gen = torch.Generator().manual_seed(self.cfg.seed + 3)
        index = torch.randint(len(self.sampler), (min(frames, len(self.sampler)),), generator=gen).numpy()
        return self.sampler.get(index).obs[:, 0].float().median(0).values

    def optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model)

    def batch(self, rank: int, world: int, device: torch.device):
        """This rank's slice of the global batch: images ``(b, C, H, W)``, context and target indices."""
        B = self.cfg.batch_size
        index = torch.randint(len(self.sampler), (B,), generator=self.generators["data"]).numpy()
        part = rank_slice(B, rank, world)
        content = None
        if self.background is not None:  # every rank weighs the whole global batch, so masks agree
            images = self.sampler.get(index).obs[:, 0]
            content = patch_content(images, self.background, self.model_cfg.encoder.patch_size)
            images = images[part]
        else:
            images = self.sampler.get(index[part]).obs[:, 0]
        ctx, tgt = sample_masks(self.generators["mask"], B, self.model_cfg.encoder.grid, self.model_cfg.masks, content)
        return images.to(device), ctx[part].to(device), [t[part].to(device) for t in tgt]

    def loss(self, model: JEPA, batch) -> dict[str, torch.Tensor]:
        return jepa_loss(model, *batch)

    def after_step(self, step: int) -> dict[str, float]:
        tau = ema_momentum(step, self.cfg.steps, self.model_cfg.ema_start, self.model_cfg.ema_end)
        if self.model.target_encoder is not None:
            ema_update(self.model.target_encoder, self.model.encoder, tau)
        return {"tau": tau}

    def log(self, step: int, out: dict[str, torch.Tensor]) -> dict[str, float]:
        """Collapse statistics of the batch's pooled target embeddings."""
        stats = embedding_stats(out["pooled"])
        return {"emb_std": stats["std"], "eff_rank": stats["effective_rank"]}

    def check(self, step: int, row: dict) -> None:
        """Stop a run whose target embeddings stayed collapsed for ``collapse_patience`` log steps."""
        self.low_std_checks = self.low_std_checks + 1 if row["emb_std"] < self.cfg.collapse_std else 0
        if self.low_std_checks >= self.cfg.collapse_patience:
            raise RepresentationCollapse(
                f"representations collapsed at step {step}: the target embeddings' mean per-dimension std "
                f"is {row['emb_std']:.2e} (< {self.cfg.collapse_std}) for {self.low_std_checks} checks in a row; "
                f"effective rank {row['eff_rank']:.2f}"
            )

    def config(self) -> dict:
        return {"model": self.model_cfg.to_dict()}

    def state(self) -> dict:
        return {"low_std_checks": self.low_std_checks}

    def restore(self, state: dict) -> None:
        self.low_std_checks = state["low_std_checks"]
