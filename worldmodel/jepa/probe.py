"""The quick check at the end of JEPA pretraining: a linear probe from mean-pooled frozen
features to the env's physical quantities that one frame shows (angles, positions)."""

from __future__ import annotations

import numpy as np
import torch

from envs.registry import Quantity
from worldmodel.data.episodes import Episodes
from worldmodel.probes import LinearProbe, Targets, columns, r2_score
from worldmodel.jepa.vit import ViTEncoder, pool_tokens


@torch.no_grad()
def pooled_features(encoder: ViTEncoder, episodes: Episodes, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """Mean-pooled patch tokens ``(n, D)`` of the given frames of ``episodes``, in the given order."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, len(frames), batch):
        chunk = frames[i : i + batch]
        obs = torch.from_numpy(np.asarray(episodes.obs[np.sort(chunk)]))
        order = np.argsort(np.argsort(chunk))  # back to the caller's order
        out.append(pool_tokens(encoder(obs.permute(0, 3, 1, 2).to(device))).float().cpu().numpy()[order])
    return np.concatenate(out)


def linear_probe(encoder: ViTEncoder, train: Episodes, test: Episodes, quantities: list[Quantity],
                 n_train: int = 4000, n_test: int = 2000, seed: int = 0) -> dict:
    """Ridge probe from pooled features to ``quantities`` (angles as sin/cos); R^2 on ``test`` frames,
    per column and averaged per quantity."""
    rng = np.random.default_rng(seed)
    ftr = rng.choice(len(train.obs), size=min(n_train, len(train.obs)), replace=False)
    fte = rng.choice(len(test.obs), size=min(n_test, len(test.obs)), replace=False)
    targets = Targets(quantities)
    ytr, yte = targets.table(targets.values(train, ftr)), targets.table(targets.values(test, fte))
    probe = LinearProbe().fit(pooled_features(encoder, train, ftr), ytr)
    r2 = r2_score(yte, probe.predict(pooled_features(encoder, test, fte)))
    by_column = dict(zip(targets.columns, r2.tolist()))
    return {
        "r2": by_column,
        "r2_by_quantity": {q.key: float(np.mean([by_column[c] for c in columns(q)])) for q in quantities},
        "r2_mean": float(r2.mean()),
        "train_frames": len(ftr),
        "test_frames": len(fte),
    }
