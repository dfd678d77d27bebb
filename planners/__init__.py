"""Planners over action sequences. They optimise a cost callable and know nothing about models."""

from planners.base import Bounds, CostFn, NonFiniteCost, PlanResult, shift_plan
from planners.cem import CEM, CEMConfig
from planners.gradient import GradientConfig, GradientPlanner
from planners.icem import ICEM, ICEMConfig
from planners.mppi import MPPI, MPPIConfig

__all__ = [
    "CEM",
    "CEMConfig",
    "Bounds",
    "CostFn",
    "GradientConfig",
    "GradientPlanner",
    "ICEM",
    "ICEMConfig",
    "MPPI",
    "MPPIConfig",
    "NonFiniteCost",
    "PlanResult",
    "shift_plan",
]
