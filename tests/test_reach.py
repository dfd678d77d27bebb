"""The learned temporal distance (hand-down rule ``learned``): its hindsight pairs, what it learns on a
world whose distances are known, its checkpoints, and the rule in the exact open-floor toy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planners.hierarchy import hierarchical_agent as two_levels
from planners.subgoals import SlowPlanConfig
from planners.mpc import MPCConfig
from tests.test_hierarchy_toy import CEM_SETTINGS, HIGH, K, LOW, HeldActions, OpenFloor, between, image
from worldmodel.checkpoint import CheckpointError
from worldmodel.data.episodes import Episodes
from worldmodel.hierarchy.reach import (HindsightPairs, ReachConfig, ReachObjective, ReachTrainConfig,
                                        TemporalDistance, validate_reach)
from worldmodel.training import Trainer


def episodes_of(lengths: list[int]) -> Episodes:
    frames, steps = sum(n + 1 for n in lengths), sum(lengths)
    n = len(lengths)
    return Episodes(obs=np.zeros((frames, 1, 1, 1), np.uint8), states=np.zeros((frames, 2), np.float32),
                    actions=np.zeros((steps, 2), np.float32), rewards=np.zeros(steps, np.float32),
                    lengths=np.array(lengths), seeds=np.arange(n), terminated=np.zeros(n, bool))


def test_hindsight_pairs_are_ordered_frames_of_one_episode_at_most_max_steps_apart():
    lengths = [5, 40, 12]
    eps = episodes_of(lengths)
    # each frame's "latent" says which episode and step it is
    latents = torch.tensor([[e, t] for e, n in enumerate(lengths) for t in range(n + 1)], dtype=torch.float32)
    z, g, k = HindsightPairs(eps, latents, max_steps=20).sample(4000, torch.Generator().manual_seed(0))
    assert torch.equal(z[:, 0], g[:, 0])  # one episode
    assert torch.equal(g[:, 1] - z[:, 1], k.float())  # k steps later
    assert int(k.min()) == 0 and int(k.max()) == 19  # [0, max_steps)
    assert bool((g[:, 1] <= torch.tensor(lengths, dtype=torch.float32)[z[:, 0].long()]).all())
    with pytest.raises(ValueError, match="latents must be"):
        HindsightPairs(eps, latents[:-1], max_steps=20)


def straight_lines(episodes: int, steps: int, seed: int = 0) -> tuple[Episodes, torch.Tensor]:
    """Episodes on the open floor at one unit per step in a straight line of a random direction (the
    distance in steps between two frames is their distance in units); latents are positions."""
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(episodes, 2, generator=g) * 4 + 8
    angle = torch.rand(episodes, generator=g) * 2 * np.pi
    v = torch.stack([angle.cos(), angle.sin()], -1)
    t = torch.arange(steps + 1, dtype=torch.float32)
    latents = (start[:, None] + t[None, :, None] * v[:, None]).reshape(-1, 2)
    return episodes_of([steps] * episodes), latents


def trained_head(tmp_path) -> tuple[TemporalDistance, dict]:
    cfg = ReachConfig(max_steps=20, bins=4, hidden=64, layers=2)
    train_eps, train_z = straight_lines(200, 20, seed=0)
    val_eps, val_z = straight_lines(20, 20, seed=1)
    torch.manual_seed(0)
    head = TemporalDistance(2, cfg)
    head.fit_scale(train_z)
    opt = ReachTrainConfig(steps=400, batch_size=256, log_every=100, val_pairs=1000, progress=False)
    objective = ReachObjective(head, opt, HindsightPairs(train_eps, train_z, 20), HindsightPairs(val_eps, val_z, 20))
    log = Trainer(objective, opt, tmp_path / "run").run()
    return head.eval(), log[-1]


@pytest.mark.slow
def test_the_head_learns_distances_it_can_see_and_the_learned_rule_hands_a_near_goal_down(tmp_path):
    head, row = trained_head(tmp_path)
    assert row["val_mae"] < row["val_mae_prior"] / 2, row  # far better than the training median for every pair
    assert row["val_order"] > 0.85, row
    near, far = torch.tensor([[13.0, 10.0]]), torch.tensor([[17.0, 10.0]])
    here = torch.tensor([[10.0, 10.0]])
    assert float(head.median_steps(here, near)[0]) <= 5 < float(head.median_steps(here, far)[0])
    # checkpoints round-trip
    head.save_pretrained(tmp_path / "reach")
    again = TemporalDistance.from_pretrained(tmp_path / "reach")
    assert torch.equal(again.median_steps(here, far), head.median_steps(here, far))
    # the rule: 3 units away goes down at once (no slow plan), 15 units away gets a subgoal on the way
    cfg = MPCConfig(planner="cem", horizon=K, receding_horizon=K, settle=0.0, cem=CEM_SETTINGS)
    slow = SlowPlanConfig(horizon=4, box=1.0, hand_down="learned", reach_steps=K, cem=CEM_SETTINGS)
    start = torch.tensor([2.0, 10.0])
    for distance, goes_down in ((3.0, True), (15.0, False)):
        goal = start + torch.tensor([distance, 0.0])
        agent = two_levels(OpenFloor(), HeldActions(K), cfg, slow, LOW, HIGH, torch.Generator(), temporal=head)
        agent.seed(0)
        agent.reset(image(goal))
        agent.act(image(start.numpy()))
        (step0, handed), = agent.subgoals[0]
        assert step0 == 0 and torch.equal(handed, goal) == goes_down, (distance, handed.tolist())
        assert (agent.high.since[0] < 0) == goes_down  # no slow plan where the goal went down
        if not goes_down:
            assert between(handed, start, goal) and float((handed - start).norm()) > 2


def test_untrained_heads_score_like_chance_and_bad_settings_are_refused(tmp_path):
    eps, z = straight_lines(20, 20)
    head = TemporalDistance(2, ReachConfig(max_steps=20, bins=4, hidden=8, layers=1))
    row = validate_reach(head, *HindsightPairs(eps, z, 20).fixed(500), prior_median=10.0)
    assert set(row) == {"val_ce", "val_mae", "val_mae_prior", "val_order"} and row["val_ce"] > 0
    with pytest.raises(ValueError, match="bins >= 2 dividing max_steps"):
        ReachConfig(max_steps=10, bins=3)
    with pytest.raises(ValueError, match="reach_steps"):
        SlowPlanConfig(hand_down="learned", reach_steps=0)
    cfg = MPCConfig(planner="cem", horizon=K, receding_horizon=K, settle=0.0, cem=CEM_SETTINGS)
    with pytest.raises(ValueError, match="needs a learned temporal distance"):
        two_levels(OpenFloor(), HeldActions(K), cfg, SlowPlanConfig(hand_down="learned"), LOW, HIGH, torch.Generator())
    with pytest.raises(FileNotFoundError, match="train_reach.py"):
        TemporalDistance.from_pretrained(tmp_path / "nothing")
    head.save_pretrained(tmp_path / "reach")
    (tmp_path / "reach" / "config.json").write_text('{"format": 1, "kind": "slow"}')
    with pytest.raises(CheckpointError, match="no temporal-distance checkpoint"):
        TemporalDistance.from_pretrained(tmp_path / "reach")
