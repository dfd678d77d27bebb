"""Probes: which physical quantities can be read out of frozen representations.

A probe maps representations ``(n, d)`` to the physical quantities an environment
declares on its ``EnvSpec`` (recorded per step in ``info``, stored in a dataset as
``physics.<key>``). Angles are regressed as sin/cos and scored back in radians, modulo
2*pi; other quantities in their own units; a quantity with two columns is also scored
as a Euclidean distance. Two probe families, both fitted on standardised inputs and
outputs: ridge regression (closed form) and a small MLP.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from envs.registry import EnvSpec, Quantity
from worldmodel.data.episodes import Episodes


def columns(q: Quantity) -> list[str]:
    """Probe output columns of a quantity (``sin(key[i])``, ``cos(key[i])`` for angles, else ``key[i]``)."""
    if q.kind == "angle":
        return [f"{f}({q.key}[{i}])" for f in ("sin", "cos") for i in range(q.dims)]
    return [f"{q.key}[{i}]" for i in range(q.dims)]


def encode_values(q: Quantity, values: np.ndarray) -> np.ndarray:
    """Probe targets ``(n, len(columns))`` of values ``(n, dims)``."""
    return np.concatenate([np.sin(values), np.cos(values)], 1) if q.kind == "angle" else values


def decode_columns(q: Quantity, cols: np.ndarray) -> np.ndarray:
    """Values ``(n, dims)`` back from probe outputs ``(n, len(columns))``."""
    return np.arctan2(cols[:, : q.dims], cols[:, q.dims :]) if q.kind == "angle" else cols


def physical_errors(q: Quantity, cols: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame absolute errors in ``q.unit``, by name (``key[i]``; ``key(distance)`` for 2-d non-angles)."""
    diff = decode_columns(q, cols) - values
    if q.kind == "angle":
        diff = (diff + np.pi) % (2 * np.pi) - np.pi
    out = {f"{q.key}[{i}]": np.abs(diff[:, i]) for i in range(q.dims)}
    if q.dims == 2 and q.kind != "angle":
        out[f"{q.key}(distance)"] = np.linalg.norm(diff, axis=1)
    return out


class Targets:
    """The quantities probed, in a fixed order, and their column layout."""

    def __init__(self, quantities: list[Quantity]):
        if not quantities:
            raise ValueError("no physical quantities to probe")
        self.quantities = list(quantities)
        self.columns = [c for q in quantities for c in columns(q)]

    @classmethod
    def of(cls, spec: EnvSpec, episodes: Episodes, keys: list[str] | None = None) -> "Targets":
        """The env's quantities ``keys`` (every declared one, in alphabetical order, when ``None``),
        checked against what ``episodes`` recorded."""
        keys = sorted(spec.physics_keys) if keys is None else list(keys)
        quantities = [spec.quantity(k) for k in keys]
        missing = [k for k in keys if k not in episodes.physics]
        if missing:
            raise KeyError(f"quantities {missing} are not recorded; the dataset has {sorted(episodes.physics)}")
        return cls(quantities)

    def values(self, episodes: Episodes, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {q.key: np.asarray(episodes.physics[q.key][frames], dtype=np.float64).reshape(len(frames), -1)
                for q in self.quantities}

    def table(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Probe targets ``(n, len(columns))``."""
        return np.concatenate([encode_values(q, values[q.key]) for q in self.quantities], 1)

    def errors(self, pred: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-frame physical errors of predictions ``(n, len(columns))``, by name."""
        out, i = {}, 0
        for q in self.quantities:
            n = len(columns(q))
            out.update(physical_errors(q, pred[:, i : i + n], values[q.key]))
            i += n
        return out


def r2_score(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column (0 for predicting the mean)."""
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    return 1 - ss_res / np.maximum(ss_tot, 1e-12)


def pearson(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pearson correlation per column (0 where either side is constant)."""
    a, b = y - y.mean(0), pred - pred.mean(0)
    denom = np.sqrt((a**2).sum(0) * (b**2).sum(0))
    return np.where(denom > 1e-12, (a * b).sum(0) / np.maximum(denom, 1e-12), 0.0)


class _Standardised:
    def _stats(self, x: np.ndarray, y: np.ndarray) -> None:
        self.mx, self.sx = x.mean(0), x.std(0) + 1e-8
        self.my, self.sy = y.mean(0), y.std(0) + 1e-8

    def _check(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        if x.ndim != 2 or (y is not None and (y.ndim != 2 or len(y) != len(x))):
            raise ValueError(f"probe inputs must be (n, d) and targets (n, k), got {x.shape}, "
                             f"{None if y is None else y.shape}")
        if not np.all(np.isfinite(x)) or (y is not None and not np.all(np.isfinite(y))):
            raise ValueError("probe inputs or targets contain NaN or inf")


class LinearProbe(_Standardised):
    """Ridge regression on standardised inputs; ``alpha`` scales with the sample count."""

    def __init__(self, alpha: float = 1e-3):
        self.alpha = alpha

    def fit(self, x: np.ndarray, y: np.ndarray) -> "LinearProbe":
        self._check(x, y)
        self._stats(x, y)
        z, t = (x - self.mx) / self.sx, (y - self.my) / self.sy
        a = z.T @ z + self.alpha * len(z) * np.eye(z.shape[1])
        self.w = np.linalg.solve(a, z.T @ t)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        return ((x - self.mx) / self.sx) @ self.w * self.sy + self.my


class MLPProbe(_Standardised):
    """Two hidden layers, Adam on the mean squared error of standardised targets."""

    def __init__(self, hidden: int = 256, steps: int = 2000, batch: int = 256, lr: float = 1e-3, seed: int = 0):
        self.hidden, self.steps, self.batch, self.lr, self.seed = hidden, steps, batch, lr, seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> "MLPProbe":
        self._check(x, y)
        self._stats(x, y)
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        self.net = nn.Sequential(nn.Linear(x.shape[1], self.hidden), nn.GELU(), nn.Linear(self.hidden, self.hidden),
                                 nn.GELU(), nn.Linear(self.hidden, y.shape[1]))
        z = torch.as_tensor((x - self.mx) / self.sx, dtype=torch.float32)
        t = torch.as_tensor((y - self.my) / self.sy, dtype=torch.float32)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        for _ in range(self.steps):
            idx = torch.randint(len(z), (min(self.batch, len(z)),), generator=gen)
            loss = ((self.net(z[idx]) - t[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return self

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        z = torch.as_tensor((x - self.mx) / self.sx, dtype=torch.float32)
        return self.net(z).double().numpy() * self.sy + self.my


PROBES = {"linear": LinearProbe, "mlp": MLPProbe}


def score(targets: Targets, pred: np.ndarray, values: dict[str, np.ndarray]) -> dict:
    """R^2 and Pearson r per column, and the median physical error per quantity."""
    y = targets.table(values)
    r2, r = r2_score(y, pred), pearson(y, pred)
    errors = {k: float(np.median(v)) for k, v in targets.errors(pred, values).items()}
    return {"r2": dict(zip(targets.columns, r2.tolist())), "pearson": dict(zip(targets.columns, r.tolist())),
            "median_error": errors}
