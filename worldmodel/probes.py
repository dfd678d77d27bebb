"""Linear probes from frozen features to physical quantities."""

from __future__ import annotations

import numpy as np
import torch

from worldmodel.data.episodes import Episodes
from worldmodel.encoder import ViTEncoder, pool_tokens


def physical_targets(episodes: Episodes, frames: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Probe targets of the given frames: sin/cos of each joint angle, then the fingertip xy."""
    q = np.asarray(episodes.physics["joint_angles"][frames], dtype=np.float64)
    tip = np.asarray(episodes.physics["fingertip_xy"][frames], dtype=np.float64)
    cols = [np.sin(q[:, 0]), np.cos(q[:, 0]), np.sin(q[:, 1]), np.cos(q[:, 1]), tip[:, 0], tip[:, 1]]
    names = ["sin_shoulder", "cos_shoulder", "sin_elbow", "cos_elbow", "fingertip_x", "fingertip_y"]
    return np.stack(cols, 1), names


@torch.no_grad()
def encode_frames(encoder: ViTEncoder, episodes: Episodes, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """Pooled features ``(n, D)`` of the given frames."""
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for i in range(0, len(frames), batch):
        obs = torch.from_numpy(np.asarray(episodes.obs[np.sort(frames[i : i + batch])]))
        # keep the caller's order
        order = np.argsort(np.argsort(frames[i : i + batch]))
        images = obs.permute(0, 3, 1, 2).to(device)
        out.append(pool_tokens(encoder(images)).float().cpu().numpy()[order])
    return np.concatenate(out)


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression on standardised features; returns ``(mean, scale, W, b)``."""
    mu, sd = x.mean(0), x.std(0) + 1e-8
    z = (x - mu) / sd
    ym = y.mean(0)
    a = z.T @ z + alpha * len(z) * np.eye(z.shape[1])
    w = np.linalg.solve(a, z.T @ (y - ym))
    return mu, sd, w, ym


def predict_ridge(params, x: np.ndarray) -> np.ndarray:
    mu, sd, w, b = params
    return ((x - mu) / sd) @ w + b


def r2_score(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column (0 for predicting the mean)."""
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return 1 - ss_res / np.maximum(ss_tot, 1e-12)


def linear_probe(
    encoder: ViTEncoder,
    train: Episodes,
    test: Episodes,
    n_train: int = 4000,
    n_test: int = 2000,
    seed: int = 0,
) -> dict:
    """Fit a linear probe on frames of ``train``, score R^2 on frames of ``test``."""
    rng = np.random.default_rng(seed)
    ftr = rng.choice(len(train.obs), size=min(n_train, len(train.obs)), replace=False)
    fte = rng.choice(len(test.obs), size=min(n_test, len(test.obs)), replace=False)
    ytr, names = physical_targets(train, ftr)
    yte, _ = physical_targets(test, fte)
    params = fit_ridge(encode_frames(encoder, train, ftr), ytr)
    r2 = r2_score(yte, predict_ridge(params, encode_frames(encoder, test, fte)))
    per = dict(zip(names, r2.tolist()))
    return {
        "r2": per,
        "r2_mean": float(r2.mean()),
        "r2_joint_angles": float(r2[:4].mean()),
        "r2_fingertip": float(r2[4:].mean()),
        "train_frames": len(ftr),
        "test_frames": len(fte),
    }
