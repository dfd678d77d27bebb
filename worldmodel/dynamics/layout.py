"""The state layout: what a state holds, and every piece of arithmetic about windows of frames.

The model steps over *blocks* of ``action_block = k`` env steps (their actions
concatenated into one vector of ``block_dim = k * A`` values). One image shows no
velocity, so a state ``s`` holds the frame latents of the last ``history = h`` block
boundaries and the ``h - 1`` action blocks between them, oldest first::

    s_t = [z_{t-(h-1)k}, ..., z_{t-k}, z_t, A_{t-(h-1)k}, ..., A_{t-k}]

Frames a block apart pin the velocity down ``k`` times better than consecutive frames,
and the actions between them account for the torques applied meanwhile. A window of
``R`` model steps (``R + 1`` states) spans ``(R + h - 1) * k + 1`` consecutive frames,
of which the ``R + h`` block boundaries are used. Every module that needs one of these
numbers asks this object.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class StateLayout:
    """Sizes of a state and the frames and actions it is made of.

    Attributes:
        latent_dim: size of one frame latent ``z``.
        history: frame latents per state, one action block apart.
        action_block: env steps per model step (``k``).
        action_dim: size of one env action (``A``).
    """

    latent_dim: int
    history: int
    action_block: int
    action_dim: int

    def __post_init__(self):
        if min(self.latent_dim, self.history, self.action_block, self.action_dim) < 1:
            raise ValueError(f"every size of a state layout must be >= 1, got {self}")

    # --- sizes -------------------------------------------------------------------------------
    @property
    def block_dim(self) -> int:
        """Values in one action block, ``k * A``."""
        return self.action_block * self.action_dim

    @property
    def latent_part(self) -> int:
        """Values of the state's frame latents (they come first)."""
        return self.history * self.latent_dim

    @property
    def state_dim(self) -> int:
        return self.latent_part + (self.history - 1) * self.block_dim

    @property
    def span(self) -> int:
        """Env steps a state looks back: from its oldest frame to its newest, ``(h - 1) * k``."""
        return (self.history - 1) * self.action_block

    # --- windows of frames -------------------------------------------------------------------
    def window_frames(self, steps: int) -> int:
        """Consecutive frames a window of ``steps`` model steps spans: ``(steps + h - 1) * k + 1``."""
        return (steps + self.history - 1) * self.action_block + 1

    def boundary_span(self, boundaries: int) -> int:
        """Env steps from the first to the last of ``boundaries`` consecutive block boundaries (a window
        of them has one frame more)."""
        return (boundaries - 1) * self.action_block

    def boundaries(self, steps: int) -> np.ndarray:
        """Offsets of the ``steps + h`` block-boundary frames within such a window."""
        return np.arange(steps + self.history) * self.action_block

    def steps_in(self, frames: int) -> int:
        """Model steps of a window of ``frames`` frames; a clear error unless it is a whole window."""
        steps = (frames - 1) // self.action_block - self.history + 1
        if steps < 1 or self.window_frames(steps) != frames:
            raise ValueError(f"{frames} frames are no whole window: a window of R >= 1 model steps has "
                             f"(R + {self.history - 1}) * {self.action_block} + 1 frames")
        return steps

    def event_action(self, step: int) -> int:
        """Index (within a window) of the action before which an event must happen to fall
        inside model step ``step``: halfway through that step's action block."""
        return (step + self.history - 1) * self.action_block + self.action_block // 2

    def state_offsets(self) -> np.ndarray:
        """Offsets of a state's ``h`` frames from its newest frame, oldest first: ``-span, ..., -k, 0``."""
        return np.arange(self.history) * self.action_block - self.span

    def newest_frames(self, steps: int) -> np.ndarray:
        """Offsets of the newest frame of each of a window's ``steps + 1`` states."""
        return self.boundaries(steps)[self.history - 1 :]

    # --- tensors ----------------------------------------------------------------------------
    def blocks(self, actions: torch.Tensor) -> torch.Tensor:
        """Env actions ``(..., n * k, A)`` grouped into action blocks ``(..., n, block_dim)``."""
        if actions.shape[-1] != self.action_dim or actions.shape[-2] % self.action_block:
            raise ValueError(f"actions must be (..., n * {self.action_block}, {self.action_dim}), got "
                             f"{tuple(actions.shape)}")
        return actions.reshape(*actions.shape[:-2], actions.shape[-2] // self.action_block, self.block_dim)

    def compose(self, latents: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """A state of frame latents ``(..., h, latent_dim)`` and the action blocks ``(..., h-1, block_dim)``
        between them: ``(..., state_dim)``."""
        return torch.cat([latents.flatten(-2), blocks.flatten(-2)], -1)

    def frame_latents(self, s: torch.Tensor) -> torch.Tensor:
        """The frame latents ``(..., h, latent_dim)`` of states ``(..., state_dim)``, oldest first."""
        return s[..., : self.latent_part].unflatten(-1, (self.history, self.latent_dim))

    def newest(self, s: torch.Tensor) -> torch.Tensor:
        """The newest frame latent ``(..., latent_dim)`` of states ``(..., state_dim)``."""
        return self.frame_latents(s)[..., -1, :]

    def shift(self, s: torch.Tensor, latent: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        """The state one model step after ``s``: the oldest latent and block drop out, ``latent``
        ``(..., latent_dim)`` and the block ``(..., block_dim)`` that led to it come in."""
        d, z, past = self.latent_dim, s[..., : self.latent_part], s[..., self.latent_part :]
        return torch.cat([z[..., d:], latent, past[..., self.block_dim :], block], -1)

    def window_states(self, latents: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """States ``(B, R + 1, state_dim)`` at the ``R + 1`` steps of a window of block-boundary
        latents ``(B, R + h, latent_dim)`` and its action blocks ``(B, R + h - 1, block_dim)``."""
        h, R = self.history, latents.shape[1] - self.history
        if R < 0 or blocks.shape[1] != R + h - 1:
            raise ValueError(f"need R + {h} latents and R + {h - 1} action blocks (R >= 0), got "
                             f"{latents.shape[1]} and {blocks.shape[1]}")
        return torch.stack([self.compose(latents[:, r : r + h], blocks[:, r : r + h - 1]) for r in range(R + 1)], 1)

    def step_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """The action blocks ``(B, R, block_dim)`` applied at a window's ``R`` model steps, of all its
        ``(B, R + h - 1, block_dim)`` blocks (the first ``h - 1`` are inside the first state)."""
        return blocks[:, self.history - 1 :]

    def step_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents ``(B, R, latent_dim)`` reached after each of a window's ``R`` model steps, of its
        ``(B, R + h, latent_dim)`` block-boundary latents."""
        return latents[:, self.history :]

    # --- episodes ------------------------------------------------------------------------------
    def state_frames(self, frame_starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Frames (global indices into episodes laid out by ``frame_starts``/``lengths``) that end a
        full state: those with ``span`` env steps of their own episode before them."""
        return np.concatenate([s + np.arange(self.span, n + 1) for s, n in zip(frame_starts, lengths)])
