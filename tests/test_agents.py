"""The agent registry: one name per agent, each built by make_agent with the settings its name says."""

import numpy as np
import pytest

from experiments.agents import Levels, agent_names, make_agent
from experiments.conf import load
from planners.hierarchy import HierarchicalAgent
from planners.mpc import LatentMPCAgent
from tests.models import tiny_world_model
from worldmodel.evaluation import RandomAgent, ZeroAgent


class Env:  # what the model-based agents read of an env
    action_space = type("Box", (), {"low": np.full(2, -1.0), "high": np.full(2, 1.0), "shape": (2,)})()


def test_an_evaluation_lists_its_agents_in_the_order_they_run():
    cfg = load("plan", ["planners=[cem,mppi]", "+variants.wide.cem.samples=500", "baselines=[zero,random]"])
    model = tiny_world_model(block=5)
    assert agent_names(cfg, Levels(model, slow=object())) == [
        "cem-mpc", "cem-hier", "mppi-mpc", "mppi-hier", "cem-wide", "zero", "random"]
    assert agent_names(cfg, Levels(model)) == ["cem-mpc", "mppi-mpc", "cem-wide", "zero", "random"]  # no slow level
    assert agent_names(cfg, Levels()) == ["zero", "random"]  # model='': the reference agents alone
    flat_off = load("plan", ["flat=false", "baselines=[]"])
    assert agent_names(flat_off, Levels(model, slow=object())) == ["cem-hier"]


def test_each_name_builds_the_agent_it_names_with_its_settings():
    cfg = load("plan", ["planners=[cem,mppi]", "+variants.wide.cem.samples=500", "+variants.wide.cem.elites=50"])
    levels = Levels(tiny_world_model(block=5))
    flat = make_agent("mppi-mpc", cfg, Env(), None, levels)
    assert isinstance(flat, LatentMPCAgent) and flat.name == "mppi-mpc" and flat.cfg.planner == "mppi"
    assert flat.cfg.horizon == cfg.mpc.horizon
    wide = make_agent("cem-wide", cfg, Env(), None, levels)
    assert wide.name == "cem-wide" and wide.cfg.cem.samples == 500 and wide.cfg.cem.elites == 50
    assert isinstance(make_agent("random", cfg, Env(), None, levels), RandomAgent)
    assert isinstance(make_agent("zero", cfg, Env(), None, levels), ZeroAgent)


def test_a_hierarchical_name_builds_the_hierarchical_agent():
    from worldmodel.hierarchy import SlowConfig, SlowModel

    model = tiny_world_model(block=5)
    slow = SlowModel(model.layout, SlowConfig(chunk=2, macro_dim=2, hidden=16, layers=1))
    cfg = load("plan", ["slow.hand_down=slow", "slow.gain=0.0"])
    agent = make_agent("cem-hier", cfg, Env(), None, Levels(model, slow))
    assert isinstance(agent, HierarchicalAgent) and agent.name == "cem-hier"


@pytest.mark.parametrize("name", ["cem-wide", "cem-hier", "mppi-mpc", "ilqr-mpc", "oracle-cem"])
def test_a_name_this_evaluation_does_not_run_is_refused_listing_its_agents(name):
    cfg = load("plan", [])
    with pytest.raises(ValueError, match=rf"no agent '{name}' in this evaluation; its agents are \['cem-mpc'"):
        make_agent(name, cfg, Env(), None, Levels(tiny_world_model(block=5)))
