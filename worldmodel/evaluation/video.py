"""Videos of planning episodes: current view | goal (| the subgoal a hierarchical planner chose), with
the step and the goal error."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw

from envs.registry import EnvSpec


def episode_video(frames: list[tuple[np.ndarray, float]], goal: np.ndarray, path: str | Path, spec: EnvSpec,
                  scale: int = 4, fps: int = 10, subgoals: list[np.ndarray] | None = None) -> Path:
    """Write a GIF: each frame is ``current | goal`` upscaled, captioned with the step and the
    env's goal error (its label and unit from ``spec``), marked once the success test holds. With
    ``subgoals`` (an image per frame), ``current | subgoal | goal``."""
    out = []
    gap = np.full((goal.shape[0], 2, 3), 255, np.uint8)
    for t, (obs, err) in enumerate(frames):
        panels = [obs] + ([subgoals[min(t, len(subgoals) - 1)]] if subgoals else []) + [goal]
        pair = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
        img = Image.fromarray(pair).resize((pair.shape[1] * scale, pair.shape[0] * scale), Image.NEAREST)
        canvas = Image.new("RGB", (img.width, img.height + 16), "white")
        canvas.paste(img, (0, 16))
        ok = err <= spec.success_threshold
        caption = f"step {t:2d}  {spec.describe_error(err)}" + ("  SUCCESS" if ok else "")
        if subgoals:
            caption += "   (now | subgoal | goal)"
        ImageDraw.Draw(canvas).text((2, 2), caption, fill=(0, 120, 0) if ok else (0, 0, 0))
        out.append(np.asarray(canvas))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, out, duration=1000 / fps, loop=0)
    return path
