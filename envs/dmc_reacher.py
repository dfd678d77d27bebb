"""DeepMind Control's ``reacher`` (task ``hard``) as a Gymnasium pixel environment.

The task the peers (LeWorldModel, DINO-WM, PLDM: stable-worldmodel's published baselines, restated
in docs/protocol.md) report goal-image planning on. Physics, actions, target placement and reward are exactly
dm_control's ``suite.load("reacher", "hard")``: a two-link planar arm (links 0.12 m and
0.1 m), torques in ``[-1, 1]^2`` with gear 0.05, physics step 0.02 s, one physics step per
control step, target radius 0.015 m placed uniformly at 0.05-0.20 m from the base. Only the
observation is ours: an RGB image ``(H, W, 3) uint8`` from the model's camera 0 (``fixed``,
0.75 m above the arena, looking down), rendered with MuJoCo's own renderer without shadows
and reflections (the same picture, 3-6x faster in software rendering; ``shadows=True`` turns
them back on).

A small wrapper rather than Shimmy: the toolkit needs an exact flat ``get_state()`` /
``set_state()`` that includes the target (a model parameter in dm_control), and nothing else
from a general converter.

Flat simulator state (``get_state()``), length 6:
``[shoulder, wrist, target_x, target_y, d_shoulder, d_wrist]``.
Setting a recorded state reproduces its image and its future exactly.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium.spaces import Box

from envs.reacher import QUANTITIES, SUCCESS_TOLERANCE_RAD, joint_angle_error
from envs.registry import EnvSpec, checked_action, checked_state, register_env

GYM_ID = "hjepa/DMCReacher-v0"
STATE_DIM = 6
CAMERA = 0  # "fixed": the top-down view the peers render


class DMCReacherEnv(gymnasium.Env):
    """dm_control ``reacher-hard`` with image observations from camera 0.

    Args:
        image_size: side of the square RGB observation in pixels.
        antialias: multisample anti-aliasing (sub-pixel edges; off renders faster).
        shadows: render shadows and reflections as dm_control does by default (3-6x slower
            on a software renderer; the arm and target look the same without them).
        target_size: ``0.015`` is the ``hard`` task, ``0.05`` ``easy``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}
    frame_skip = 1  # physics steps per control step (what the simulator oracle rolls out)

    def __init__(self, image_size: int = 64, antialias: bool = True, shadows: bool = False,
                 target_size: float = 0.015):
        from dm_control import suite  # imported here: only this env needs dm_control

        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        if target_size <= 0:
            raise ValueError(f"target_size must be > 0, got {target_size}")
        # Gymnasium's TimeLimit ends episodes; dm_control's own limit (20 s) is lifted.
        self._env = suite.load("reacher", "hard", task_kwargs={"random": 0, "time_limit": float("inf")})
        self._env.task._target_size = float(target_size)  # what reacher.easy / reacher.hard differ in
        self.physics = self._env.physics
        self.model, self.data = self.physics.model.ptr, self.physics.data.ptr
        self.image_size = image_size
        self.render_mode = "rgb_array"
        if not antialias:
            self.model.vis.quality.offsamples = 0
        self._renderer = mujoco.Renderer(self.model, image_size, image_size)
        if not shadows:  # scene flags persist across update_scene
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self.observation_space = Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.action_space = Box(-1.0, 1.0, (2,), np.float32)
        self._target = self.physics.model.name2id("target", "geom")
        self._finger = self.physics.model.name2id("finger", "geom")

    # --- observation and info ------------------------------------------------
    def render(self) -> np.ndarray:
        self._renderer.update_scene(self.data, camera=CAMERA)
        return self._renderer.render()

    def physics_quantities(self) -> dict[str, np.ndarray]:
        """Physical quantities of the current step (the spec's quantity keys)."""
        return {
            "joint_angles": self.data.qpos[:2].copy(),
            "joint_velocities": self.data.qvel[:2].copy(),
            "fingertip_xy": self.data.geom_xpos[self._finger, :2].copy(),
            "target_xy": self.model.geom_pos[self._target, :2].copy(),
        }

    def _info(self) -> dict[str, Any]:
        return {**self.physics_quantities(), "state": self.get_state()}

    # --- gymnasium API -------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:  # dm_control draws the start pose and the target from the task's RandomState
            self._env.task._random = np.random.RandomState(seed)
        self._env.reset()
        return self.render(), self._info()

    def step(self, action):
        step = self._env.step(checked_action(action, self.action_space))
        return self.render(), float(step.reward or 0.0), False, False, self._info()

    def close(self):
        if getattr(self, "_renderer", None) is not None:
            self._renderer.close()
            self._renderer = None

    # --- simulator state -----------------------------------------------------
    def get_state(self) -> np.ndarray:
        """Flat simulator state ``[shoulder, wrist, target_x, target_y, d_shoulder, d_wrist]``."""
        return np.concatenate([self.data.qpos, self.model.geom_pos[self._target, :2], self.data.qvel]).astype(np.float64)

    def set_state(self, state: np.ndarray) -> None:
        """Set the flat simulator state from :meth:`get_state`."""
        state = checked_state(state, "[qpos(2), target_xy(2), qvel(2)]", STATE_DIM)
        # mj_resetData on entry (zero warm start, controls, activations), positions recomputed on exit
        with self.physics.reset_context():
            self.data.qpos[:] = state[:2]
            self.model.geom_pos[self._target, :2] = state[2:4]
            self.data.qvel[:] = state[4:]


SPEC = register_env(
    EnvSpec(
        name="dmc_reacher",
        gym_id=GYM_ID,
        entry_point="envs.dmc_reacher:DMCReacherEnv",
        max_episode_steps=100,
        state_dim=STATE_DIM,
        quantities=QUANTITIES,
        goal_error=joint_angle_error,
        success_threshold=SUCCESS_TOLERANCE_RAD,
        goal_error_label="joint error",
        goal_error_unit="rad",
        description="DeepMind Control reacher-hard (dm_control), RGB from camera 0 (the peers' task)",
        state_groups=(("arm", (0, 1, 4, 5)), ("target", (2, 3))),
    )
)
