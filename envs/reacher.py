"""Gymnasium ``Reacher-v5`` seen through a fixed top-down camera.

Physics, actions, rewards and resets are exactly those of ``Reacher-v5``; only the
observation changes: an RGB image ``(H, W, 3) uint8`` in which both the arm and the
target are clearly visible. The target sphere is drawn larger than in the stock
model; it has no collisions (``contype = conaffinity = 0``) and its body inertia is
fixed when the model is compiled, so the drawn size does not change the physics.

Flat simulator state (``get_state()``), length 8:
``[shoulder, elbow, target_x, target_y, d_shoulder, d_elbow, 0, 0]``
(``qpos`` then ``qvel``; the target never moves).
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from gymnasium import utils
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv
from gymnasium.spaces import Box

from envs.registry import EnvSpec, Quantity, checked_action, register_env, wrap_angle

GYM_ID = "hjepa/PixelReacher-v0"
SUCCESS_TOLERANCE_RAD = 0.05
QUANTITIES = (
    Quantity("joint_angles", "angle", "rad", 2, "joint angles (shoulder, elbow)"),
    Quantity("joint_velocities", "velocity", "rad/s", 2, "joint velocities"),
    Quantity("fingertip_xy", "position", "m", 2, "fingertip position"),
    Quantity("target_xy", "position", "m", 2, "target position"),
)
PHYSICS_KEYS = tuple(q.key for q in QUANTITIES)


def joint_angle_error(state: np.ndarray, goal_state: np.ndarray) -> float:
    """Largest joint-angle difference (rad, modulo 2*pi) between two flat states."""
    return float(np.max(np.abs(wrap_angle(np.asarray(state)[:2] - np.asarray(goal_state)[:2]))))


def reacher_success(state: np.ndarray, goal_state: np.ndarray, tol: float = SUCCESS_TOLERANCE_RAD) -> bool:
    """The protocol's success test: both joint angles within ``tol`` rad of the goal's, modulo 2*pi."""
    return joint_angle_error(state, goal_state) <= tol


class PixelReacherEnv(ReacherEnv):
    """``Reacher-v5`` with image observations from a top-down camera.

    Args:
        image_size: side of the square RGB observation in pixels.
        camera_distance: camera height above the arena centre (m); 0.58 frames the
            arm's full reach (0.21 m) with a small margin.
        target_radius: drawn radius of the target sphere (m); stock is 0.009.
        antialias: multisample anti-aliasing. On, edges carry sub-pixel position
            information (useful at the 0.05 rad success tolerance); off, rendering is
            about twice as fast.
        **kwargs: passed to ``ReacherEnv`` (reward weights, frame_skip, ...).
    """

    def __init__(
        self,
        image_size: int = 64,
        camera_distance: float = 0.58,
        target_radius: float = 0.022,
        antialias: bool = True,
        **kwargs: Any,
    ):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        if target_radius <= 0 or camera_distance <= 0:
            raise ValueError(f"target_radius and camera_distance must be > 0, got {target_radius}, {camera_distance}")
        camera = dict(distance=camera_distance, elevation=-90.0, azimuth=90.0, lookat=np.zeros(3), trackbodyid=-1)
        for key in ("render_mode", "width", "height", "default_camera_config"):
            if key in kwargs:
                raise ValueError(f"PixelReacherEnv sets {key!r} itself; got {key}={kwargs[key]!r}")
        super().__init__(
            default_camera_config=camera, render_mode="rgb_array", width=image_size, height=image_size, **kwargs
        )
        utils.EzPickle.__init__(self, image_size, camera_distance, target_radius, antialias, **kwargs)
        self.image_size = image_size
        target = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "target")
        self.model.geom_size[target, 0] = target_radius
        # Sit the enlarged disk just below the arm so it never hides a link.
        self.model.geom_pos[target, 2] = -target_radius + 0.002
        if not antialias:
            self.model.vis.quality.offsamples = 0
        self.observation_space = Box(0, 255, (image_size, image_size, 3), np.uint8)
        self._fingertip = self.model.body("fingertip").id

    # --- observation and info ------------------------------------------------
    def _step_mujoco_simulation(self, ctrl, n_frames):
        super()._step_mujoco_simulation(ctrl, n_frames)
        # mj_step leaves body and geom positions at the start of its last substep;
        # recompute them from the new qpos so that the image, the fingertip and the
        # reward all describe the state that get_state() returns. Kinematics reads
        # only qpos, so the dynamics are untouched.
        mujoco.mj_kinematics(self.model, self.data)

    def _get_obs(self) -> np.ndarray:
        return self.render()

    def physics(self) -> dict[str, np.ndarray]:
        """Physical quantities of the current step (the keys of ``PHYSICS_KEYS``)."""
        return {
            "joint_angles": self.data.qpos[:2].copy(),
            "joint_velocities": self.data.qvel[:2].copy(),
            "fingertip_xy": self.data.xpos[self._fingertip, :2].copy(),
            "target_xy": self.data.qpos[2:4].copy(),
        }

    def _get_reset_info(self) -> dict[str, Any]:
        return {**self.physics(), "state": self.get_state()}

    def step(self, action):
        action = checked_action(action, self.action_space)  # a NaN would become zero torque in MuJoCo
        obs, reward, terminated, truncated, info = super().step(action)
        info.update(self.physics(), state=self.get_state())
        return obs, reward, terminated, truncated, info

    # --- simulator state -----------------------------------------------------
    def get_state(self) -> np.ndarray:
        """Flat simulator state ``[qpos, qvel]`` (float64, length 8)."""
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray | None = None) -> None:
        """Set the simulator state.

        ``set_state(state)`` takes a flat state from :meth:`get_state`;
        ``set_state(qpos, qvel)`` keeps ``MujocoEnv``'s signature (used by resets).
        """
        if qvel is None:
            state = np.asarray(qpos, dtype=np.float64)
            nq, nv = self.model.nq, self.model.nv
            if state.shape != (nq + nv,):
                raise ValueError(f"state must have shape ({nq + nv},) = [qpos, qvel], got {state.shape}")
            if not np.all(np.isfinite(state)):
                raise ValueError(f"state contains non-finite values: {state}")
            qpos, qvel = state[:nq], state[nq:]
        super().set_state(np.asarray(qpos, dtype=np.float64), np.asarray(qvel, dtype=np.float64))
        self.data.qacc_warmstart[:] = 0

    def success(self, goal_state: np.ndarray) -> bool:
        """The protocol's success test between the current state and ``goal_state``."""
        return reacher_success(self.get_state(), goal_state)


SPEC = register_env(
    EnvSpec(
        name="reacher",
        gym_id=GYM_ID,
        entry_point="envs.reacher:PixelReacherEnv",
        max_episode_steps=100,
        state_dim=8,
        quantities=QUANTITIES,
        goal_error=joint_angle_error,
        success_threshold=SUCCESS_TOLERANCE_RAD,
        goal_error_label="joint error",
        goal_error_unit="rad",
        description="Gymnasium Reacher-v5 (MuJoCo), RGB from a top-down camera",
        state_groups=(("arm", (0, 1, 4, 5)), ("target", (2, 3, 6, 7))),
    )
)
