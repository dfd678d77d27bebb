"""Per-frame feature tables of a split and their cache on disk.

A frame encoder computes features; this module runs it over every frame of a split (in batches,
with a progress bar), checks the table is finite, and keeps it on disk under a key of everything
that determines it: the frames (a dataset checksum and split), the encoder's weights and settings.
A cached file is used only when it matches its recorded checksum; one that does not is reported and
recomputed.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from worldmodel.data.episodes import Episodes
from worldmodel.files import verified, writable_dir, write_verified


@dataclass(frozen=True)
class FeatureCache:
    """Where feature tables are cached, and what identifies the frames (e.g. a dataset's checksum and split)."""

    dir: Path
    data_key: str

    def __post_init__(self):  # a cache that cannot be written fails here, before any fit or encoding
        writable_dir(self.dir, "feature cache (feature_cache=...)")

    def path(self, kind: str, key: str, suffix: str) -> Path:
        """The file of a ``kind`` (``features``, ``projection``) of cache ``key``."""
        return self.dir / f"{kind}-{key}{suffix}"


def digest(tensors, *settings) -> str:
    """A short key: the bytes of ``tensors`` and the ``settings`` they were made with."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().numpy().tobytes())
    h.update(repr(settings).encode())
    return h.hexdigest()[:16]


def cached(path: Path | None, what: str) -> bool:
    """Whether a cache file can be used: it exists and matches its recorded checksum. A file that
    does not match (changed on disk, or written by an older version) is reported and recomputed."""
    if path is None or not path.exists():
        return False
    if verified(path):
        return True
    print(f"warning: the cached {what} {path} does not match its recorded checksum (changed on disk, or "
          f"written by an older version); recomputing it", file=sys.stderr)
    return False


@torch.no_grad()
def feature_table(episodes: Episodes, features: Callable[[torch.Tensor], torch.Tensor], dim: int,
                  device: torch.device, path: Path | None = None, progress: bool = True,
                  batch: int = 256) -> torch.Tensor:
    """``features`` of every frame of ``episodes``, ``(F, dim)`` float32 on the CPU, computed in batches of
    images ``(b, C, H, W)`` uint8 on ``device``; read from and written to ``path`` (a ``.npy``) when given."""
    if cached(path, "features"):
        return torch.from_numpy(np.load(path))
    out = torch.empty(len(episodes.obs), dim)
    for i in tqdm(range(0, len(out), batch), desc="encode frames", disable=not progress):
        obs = torch.from_numpy(np.array(episodes.obs[i : i + batch])).permute(0, 3, 1, 2).to(device)
        out[i : i + batch] = features(obs).float().cpu()
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"the frame features hold {int((~torch.isfinite(out)).sum())} non-finite values: "
                                 f"the encoder's weights or the projection are not finite")
    if path is not None:
        write_verified(path, lambda tmp: np.save(tmp, out.numpy()))
    return out


def cached_state(path: Path | None, what: str, compute: Callable[[], dict[str, torch.Tensor]]
                 ) -> dict[str, torch.Tensor]:
    """Tensors read from ``path`` when it holds a verified copy, else ``compute()``d and written there."""
    if cached(path, what):
        return torch.load(path, weights_only=True)
    state = compute()
    if path is not None:
        write_verified(path, lambda tmp: torch.save(state, tmp))
    return state
