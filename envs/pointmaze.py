"""Gymnasium-Robotics' PointMaze seen from above: a long-horizon pixel task.

A force-actuated ball (``PointMaze``'s physics, unchanged: timestep 0.01 s, gear 100,
damping 1, velocity clipped to 5 units/s) moves in a walled maze. The observation is an
RGB image ``(H, W, 3) uint8`` from a fixed top-down camera that frames the whole maze;
the ball is drawn larger (its visual site, not its collision sphere) and the goal marker
is hidden: a goal is given as an image. One control step repeats the action for
``action_repeat`` raw simulation steps.

Flat simulator state (``get_state()``), length 4: ``[x, y, vx, vy]`` in maze units
(one cell = 1 unit). ``info`` carries ``ball_xy``, ``ball_velocity`` and ``maze_cell``
(row, column). Success is the ball within 0.45 units of the goal's position
(Gymnasium-Robotics' threshold).

Cells and distances: :func:`free_cells`, :func:`bfs_distances` and :func:`shortest_path`
work on the layout's grid (4-connected moves between free cells), and
:func:`sample_maze_tasks` draws the ``maze`` protocol's start/goal pairs by the
shortest-path distance between their cells.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium
import mujoco
import numpy as np
from gymnasium.spaces import Box

from envs.config import EnvConfig
from envs.registry import EnvSpec, Quantity, checked_action, checked_state, register_env

# The package prints a notice about unrelated (Adroit) envs to stderr at import; keep it quiet.
with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")
    from gymnasium_robotics.envs.maze import maps
    from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

GYM_ID = "hjepa/PixelPointMaze-v0"
SUCCESS_DISTANCE = 0.45  # maze units, Gymnasium-Robotics' success threshold
LAYOUTS = {"medium": maps.MEDIUM_MAZE, "large": maps.LARGE_MAZE}
QUANTITIES = (
    Quantity("ball_xy", "position", "maze units", 2, "ball position (x, y)"),
    Quantity("ball_velocity", "velocity", "maze units/s", 2, "ball velocity"),
    Quantity("maze_cell", "position", "cells", 2, "maze cell (row, column)"),
)


# --- the grid -------------------------------------------------------------------
def layout_grid(maze: str) -> np.ndarray:
    """The layout ``maze`` as a boolean grid, True on walls; a clear error for an unknown name."""
    if maze not in LAYOUTS:
        raise ValueError(f"unknown maze layout {maze!r}; expected one of {sorted(LAYOUTS)}")
    return np.array([[cell == 1 for cell in row] for row in LAYOUTS[maze]], dtype=bool)


def free_cells(walls: np.ndarray) -> list[tuple[int, int]]:
    """The free cells ``(row, column)`` of a wall grid, row-major."""
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(~walls))]


def neighbours(walls: np.ndarray, cell: tuple[int, int]) -> list[tuple[int, int]]:
    """The free cells one move (up, down, left, right) from ``cell``."""
    i, j = cell
    return [(i + di, j + dj) for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1))
            if 0 <= i + di < walls.shape[0] and 0 <= j + dj < walls.shape[1] and not walls[i + di, j + dj]]


def bfs_distances(walls: np.ndarray, source: tuple[int, int]) -> np.ndarray:
    """Shortest-path distance (in cells, 4-connected) from ``source`` to every cell; -1 where
    unreachable or a wall."""
    if walls[source]:
        raise ValueError(f"cell {source} is a wall")
    dist = np.full(walls.shape, -1, dtype=np.int64)
    dist[source] = 0
    queue = deque([source])
    while queue:
        cell = queue.popleft()
        for n in neighbours(walls, cell):
            if dist[n] < 0:
                dist[n] = dist[cell] + 1
                queue.append(n)
    return dist


def shortest_path(walls: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    """The cells of a shortest path from ``start`` to ``goal``, both included."""
    dist = bfs_distances(walls, goal)
    if dist[start] < 0:
        raise ValueError(f"no path from {start} to {goal}")
    path = [start]
    while path[-1] != goal:
        path.append(min(n for n in neighbours(walls, path[-1]) if dist[n] == dist[path[-1]] - 1))
    return path


def cell_centre(walls: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    """``(x, y)`` of a cell's centre (Gymnasium-Robotics' convention: x right, y up, origin at the
    maze's centre, one unit per cell)."""
    rows, cols = walls.shape
    return np.array([cell[1] + 0.5 - cols / 2, rows / 2 - cell[0] - 0.5])


def xy_cell(walls: np.ndarray, xy: np.ndarray) -> tuple[int, int]:
    """The cell ``(row, column)`` that contains ``(x, y)``."""
    rows, cols = walls.shape
    return (int(math.floor(rows / 2 - xy[1])), int(math.floor(xy[0] + cols / 2)))


def ball_positions(physics: dict[str, np.ndarray]) -> np.ndarray:
    """The ball's positions ``(F, 2)`` from a dataset's recorded quantities."""
    return np.asarray(physics["ball_xy"])


def cell_coverage(xy: np.ndarray, episode_starts: np.ndarray, walls: np.ndarray) -> dict:
    """How positions ``xy (F, 2)`` from episodes starting at ``episode_starts`` cover the maze: visit
    counts per free cell, the fraction visited, the least and most visited against the mean, and
    the distinct cells per episode."""
    counts = np.zeros(walls.shape, dtype=np.int64)
    cells = np.array([xy_cell(walls, p) for p in xy])
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    free = np.array([counts[c] for c in free_cells(walls)])
    bounds = list(episode_starts) + [len(xy)]
    crossing = [len({tuple(c) for c in cells[a:b]}) for a, b in zip(bounds[:-1], bounds[1:])]
    return {"frames": int(len(xy)), "free_cells": int(len(free)), "cells_visited": int((free > 0).sum()),
            "fraction_visited": float((free > 0).mean()), "min_over_mean": float(free.min() / free.mean()),
            "max_over_mean": float(free.max() / free.mean()), "mean_cells_per_episode": float(np.mean(crossing)),
            "counts": counts.tolist()}


# --- the environment ----------------------------------------------------------------
class PixelPointMazeEnv(gymnasium.Env):
    """PointMaze with image observations from a fixed top-down camera.

    Args:
        image_size: side of the square RGB observation, pixels.
        maze: layout, ``medium`` (8 x 8 cells, 6 x 6 inside the outer wall) or ``large`` (9 x 12).
        action_repeat: raw 0.01 s simulation steps per control step.
        ball_radius: drawn radius of the ball, maze units (its collision sphere stays 0.1).
        position_noise: resets put the ball uniformly within this distance (per axis, units)
            of a random free cell's centre.
        antialias: multisample anti-aliasing.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(self, image_size: int = 64, maze: str = "medium", action_repeat: int = 4,
                 ball_radius: float = 0.3, position_noise: float = 0.25, antialias: bool = True):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        if not isinstance(action_repeat, int) or action_repeat < 1:
            raise ValueError(f"action_repeat must be an integer >= 1, got {action_repeat!r}")
        if not 0 < ball_radius < 0.5 or not 0 <= position_noise < 0.5:
            raise ValueError(f"need 0 < ball_radius < 0.5 and 0 <= position_noise < 0.5 (units), "
                             f"got {ball_radius}, {position_noise}")
        self.walls = layout_grid(maze)
        self.maze_name, self.image_size, self.action_repeat = maze, image_size, action_repeat
        self.position_noise = position_noise
        self.cells = free_cells(self.walls)
        self._sim = PointMazeEnv(maze_map=LAYOUTS[maze], render_mode="rgb_array", width=image_size,
                                 height=image_size, continuing_task=True, reset_target=False)
        model = self._sim.model
        # Frame the whole maze: its larger side fills the view (the camera's field of view is fovy).
        half = max(self.walls.shape) / 2
        distance = half / math.tan(math.radians(model.vis.global_.fovy) / 2)
        self._sim.point_env.mujoco_renderer.default_cam_config = dict(
            distance=distance, azimuth=90.0, elevation=-90.0, lookat=np.zeros(3), trackbodyid=-1)
        self._sim.point_env.mujoco_renderer._viewers = {}  # none is open yet: the next render uses this camera
        ball = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "particle_site")
        model.site_size[ball, 0] = ball_radius
        model.site_rgba[ball] = (1.0, 0.85, 0.1, 1.0)  # bright yellow on the dark floor
        target = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "target")
        model.site_rgba[target, 3] = 0.0  # the goal is given as an image
        if not antialias:
            model.vis.quality.offsamples = 0
        self.action_space = self._sim.action_space
        self.observation_space = Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.frame_skip = action_repeat  # raw steps per control step (what the simulator-based oracle repeats)

    # the simulator, for privileged planners (the oracle) ----------------------------
    @property
    def model(self) -> mujoco.MjModel:
        return self._sim.model

    @property
    def data(self) -> mujoco.MjData:
        return self._sim.data

    # observation and info -------------------------------------------------------------
    def render(self) -> np.ndarray:
        return self._sim.render()

    def physics(self) -> dict[str, np.ndarray]:
        """Physical quantities of the current step (the keys of ``QUANTITIES``)."""
        xy = self.data.qpos[:2].copy()
        return {"ball_xy": xy, "ball_velocity": self.data.qvel[:2].copy(),
                "maze_cell": np.array(xy_cell(self.walls, xy), dtype=np.float64)}

    def _info(self) -> dict[str, Any]:
        return {**self.physics(), "state": self.get_state()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """The ball at rest near the centre of a uniformly random free cell (``options={"cell": (i, j)}``
        picks the cell)."""
        super().reset(seed=seed)
        self._sim.reset(seed=seed)  # seeds the wrapped env; its goal and start are replaced below
        cell = (options or {}).get("cell")
        if cell is None:
            cell = self.cells[int(self.np_random.integers(len(self.cells)))]
        cell = (int(cell[0]), int(cell[1]))
        if cell not in self.cells:
            raise ValueError(f"reset cell {cell} is not a free cell of the {self.maze_name} maze")
        xy = cell_centre(self.walls, cell) + self.np_random.uniform(-self.position_noise, self.position_noise, 2)
        self.set_state(np.concatenate([xy, [0.0, 0.0]]))
        return self.render(), self._info()

    def step(self, action):
        action = checked_action(action, self.action_space)
        for _ in range(self.action_repeat):
            self._sim.point_env.step(action)  # clips the action and the velocity, one raw step
        # mj_step leaves positions at the start of its last substep; recompute them from the new
        # qpos so the image and info describe the state that get_state() returns.
        mujoco.mj_kinematics(self.model, self.data)
        return self.render(), 0.0, False, False, self._info()

    # simulator state ------------------------------------------------------------------
    def get_state(self) -> np.ndarray:
        """Flat simulator state ``[x, y, vx, vy]`` (float64)."""
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def set_state(self, state: np.ndarray) -> None:
        """Set the flat simulator state; the next image is exactly the one recorded with it."""
        state = checked_state(state, "[x, y, vx, vy]", 4)
        self._sim.point_env.set_state(state[:2], state[2:])
        self.data.qacc_warmstart[:] = 0

    def close(self):
        self._sim.close()


def ball_distance(state: np.ndarray, goal_state: np.ndarray) -> float:
    """Euclidean distance (maze units) between the ball positions of two flat states."""
    return float(np.hypot(*(np.asarray(state)[:2] - np.asarray(goal_state)[:2])))


# --- the maze protocol's tasks and the oracle's waypoints -----------------------------------
DISTANCE_BINS = {"near": (1, 3), "mid": (4, 6), "far": (7, 10**6)}


def sample_cell_pairs(walls: np.ndarray, bins: dict[str, tuple[int, int]], per_bin: int,
                      rng: np.random.Generator) -> list[tuple[str, tuple[int, int], tuple[int, int], int]]:
    """``per_bin`` distinct (start cell, goal cell) pairs per distance bin, drawn uniformly without
    replacement among the ordered pairs of free cells whose shortest-path distance is within the
    bin (both ends included): ``(bin, start, goal, distance)`` tuples, bin by bin."""
    cells = free_cells(walls)
    dist = {c: bfs_distances(walls, c) for c in cells}
    pairs = [(a, b, int(dist[a][b])) for a in cells for b in cells if a != b and dist[a][b] > 0]
    tasks = []
    for name, (lo, hi) in bins.items():
        inside = [p for p in pairs if lo <= p[2] <= hi]
        if len(inside) < per_bin:
            raise ValueError(f"bin {name!r} ({lo}-{hi} cells) holds {len(inside)} distinct (start, goal) cell "
                             f"pairs, fewer than the {per_bin} tasks asked for")
        tasks += [(name, *inside[k]) for k in rng.choice(len(inside), per_bin, replace=False)]
    return tasks


def maze_tasks(env: gymnasium.Env, bins: dict[str, tuple[int, int]], per_bin: int,
               rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    """The ``maze`` protocol's tasks: the ball at rest at a free cell's centre, the goal the ball at
    rest at the centre of another free cell whose shortest-path distance falls in the bin."""
    walls = env.unwrapped.walls
    at_rest = lambda cell: np.concatenate([cell_centre(walls, cell), [0.0, 0.0]])  # noqa: E731
    return [(name, at_rest(a), at_rest(b), {"start_cell": list(a), "goal_cell": list(b), "cells": d})
            for name, a, b, d in sample_cell_pairs(walls, bins, per_bin, rng)]


def next_waypoint(env: gymnasium.Env, state: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
    """The oracle's waypoint: the centre of the next cell on a shortest path from the ball's cell to
    the goal's (at rest), or the goal itself once the ball is in the goal's cell or next to it."""
    walls = env.unwrapped.walls
    here, goal = xy_cell(walls, state[:2]), xy_cell(walls, goal_state[:2])
    if walls[here]:  # the ball's centre overlaps a wall cell by its radius: plan from the nearest free cell
        here = min(free_cells(walls), key=lambda c: np.hypot(*(cell_centre(walls, c) - state[:2])))
    path = shortest_path(walls, here, goal)
    if len(path) <= 2:
        return np.asarray(goal_state, dtype=np.float64)
    return np.concatenate([cell_centre(walls, path[1]), [0.0, 0.0]])


def path_distance(physics: dict[str, np.ndarray], env_kwargs: dict) -> dict[str, np.ndarray]:
    """The shortest-path distance in cells from each recorded cell to the layout's first free cell
    (a quantity a slow latent should know and a straight-line one cannot give)."""
    walls = layout_grid(env_kwargs.get("maze", "medium"))
    dist = bfs_distances(walls, free_cells(walls)[0])
    cells = np.asarray(physics["maze_cell"]).reshape(-1, 2).astype(int)
    return {"path_distance": dist[cells[:, 0], cells[:, 1]].astype(np.float64)[:, None]}


@dataclass
class PointMazeConfig(EnvConfig):
    """The maze's settings (``env=pointmaze env.maze=large``).

    Attributes:
        maze: layout, ``medium`` or ``large``.
        action_repeat: raw 0.01 s simulation steps per control step.
    """

    name: str = "pointmaze"
    maze: str = "medium"
    action_repeat: int = 8
    antialias: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.maze not in LAYOUTS:
            raise ValueError(f"env.maze must be one of {sorted(LAYOUTS)}, got {self.maze!r}")
        if self.action_repeat < 1:
            raise ValueError(f"env.action_repeat must be >= 1, got {self.action_repeat}")

    @property
    def model_name(self) -> str:
        """``pointmaze`` for the medium layout, ``pointmaze-<layout>`` for another."""
        return self.name if self.maze == "medium" else f"{self.name}-{self.maze}"

    def env_kwargs(self) -> dict[str, Any]:
        return {**super().env_kwargs(), "maze": self.maze, "action_repeat": self.action_repeat}


SPEC = register_env(
    EnvSpec(
        name="pointmaze",
        gym_id=GYM_ID,
        entry_point="envs.pointmaze:PixelPointMazeEnv",
        max_episode_steps=100,
        state_dim=4,
        quantities=QUANTITIES,
        goal_error=ball_distance,
        success_threshold=SUCCESS_DISTANCE,
        goal_error_label="distance to goal",
        goal_error_unit="units",
        description="Gymnasium-Robotics PointMaze (MuJoCo), RGB from a top-down camera, goal hidden",
        state_groups=(("ball", (0, 1, 2, 3)),),
        distance_tasks=maze_tasks,
        subgoal=next_waypoint,
        derived_quantities=path_distance,
        config=PointMazeConfig,
    )
)
