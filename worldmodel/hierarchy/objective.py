"""Training the slow level, as objectives of the training loop.

Both stages read windows of level-1 frame latents (the level-1 model's EMA head, fixed) at
block boundaries, with the action blocks between them (:class:`SlowWindows`).

1. :class:`TemporalJEPAObjective` (``state=jepa`` only): I-JEPA over time. Contiguous blocks of
   a window's boundaries are hidden; the context encoder sees the rest; a narrow predictor
   predicts the EMA target encoder's representations of the hidden boundaries; L2 loss; the
   target encoder follows the context encoder by EMA, with stop-gradient.
2. :class:`SlowObjective`: the macro-action encoder, the slow predictor and (``jepa``) the
   readout head, on windows of ``R`` chunks: teacher forcing (``one_step``) plus an ``R``-chunk
   open-loop rollout (``rollout``) against the slow states the (frozen) encoder gives at the
   chunk boundaries; ``vc``, a variance-covariance guard on the macro-actions; ``readout``,
   the level-1 latents at each boundary regressed from its slow state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from worldmodel.data.episodes import Episodes
from worldmodel.data.windows import WindowSampler
from worldmodel.hierarchy.model import SlowModel
from worldmodel.training.collapse import RepresentationCollapse, variance_covariance
from worldmodel.training.distributed import rank_slice
from worldmodel.training.loop import OptimConfig
from worldmodel.training.schedules import ema_update

MIN_SLOW_STD = 1e-3  # below this the slow states (or macro-actions) no longer tell chunks apart


@dataclass
class SlowTrainConfig(OptimConfig):
    """Optimisation of one stage of the slow level.

    Attributes:
        rollout_chunks: chunks R per training window (stage 2).
        rollout_weight: weight of the rollout term (one-step has weight 1).
        vc_weight: weight of the macro-actions' variance-covariance term.
        readout_weight: weight of the readout term (``jepa``).
        ema: the JEPA target encoder's EMA momentum (stage 1).
        num_targets: hidden time blocks per window (stage 1).
        target_length: longest hidden block, in boundaries (stage 1).
        val_windows: fixed validation windows scored at every log step.
    """

    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    log_every: int = 100
    rollout_chunks: int = 3
    rollout_weight: float = 1.0
    vc_weight: float = 1.0
    readout_weight: float = 1.0
    ema: float = 0.996
    num_targets: int = 2
    target_length: int = 2
    val_windows: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if min(self.rollout_chunks, self.num_targets, self.target_length, self.val_windows) < 1:
            raise ValueError(f"rollout_chunks, num_targets, target_length and val_windows must be >= 1, got {self}")
        if not 0 <= self.ema < 1 or min(self.rollout_weight, self.vc_weight, self.readout_weight) < 0:
            raise ValueError(f"need 0 <= ema < 1 and loss weights >= 0, got {self}")


def check_latents(latents: torch.Tensor, episodes: Episodes, latent_dim: int) -> None:
    """Refuse level-1 latents that are not one finite ``latent_dim`` row per frame of ``episodes``."""
    if latents.ndim != 2 or latents.shape != (len(episodes.obs), latent_dim):
        raise ValueError(f"latents must be ({len(episodes.obs)}, {latent_dim}) for this split, got "
                         f"{tuple(latents.shape)}")
    if not bool(torch.isfinite(latents).all()):
        raise ValueError("the level-1 latents hold NaN or inf values")


class SlowWindows:
    """Windows of ``boundaries`` consecutive level-1 block boundaries of a split: their latents and the
    action blocks between them.

    Args:
        slow: whose level-1 layout (action block) spaces the boundaries.
        episodes: the split.
        latents: ``(frames, latent_dim)`` level-1 latents of every frame of the split.
        boundaries: block boundaries per window.
    """

    def __init__(self, slow: SlowModel, episodes: Episodes, latents: torch.Tensor, boundaries: int):
        L = slow.layout
        check_latents(latents, episodes, L.latent_dim)
        self.layout, self.n = L, boundaries
        self.sampler = WindowSampler(episodes, window=L.boundary_span(boundaries) + 1)
        self.latents = latents
        self.actions = torch.from_numpy(np.array(episodes.actions, dtype=np.float32))
        self.offsets = L.boundary_positions(boundaries)

    def get(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents ``(B, n, latent_dim)`` and blocks ``(B, n - 1, block_dim)`` of windows ``index``."""
        frames, steps = self.sampler.rows(index)
        z = self.latents[torch.from_numpy(frames[:, self.offsets])]
        return z, self.layout.blocks(self.actions[torch.from_numpy(steps)])

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return self.get(torch.randint(len(self.sampler), (batch,), generator=generator).numpy())

    def fixed(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sample(n, torch.Generator().manual_seed(seed))


def time_masks(batch: int, window: int, num_targets: int, longest: int, generator: torch.Generator) -> torch.Tensor:
    """``keep (B, W) bool``: False on up to ``num_targets`` contiguous blocks of 1..``longest`` boundaries
    per window (positions and lengths drawn per sample), True on the context. The first block is
    always hidden; a later one only where it leaves at least two boundaries visible."""
    if window < 3:
        raise ValueError(f"a JEPA over time needs windows of at least 3 boundaries (2 visible, 1 hidden), got {window}")
    longest = min(longest, window - 2)
    keep = torch.ones(batch, window, dtype=torch.bool)
    t = torch.arange(window)
    for _ in range(num_targets):
        length = torch.randint(1, longest + 1, (batch,), generator=generator)
        start = (torch.rand(batch, generator=generator) * (window - length + 1)).long()
        hidden = (t >= start[:, None]) & (t < (start + length)[:, None])
        candidate = keep & ~hidden
        keep = torch.where((candidate.sum(1) >= 2)[:, None], candidate, keep)
    return keep


class TemporalJEPAObjective:
    """Stage 1: the slow state's encoder as a JEPA on block-masked time (the model is the
    :class:`SlowModel`; its state's ``encoder`` trains, its ``target_encoder`` follows by EMA,
    ``jepa_predictor`` is the narrow predictor)."""

    def __init__(self, slow: SlowModel, predictor: torch.nn.Module, cfg: SlowTrainConfig, train: SlowWindows,
                 val: SlowWindows):
        if not slow.state.pretrainable:
            raise ValueError(f"slow state {slow.cfg.state!r} has no encoder to pretrain")
        self.part = slow.state  # the slow state being pretrained
        self.model = torch.nn.ModuleDict({"slow": slow, "jepa_predictor": predictor})
        self.slow, self.predictor, self.cfg, self.train_windows, self.val_windows = slow, predictor, cfg, train, val
        self.generators = {"windows": torch.Generator().manual_seed(cfg.seed),
                           "masks": torch.Generator().manual_seed(cfg.seed + 1)}
        self.val = val.fixed(min(cfg.val_windows, len(val.sampler)))

    def optimizer(self) -> torch.optim.Optimizer:
        params = list(self.part.encoder.parameters()) + list(self.predictor.parameters())
        return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def batch(self, rank: int, world: int, device: torch.device):
        z, a = self.train_windows.sample(self.cfg.batch_size, self.generators["windows"])
        keep = time_masks(len(z), z.shape[1], self.cfg.num_targets, self.cfg.target_length, self.generators["masks"])
        part = rank_slice(self.cfg.batch_size, rank, world)
        return z[part].to(device), a[part].to(device), keep[part].to(device)

    def losses(self, z: torch.Tensor, a: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            target = self.part.target_encoder(z, a)
        pred = self.predictor(self.part.encoder(z, a, keep), keep)
        hidden = (~keep).float()[..., None]
        jepa = (((pred - target) ** 2) * hidden).sum() / (hidden.sum() * target.shape[-1])
        return {"jepa": jepa}

    def loss(self, model, batch) -> dict[str, torch.Tensor]:
        terms = self.losses(*batch)
        return {"loss": terms["jepa"], **terms}

    def after_step(self, step: int) -> dict[str, float]:
        ema_update(self.part.target_encoder, self.part.encoder, self.cfg.ema)
        return {}

    @torch.no_grad()
    def log(self, step: int, out: dict) -> dict[str, float]:
        was = self.model.training
        self.model.eval()
        z, a = (t.to(self.slow.device) for t in self.val)
        keep = time_masks(len(z), z.shape[1], self.cfg.num_targets, self.cfg.target_length,
                          torch.Generator().manual_seed(0)).to(z.device)
        val = self.losses(z, a, keep)["jepa"].item()
        s2 = self.part(z, a)
        self.model.train(was)
        return {"val_jepa": val, "val_slow_std": s2.std(0).mean().item()}

    def check(self, step: int, row: dict) -> None:
        if row["val_slow_std"] < MIN_SLOW_STD:
            raise RepresentationCollapse(f"the temporal encoder collapsed at step {step}: slow-state std "
                                         f"{row['val_slow_std']:.2e} < {MIN_SLOW_STD}")

    def config(self) -> dict:
        return self.slow.config()

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass


def chunk_windows(slow: SlowModel, z: torch.Tensor, a: torch.Tensor):
    """:meth:`StateLayout.chunk_windows` for ``slow``'s state window and chunk."""
    return slow.layout.chunk_windows(z, a, slow.state_window, slow.cfg.chunk)


def slow_losses(slow: SlowModel, z: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
    zs, bs, chunks, frames = chunk_windows(slow, z, a)
    B, R1 = zs.shape[:2]
    with torch.no_grad():
        s2 = slow.encode(zs.flatten(0, 1), bs.flatten(0, 1)).unflatten(0, (B, R1))  # (B, R+1, state_dim)
    m = slow.macro(chunks)  # (B, R, macro_dim)
    one_step = F.mse_loss(slow.predict(s2[:, :-1], m), s2[:, 1:])
    rollout = F.mse_loss(slow.rollout(s2[:, 0], m), s2[:, 1:])
    terms = {"one_step": one_step, "rollout": rollout}
    terms["vc"] = variance_covariance(m.flatten(0, 1)) if slow.cfg.macro == "encoder" else one_step.new_zeros(())
    terms["readout"] = F.mse_loss(slow.subgoal(s2), frames)  # 0 where the slow state is the latents
    return terms


@torch.no_grad()
def validate_slow(slow: SlowModel, z: torch.Tensor, a: torch.Tensor) -> dict:
    """Loss terms on fixed windows, the rollout MSE per chunk, the "nothing moves" baseline's MSE per chunk
    (the slow state kept as it is), the readout's level-1 error along the rollout, and the spread of the
    slow states and macro-actions (a collapse shows as ~0)."""
    was = slow.training
    slow.eval()
    z, a = z.to(slow.device), a.to(slow.device)
    terms = {k: v.item() for k, v in slow_losses(slow, z, a).items()}
    zs, bs, chunks, frames = chunk_windows(slow, z, a)
    B, R1 = zs.shape[:2]
    s2 = slow.encode(zs.flatten(0, 1), bs.flatten(0, 1)).unflatten(0, (B, R1))
    m = slow.macro(chunks)
    pred = slow.rollout(s2[:, 0], m)
    by_chunk = ((pred - s2[:, 1:]) ** 2).mean((0, 2))
    still = ((s2[:, :1] - s2[:, 1:]) ** 2).mean((0, 2))
    subgoal_err = ((slow.subgoal(pred) - frames[:, 1:]) ** 2).mean((0, 2, 3))
    slow.train(was)
    return {**terms, "rollout_mse_by_chunk": by_chunk.tolist(), "still_mse_by_chunk": still.tolist(),
            "subgoal_mse_by_chunk": subgoal_err.tolist(), "slow_std": s2.flatten(0, 1).std(0).mean().item(),
            "macro_std": m.flatten(0, 1).std(0).mean().item()}


class SlowObjective:
    """Stage 2: macro-action encoder, slow predictor and readout on windows of ``R`` chunks (the encoder,
    pretrained or none, stays fixed)."""

    def __init__(self, slow: SlowModel, cfg: SlowTrainConfig, train: SlowWindows, val: SlowWindows):
        self.model, self.cfg, self.train_windows = slow, cfg, train
        slow.state.freeze()
        self.generators = {"windows": torch.Generator().manual_seed(cfg.seed)}
        self.weights = {"one_step": 1.0, "rollout": cfg.rollout_weight, "vc": cfg.vc_weight,
                        "readout": cfg.readout_weight}
        self.val = val.fixed(min(cfg.val_windows, len(val.sampler)))

    def optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def batch(self, rank: int, world: int, device: torch.device):
        z, a = self.train_windows.sample(self.cfg.batch_size, self.generators["windows"])
        part = rank_slice(self.cfg.batch_size, rank, world)
        return z[part].to(device), a[part].to(device)

    def loss(self, model, batch) -> dict[str, torch.Tensor]:
        terms = slow_losses(self.model, *batch)
        return {"loss": sum(self.weights[k] * v for k, v in terms.items()), **terms}

    def after_step(self, step: int) -> dict[str, float]:
        return {}

    def log(self, step: int, out: dict) -> dict[str, float]:
        v = validate_slow(self.model, *self.val)
        return {"val_one_step": v["one_step"], "val_rollout": v["rollout"], "val_still": float(np.mean(
            v["still_mse_by_chunk"])), "val_slow_std": v["slow_std"], "val_macro_std": v["macro_std"]}

    def check(self, step: int, row: dict) -> None:
        if min(row["val_slow_std"], row["val_macro_std"]) < MIN_SLOW_STD:
            raise RepresentationCollapse(f"the slow level collapsed at step {step}: slow-state std "
                                         f"{row['val_slow_std']:.2e}, macro-action std {row['val_macro_std']:.2e} "
                                         f"(< {MIN_SLOW_STD})")

    def config(self) -> dict:
        return self.model.config()

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass
