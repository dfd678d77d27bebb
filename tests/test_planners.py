import pytest
import torch

from planners import CEM, MPPI, Bounds, CEMConfig, GradientConfig, GradientPlanner, MPPIConfig, shift_plan

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
