"""Random training windows out of a split of episodes.

A window of length ``T`` starting at frame ``t`` of an episode is
``obs[t:t+T]``, ``actions[t:t+T-1]``, ``states[t:t+T]`` (and the physical
quantities on the same frames): the actions that lead from each frame to the next.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from worldmodel.data.episodes import Episodes


@dataclass
class Window:
    """A batch of windows.

    Attributes:
        obs: ``(B, T, C, H, W) uint8``.
        actions: ``(B, T-1, A) float32``.
        states: ``(B, T, S) float32`` simulator states.
        physics: name -> ``(B, T, d) float32``.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    states: torch.Tensor
    physics: dict[str, torch.Tensor]


class WindowSampler:
    """Uniform random windows of ``window`` frames over all valid start positions.

    Args:
        episodes: a split (memory-mapped or in memory).
        window: frames per window (``T >= 1``).
    """

    def __init__(self, episodes: Episodes, window: int):
        if window < 1:
            raise ValueError(f"window must be >= 1 frame, got {window}")
        frames = episodes.lengths + 1
        if window > frames.max():
            raise ValueError(
                f"window of {window} frames is longer than every episode (the longest has {int(frames.max())} frames)"
            )
        self.episodes, self.window = episodes, window
        ok = np.flatnonzero(frames >= window)
        counts = frames[ok] - window + 1  # start positions per usable episode
        offsets = np.concatenate([np.arange(c) for c in counts])
        self._frame0 = np.repeat(episodes.frame_starts[ok], counts) + offsets
        self._step0 = np.repeat(episodes.step_starts[ok], counts) + offsets

    def __len__(self) -> int:
        """Number of distinct windows."""
        return len(self._frame0)

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers of windows ``index``: frames ``(B, T)`` and actions ``(B, T-1)``."""
        T = self.window
        return self._frame0[index][:, None] + np.arange(T), self._step0[index][:, None] + np.arange(T - 1)

    def get(self, index: np.ndarray) -> Window:
        """Windows number ``index`` (``(B,)`` ints in ``[0, len(self))``)."""
        T = self.window
        f, s = (r.ravel() for r in self.rows(index))
        B = len(index)
        ep = self.episodes
        A, S = ep.actions.shape[1], ep.states.shape[1]
        obs = torch.from_numpy(np.ascontiguousarray(ep.obs[f])).view(B, T, *ep.obs.shape[1:])
        return Window(
            obs=obs.permute(0, 1, 4, 2, 3).contiguous(),  # (B, T, C, H, W)
            actions=torch.from_numpy(np.asarray(ep.actions[s], dtype=np.float32)).view(B, T - 1, A),
            states=torch.from_numpy(np.asarray(ep.states[f], dtype=np.float32)).view(B, T, S),
            physics={
                k: torch.from_numpy(np.asarray(v[f], dtype=np.float32)).view(B, T, v.shape[1])
                for k, v in ep.physics.items()
            },
        )

    def sample(self, batch_size: int, generator: torch.Generator) -> Window:
        """``batch_size`` windows drawn uniformly with replacement."""
        index = torch.randint(len(self), (batch_size,), generator=generator).numpy()
        return self.get(index)

    def iterate(self, batch_size: int, generator: torch.Generator, prefetch: int = 2) -> Iterator[Window]:
        """Endless batches, prepared by a background thread ``prefetch`` batches ahead.

        Indices come from ``generator`` in the calling order, so the stream is the same
        as calling :meth:`sample` repeatedly.
        """
        q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()

        def work():
            while not stop.is_set():
                index = torch.randint(len(self), (batch_size,), generator=generator).numpy()
                batch = self.get(index)
                while not stop.is_set():
                    try:
                        q.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while True:
                yield q.get()
        finally:
            stop.set()
