"""Settings of a pixel environment, shared by collection, training and planning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envs.registry import get_spec

MAX_IMAGE_SIZE = 1024  # pixels a side: beyond it one frame is over 3 MB and a dataset over any disk here
MAX_EPISODE_STEPS = 100_000


@dataclass
class EnvConfig:
    """Which environment, and how it is rendered.

    Attributes:
        name: registered environment name (``envs.env_names()``).
        image_size: side of the square RGB observation, pixels.
        episode_steps: actions per collected episode (the ``TimeLimit``).
        antialias: multisample anti-aliasing when rendering (sharper sub-pixel
            detail; off renders about twice as fast).
        options: further keyword arguments of this environment's class.
    """

    name: str = "reacher"
    image_size: int = 64
    episode_steps: int = 100
    antialias: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        get_spec(self.name)  # raises UnknownEnvError naming the known envs
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"env.image_size must be an integer in [8, {MAX_IMAGE_SIZE}], got {self.image_size!r}")
        if not 1 <= self.episode_steps <= MAX_EPISODE_STEPS:
            raise ValueError(f"env.episode_steps must be in [1, {MAX_EPISODE_STEPS:,}], got {self.episode_steps}")

    @property
    def model_name(self) -> str:
        """The directory name of this env's default model under ``models/``."""
        return self.name

    def env_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``envs.make_env`` besides the name and length."""
        return {"image_size": self.image_size, "antialias": self.antialias, **self.options}

    def make(self, max_episode_steps: int | None = None):
        """Build one environment from these settings."""
        from envs.registry import make_env

        return make_env(self.name, max_episode_steps=max_episode_steps or self.episode_steps, **self.env_kwargs())


def check_patch_grid(image_size: int, patch_size: int) -> None:
    """Raise unless ``image_size`` is a positive multiple of ``patch_size``."""
    if patch_size < 1 or image_size < patch_size or image_size % patch_size:
        raise ValueError(
            f"image size {image_size} must be a positive multiple of the patch size {patch_size} "
            f"(e.g. {max(patch_size, image_size // max(patch_size, 1) * patch_size)})"
        )
