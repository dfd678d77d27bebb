"""Frame encoders: observation -> features -> frame latent ``z``.

A frame encoder has two parts:

- ``features(obs)``: what stays fixed while the world model trains, computed once per
  frame and cached (:meth:`FrameEncoder.feature_table`);
- ``latents(x, target)``: the trained part, ``head``, with an EMA twin ``target_head``
  that gives prediction targets (under stop-gradient) and the latents used for planning.

Three implementations; a new kind is a new class here, registered in ``FRAME_ENCODERS``:

- :class:`FrozenJEPAFrames` (``frozen``): the pretrained JEPA ViT, frozen. A frame's
  features are its patch tokens average-pooled onto a ``pool x pool`` grid, flattened and
  projected onto their top ``project_dim`` principal components (fitted once on training
  frames). The head standardises them with dataset statistics and maps them through a
  small MLP onto ``latent_dim`` dimensions (``latent_dim = 0``: no MLP, the standardised
  features are the latent).
- :class:`PixelFrames` (``pixels``): the same projection, standardisation and head on the
  image itself average-pooled to ``pool x pool`` pixels: a head trained end to end on a
  low-resolution view, which keeps small objects that the ViT's tokens blur (Push-T's agent).
  Either's head can instead be :class:`KeypointHead` (``head = "keypoints"``): convolutions over
  the unprojected grid and each map's soft-argmax position, read by the MLP.
- :class:`ConvFrames` (``conv``): a small conv net trained end to end from pixels (as
  PLDM and LeWorldModel train theirs). Its features are the images themselves.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldmodel.data.episodes import Episodes
from worldmodel.data.features import FeatureCache, cached_state, digest, feature_table
from worldmodel.dynamics.nets import ConvNet, KeypointHead
from worldmodel.jepa.vit import ViTEncoder, normalize_images


class ImageTable:
    """The frames of a split as a feature table: ``table[index]`` gives images ``(*index.shape, C, H, W)``
    uint8, read from the (memory-mapped) ``(F, H, W, C)`` array on demand."""

    def __init__(self, obs: np.ndarray):
        self.obs = obs

    def __len__(self) -> int:
        return len(self.obs)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            return torch.from_numpy(np.array(self.obs[index])).permute(0, 3, 1, 2)
        index = torch.as_tensor(index)
        rows = np.array(self.obs[index.reshape(-1).numpy()])  # (n, H, W, C)
        images = torch.from_numpy(rows).view(*index.shape, *rows.shape[1:])
        return images.movedim(-1, -3).contiguous()


class FrameEncoder(nn.Module):
    """``features(obs)`` (fixed) then ``latents(x, target)`` (trained, with an EMA twin)."""

    latent_dim: int
    image_shape: tuple[int, int, int]
    head: nn.Module
    target_head: nn.Module
    pretrained: bool = False  # starts from a JEPA pretraining checkpoint

    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.parameters(), self.buffers())).device

    def check_images(self, obs: torch.Tensor) -> None:
        if obs.ndim != 4 or tuple(obs.shape[1:]) != self.image_shape:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(obs.shape)}")
        if obs.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 (0-255), got {obs.dtype}")

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """Features ``(N, ...)`` of images ``(N, C, H, W)`` uint8."""
        raise NotImplementedError

    def latents(self, x: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Frame latents ``(..., latent_dim)`` of features ``(..., *feature shape)``; ``target=True``
        uses the EMA twin (prediction targets, planning)."""
        raise NotImplementedError

    def feature_table(self, episodes: Episodes, cache: FeatureCache | None = None,
                      progress: bool = True) -> torch.Tensor | ImageTable:
        """The features of every frame of ``episodes``, indexable by frame: ``table[index]``."""
        raise NotImplementedError

    def prepare(self, train: Episodes, seed: int, cache: FeatureCache | None = None, progress: bool = True):
        """Fit what is fitted on training frames before training (``seed``: its random draws; the global
        generators are left as they were); returns the train split's feature table."""
        return self.feature_table(train, cache, progress)

    def config(self) -> dict | None:
        """The architecture of the encoder's pretrained parts (``None`` when it has none)."""
        return None

    def set_statistics(self, table) -> None:
        """Fit input statistics on a training feature table (nothing by default)."""

    def probe_representations(self, table) -> dict[str, np.ndarray]:
        """Representations besides the latents worth probing, from a feature table (none by default)."""
        return {}

    def random_baseline(self, train: Episodes, seed: int) -> "FrameEncoder":
        """The same pipeline with every learned part at a random initialisation (a probe's baseline)."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> "FrameEncoder":
        super().train(mode)
        self.target_head.eval()
        return self


class ProjectedFrames(FrameEncoder):
    """Fixed features pooled onto a grid, projected onto their principal components and standardised, then
    a trained head (an MLP, or :class:`KeypointHead` on the unprojected grid): what the frozen JEPA and the
    pooled-pixel encoders share. A subclass says what is pooled (:meth:`pooled`) and what that depends on
    (:meth:`source_key`).

    Args:
        cfg: ``pool``, ``project_dim``, ``standardize``, ``latent_dim``, ``head``, ``head_hidden``,
            ``conv_width``.
        image_shape: ``(C, H, W)`` of the images.
        grid: how :meth:`pooled`'s vectors flatten their ``c`` channels on an ``h x w`` grid (an einops
            pattern such as ``"(c h w)"``), with ``sizes`` ``c``, ``h`` and ``w``: what the keypoint head
            unflattens.
    """

    def __init__(self, cfg, image_shape: tuple[int, int, int], grid: str, **sizes: int):
        super().__init__()
        pooled_dim = int(np.prod(list(sizes.values())))
        self.cfg = cfg
        self.image_shape = tuple(int(x) for x in image_shape)
        if cfg.project_dim > pooled_dim:
            raise ValueError(f"project_dim {cfg.project_dim} exceeds the {pooled_dim} pooled dimensions")
        self.feature_dim = cfg.project_dim or pooled_dim
        self.latent_dim = cfg.latent_dim or self.feature_dim
        if cfg.project_dim:
            self.register_buffer("pca_mean", torch.zeros(pooled_dim))
            self.register_buffer("pca_components", torch.eye(pooled_dim)[:, : cfg.project_dim].contiguous())
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.feature_dim))
        if cfg.latent_dim and cfg.head == "keypoints":
            self.head = KeypointHead(grid, sizes, cfg.conv_width, cfg.head_hidden, cfg.latent_dim)
        elif cfg.latent_dim:
            self.head = nn.Sequential(nn.Linear(self.feature_dim, cfg.head_hidden), nn.LayerNorm(cfg.head_hidden),
                                      nn.GELU(), nn.Linear(cfg.head_hidden, cfg.latent_dim))
        else:
            self.head = nn.Identity()
        self.target_head = copy.deepcopy(self.head).requires_grad_(False)

    def pooled(self, obs: torch.Tensor) -> torch.Tensor:
        """The fixed features ``(N, pooled_dim)`` of images ``(N, C, H, W)`` uint8, before the projection."""
        raise NotImplementedError

    def source_key(self) -> str:
        """What :meth:`pooled` depends on (a cache key)."""
        raise NotImplementedError

    @torch.no_grad()
    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """Projected pooled features ``(N, feature_dim)`` (not yet standardised)."""
        self.check_images(obs)
        x = self.pooled(obs)
        if self.cfg.project_dim:
            x = (x - self.pca_mean) @ self.pca_components
        return x

    def latents(self, x: torch.Tensor, target: bool = False) -> torch.Tensor:
        x = (x.to(self.feature_mean.dtype) - self.feature_mean) / self.feature_std
        return (self.target_head if target else self.head)(x)

    # --- fitted before training ------------------------------------------------------------------
    @torch.no_grad()
    def fit_projection(self, episodes: Episodes, frames: int = 6000, seed: int = 0) -> None:
        """Principal components of the pooled features of ``frames`` random frames of ``episodes``."""
        if not self.cfg.project_dim:
            return
        q = self.cfg.project_dim
        rows = np.sort(np.random.default_rng(seed).choice(len(episodes.obs), min(frames, len(episodes.obs)), False))
        if len(rows) < q:
            raise ValueError(f"need at least {q} frames to fit the projection, got {len(rows)}")
        pooled = torch.cat([
            self.pooled(torch.from_numpy(np.array(episodes.obs[rows[i : i + 256]])).permute(0, 3, 1, 2)
                        .to(self.device)).cpu()
            for i in range(0, len(rows), 256)
        ]).to(self.device)
        mean = pooled.mean(0)
        _, _, v = torch.pca_lowrank(pooled - mean, q=min(q + 16, *pooled.shape), center=False, niter=4)
        self.pca_mean.copy_(mean)
        self.pca_components.copy_(v[:, :q])

    def prepare(self, train: Episodes, seed: int, cache: FeatureCache | None = None, progress: bool = True):
        """Fit the projection (seeded; cached) and the standardisation on the training frames; returns
        the train split's feature table."""
        if self.cfg.project_dim:
            key = digest([], self.source_key(), cache and cache.data_key, self.cfg.project_dim, seed,
                         self.device.type)

            def fit() -> dict[str, torch.Tensor]:
                devices = [self.device] if self.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):  # pca_lowrank draws from the global generator
                    torch.manual_seed(seed)
                    self.fit_projection(train, seed=seed)
                return {"mean": self.pca_mean.cpu().clone(), "components": self.pca_components.cpu().clone()}

            saved = cached_state(cache and cache.path("projection", key, ".pt"), "projection", fit)
            self.pca_mean.copy_(saved["mean"])
            self.pca_components.copy_(saved["components"])
        table = self.feature_table(train, cache, progress)
        self.set_statistics(table)
        return table

    def set_statistics(self, table: torch.Tensor) -> None:
        """Standardise features with the mean and std of a table ``(n, feature_dim)``."""
        self.feature_mean.copy_(table.mean(0))
        std = table.std(0).clamp_min(1e-6)
        if self.cfg.standardize == "global":  # one scale: unit mean variance over dimensions
            std = std.pow(2).mean().sqrt().expand_as(std)
        self.feature_std.copy_(std)

    def feature_table(self, episodes: Episodes, cache: FeatureCache | None = None, progress: bool = True,
                      batch: int = 256) -> torch.Tensor:
        """Features of every frame ``(F, feature_dim)`` float32 on the CPU, computed on the encoder's device
        (cached under ``cache`` when given, keyed by the frames, the source and the projection)."""
        path = None
        if cache is not None:
            projection = [self.pca_mean, self.pca_components] if self.cfg.project_dim else []
            key = digest(projection, self.source_key(), self.cfg.project_dim, cache.data_key, self.device.type)
            path = cache.path("features", key, ".npy")
        return feature_table(episodes, self.features, self.feature_dim, self.device, path, progress, batch)

    def probe_representations(self, table: torch.Tensor) -> dict[str, np.ndarray]:
        """The standardised fixed features under the head (``encoder``)."""
        return {"encoder": ((table - self.feature_mean.cpu()) / self.feature_std.cpu()).numpy()}


class FrozenJEPAFrames(ProjectedFrames):
    """Pooled, projected features of a frozen JEPA ViT, then a standardising MLP head.

    Args:
        vit: the pretrained encoder (frozen here).
        cfg: ``pool``, ``project_dim``, ``standardize``, ``latent_dim``, ``head_hidden``.
    """

    pretrained = True

    def __init__(self, vit: ViTEncoder, cfg):
        grid = vit.cfg.grid[0]
        if grid % cfg.pool:
            raise ValueError(f"pool {cfg.pool} must divide the patch grid side {grid}")
        super().__init__(cfg, (vit.cfg.in_chans, vit.cfg.image_size, vit.cfg.image_size), "(h w c)",
                         c=vit.width, h=cfg.pool, w=cfg.pool)
        self.vit = vit.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "FrozenJEPAFrames":
        super().train(mode)
        self.vit.eval()  # always frozen
        return self

    @torch.no_grad()
    def pooled(self, obs: torch.Tensor) -> torch.Tensor:
        """Pooled patch tokens ``(N, pool^2 * D)`` of images ``(N, C, H, W)`` uint8."""
        tokens = self.vit(obs)  # (N, n_patches, D)
        g = self.vit.cfg.grid[0]
        grid = rearrange(tokens, "b (h w) d -> b d h w", h=g, w=g)
        pooled = F.adaptive_avg_pool2d(grid, self.cfg.pool)  # (N, D, p, p)
        return rearrange(pooled, "b d h w -> b (h w d)")

    def source_key(self) -> str:
        """The ViT's weights and the pooling."""
        return digest(self.vit.parameters(), self.cfg.pool)

    def config(self) -> dict:
        return self.vit.cfg.to_dict()

    def random_baseline(self, train: Episodes, seed: int) -> "FrozenJEPAFrames":
        """A random-init ViT of the same architecture with the same pooling and projection (fitted on
        4000 frames of ``train``) and no head: its standardised features are its latents."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            vit = ViTEncoder(self.vit.cfg).to(self.device)
            cfg = type(self.cfg)(**{**self.cfg.to_dict(), "latent_dim": 0, "head": "mlp"})
            rand = FrozenJEPAFrames(vit, cfg).to(self.device).eval()
            torch.manual_seed(seed)
            rand.fit_projection(train, frames=4000, seed=seed)
        return rand


class PixelFrames(ProjectedFrames):
    """The image itself, average-pooled to ``pool x pool`` pixels (``C * pool^2`` values, normalised as
    the ViT normalises its input), optionally projected, standardised and mapped by the trained head: an encoder trained end to end on
    a low-resolution view, with nothing pretrained. Where the pixels are few, every frame's features are
    cached and training costs what the frozen encoder's head costs.

    Args:
        cfg: ``pool`` (must divide the image side), ``project_dim``, ``standardize``, ``latent_dim``,
            ``head_hidden``.
        image_shape: ``(C, H, W)`` of the images.
    """

    def __init__(self, cfg, image_shape: tuple[int, int, int]):
        c, h, w = (int(x) for x in image_shape)
        if h % cfg.pool or w % cfg.pool:
            raise ValueError(f"pool {cfg.pool} must divide the image sides {h}x{w}")
        super().__init__(cfg, (c, h, w), "(c h w)", c=c, h=cfg.pool, w=cfg.pool)

    @torch.no_grad()
    def pooled(self, obs: torch.Tensor) -> torch.Tensor:
        """The images ``(N, C, H, W)`` uint8 averaged onto ``pool x pool`` pixels, flattened ``(N, C * pool^2)``."""
        x = normalize_images(obs).to(self.feature_mean.dtype)
        return F.adaptive_avg_pool2d(x, self.cfg.pool).flatten(1)

    def source_key(self) -> str:
        return digest([], "pixels", self.cfg.pool)

    def random_baseline(self, train: Episodes, seed: int) -> "PixelFrames":
        """The same pooled pixels and projection with no head: the standardised pixels are its latents."""
        cfg = type(self.cfg)(**{**self.cfg.to_dict(), "latent_dim": 0, "head": "mlp"})
        base = PixelFrames(cfg, self.image_shape).to(self.device).eval()
        for name in ("pca_mean", "pca_components", "feature_mean", "feature_std"):
            if hasattr(self, name):
                getattr(base, name).copy_(getattr(self, name))
        return base


class ConvFrames(FrameEncoder):
    """A conv net trained end to end from pixels; its features are the images themselves.

    Args:
        cfg: ``latent_dim``, ``conv_width``, ``head_hidden``.
        image_shape: ``(C, H, W)`` of the images.
    """

    def __init__(self, cfg, image_shape: tuple[int, int, int]):
        super().__init__()
        self.cfg = cfg
        self.image_shape = tuple(int(x) for x in image_shape)
        self.latent_dim = cfg.latent_dim
        self.head = ConvNet(self.image_shape, cfg.latent_dim, width=cfg.conv_width, hidden=cfg.head_hidden)
        self.target_head = copy.deepcopy(self.head).requires_grad_(False)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        self.check_images(obs)
        return obs

    def latents(self, x: torch.Tensor, target: bool = False) -> torch.Tensor:
        return (self.target_head if target else self.head)(x)

    def feature_table(self, episodes: Episodes, cache: FeatureCache | None = None, progress: bool = True) -> ImageTable:
        """The frames themselves, read from the split's arrays on demand (nothing is cached)."""
        return ImageTable(episodes.obs)

    def random_baseline(self, train: Episodes, seed: int) -> "ConvFrames":
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return ConvFrames(self.cfg, self.image_shape).to(self.device).eval()


def load_pretrained_vit(cfg, checkpoint: str | Path) -> ViTEncoder | None:
    """What the frame encoder ``cfg.encoder`` starts from: the frozen ViT of a JEPA pretraining
    ``checkpoint``, or nothing for an encoder trained from scratch."""
    if not FRAME_ENCODERS[cfg.encoder].pretrained:
        return None
    from worldmodel.jepa.model import load_encoder

    return load_encoder(checkpoint)


def build_frame_encoder(cfg, image_shape: tuple[int, int, int] | None, vit: ViTEncoder | None) -> FrameEncoder:
    """The frame encoder ``cfg.encoder`` names: ``frozen`` needs the pretrained ``vit``, the others the
    ``image_shape``."""
    if cfg.encoder == "frozen":
        if vit is None:
            raise ValueError("the frozen-encoder world model needs a pretrained ViT encoder")
        return FrozenJEPAFrames(vit, cfg)
    if vit is not None or image_shape is None:
        raise ValueError(f"the {cfg.encoder!r} world model trains its own encoder: pass no ViT, and the image shape")
    return FRAME_ENCODERS[cfg.encoder](cfg, image_shape)


FRAME_ENCODERS = {"frozen": FrozenJEPAFrames, "pixels": PixelFrames, "conv": ConvFrames}
