"""A dot on a plane, seen from above: the smallest env the toolkit collects, trains and plans on.

It is added the way every env is (docs/envs.md, "Adding an environment"): this module, which
registers it, and ``dot.yaml`` beside it, which holds its settings and its defaults per entry
point. The tests find both through ``HJEPA_ENV_PATH``.
"""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium.spaces import Box

from envs import EnvSpec, Quantity, register_env
from envs.registry import checked_action, checked_state


class DotEnv(gymnasium.Env):
    """A white dot in ``[-1, 1]^2`` on black; an action in ``[-1, 1]^2`` moves it ``speed`` per unit.

    Args:
        image_size: side of the square RGB observation in pixels.
        antialias: unused (the dot is drawn without sub-pixel edges); every env takes it.
        speed: distance moved by a full action.
    """

    def __init__(self, image_size: int = 32, antialias: bool = True, speed: float = 0.15):
        self.image_size, self.speed = image_size, speed
        self.observation_space = Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.action_space = Box(-1.0, 1.0, (2,), np.float32)
        self.xy = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.xy = self.np_random.uniform(-0.8, 0.8, 2)
        return self.render(), self.info()

    def step(self, action):
        action = checked_action(action, self.action_space)
        self.xy = np.clip(self.xy + self.speed * np.clip(action, -1.0, 1.0), -1.0, 1.0)
        return self.render(), 0.0, False, False, self.info()

    def render(self) -> np.ndarray:
        size = self.image_size
        centre = (self.xy + 1.0) / 2.0 * (size - 1)
        yy, xx = np.mgrid[:size, :size]
        image = np.zeros((size, size, 3), np.uint8)
        image[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= (size / 10) ** 2] = 255
        return image

    def info(self) -> dict:
        return {"xy": self.xy.copy(), "state": self.get_state()}

    def get_state(self) -> np.ndarray:
        return self.xy.copy()

    def set_state(self, state) -> None:
        self.xy = checked_state(state, "[x, y]", 2).copy()


def distance(state: np.ndarray, goal_state: np.ndarray) -> float:
    """Straight-line distance between two dot positions."""
    return float(np.linalg.norm(np.asarray(state)[:2] - np.asarray(goal_state)[:2]))


SPEC = register_env(
    EnvSpec(
        name="dot",
        gym_id="hjepa-toy/Dot-v0",
        entry_point="dot:DotEnv",
        max_episode_steps=30,
        state_dim=2,
        quantities=(Quantity("xy", "position", "units", 2, "dot position"),),
        goal_error=distance,
        success_threshold=0.1,
        goal_error_label="distance to goal",
        goal_error_unit="units",
        description="a dot on a plane, seen from above (a toy)",
    )
)
