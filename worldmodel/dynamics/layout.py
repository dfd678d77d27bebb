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

    def env_steps(self, steps: int) -> int:
        """Env steps of ``steps`` model steps (action blocks)."""
        return steps * self.action_block

    def blocks_covering(self, env_steps: int) -> int:
        """The fewest model steps (action blocks) that cover ``env_steps`` env steps."""
        return -(-env_steps // self.action_block)

    def acting_starts(self, steps: torch.Tensor) -> torch.Tensor:
        """Of episodes of ``steps`` env steps: how many steps ``t`` have a whole state before them and a whole
        action block after (``span <= t <= steps - k``)."""
        return (steps - self.action_block - self.span + 1).clamp_min(0)

    def acting_step(self, count: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The ``floor(u * count)``-th of those steps, for ``u`` in ``[0, 1)`` (``t = span + ...``)."""
        return self.span + (u * count).long()

    def acting_indices(self, frame: torch.Tensor,
                       step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For states whose newest frame has the global index ``frame (B,)`` and whose next action ``step (B,)``:
        the indices of the state's frames ``(B, h)``, of the actions inside it ``(B, span)``, and of the
        action block taken next ``(B, k)``."""
        frames = frame[:, None] + torch.from_numpy(self.state_offsets())
        inside = step[:, None] + torch.from_numpy(self.state_action_offsets())
        return frames, inside, step[:, None] + torch.arange(self.action_block)

    def boundary_positions(self, boundaries: int) -> np.ndarray:
        """Offsets of ``boundaries`` consecutive block-boundary frames from the first: ``0, k, 2k, ...``."""
        return np.arange(boundaries) * self.action_block

    def boundaries(self, steps: int) -> np.ndarray:
        """Offsets of the ``steps + h`` block-boundary frames within such a window."""
        return self.boundary_positions(steps + self.history)

    def most_steps(self, frames: int) -> int:
        """The most model steps a window within ``frames`` consecutive frames holds (< 1: none)."""
        return (frames - 1) // self.action_block - self.history + 1

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

    def boundary_offsets(self, boundaries: int) -> np.ndarray:
        """Offsets of the newest ``boundaries`` block-boundary frames from the newest frame, oldest first:
        ``-(n - 1) * k, ..., -k, 0``."""
        return self.boundary_positions(boundaries) - self.boundary_span(boundaries)

    def state_offsets(self) -> np.ndarray:
        """Offsets of a state's ``h`` frames from its newest frame, oldest first: ``-span, ..., -k, 0``."""
        return self.boundary_offsets(self.history)

    def state_action_offsets(self) -> np.ndarray:
        """Offsets of the ``span`` env actions inside a state from the step of its newest frame, oldest
        first: ``-span, ..., -1``."""
        return np.arange(self.span) - self.span

    def newest_frames(self, steps: int) -> np.ndarray:
        """Offsets of the newest frame of each of a window's ``steps + 1`` states."""
        return self.boundaries(steps)[self.history - 1 :]

    # --- windows of chunks (a slower level's steps) ---------------------------------------------
    def chunk_window(self, window: int, chunk: int, chunks: int) -> int:
        """Block boundaries in a window of ``chunks = R`` chunks of ``chunk = K`` model steps, when a slow
        state reads the last ``window = W`` boundaries: ``W + R * K``."""
        return window + chunks * chunk

    def chunk_ends(self, window: int, chunk: int, chunks: int) -> np.ndarray:
        """Indices, among such a window's boundaries, of its ``R + 1`` chunk boundaries: ``W - 1 + j * K``."""
        return window - 1 + np.arange(chunks + 1) * chunk

    def chunk_windows(self, latents: torch.Tensor, blocks: torch.Tensor, window: int, chunk: int):
        """Of windows of ``W + R * K`` block-boundary latents ``(B, W + R*K, latent_dim)`` and the blocks
        between them: the ``R + 1`` slow-state inputs ``(B, R+1, W, latent_dim)`` and ``(B, R+1, W-1,
        block_dim)`` ending at the chunk boundaries, the ``R`` chunks' blocks ``(B, R, K * block_dim)``, and
        the level-1 frame latents of the state at each chunk boundary ``(B, R+1, h, latent_dim)``."""
        n = latents.shape[1]
        chunks = (n - window) // chunk
        if chunks < 1 or n != self.chunk_window(window, chunk, chunks) or blocks.shape[1] != n - 1:
            raise ValueError(f"a window of R >= 1 chunks has {window} + R * {chunk} boundaries and one "
                             f"block fewer, got {n} and {blocks.shape[1]}")
        ends = self.chunk_ends(window, chunk, chunks)
        zs = torch.stack([latents[:, e + 1 - window : e + 1] for e in ends], 1)
        bs = torch.stack([blocks[:, e + 1 - window : e] for e in ends], 1)
        steps = torch.stack([blocks[:, a:b].flatten(1) for a, b in zip(ends[:-1], ends[1:])], 1)
        frames = zs[:, :, window - self.history :]
        return zs, bs, steps, frames

    # --- tensors ----------------------------------------------------------------------------
    def blocks(self, actions: torch.Tensor) -> torch.Tensor:
        """Env actions ``(..., n * k, A)`` grouped into action blocks ``(..., n, block_dim)``."""
        if actions.shape[-1] != self.action_dim or actions.shape[-2] % self.action_block:
            raise ValueError(f"actions must be (..., n * {self.action_block}, {self.action_dim}), got "
                             f"{tuple(actions.shape)}")
        return actions.reshape(*actions.shape[:-2], actions.shape[-2] // self.action_block, self.block_dim)

    def check_boundaries(self, latents: torch.Tensor, blocks: torch.Tensor, boundaries: int) -> None:
        """A clear error unless ``latents`` are ``(B, boundaries, latent_dim)`` block-boundary latents and
        ``blocks`` the ``(B, boundaries - 1, block_dim)`` action blocks between them."""
        if latents.ndim != 3 or latents.shape[1:] != (boundaries, self.latent_dim):
            raise ValueError(f"z must be level-1 latents (B, {boundaries}, {self.latent_dim}), got "
                             f"{tuple(latents.shape)}")
        if blocks.shape != (latents.shape[0], boundaries - 1, self.block_dim):
            raise ValueError(f"blocks must be (B, {boundaries - 1}, {self.block_dim}), got {tuple(blocks.shape)}")

    def newest_boundaries(self, latents: torch.Tensor, blocks: torch.Tensor, boundaries: int):
        """Of block-boundary latents ``(B, N, ...)`` and the ``(B, N - 1, ...)`` action blocks between them:
        the newest ``boundaries`` latents and the blocks between those."""
        n = latents.shape[1]
        if blocks.shape[1] != n - 1 or not 1 <= boundaries <= n:
            raise ValueError(f"need N latents and N - 1 blocks with 1 <= boundaries <= N, got {n}, "
                             f"{blocks.shape[1]} and boundaries={boundaries}")
        return latents[:, n - boundaries :], blocks[:, n - boundaries :]

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
