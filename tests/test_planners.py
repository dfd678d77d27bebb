import pytest
import torch

from planners import (CEM, ICEM, MPPI, Bounds, CEMConfig, GradientConfig, GradientPlanner, ICEMConfig, MPPIConfig,
                      shift_plan)
from planners.icem import coloured
from worldmodel.dynamics import StateLayout

H, A = 5, 2
BOUNDS = Bounds(low=[-1.0, -1.0], high=[1.0, 1.0])


def quadratic(target: torch.Tensor):
    """cost(a) = sum over steps and dims of (a - target)^2; target (B, H, A)."""

    def cost(actions):  # (B, S, H, A) -> (B, S)
        return ((actions - target.unsqueeze(1)) ** 2).sum((-1, -2))

    return cost


def targets(batch=3, outside=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand((batch, H, A), generator=g) * 1.2 - 0.6
    if outside:
        t[:, :, 0] = 1.7  # the unconstrained minimum lies outside the box
    return t


PLANNERS = {
    "cem": lambda: CEM(CEMConfig(samples=400, elites=40, iterations=25), H, BOUNDS),
    "icem": lambda: ICEM(ICEMConfig(samples=400, elites=40, iterations=40), H, BOUNDS),
    "mppi": lambda: MPPI(MPPIConfig(samples=400, iterations=25, noise_std=0.5, std_decay=0.85), H, BOUNDS),
    "gradient": lambda: GradientPlanner(GradientConfig(restarts=4, steps=200, lr=0.1), H, BOUNDS),
}


@pytest.mark.parametrize("name", list(PLANNERS))
def test_planner_reaches_the_minimum_of_a_quadratic(name):
    target = targets()
    result = PLANNERS[name]().plan(quadratic(target), batch=3, generator=torch.Generator().manual_seed(1))
    assert result.actions.shape == (3, H, A)
    assert (result.actions - target).abs().max() < 0.05
    assert torch.allclose(result.cost, quadratic(target)(result.actions.unsqueeze(1)).squeeze(1))


@pytest.mark.parametrize("name", list(PLANNERS))
def test_planner_respects_bounds_and_finds_the_constrained_minimum(name):
    target = targets(outside=True)
    result = PLANNERS[name]().plan(quadratic(target), batch=3, generator=torch.Generator().manual_seed(2))
    assert (result.actions >= -1).all() and (result.actions <= 1).all()
    assert (result.actions[..., 0] > 0.97).all()  # pressed against the bound
    assert (result.actions[..., 1] - target[..., 1]).abs().max() < 0.05


@pytest.mark.parametrize("name", list(PLANNERS))
def test_planning_is_seeded(name):
    target = targets()
    a = PLANNERS[name]().plan(quadratic(target), 3, torch.Generator().manual_seed(5)).actions
    b = PLANNERS[name]().plan(quadratic(target), 3, torch.Generator().manual_seed(5)).actions
    assert torch.equal(a, b)


def test_warm_start_is_used():
    target = targets()
    cem = CEM(CEMConfig(samples=10, elites=2, iterations=1, init_std=0.01), H, BOUNDS)
    result = cem.plan(quadratic(target), 3, torch.Generator().manual_seed(0), warm_start=target)
    assert (result.actions - target).abs().max() < 0.05  # one tiny-noise iteration stays at the warm start
    with pytest.raises(ValueError, match=r"warm start must have shape \(3, 5, 2\)"):
        cem.plan(quadratic(target), 3, torch.Generator(), warm_start=target[:, :4])


@pytest.mark.parametrize("name", ["cem", "icem", "mppi"])
def test_a_warm_started_plan_is_the_shifted_previous_plan_before_its_first_update(name):
    target = targets()
    first = PLANNERS[name]().plan(quadratic(target), 3, torch.Generator().manual_seed(0))
    warm = shift_plan(first.actions, 2, BOUNDS)
    seen = []

    def cost(actions):
        seen.append(actions.clone())
        return quadratic(target)(actions)

    PLANNERS[name]().plan(cost, 3, torch.Generator().manual_seed(1), warm_start=warm, iterations=2)
    assert torch.equal(seen[0][:, 0], warm)  # the first candidate of the first iteration
    assert len(seen) == 2 + (name == "mppi")  # iterations=2 overrides the configured 25 (MPPI scores its mean last)


def smooth_targets(batch=3, horizon=12, seed=0):
    """Targets that change slowly over the plan's steps, as a motion does."""
    g = torch.Generator().manual_seed(seed)
    phase, amp = torch.rand(batch, 1, A, generator=g) * 6.3, torch.rand(batch, 1, A, generator=g) * 0.5 + 0.3
    t = torch.arange(horizon, dtype=torch.float32)[None, :, None]
    return amp * torch.sin(phase + t / horizon * 3.0)


def test_icem_reaches_the_minimum_of_a_smooth_quadratic_with_fewer_evaluations_than_cem():
    """The number of candidates scored until the best plan's cost is within 0.1 of the minimum's (0),
    for each planner at the same seed, with its default settings but the population."""
    horizon = 12
    target = smooth_targets(horizon=horizon)

    def evaluations(make) -> int:
        for iterations in range(1, 40):
            count = [0]

            def cost(actions):
                count[0] += actions.shape[1]
                return quadratic(target)(actions)

            result = make(iterations).plan(cost, 3, torch.Generator().manual_seed(3))
            if float(result.cost.max()) < 0.1:
                return count[0]
        return 10**9

    cem = evaluations(lambda n: CEM(CEMConfig(samples=200, elites=20, iterations=n), horizon, BOUNDS))
    icem = evaluations(lambda n: ICEM(ICEMConfig(samples=200, elites=20, iterations=n), horizon, BOUNDS))
    assert icem < cem < 10**9, (icem, cem)


def test_coloured_noise_has_unit_variance_and_correlates_neighbouring_steps():
    like = torch.zeros(())
    white = coloured((4, 5000, 8, 1), 0.0, torch.Generator().manual_seed(0), like)
    brown = coloured((4, 5000, 8, 1), 2.0, torch.Generator().manual_seed(0), like)
    for noise in (white, brown):
        assert abs(float(noise.var()) - 1) < 0.05
    lag1 = lambda x: float((x[:, :, 1:] * x[:, :, :-1]).mean())  # noqa: E731
    assert abs(lag1(white)) < 0.03 and lag1(brown) > 0.5
    with pytest.raises(ValueError, match="decay >= 1"):
        ICEMConfig(decay=0.5)
    assert [ICEMConfig(samples=300, elites=30, decay=2.0).samples_at(i) for i in range(4)] == [300, 150, 75, 60]


def test_shift_plan_drops_executed_steps_and_pads_with_the_centre():
    bounds = Bounds(low=[-1.0, 0.0], high=[1.0, 2.0])
    plan = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)
    shifted = shift_plan(plan, 2, bounds)
    assert torch.equal(shifted[:, :2], plan[:, 2:])
    assert torch.equal(shifted[:, 2:], torch.tensor([0.0, 1.0]).expand(2, 2, 2))
    assert torch.equal(shift_plan(plan, 0, bounds), plan)
    with pytest.raises(ValueError):
        shift_plan(plan, 5, bounds)


def test_bad_cost_shape_and_bounds_are_clear_errors():
    cem = CEM(CEMConfig(samples=10, elites=2, iterations=1), H, BOUNDS)
    with pytest.raises(ValueError, match=r"cost returned shape \(3,\), expected \(3, 10\)"):
        cem.plan(lambda a: a.sum((1, 2, 3)), 3, torch.Generator())
    with pytest.raises(ValueError, match="low < high"):
        Bounds(low=[1.0], high=[0.0])
    with pytest.raises(ValueError, match="elites"):
        CEMConfig(samples=10, elites=1)


class PointMass:
    """An exact latent model of a point on a line (each env step ``v += 0.1 a``, then ``p += v``),
    with the world model's state layout: ``[p_{t-k}, p_t, a_{t-k}, ..., a_{t-1}]``, k = 5."""

    k, gain = 5, 0.1
    layout = StateLayout(latent_dim=1, history=2, action_block=5, action_dim=1)

    def predict(self, s, a):
        w = self.gain * torch.arange(self.k, 0, -1, dtype=s.dtype)  # how a block's actions move p
        v = (s[..., 1] - s[..., 0] - (s[..., 2:] * w).sum(-1)) / self.k + self.gain * s[..., 2:].sum(-1)
        p = s[..., 1] + self.k * v + (a * w).sum(-1)
        return torch.cat([s[..., 1:2], p[..., None], a], -1)

    def rollout(self, s0, actions, check_inputs=True):
        states = [s0]
        for h in range(actions.shape[1]):
            states.append(self.predict(states[-1], actions[:, h]))
        return torch.stack(states[1:], 1)

    def newest(self, s):
        return s[..., 1:2]

    def frame_latents(self, s):
        return s[..., :2, None]


def test_settle_prefers_reaching_the_goal_and_staying_to_swinging_through_it():
    from planners.mpc import MPCConfig, goal_cost

    model = PointMass()
    start, goal = torch.zeros(1, 2 + model.k), torch.tensor([[2.5]])
    blocks = lambda *a: torch.tensor([[x] * model.k for x in a])  # noqa: E731
    stay = blocks(1.0, -1.0, 0.0)  # speeds up, brakes to rest at p = 2.5 after two blocks, stays
    swing = blocks(0.625, 0.0, 0.0)  # also at p = 2.5 after two blocks, still moving (p = 4.0625 after three)
    states = model.rollout(start.expand(2, -1), torch.stack([stay, swing]))
    assert torch.allclose(states[:, 1, 1], torch.tensor([2.5, 2.5]))
    assert torch.allclose(states[:, 2, 1], torch.tensor([2.5, 4.0625]))
    plans = torch.stack([stay, swing])[None]  # (B=1, S=2, H=3, A=5)

    plain = goal_cost(model, start, goal, MPCConfig(horizon=3, settle=0.0))(plans)[0]
    assert torch.allclose(plain, torch.zeros(2), atol=1e-6)  # the closest approach: both reach the goal
    settled = goal_cost(model, start, goal, MPCConfig(horizon=3, settle=1.0))(plans)[0]
    assert settled[0] < 1e-6 < settled[1]
    with pytest.raises(ValueError, match="settle must be >= 0"):
        MPCConfig(settle=-1.0)
    model.layout = StateLayout(latent_dim=1, history=1, action_block=5, action_dim=1)
    with pytest.raises(ValueError, match="settle=1.0 needs states of at least 2 frames"):
        goal_cost(model, start, goal, MPCConfig(settle=1.0))


@pytest.mark.parametrize("name", list(PLANNERS))
def test_planners_work_in_the_dtype_and_on_the_device_of_their_bounds(name):
    """float64 stands in for another device: every tensor a planner makes follows its bounds."""
    bounds = BOUNDS.to(dtype=torch.float64)
    target = targets().double()
    seen = []

    def cost(actions):
        seen.append((actions.dtype, actions.device))
        return ((actions - target.unsqueeze(1)) ** 2).sum((-1, -2))

    planner = {"cem": CEM(CEMConfig(samples=50, elites=5, iterations=3), H, bounds),
               "icem": ICEM(ICEMConfig(samples=50, elites=5, iterations=3), H, bounds),
               "mppi": MPPI(MPPIConfig(samples=50, iterations=3), H, bounds),
               "gradient": GradientPlanner(GradientConfig(restarts=2, steps=5), H, bounds)}[name]
    result = planner.plan(cost, 3, torch.Generator().manual_seed(0), warm_start=target.float())
    assert set(seen) == {(torch.float64, bounds.device)}
    assert result.actions.dtype == result.cost.dtype == torch.float64
    assert shift_plan(result.actions, 2, bounds).dtype == torch.float64


def test_the_latent_mpc_agent_plans_in_the_dtype_of_its_model():
    import numpy as np

    from planners.mpc import LatentMPCAgent, MPCConfig
    from tests.models import tiny_world_model

    model = tiny_world_model(block=5, moving=True).double().eval()
    agent = LatentMPCAgent(model, MPCConfig(horizon=2, cem=CEMConfig(samples=20, elites=4, iterations=2)),
                           np.array([-1.0, -1.0]), np.array([1.0, 1.0]), torch.Generator().manual_seed(0))
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    agent.reset(images[0])
    assert agent.goal.dtype == torch.float64
    actions = [agent.act(images[1 + i % 2]) for i in range(7)]  # a replan after 5 steps, with 5 actions of history
    assert all(a.shape == (2,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1) for a in actions)
    assert agent.warm.dtype == torch.float64 and len(agent.plan_seconds) == 2
    with pytest.raises(ValueError, match="the env's actions have 3 values, the model's 2"):
        LatentMPCAgent(model, MPCConfig(), np.zeros(3) - 1, np.ones(3), torch.Generator())


@pytest.mark.parametrize("planner", ["cem", "icem"])
def test_warm_started_replans_use_warm_iterations_and_an_episodes_first_plan_all(planner):
    import numpy as np

    from planners.mpc import LatentMPCAgent, MPCConfig
    from tests.models import tiny_world_model

    model = tiny_world_model(block=5, moving=True).eval()
    cfg = MPCConfig(planner=planner, horizon=2, warm_iterations=1, cem=CEMConfig(samples=20, elites=4, iterations=3),
                    icem=ICEMConfig(samples=20, elites=4, iterations=3))
    agent = LatentMPCAgent(model, cfg, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), torch.Generator().manual_seed(0))
    scored = []
    plan = agent.planner.plan

    def counting(cost, *args, **kwargs):
        calls = [0]

        def counted(actions):
            calls[0] += 1
            return cost(actions)

        result = plan(counted, *args, **kwargs)
        scored.append(calls[0])
        return result

    agent.planner.plan = counting
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    for _ in range(2):  # two episodes of two plans each
        agent.reset(images[0])
        for i in range(7):
            agent.act(images[1 + i % 2])
    assert scored == [3, 1, 3, 1]
    first, warm = agent.plan_flops[0], agent.plan_flops[1]  # FLOPs as run, not the first plan's for every plan
    assert agent.plan_flops == [first, warm, first, warm] and first > warm > 0
    with pytest.raises(ValueError, match="warm_iterations must be >= 0"):
        MPCConfig(warm_iterations=-1)


def test_an_agent_encodes_each_frame_once_and_its_states_equal_the_models_encoding():
    import numpy as np

    from planners.mpc import LatentMPCAgent, MPCConfig
    from tests.models import tiny_world_model

    model = tiny_world_model(block=5, moving=True).eval()
    cfg = MPCConfig(horizon=2, receding_horizon=5, cem=CEMConfig(samples=10, elites=2, iterations=1))
    agent = LatentMPCAgent(model, cfg, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), torch.Generator().manual_seed(0))
    encoded, latents = [], model.latents
    model.latents = lambda obs: (encoded.append(obs.shape[:2]), latents(obs))[1]  # noqa: E731
    images = np.random.default_rng(0).integers(0, 256, (16, 2, 64, 64, 3), dtype=np.uint8)  # B = 2 tasks
    agent.reset(images[0])
    encoded.clear()
    for t in range(1, 16):  # replans at env steps 0, 5 and 10 of the episode
        agent.act(images[t])
        if t in (1, 6, 11):
            x, a = agent.history.window(model.layout.history, agent.device, agent.dtype)
            torch.testing.assert_close(agent.encode(), latents_state(model, latents, x, a))
    # the first replan encodes its newest frame (the first seen stands for the boundary before it);
    # each later one only its newest: the boundary a block back was the previous replan's newest
    assert encoded == [(2, 1), (2, 1), (2, 1)]


def test_a_window_of_some_tasks_encodes_only_their_frames_and_each_frame_of_a_task_once():
    import numpy as np

    from planners.frames import FrameHistory

    layout = StateLayout(latent_dim=3, history=2, action_block=2, action_dim=1)
    history, calls = FrameHistory(layout, keep=layout.span), []

    def encode(x):  # (n, m, C, H, W) -> (n, m, 3): the image's first pixel, repeated
        calls.append(tuple(x.shape[:2]))
        return x[:, :, 0, 0, :1].float().expand(-1, -1, 3)

    frames = np.arange(3 * 3).reshape(3, 3, 1, 1, 1).astype(np.uint8).repeat(2, 2).repeat(2, 3)  # (t, B=3, 2, 2, 1)
    for t in range(3):
        history.add_frame(frames[t])
        history.add_action(np.zeros((3, 1), np.float32))
    assert history.unencoded(2, [1]) == 2
    z, a = history.latent_window(2, encode, torch.device("cpu"), torch.float32, tasks=[1])
    assert calls == [(1, 2)] and z.shape == (1, 2, 3) and a.shape == (1, 2, 1)
    assert z[0, :, 0].tolist() == [frames[0, 1, 0, 0, 0], frames[2, 1, 0, 0, 0]]  # boundaries 2 steps apart
    assert history.unencoded(2, [1]) == 0 and history.unencoded(2) == 2
    z, _ = history.latent_window(2, encode, torch.device("cpu"), torch.float32)  # the others' frames, now
    assert calls[1] == (2, 2) and z[:, :, 0].tolist() == frames[[0, 2], :, 0, 0, 0].T.tolist()


def latents_state(model, latents, x, a):
    L = model.layout
    return L.compose(latents(x), L.blocks(a))


@pytest.mark.parametrize("name", list(PLANNERS))
def test_one_generator_per_problem_plans_each_problem_as_it_would_alone(name):
    target = targets(batch=3)
    seeds = [11, 12, 13]
    together = PLANNERS[name]().plan(quadratic(target), 3, [torch.Generator().manual_seed(s) for s in seeds])
    for i, s in enumerate(seeds):
        alone = PLANNERS[name]().plan(quadratic(target[i : i + 1]), 1, torch.Generator().manual_seed(s))
        assert torch.allclose(together.actions[i], alone.actions[0], atol=1e-5), i
    with pytest.raises(ValueError, match="2 generators for a batch of 3 problems"):
        PLANNERS[name]().plan(quadratic(target), 3, [torch.Generator(), torch.Generator()])


@pytest.mark.parametrize("name", list(PLANNERS))
def test_a_proposed_plan_is_kept_when_the_search_finds_nothing_better(name):
    target = targets(batch=3)
    one_step = {"cem": lambda: CEM(CEMConfig(samples=8, elites=2, iterations=1), H, BOUNDS),
                "icem": lambda: ICEM(ICEMConfig(samples=8, elites=2, iterations=1), H, BOUNDS),
                "mppi": lambda: MPPI(MPPIConfig(samples=8, iterations=1), H, BOUNDS),
                "gradient": lambda: GradientPlanner(GradientConfig(restarts=2, steps=1, lr=1e-6), H, BOUNDS)}
    result = one_step[name]().plan(quadratic(target), 3, torch.Generator().manual_seed(0), proposal=target)
    assert torch.allclose(result.actions, target, atol=1e-3)  # the proposal is the minimum: a short search keeps it
    without = one_step[name]().plan(quadratic(target), 3, torch.Generator().manual_seed(0))
    assert not torch.allclose(without.actions, target, atol=1e-2)
    if name != "gradient":
        with pytest.raises(ValueError, match="a proposal must have shape"):
            one_step[name]().plan(quadratic(target), 3, torch.Generator().manual_seed(0), proposal=target[:, :2])
