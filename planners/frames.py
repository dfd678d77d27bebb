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
        self.latents: list[torch.Tensor | None] = []  # of each frame ``(B, latent_dim)``, once a model has encoded it
        self.encoded: list[np.ndarray] = []  # of each frame ``(B,)``: which tasks' latents are there

    def select(self, keep: list[int]) -> None:
        """Keep the tasks ``keep`` (indices into the batch) and drop the others."""
        self.frames = [f[keep] for f in self.frames]
        self.actions = [a[keep] for a in self.actions]
        idx = torch.as_tensor(keep, dtype=torch.long)
        self.latents = [None if z is None else z[idx.to(z.device)] for z in self.latents]
        self.encoded = [e[keep] for e in self.encoded]

    def add_frame(self, obs: np.ndarray) -> None:
        """The newest observations ``(B, H, W, C)`` (copied)."""
        self.frames = (self.frames + [np.array(obs, copy=True)])[-self.keep - 1 :]
        self.latents = (self.latents + [None])[-self.keep - 1 :]
        self.encoded = (self.encoded + [np.zeros(len(obs), bool)])[-self.keep - 1 :]

    def add_action(self, action: np.ndarray) -> None:
        """The actions ``(B, A)`` taken at the newest frames."""
        self.actions = (self.actions + [np.asarray(action)])[-self.keep :] if self.keep else []

    def window(self, boundaries: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest ``boundaries`` block-boundary images ``(B, n, C, H, W)`` uint8, one block apart back
        from the newest frame, and the ``(B, (n - 1) * k, A)`` actions between them (before the first
        frame seen: that frame, still, and zero actions)."""
        span = self._span(boundaries)
        x = np.stack([self.frames[i] for i in self._boundary_frames(boundaries)], 1)  # (B, n, H, W, C)
        x = torch.from_numpy(x).permute(0, 1, 4, 2, 3)
        return x.to(device), self._actions(span, device, dtype)

    def latent_window(self, boundaries: int, encode, device: torch.device, dtype: torch.dtype,
                      tasks=None) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`window`, with the images' latents ``(B, n, latent_dim)`` in their place: ``encode``
        (images ``(B, m, C, H, W)`` uint8 -> ``(B, m, latent_dim)``) runs only on frames no earlier call
        encoded (a replan every block finds the older boundaries encoded by the one before). With
        ``tasks`` (indices into the batch), the window of those tasks alone, and only their frames are
        encoded. The cache belongs to one ``encode``: a history serves one model."""
        span = self._span(boundaries)
        picks = self._boundary_frames(boundaries)
        rows = np.arange(len(self.frames[0])) if tasks is None else np.asarray(tasks, dtype=np.int64)
        missing = sorted({i for i in picks if not self.encoded[i][rows].all()})
        if missing:
            need = rows[~np.all([self.encoded[i][rows] for i in missing], 0)]  # tasks missing one of them at least
            x = torch.from_numpy(np.stack([self.frames[i][need] for i in missing], 1)).permute(0, 1, 4, 2, 3)
            z = encode(x.to(device))  # (n, m, latent_dim)
            for j, i in enumerate(missing):
                if self.latents[i] is None:
                    self.latents[i] = z.new_zeros((len(self.frames[i]), z.shape[-1]))
                fresh = ~self.encoded[i][need]
                self.latents[i][torch.as_tensor(need[fresh], device=z.device)] = z[torch.as_tensor(fresh, device=z.device), j]
                self.encoded[i][need[fresh]] = True
        idx = torch.as_tensor(rows, device=self.latents[picks[0]].device)
        return (torch.stack([self.latents[i][idx] for i in picks], 1),
                self._actions(span, device, dtype)[torch.as_tensor(rows, device=device)])

    def _span(self, boundaries: int) -> int:
        """Env steps a window of ``boundaries`` spans, refused where no frame was seen or it is longer than kept."""
        if not self.frames:
            raise RuntimeError("no frame seen yet: add one before asking for a window")
        span = self.layout.boundary_span(boundaries)
        if span > self.keep:
            raise ValueError(f"a window of {boundaries} block boundaries spans {span} env steps; this history "
                             f"keeps {self.keep}")
        return span

    def unencoded(self, boundaries: int, tasks=None) -> int:
        """How many of the newest ``boundaries`` block-boundary frames :meth:`latent_window` would encode (for
        ``tasks``: for one of them at least)."""
        if not self.frames:
            return 0
        rows = slice(None) if tasks is None else np.asarray(tasks, dtype=np.int64)
        return len({i for i in self._boundary_frames(boundaries) if not self.encoded[i][rows].all()})

    def _boundary_frames(self, boundaries: int) -> list[int]:
        """Indices into :attr:`frames` of the newest ``boundaries`` block boundaries, oldest first (the
        first frame seen stands for those before it)."""
        newest = len(self.frames) - 1
        return [max(0, newest + int(i)) for i in self.layout.boundary_offsets(boundaries)]

    def _actions(self, span: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The ``(B, span, A)`` newest actions (zeros before the first frame seen)."""
        B = self.frames[0].shape[0]
        pad = max(0, span - len(self.actions))
        actions = [np.zeros((B, self.layout.action_dim), np.float32)] * pad + self.actions
        a = (np.stack(actions[len(actions) - span :], 1).astype(np.float32) if span
             else np.zeros((B, 0, self.layout.action_dim), np.float32))
        return torch.from_numpy(a).to(device=device, dtype=dtype)
