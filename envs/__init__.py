"""Pixel environments for latent planning.

Importing this package imports every module in it, and each module registers its
environments (see :mod:`envs.registry`). Add an environment by adding a module and its
config file (``envs/<name>.yaml``); one kept elsewhere is found through ``HJEPA_ENV_PATH``.
"""

import importlib
import os
import pkgutil
import sys
from pathlib import Path

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

ENV_PATH = "HJEPA_ENV_PATH"  # directories (os.pathsep between them) whose modules register more envs


def _import_envs() -> None:
    """Import this package's env modules, then every module in the directories of ``HJEPA_ENV_PATH``
    (as top-level modules: the directory goes on ``sys.path``, so subprocesses find them too)."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name not in {"registry", "config"}:
            importlib.import_module(f"{__name__}.{module.name}")
    for directory in filter(None, os.environ.get(ENV_PATH, "").split(os.pathsep)):
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"{ENV_PATH} names {directory!r}, which is not a directory of env modules")
        if directory not in sys.path:
            sys.path.insert(0, directory)
        for module in pkgutil.iter_modules([directory]):
            if not module.name.startswith("_"):
                importlib.import_module(module.name)


_import_envs()

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
