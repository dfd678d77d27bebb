"""A split of collected episodes held as flat arrays.

Episodes are concatenated along the first axis. Episode ``e`` has ``L_e`` actions
and ``L_e + 1`` frames (the reset frame, then one per step):

- frame-indexed arrays ``obs (F, H, W, C) uint8``, ``states (F, S)``,
  ``physics[k] (F, d)`` with ``F = sum(L_e + 1)``;
- step-indexed arrays ``actions (N_steps, A) float32``, ``rewards (N_steps,)``
  with ``N_steps = sum(L_e)``.

``frame_starts[e]`` and ``step_starts[e]`` locate episode ``e`` in each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FRAME_ARRAYS = ("obs", "states")
STEP_ARRAYS = ("actions", "rewards")
EPISODE_ARRAYS = ("lengths", "seeds", "terminated")


@dataclass
class Episodes:
    """Episodes of one split, concatenated (see module docstring for the layout)."""

    obs: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    lengths: np.ndarray
    seeds: np.ndarray
    terminated: np.ndarray
    physics: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        n_frames, n_steps = int(np.sum(self.lengths + 1)), int(np.sum(self.lengths))
        for name in FRAME_ARRAYS:
            if len(getattr(self, name)) != n_frames:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {n_frames} frames")
        for key, value in self.physics.items():
            if len(value) != n_frames:
                raise ValueError(f"physics[{key!r}] has {len(value)} rows, expected {n_frames} frames")
        for name in STEP_ARRAYS:
            if len(getattr(self, name)) != n_steps:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {n_steps} steps")
        for name in EPISODE_ARRAYS:
            if len(getattr(self, name)) != len(self.lengths):
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {len(self.lengths)} episodes")

    @property
    def num_episodes(self) -> int:
        return len(self.lengths)

    @property
    def num_steps(self) -> int:
        return int(np.sum(self.lengths))

    @property
    def frame_starts(self) -> np.ndarray:
        """Index of each episode's first frame, ``(N,) int64``."""
        return np.concatenate([[0], np.cumsum(self.lengths + 1)[:-1]]).astype(np.int64)

    @property
    def step_starts(self) -> np.ndarray:
        """Index of each episode's first action, ``(N,) int64``."""
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        """All arrays by file stem (``physics.<key>`` for physical quantities)."""
        out = {name: getattr(self, name) for name in FRAME_ARRAYS + STEP_ARRAYS + EPISODE_ARRAYS}
        out.update({f"physics.{k}": v for k, v in self.physics.items()})
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Episodes":
        """Episodes from arrays by file stem, as :meth:`arrays` gives them."""
        physics = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("physics.")}
        return cls(**{k: v for k, v in arrays.items() if not k.startswith("physics.")}, physics=physics)

    def episode(self, e: int) -> dict[str, np.ndarray]:
        """Episode ``e`` as separate arrays (frames ``L+1``, steps ``L``)."""
        if not 0 <= e < self.num_episodes:
            raise IndexError(f"episode {e} out of range [0, {self.num_episodes})")
        f0, s0, n = int(self.frame_starts[e]), int(self.step_starts[e]), int(self.lengths[e])
        out = {name: getattr(self, name)[f0 : f0 + n + 1] for name in FRAME_ARRAYS}
        out.update({name: getattr(self, name)[s0 : s0 + n] for name in STEP_ARRAYS})
        out.update({f"physics.{k}": v[f0 : f0 + n + 1] for k, v in self.physics.items()})
        return out

    def select(self, episode_ids: np.ndarray) -> "Episodes":
        """A new :class:`Episodes` holding the given episodes, in that order (copies)."""
        parts = [self.episode(int(e)) for e in episode_ids]
        cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return Episodes.from_arrays({**cat, **{k: getattr(self, k)[episode_ids] for k in EPISODE_ARRAYS}})
