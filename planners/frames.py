"""What an agent has seen: its recent frames and the actions it took between them, for ``B`` tasks at
once, and the block-boundary windows a model reads from them."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class BoundaryLayout(Protocol):
    action_dim: int

    def boundary_span(self, boundaries: int) -> int: ...  # env steps spanned by that many block boundaries

    def boundary_offsets(self, boundaries: int) -> np.ndarray: ...  # their offsets from the newest frame


class FrameHistory:
    """The newest frames ``(B, H, W, C)`` uint8 and actions ``(B, A)`` of ``B`` tasks.

    Args:
        layout: the model's state layout (where the block boundaries are).
        keep: env steps of the past kept (its frames: one more).
    """

    def __init__(self, layout: BoundaryLayout, keep: int):
        if keep < 0:
            raise ValueError(f"keep must be >= 0 env steps, got {keep}")
        self.layout, self.keep = layout, keep
        self.clear()

    def clear(self) -> None:
        self.frames: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []

    def add_frame(self, obs: np.ndarray) -> None:
        """The newest observations ``(B, H, W, C)`` (copied)."""
        self.frames = (self.frames + [np.array(obs, copy=True)])[-self.keep - 1 :]

    def add_action(self, action: np.ndarray) -> None:
        """The actions ``(B, A)`` taken at the newest frames."""
        self.actions = (self.actions + [np.asarray(action)])[-self.keep :] if self.keep else []

    def window(self, boundaries: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest ``boundaries`` block-boundary images ``(B, n, C, H, W)`` uint8, one block apart back
        from the newest frame, and the ``(B, (n - 1) * k, A)`` actions between them (before the first
        frame seen: that frame, still, and zero actions)."""
        if not self.frames:
            raise RuntimeError("no frame seen yet: add one before asking for a window")
        span = self.layout.boundary_span(boundaries)
        if span > self.keep:
            raise ValueError(f"a window of {boundaries} block boundaries spans {span} env steps; this history "
                             f"keeps {self.keep}")
        pad = max(0, span + 1 - len(self.frames))
        B = self.frames[0].shape[0]
        frames = [self.frames[0]] * pad + self.frames
        actions = [np.zeros((B, self.layout.action_dim), np.float32)] * pad + self.actions
        newest = len(frames) - 1
        x = np.stack([frames[newest + i] for i in self.layout.boundary_offsets(boundaries)], 1)  # (B, n, H, W, C)
        a = (np.stack(actions[len(actions) - span :], 1).astype(np.float32) if span
             else np.zeros((B, 0, self.layout.action_dim), np.float32))
        x = torch.from_numpy(x).permute(0, 1, 4, 2, 3)
        return x.to(device), torch.from_numpy(a).to(device=device, dtype=dtype)
