"""Push-T seen from above (``env=pusht``): the benchmark's reference implementation, gym-pusht (pymunk
physics, the Push-T of diffusion policy), wrapped thinly for pixels and the peers' protocol.

What the wrapper changes, and why:

- **Actions are relative**, as stable-worldmodel's Push-T takes them (the peers' protocol): an action
  ``a`` in ``[-1, 1]^2`` moves the PD controller's target to the agent's position plus ``100 a``
  pixels, clipped to gym-pusht's own action box, the absolute target in ``[0, 512]^2`` (without it a
  random walk leaves the arena: the agent is kinematic and passes through the walls).
- **Observations are the ``image_size`` px frame** gym-pusht renders (``pygame`` surfaces drawn in
  memory and resized with OpenCV: no window and no display, so it renders headless as it is);
  ``render()`` returns the same frame. gym-pusht draws its fixed goal zone (a green T at the centre)
  in every frame; it stays as background, since our tasks' goals are images, not that zone. The
  contact points, which gym-pusht's frames show as red dots, are not drawn: they are the physics
  engine's cache of the last step, not part of the state, and a state set again has none.
- **No episode ends early**: gym-pusht terminates when the block covers 95 % of its goal zone; the
  protocol decides success here, against each task's goal state.
- **Exact state**: ``get_state()`` is ``[agent_x, agent_y, block_x, block_y, block_angle, agent_vx,
  agent_vy, block_vx, block_vy, block_omega]`` (pixels, radians, per second) and ``set_state``
  writes every entry back without stepping the physics, so a recorded state's image is
  reproduced bit for bit (gym-pusht's own ``reset_to_state`` steps the physics once after setting).
  Setting a state also clears pymunk's contact cache (which warm-starts the next step's contact
  forces), so the future after ``set_state`` is the same every time; it equals the recorded one
  except where the T was touching the agent or a wall, and there it differs by less than a pixel
  over 5 steps (measured: 9 of 120 random states, all in contact, at most 0.23 px).

Success is the peers' test (stable-worldmodel's ``eval_state``): the agent's and the block's positions
together within 20 px of the goal state's (the norm of the 4-vector of differences) and the block's
angle within pi/9. ``goal_error`` is the larger of the two ratios to those thresholds, so success is
``goal_error <= 1``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pygame
import pymunk
import pymunk.pygame_util
from pymunk.vec2d import Vec2d
from gymnasium.spaces import Box
from gym_pusht.envs.pusht import PushTEnv
from gym_pusht.envs.pymunk_override import DrawOptions

from envs.registry import EnvSpec, Quantity, checked_action, checked_state, register_env, wrap_angle

GYM_ID = "hjepa/PixelPushT-v0"
ACTION_SCALE = 100.0  # pixels of target motion per unit action (stable-worldmodel's action_scale)
POSITION_TOLERANCE = 20.0  # px, over the agent's and the block's positions together
ANGLE_TOLERANCE = math.pi / 9
STATE_LAYOUT = "[agent_x, agent_y, block_x, block_y, block_angle, agent_vx, agent_vy, block_vx, block_vy, block_omega]"
QUANTITIES = (
    Quantity("agent_xy", "position", "px", 2, "agent position"),
    Quantity("block_xy", "position", "px", 2, "block position"),
    Quantity("block_angle", "angle", "rad", 1, "block angle"),
    Quantity("zone_coverage", "fraction", "", 1, "coverage of gym-pusht's goal zone"),
)


def pose_error(state: np.ndarray, goal_state: np.ndarray) -> float:
    """The larger of (position error / 20 px) and (block angle error / (pi/9)): the peers' success test
    is ``pose_error < 1``."""
    state, goal_state = np.asarray(state), np.asarray(goal_state)
    position = float(np.linalg.norm(state[:4] - goal_state[:4]))
    angle = float(abs(wrap_angle(state[4] - goal_state[4])))
    return max(position / POSITION_TOLERANCE, angle / ANGLE_TOLERANCE)


class PixelPushTEnv(PushTEnv):
    """gym-pusht's ``PushTEnv`` with pixel observations, relative actions and an exact flat state.

    Args:
        image_size: side of the square RGB observation in pixels.
        antialias: unused (gym-pusht resizes its 512 px drawing with OpenCV); every env takes it.
    """

    def __init__(self, image_size: int = 96, antialias: bool = True, **kwargs: Any):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        super().__init__(obs_type="pixels", render_mode="rgb_array", observation_width=image_size,
                         observation_height=image_size, **kwargs)
        self.image_size = image_size
        self.action_space = Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = super().reset(seed=seed, options=options)
        self.n_contact_points = 0
        return obs, {**self.physics(), "state": self.get_state()}

    def step(self, action):
        action = checked_action(action, self.action_space)
        obs, reward, _terminated, truncated, info = super().step(self.target(action))
        return obs, reward, False, truncated, {**self.physics(), "state": self.get_state(),
                                               "n_contacts": info["n_contacts"]}

    def target(self, action: np.ndarray) -> np.ndarray:
        """The PD controller's absolute target for a relative ``action``: the agent's position plus
        ``ACTION_SCALE * action``, clipped to gym-pusht's action box."""
        return np.clip(np.asarray(self.agent.position) + ACTION_SCALE * np.clip(action, -1.0, 1.0), 0.0, 512.0)

    def advance(self, action: np.ndarray) -> None:
        """One step's physics for a relative ``action``, as :meth:`step` moves it, with no frame drawn (the
        simulator oracle's rollouts: drawing is most of a step's cost)."""
        target = Vec2d(*self.target(action))
        for _ in range(int(1 / (self.dt * self.control_hz))):  # gym-pusht's PD control and physics substeps
            pull = self.k_p * (target - self.agent.position) - self.k_v * self.agent.velocity
            self.agent.velocity += pull * self.dt
            self.space.step(self.dt)

    def scratch(self) -> "PixelPushTEnv":
        """A second env of the same physics, made once, to simulate on without touching this one."""
        if getattr(self, "_scratch", None) is None:
            self._scratch = PixelPushTEnv(self.image_size, block_cog=self.block_cog, damping=self.damping)
        return self._scratch

    def _draw(self) -> pygame.Surface:
        """gym-pusht's drawing (white arena, its goal zone, the walls, the T and the agent) without pymunk's
        contact points."""
        screen = pygame.Surface((512, 512))
        screen.fill((255, 255, 255))
        options = DrawOptions(screen)
        options.flags = pymunk.SpaceDebugDrawOptions.DRAW_SHAPES
        goal = self.get_goal_pose_body(self.goal_pose)
        for shape in self.block.shapes:
            points = [pymunk.pygame_util.to_pygame(goal.local_to_world(v), screen) for v in shape.get_vertices()]
            pygame.draw.polygon(screen, pygame.Color("LightGreen"), points + points[:1])
        self.space.debug_draw(options)
        return screen

    def recolour(self):
        """Rotate the RGB channels of the agent's and the T's colours (the surprise test's ``colour``
        event: a change of appearance, not of motion); returns an undo."""
        shapes = [*self.agent.shapes, *self.block.shapes]
        saved = [pygame.Color(s.color) for s in shapes]
        for s, c in zip(shapes, saved):
            s.color = pygame.Color(c.b, c.r, c.g, c.a)

        def undo():
            for s, c in zip(shapes, saved):
                s.color = c

        return undo

    def render(self) -> np.ndarray:
        """The observation frame (``image_size`` px), not gym-pusht's 680 px view with the action marked."""
        return self._render(visualize=False)

    def physics(self) -> dict[str, np.ndarray]:
        """The recorded quantities of the current step."""
        return {"agent_xy": np.array(self.agent.position, dtype=np.float64),
                "block_xy": np.array(self.block.position, dtype=np.float64),
                "block_angle": np.array([self.block.angle], dtype=np.float64),
                "zone_coverage": np.array([self._get_coverage()], dtype=np.float64)}

    def get_state(self) -> np.ndarray:
        """The flat state ``STATE_LAYOUT`` (float64, length 10)."""
        a, b = self.agent, self.block
        return np.array([*a.position, *b.position, b.angle, *a.velocity, *b.velocity, b.angular_velocity],
                        dtype=np.float64)

    def set_state(self, state: np.ndarray) -> None:
        """Write a flat state back: positions, angle and velocities, nothing stepped."""
        s = checked_state(state, STATE_LAYOUT, 10)
        self._setup()  # a fresh space: no contact cache from another state
        self.agent.position, self.agent.velocity = (s[0], s[1]), (s[5], s[6])
        self.block.angle = s[4]  # before the position: pymunk turns a body about its centre of gravity
        self.block.position = (s[2], s[3])
        self.block.velocity, self.block.angular_velocity = (s[7], s[8]), s[9]
        self.space.reindex_shapes_for_body(self.block)
        self.space.reindex_shapes_for_body(self.agent)


def simulate(env, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """The flat states ``(S, H, 10)`` after each step of action sequences ``(S, H, 2)`` played from
    ``state``, on ``env``'s scratch copy (``env`` itself is left as it was)."""
    sim = env.unwrapped.scratch()
    actions = np.asarray(actions, dtype=np.float64)
    out = np.empty((*actions.shape[:2], 10))
    for i, sequence in enumerate(actions):
        sim.set_state(state)
        for t, action in enumerate(sequence):
            sim.advance(action)
            out[i, t] = sim.get_state()
    return out


COG = np.array([0.0, 45.0])  # the T's centre of gravity in its own frame (gym-pusht's add_tee, scale 30)
REACH = 70.0  # px from that centre where the agent (radius 15) stands to push; the T reaches 75 px from it


def rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def pusht_expert(rng: np.random.Generator):
    """A scripted pusher: it draws a target pose for the T, walks around the T to the side opposite the
    way the T must go, and pushes through its centre, off-centre in proportion to the angle still to
    turn (a push off the centre of gravity turns the T); a new target every time one is reached or 40
    steps pass. Returns the episode's controller, ``state -> action`` (relative, in ``[-1, 1]^2``)."""
    target, age = None, 0

    def new_target() -> np.ndarray:
        return np.array([rng.uniform(150, 362), rng.uniform(150, 362), rng.uniform(-math.pi, math.pi)])

    def act(state: np.ndarray) -> np.ndarray:
        nonlocal target, age
        agent, angle = state[:2], state[4]
        centre = state[2:4] + rotate(COG, angle)
        if target is None or age >= 40:
            target, age = new_target(), 0
        goal_centre = target[:2] + rotate(COG, target[2])
        turn = float(wrap_angle(target[2] - angle))
        shift = goal_centre - centre
        if np.linalg.norm(shift) < 15 and abs(turn) < 0.2:
            target, age = new_target(), 0
            return np.zeros(2)
        age += 1
        # push along the way the centre must go, or, when it is there already, across it to turn the T
        way = shift / np.linalg.norm(shift) if np.linalg.norm(shift) >= 15 else rotate(np.array([1.0, 0.0]), angle)
        side = np.array([-way[1], way[0]])
        contact = centre - REACH * way + np.clip(30.0 * turn, -40.0, 40.0) * side
        if np.linalg.norm(agent - contact) > 20:  # walk to the contact point, around the T when it is in the way
            behind = float(np.dot(agent - centre, way)) < -REACH / 2
            aside = np.sign(np.dot(agent - centre, side)) or 1.0
            aim = contact if behind else centre + 1.4 * REACH * aside * side - REACH * way  # beside and behind it
        else:
            aim = agent + 80.0 * way
        return np.clip((aim - agent) / ACTION_SCALE, -1.0, 1.0)

    return act


def pose_coverage(states: np.ndarray, starts: np.ndarray, cell: float = 32.0, angle_bins: int = 12) -> dict:
    """How a dataset's flat states ``(N, 10)`` (episodes beginning at rows ``starts``) cover the T's poses:
    the share of ``cell``-px position cells of the arena's interior [32, 480]^2 the T's position visits,
    of ``angle_bins`` angle bins, and of (position cell, angle bin) pairs; and how often the T moves:
    the share of steps that move it (> 0.5 px or > 0.01 rad) and of episodes that carry it > 10 px or
    > 0.2 rad from where it began."""
    xy, angle = states[:, 2:4], np.mod(states[:, 4], 2 * math.pi)
    n = int((480 - 32) // cell)
    ij = np.clip(((xy - 32) // cell).astype(int), 0, n - 1)
    a = np.minimum((angle / (2 * math.pi) * angle_bins).astype(int), angle_bins - 1)
    cells = set(map(tuple, ij))
    pairs = set(zip(ij[:, 0], ij[:, 1], a))
    ends = np.append(starts[1:], len(states))
    step = np.concatenate([(np.linalg.norm(np.diff(states[s:e, 2:4], axis=0), axis=1) > 0.5)
                           | (np.abs(np.diff(states[s:e, 4])) > 0.01) for s, e in zip(starts, ends)])
    carried = [np.linalg.norm(states[e - 1, 2:4] - states[s, 2:4]) > 10 or abs(states[e - 1, 4] - states[s, 4]) > 0.2
               for s, e in zip(starts, ends)]
    return {"frames": len(states), "episodes": len(starts), "position_cells": n * n,
            "position_cells_visited": len(cells), "angle_bins": angle_bins,
            "angle_bins_visited": len(set(a.tolist())), "pose_cells": n * n * angle_bins,
            "pose_cells_visited": len(pairs), "steps_moving_block": float(step.mean()),
            "episodes_moving_block": float(np.mean(carried))}


SPEC = register_env(
    EnvSpec(
        name="pusht",
        gym_id=GYM_ID,
        entry_point="envs.pusht:PixelPushTEnv",
        max_episode_steps=100,
        state_dim=10,
        quantities=QUANTITIES,
        goal_error=pose_error,
        success_threshold=1.0,
        goal_error_label="pose error (1 = 20 px or pi/9)",
        goal_error_unit="",
        description="Push-T (gym-pusht, pymunk), RGB from above, relative actions",
        state_groups=(("agent", (0, 1, 5, 6)), ("block", (2, 3, 4, 7, 8, 9))),
        expert=pusht_expert,
        simulate=simulate,
    )
)
