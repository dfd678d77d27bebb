"""The hierarchy's mechanism on an exact toy: a point mass in two rooms joined by a door.

The rooms are ``[0, 20] x [0, 20]`` split by a wall at ``x = 10`` with a door at ``y < DOOR``.
An action moves the point by up to one unit per axis; a move that would cross the wall outside
the door keeps its x. The "images" are the position, quantised to a tenth of a unit. Level 1 is
this dynamics, exactly; level 2 is exact too: a macro-action is an action held for a chunk of
``K`` steps. The goal is straight across the wall; the straight line ends at the wall, 5 units
away, and the way through the door is 2 x 11 units long.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.cem import CEMConfig
from planners.hierarchy import HierarchicalAgent, hierarchical_agent as two_levels
from planners.subgoals import SlowPlanConfig, SubgoalPlanner
from planners.mpc import LatentMPCAgent, MPCConfig
from worldmodel.dynamics import StateLayout

DOOR, WALL, SIZE, K = 4.0, 10.0, 20.0, 5
START, GOAL = (5.0, 15.0), (15.0, 15.0)


def step(p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """One exact step of positions ``p (..., 2)`` under actions ``a (..., 2)``."""
    q = (p + a.clamp(-1, 1)).clamp(0, SIZE)
    crosses = (p[..., 0] < WALL) != (q[..., 0] < WALL)
    through_door = (p[..., 1] < DOOR) & (q[..., 1] < DOOR)
    blocked = crosses & ~through_door
    return torch.stack([torch.where(blocked, p[..., 0], q[..., 0]), q[..., 1]], -1)


def image(p) -> np.ndarray:
    return np.round(np.asarray(p, np.float64) * 10).astype(np.uint8).reshape(1, 2, 1)


class ExactRooms:
    """Level 1: the state is the position; ``rollout`` is the exact dynamics."""

    layout = StateLayout(latent_dim=2, history=1, action_block=1, action_dim=2)
    device, dtype, image_shape = torch.device("cpu"), torch.float32, (1, 1, 2)

    def latents(self, obs: torch.Tensor) -> torch.Tensor:
        return obs.flatten(-3).float() / 10

    def encode(self, frames: torch.Tensor, actions: torch.Tensor | None = None) -> torch.Tensor:
        return self.latents(frames[:, -1])

    def rollout(self, s0: torch.Tensor, actions: torch.Tensor, check_inputs: bool = True) -> torch.Tensor:
        states, p = [], s0
        for t in range(actions.shape[1]):
            p = step(p, actions[:, t])
            states.append(p)
        return torch.stack(states, 1)

    def newest(self, s: torch.Tensor) -> torch.Tensor:
        return s

    def frame_latents(self, s: torch.Tensor) -> torch.Tensor:
        return s[..., None, :]


class ExactChunks:
    """Level 2: a macro-action is one action held for ``K`` steps, simulated exactly."""

    macro_dim, chunk_steps, state_window = 2, K, 1

    def encode(self, z: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        return z[:, -1]

    def macro_from_plan(self, u: torch.Tensor) -> torch.Tensor:
        return u

    def rollout(self, s2: torch.Tensor, macros: torch.Tensor) -> torch.Tensor:
        states = []
        for t in range(macros.shape[1]):
            for _ in range(K):
                s2 = step(s2, macros[:, t])
            states.append(s2)
        return torch.stack(states, 1)

    def subgoal(self, s2: torch.Tensor) -> torch.Tensor:
        return s2[..., None, :]


def run(agent, budget: int = 80) -> tuple[bool, float]:
    """Drive ``agent`` from START toward GOAL in the exact rooms; (reached within 0.5, closest distance)."""
    agent.seed(0)
    agent.reset(image(GOAL))
    p, best = torch.tensor(START), float("inf")
    for _ in range(budget):
        a = torch.as_tensor(agent.act(image(p.numpy())))
        p = step(p, a)
        best = min(best, float((p - torch.tensor(GOAL)).norm()))
        if best < 0.5:
            return True, best
    return False, best


CEM_SETTINGS = CEMConfig(samples=200, elites=20, iterations=6)
LOW, HIGH = np.array([-1.0, -1.0], np.float32), np.array([1.0, 1.0], np.float32)


def flat_agent(horizon: int) -> LatentMPCAgent:
    cfg = MPCConfig(planner="cem", horizon=horizon, receding_horizon=K, settle=0.0, cem=CEM_SETTINGS)
    return LatentMPCAgent(ExactRooms(), cfg, LOW, HIGH, torch.Generator())


REACH = 0.5**2 / 2  # the latent is the position: within 0.5 units of the goal, the squared distance per dimension


def hierarchical_agent(slow_horizon: int = 8, hand_down: str = "level1") -> HierarchicalAgent:
    cfg = MPCConfig(planner="cem", horizon=K, receding_horizon=K, settle=0.0, cem=CEM_SETTINGS)
    slow = SlowPlanConfig(horizon=slow_horizon, box=1.0, hand_down=hand_down, cem=CEM_SETTINGS)
    return two_levels(ExactRooms(), ExactChunks(), cfg, slow, LOW, HIGH, torch.Generator(), reach=REACH)


def test_the_toy_is_what_it_claims():
    p = torch.tensor([[9.5, 15.0], [9.5, 2.0]])
    q = step(p, torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert q.tolist() == [[9.5, 15.0], [10.5, 2.0]]  # the wall stops the first, the door lets the second through


@pytest.mark.slow
@pytest.mark.parametrize("hand_down", ["level1", "slow", "either", "clip"])
def test_hierarchical_planner_goes_through_the_door_where_flat_planning_at_the_same_compute_does_not(hand_down):
    hier = hierarchical_agent(hand_down=hand_down)
    ok, best = run(hier)
    assert ok, f"the hierarchical planner came no closer than {best:.2f}"
    assert len(hier.subgoals[0]) >= 2 and any(float(s[1]) < 12 for _, s in hier.subgoals[0])  # a subgoal toward the door
    # the flat planner gets the hierarchy's model steps per plan (its K level-1 steps plus the slow
    # plan's 8 chunks of K steps) as one long horizon, and the same samples and iterations
    flat = flat_agent(horizon=K + 8 * K)
    ok, best = run(flat)
    assert not ok and best > 4.0, f"the flat planner reached {best:.2f}"
    ok, best = run(flat_agent(horizon=K))
    assert not ok and best > 4.0  # a short flat plan stops at the wall, 5 units from the goal


def test_a_goal_within_reach_of_the_level_that_acts_goes_down_at_once_and_a_far_one_does_not():
    """``level1``: level 1 plans toward the goal first; a goal its best plan is predicted to reach (here,
    3 units away on the open floor, within its 5-step plan) goes down at once with no slow plan made; a
    goal 15 units away gets a subgoal on the way instead."""
    cfg = MPCConfig(planner="cem", horizon=K, receding_horizon=K, settle=0.0, cem=CEM_SETTINGS)
    slow = SlowPlanConfig(horizon=4, box=1.0, hand_down="level1", cem=CEM_SETTINGS)
    start = torch.tensor([2.0, 10.0])
    for distance, goes_down in ((3.0, True), (15.0, False)):
        goal = start + torch.tensor([distance, 0.0])
        agent = two_levels(OpenFloor(), HeldActions(K), cfg, slow, LOW, HIGH, torch.Generator(), reach=REACH)
        agent.seed(0)
        agent.reset(image(goal))
        agent.act(image(start.numpy()))
        (step0, handed), = agent.subgoals[0]
        assert step0 == 0 and torch.equal(handed, goal) == goes_down, (distance, handed.tolist())
        assert (agent.high.since[0] < 0) == goes_down  # no slow plan where the goal went down
        if goes_down:
            assert float(agent.low.reach[0]) <= REACH
        else:
            assert between(handed, start, goal) and float((handed - start).norm()) > 2


def test_slow_plans_after_an_episodes_first_run_the_warm_iterations():
    cfg = MPCConfig(planner="cem", horizon=K, receding_horizon=K, settle=0.0, cem=CEM_SETTINGS)
    slow = SlowPlanConfig(horizon=4, box=1.0, hand_down="slow", warm_iterations=2, cem=CEM_SETTINGS)
    agent = two_levels(OpenFloor(), HeldActions(K), cfg, slow, LOW, HIGH, torch.Generator())
    asked, plan = [], agent.high.planner.plan

    def spy(*args, iterations=None, warm_start=None, **kw):
        asked.append((iterations, warm_start is not None))
        return plan(*args, iterations=iterations, warm_start=warm_start, **kw)

    agent.high.planner.plan = spy
    for episode in range(2):
        agent.seed(episode)
        agent.reset(image(torch.tensor([18.0, 10.0])))
        p = torch.tensor([2.0, 10.0])
        for _ in range(3 * K):
            p = open_step(p, torch.as_tensor(agent.act(image(p.numpy()))))
    # every slow chunk (K env steps) a slow plan; each episode's first with all iterations, no warm start
    assert asked == [(None, False), (2, True), (2, True)] * 2


def test_hwm_rule_hands_the_goal_down_for_the_last_steps_of_the_budget_and_stops_the_slow_plans():
    """``final_steps`` (HWM's rule): with a far goal on the open floor, subgoals go down until the last
    ``final_steps`` of the budget the evaluation gives; from the first level-1 replan inside them the
    goal itself goes down, once, and no slow plan is made after it. Without a budget, never."""
    cfg = MPCConfig(planner="cem", horizon=K, receding_horizon=K, settle=0.0, cem=CEM_SETTINGS)
    slow = SlowPlanConfig(horizon=4, box=1.0, hand_down="slow", final_steps=2 * K, cem=CEM_SETTINGS)
    start, goal = torch.tensor([2.0, 10.0]), torch.tensor([19.0, 10.0])
    for budget in (4 * K, None):
        agent = two_levels(OpenFloor(), HeldActions(K), cfg, slow, LOW, HIGH, torch.Generator())
        agent.seed(0)
        agent.reset(image(goal))
        if budget is not None:
            agent.set_budget(budget)
        p = start.clone()
        for _ in range(3 * K):
            p = open_step(p, torch.as_tensor(agent.act(image(p.numpy()))))
        handed = [(t, torch.equal(g, goal)) for t, g in agent.subgoals[0]]
        if budget is None:
            assert handed == [(0, False), (K, False), (2 * K, False)] and agent.high.since.tolist() == [K], handed
        else:  # subgoals at steps 0 and K (the goal is still 7 units away at 2K); the goal at 2K on
            assert handed == [(0, False), (K, False), (2 * K, True)], handed
            assert agent.high.since.tolist() == [2 * K]  # no slow plan since step K
    with pytest.raises(ValueError, match="budget is >= 1"):
        agent.set_budget(0)
    with pytest.raises(ValueError, match="final_steps, warm_iterations >= 0"):
        SlowPlanConfig(final_steps=-1)


def test_hand_down_rules_without_a_reach_threshold_are_refused():
    cfg = MPCConfig(planner="cem", horizon=K, receding_horizon=K, settle=0.0, cem=CEM_SETTINGS)
    with pytest.raises(ValueError, match="needs a reach threshold"):
        two_levels(OpenFloor(), HeldActions(K), cfg, SlowPlanConfig(hand_down="level1"), LOW, HIGH, torch.Generator())
    with pytest.raises(ValueError, match="slow.hand_down must be one of"):
        SlowPlanConfig(hand_down="always")


# --- three levels, stacked -----------------------------------------------------------------------


def open_step(p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """One exact step on the open floor (no wall): ``p + clamp(a)``, kept in the room."""
    return (p + a.clamp(-1, 1)).clamp(0, SIZE)


class OpenFloor(ExactRooms):
    """Level 1 without the wall."""

    def rollout(self, s0: torch.Tensor, actions: torch.Tensor, check_inputs: bool = True) -> torch.Tensor:
        states, p = [], s0
        for t in range(actions.shape[1]):
            p = open_step(p, actions[:, t])
            states.append(p)
        return torch.stack(states, 1)


class HeldActions(ExactChunks):
    """A slow level over the open floor whose macro-action is one action held for ``chunk`` steps."""

    def __init__(self, chunk: int):
        self.chunk_steps = chunk

    def rollout(self, s2: torch.Tensor, macros: torch.Tensor) -> torch.Tensor:
        states = []
        for t in range(macros.shape[1]):
            for _ in range(self.chunk_steps):
                s2 = open_step(s2, macros[:, t])
            states.append(s2)
        return torch.stack(states, 1)


def between(q: torch.Tensor, p: torch.Tensor, g: torch.Tensor) -> bool:
    """Whether ``q`` lies on the way from ``p`` to ``g``, up to half a unit of noise: its projection on
    the segment falls within it, and it is off the segment by at most a quarter of the segment's length."""
    d = g - p
    length = float(d.norm())
    if length < 0.5:
        return float((q - g).norm()) <= 0.5
    along = float((q - p) @ d) / length
    off = float((q - p - along * d / length).norm())
    return -0.5 <= along <= length + 0.5 and off <= 0.25 * length + 0.5


def test_three_stacked_levels_each_hand_down_a_subgoal_between_its_goal_and_the_state():
    """Level 3 (macro-actions held for 6 steps) proposes subgoals to level 2 (held for 2 steps), which
    proposes them to the flat level 1: one class, stacked. Every subgoal lies on the way from the
    current state to the goal of the level that proposed it, and the stack reaches the goal."""
    gen = torch.Generator()
    mpc = MPCConfig(planner="cem", horizon=2, receding_horizon=1, settle=0.0, cem=CEM_SETTINGS)
    slow = SlowPlanConfig(horizon=3, box=1.0, cem=CEM_SETTINGS)
    level1 = LatentMPCAgent(OpenFloor(), mpc, LOW, HIGH, gen, name="level-1")
    level2 = HierarchicalAgent(SubgoalPlanner(OpenFloor(), HeldActions(2), slow, "cem", gen), level1, "level-2",
                               "level1", REACH)
    level3 = HierarchicalAgent(SubgoalPlanner(OpenFloor(), HeldActions(6), slow, "cem", gen), level2, "level-3",
                               "level1", REACH)
    start, goal = torch.tensor([1.0, 10.0]), torch.tensor([19.0, 10.0])
    level3.seed(0)
    level3.reset(image(goal))
    p, checked = start, {2: 0, 3: 0}
    for t in range(30):
        a = torch.as_tensor(level3.act(image(p.numpy())))
        new = {level: [s for step, s in agent.subgoals[0] if step == t] for level, agent in ((3, level3), (2, level2))}
        parent = {3: goal, 2: level3.subgoals[0][-1][1]}  # level 3 plans first: its newest subgoal is level 2's goal
        for level, proposed in new.items():
            for q in proposed:
                assert between(q, p, parent[level]), (level, t, q.tolist(), p.tolist(), parent[level].tolist())
                checked[level] += 1
        p = open_step(p, a)
        if float((p - goal).norm()) < 0.5:
            break
    assert float((p - goal).norm()) < 0.5, f"the stack stopped at {p.tolist()}"
    assert checked[3] >= 3 and checked[2] >= 9, checked  # level 3 every 6 steps, level 2 every 2


# --- many tasks at once ---------------------------------------------------------------------------


def play(agent, starts: torch.Tensor, goals: torch.Tensor, budgets: list[int], seeds: list[int]):
    """Drive ``agent`` on the open floor from ``starts`` toward ``goals`` ``(B, 2)``, all at once, each task for
    its own budget (a finished task leaves the batch); per task, its positions and the subgoals handed down."""
    agent.seed(seeds if len(seeds) > 1 else seeds[0])
    agent.reset(np.stack([image(g) for g in goals]))
    agent.set_budget(budgets)
    p, active, paths = starts.clone(), list(range(len(starts))), [[] for _ in starts]
    for t in range(max(budgets)):
        a = torch.as_tensor(agent.act(np.stack([image(p[i].numpy()) for i in active])))
        for j, i in enumerate(active):
            p[i] = open_step(p[i], a[j])
            paths[i].append(p[i].clone())
        keep = [j for j, i in enumerate(active) if t + 1 < budgets[i]]
        if len(keep) < len(active):
            active = [active[j] for j in keep]
            if active:
                agent.select(keep)
    return [torch.stack(path) for path in paths], agent.subgoals


@pytest.mark.parametrize("hand_down", ["either", "slow"])
def test_a_batch_of_tasks_plays_as_each_of_them_alone(hand_down):
    """Every decision is made per task: a goal within reach goes down at once while the other tasks plan
    subgoals, each task's slow plans keep their own clock and warm start, its final steps (HWM's rule)
    come at its own budget's end, and a finished task leaves the batch. Seeded per task, each task of
    the batch moves exactly as it does alone and is handed the same subgoals at the same steps."""
    cem = CEMConfig(samples=40, elites=5, iterations=3)
    cfg = MPCConfig(planner="cem", horizon=K, receding_horizon=K, settle=0.0, cem=cem)
    slow = SlowPlanConfig(horizon=4, box=1.0, hand_down=hand_down,
                          final_steps=K, warm_iterations=2, cem=cem)
    starts = torch.tensor([[2.0, 10.0], [2.0, 10.0], [10.0, 3.0]])
    goals = torch.tensor([[5.0, 10.0], [18.0, 12.0], [3.0, 17.0]])  # 3 units away (within reach), then far
    budgets, seeds = [4 * K, 5 * K, 2 * K], [11, 12, 13]

    def agent():
        return two_levels(OpenFloor(), HeldActions(K), cfg, slow, LOW, HIGH, torch.Generator(), reach=REACH)

    paths, subgoals = play(agent(), starts, goals, budgets, seeds)
    for i in range(3):
        alone, handed = play(agent(), starts[i : i + 1], goals[i : i + 1], budgets[i : i + 1], seeds[i : i + 1])
        assert torch.allclose(paths[i], alone[0], atol=1e-5), (i, paths[i].tolist(), alone[0].tolist())
        assert [t for t, _ in subgoals[i]] == [t for t, _ in handed[0]], i
        assert all(torch.allclose(a, b, atol=1e-5) for (_, a), (_, b) in zip(subgoals[i], handed[0]))
    if hand_down == "either":
        assert torch.equal(subgoals[0][0][1], goals[0]) and not torch.equal(subgoals[1][0][1], goals[1])
