"""Pixel environments for latent planning.

Importing this package imports every module in it, and each module registers its
environments (see :mod:`envs.registry`). Add an environment by adding a module.
"""

import importlib
import os
import pkgutil

os.environ.setdefault("MUJOCO_GL", "egl")  # headless by default; must precede the first mujoco import


def _preload_triton() -> None:
    """Load Triton's compiler library before any frame is rendered. Mesa's software EGL loads the
    system LLVM with the first render; Triton (which torch imports lazily, e.g. at the first
    optimiser step) loading its own LLVM after that segfaults the process. In the other order
    both work. Nothing happens where Triton is not installed."""
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        try:
            importlib.import_module("triton._C.libtriton")
        except ImportError:
            pass


_preload_triton()

from envs.config import EnvConfig, check_patch_grid  # noqa: E402
from envs.registry import (  # noqa: E402
    EnvSpec,
    Quantity,
    UnknownEnvError,
    env_names,
    get_spec,
    make_env,
    register_env,
    wrap_angle,
)

_INFRASTRUCTURE = {"registry", "config"}
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "EnvConfig",
    "EnvSpec",
    "Quantity",
    "UnknownEnvError",
    "check_patch_grid",
    "env_names",
    "get_spec",
    "make_env",
    "register_env",
    "wrap_angle",
]
