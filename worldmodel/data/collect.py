"""Roll out a behaviour policy in parallel environments and gather episodes.

Every episode is a pure function of its seed: the environment is reset with it and
the policy draws its actions from a generator seeded by it. So the collected data
do not depend on ``num_envs``.
"""

from __future__ import annotations

import errno
import functools
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from tqdm.auto import tqdm

import envs
from worldmodel.data.episodes import EPISODE_ARRAYS, STEP_ARRAYS, Episodes
from worldmodel.data.policies import BehaviourPolicy
from worldmodel.data.storage import SPLITS, Dataset, DatasetError, open_dataset, remove_stale_writes, write_dataset
from worldmodel.files import DirectoryLock

if TYPE_CHECKING:
    from worldmodel.data.config import DataSource


def episode_seeds(seed: int, n: int) -> np.ndarray:
    """``n`` distinct 32-bit episode seeds derived from ``seed``."""
    seeds = np.random.SeedSequence(seed).generate_state(n * 2, dtype=np.uint32).astype(np.int64)
    _, first = np.unique(seeds, return_index=True)
    unique = seeds[np.sort(first)]
    if len(unique) < n:  # pragma: no cover - needs ~2^16 episodes to happen
        raise RuntimeError(f"could not draw {n} distinct episode seeds from seed {seed}")
    return unique[:n]


def policy_rng(episode_seed: int) -> np.random.Generator:
    """The policy's generator for an episode (independent of the env's own stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(episode_seed), 0x5EED]))


def make_vector_env(env_name: str, num_envs: int, episode_steps: int, env_kwargs: dict[str, Any]):
    """``num_envs`` copies of a registered env; subprocesses (spawn) when more than one."""
    fn = functools.partial(envs.make_env, env_name, max_episode_steps=episode_steps, **env_kwargs)
    if num_envs == 1:
        return SyncVectorEnv([fn], autoreset_mode=AutoresetMode.DISABLED)
    # fork hangs when MuJoCo's renderer exists in the parent; spawn is safe.
    return AsyncVectorEnv([fn] * num_envs, context="spawn", autoreset_mode=AutoresetMode.DISABLED)


def collect_episodes(
    env_name: str,
    policy: BehaviourPolicy,
    seeds: np.ndarray,
    episode_steps: int,
    env_kwargs: dict[str, Any] | None = None,
    num_envs: int = 2,
    progress: bool = True,
    desc: str = "collect",
) -> Episodes:
    """Collect one episode per seed.

    Args:
        env_name: registered environment name (see :func:`envs.env_names`).
        policy: behaviour policy drawing each episode's actions.
        seeds: ``(N,)`` episode seeds.
        episode_steps: actions per episode (fewer if the env terminates).
        env_kwargs: keyword arguments for the env (``image_size``, ...).
        num_envs: environments stepped in parallel.
        progress: show a progress bar (frames).
    """
    spec = envs.get_spec(env_name)
    seeds = np.asarray(seeds, dtype=np.int64)
    if num_envs < 1 or episode_steps < 1 or len(seeds) < 1:
        raise ValueError(
            f"num_envs, episode_steps and the number of seeds must be >= 1, got {num_envs}, {episode_steps}, {len(seeds)}"
        )
    num_envs = min(num_envs, len(seeds))
    vec = make_vector_env(env_name, num_envs, episode_steps, dict(env_kwargs or {}))
    out: _Filled | None = None
    try:
        bar = tqdm(total=len(seeds) * (episode_steps + 1), desc=desc, unit="frame", disable=not progress)
        for start in range(0, len(seeds), num_envs):
            chunk = seeds[start : start + num_envs]
            # Pad the last chunk with repeats of its first seed; the copies are dropped.
            padded = np.concatenate([chunk, np.repeat(chunk[:1], num_envs - len(chunk))])
            part = _rollout_chunk(vec, spec, policy, padded, episode_steps).select(np.arange(len(chunk)))
            out = out or _Filled(part, len(seeds), episode_steps)
            out.add(part)
            bar.update(len(chunk) * (episode_steps + 1))
        bar.close()
    finally:
        vec.close()
    return out.episodes()


class _Filled:
    """Episodes written chunk by chunk into arrays allocated once for ``n`` episodes of at most ``steps``
    steps (pages never written are never held), so a collection holds its frames once, not twice."""

    def __init__(self, first: Episodes, n: int, steps: int):
        rows = {"frame": n * (steps + 1), "step": n * steps}
        self.filled = {k: np.empty((rows[_rows(k)], *v.shape[1:]), v.dtype)
                       for k, v in first.arrays().items() if k not in EPISODE_ARRAYS}
        self.per_episode: dict[str, list[np.ndarray]] = {k: [] for k in EPISODE_ARRAYS}
        self.at = {"frame": 0, "step": 0}

    def add(self, part: Episodes) -> None:
        count = {"frame": part.num_steps + part.num_episodes, "step": part.num_steps}
        for k, v in part.arrays().items():
            if k in EPISODE_ARRAYS:
                self.per_episode[k].append(v)
            else:
                self.filled[k][self.at[_rows(k)] : self.at[_rows(k)] + count[_rows(k)]] = v
        self.at = {r: self.at[r] + count[r] for r in self.at}

    def episodes(self) -> Episodes:
        return Episodes.from_arrays({**{k: v[: self.at[_rows(k)]] for k, v in self.filled.items()},
                                     **{k: np.concatenate(v) for k, v in self.per_episode.items()}})


def _rows(stem: str) -> str:
    """Whether an array of that stem has a row per ``frame`` or per ``step``."""
    return "step" if stem in STEP_ARRAYS else "frame"


def _rollout_chunk(vec, spec: envs.EnvSpec, policy: BehaviourPolicy, seeds: np.ndarray, steps: int) -> Episodes:
    """One synchronised episode in each sub-env of ``vec``."""
    n = len(seeds)
    space = vec.single_action_space
    closed_loop = hasattr(policy, "start")  # acts on the state each step (the expert), else drawn up front
    if closed_loop:
        controllers = [policy.start(policy_rng(s), steps, space.low, space.high, spec) for s in seeds]
        actions = np.zeros((n, steps) + space.shape, dtype=np.float32)
    else:
        actions = np.stack([policy.sample(policy_rng(s), steps, space.low, space.high) for s in seeds])  # (n, T, A)
    obs0, info = vec.reset(seed=[int(s) for s in seeds])
    obs = np.empty((n, steps + 1) + obs0.shape[1:], dtype=obs0.dtype)
    states = np.empty((n, steps + 1, spec.state_dim))
    physics = {k: np.empty((n, steps + 1) + np.shape(info[k])[1:]) for k in spec.physics_keys}
    rewards = np.zeros((n, steps), dtype=np.float32)
    lengths = np.full(n, steps, dtype=np.int64)
    terminated = np.zeros(n, dtype=bool)

    def record(t: int, o: np.ndarray, inf: dict) -> None:
        obs[:, t], states[:, t] = o, inf["state"]
        for k in spec.physics_keys:
            physics[k][:, t] = inf[k]

    record(0, obs0, info)
    for t in range(steps):
        if closed_loop:
            actions[:, t] = [act(states[e, t]) for e, act in enumerate(controllers)]
        o, r, term, _trunc, info = vec.step(actions[:, t])
        record(t + 1, o, info)
        rewards[:, t] = r
        ended = term & ~terminated
        lengths[ended] = t + 1
        terminated |= term
        if terminated.all():
            break
    return Episodes(
        obs=np.concatenate([obs[e, : lengths[e] + 1] for e in range(n)]),
        states=np.concatenate([states[e, : lengths[e] + 1] for e in range(n)]),
        actions=np.concatenate([actions[e, : lengths[e]] for e in range(n)]),
        rewards=np.concatenate([rewards[e, : lengths[e]] for e in range(n)]),
        lengths=lengths,
        seeds=seeds.copy(),
        terminated=terminated,
        physics={k: np.concatenate([v[e, : lengths[e] + 1] for e in range(n)]) for k, v in physics.items()},
    )


def single_env_rate(env_name: str, steps: int = 500, env_kwargs: dict[str, Any] | None = None) -> float:
    """Raw step+render frames/s of one env in this process (the collection baseline)."""
    import time

    env: gymnasium.Env = envs.make_env(env_name, max_episode_steps=steps + 1, **(env_kwargs or {}))
    env.reset(seed=0)
    action = env.action_space.sample()
    start = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def build_dataset(cfg: "DataSource", splits: tuple[str, ...] = SPLITS, path: str | Path | None = None,
                  progress: bool = True) -> Path:
    """Collect the ``splits`` of ``cfg`` and write them atomically (to ``path``, by default
    ``cfg.data.root / cfg.data.dataset_name(cfg.env)``).

    Train and validation episodes come from ``cfg.data.seed`` and are split by episode (asking
    for either collects both); held-out episodes come from their own seed, ``cfg.data.eval_seed``.
    Every episode is a pure function of its seed, so a split is the same whichever
    dataset holds it. Returns the dataset directory.
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {list(SPLITS)}, got {list(splits)}")
    spec = envs.get_spec(cfg.env.name)
    path = Path(cfg.data.root) / cfg.data.dataset_name(cfg.env) if path is None else Path(path)
    check_room(cfg, splits, path)
    policy = cfg.data.policy.build()
    common = dict(
        env_name=cfg.env.name,
        policy=policy,
        episode_steps=cfg.env.episode_steps,
        env_kwargs=cfg.env.env_kwargs(),
        num_envs=cfg.data.num_envs,
        progress=progress,
    )
    collected = {}
    if "train" in splits or "val" in splits:
        # one draw of seeds split by episode; each split is collected from its own seeds (an episode is a
        # function of its seed alone), so the frames are held once
        n_fit = cfg.data.train_episodes + cfg.data.val_episodes
        fit_seeds = episode_seeds(cfg.data.seed, n_fit)
        order = np.random.default_rng(cfg.data.seed).permutation(n_fit)
        collected["train"] = collect_episodes(seeds=fit_seeds[np.sort(order[: cfg.data.train_episodes])],
                                              desc="train", **common)
        if cfg.data.val_episodes:
            collected["val"] = collect_episodes(seeds=fit_seeds[np.sort(order[cfg.data.train_episodes :])],
                                                desc="val", **common)
    if "heldout" in splits and cfg.data.heldout_episodes:
        collected["heldout"] = collect_episodes(
            seeds=episode_seeds(cfg.data.eval_seed, cfg.data.heldout_episodes), desc="heldout", **common
        )
    if not collected:
        raise ValueError(f"nothing to collect for splits {list(splits)} (heldout_episodes={cfg.data.heldout_episodes})")
    meta = {
        "env": {
            "name": spec.name,
            "gym_id": spec.gym_id,
            "version": spec.version,
            "kwargs": cfg.env.env_kwargs(),
            "episode_steps": cfg.env.episode_steps,
            "physics_keys": list(spec.physics_keys),
        },
        "image_size": cfg.env.image_size,
        "policy": policy.params(),
        "seed": cfg.data.seed,
        "eval_seed": cfg.data.eval_seed,
        "software": software_versions(),
    }
    return write_dataset(path, collected, meta, minari_env_id=spec.gym_id if cfg.data.minari else None)


def dataset_bytes(cfg: "DataSource", splits: tuple[str, ...] = SPLITS) -> int:
    """A lower bound on the bytes a collection of ``splits`` writes: its frames (the Minari copy
    doubles them); the same bytes are held in memory until they are written."""
    episodes = (cfg.data.train_episodes + cfg.data.val_episodes if {"train", "val"} & set(splits) else 0) + (
        cfg.data.heldout_episodes if "heldout" in splits else 0)
    frames = episodes * (cfg.env.episode_steps + 1) * cfg.env.image_size**2 * 3
    return frames * (2 if cfg.data.minari else 1)


def check_room(cfg: "DataSource", splits: tuple[str, ...], path: Path) -> None:
    """Refuse, before anything is collected, a dataset larger than the free disk under ``path`` or the
    available memory, naming the settings that size it."""
    need = dataset_bytes(cfg, splits)
    parent = next(p for p in [path.absolute(), *path.absolute().parents] if p.exists())
    free = shutil.disk_usage(parent).free
    memory = available_memory()
    held = need // (2 if cfg.data.minari else 1)
    d, e = cfg.data, cfg.env
    sizing = (f"data.train_episodes={d.train_episodes}, data.val_episodes={d.val_episodes}, data.heldout_episodes="
              f"{d.heldout_episodes}, env.episode_steps={e.episode_steps}, env.image_size={e.image_size}")
    if need > free:
        raise OSError(errno.ENOSPC, f"dataset {path} needs at least {need / 1e9:.1f} GB ({sizing}); "
                      f"{parent} has {free / 1e9:.1f} GB free")
    if memory is not None and held > memory:
        raise MemoryError(f"dataset {path} holds at least {held / 1e9:.1f} GB of frames in memory while it is "
                          f"collected ({sizing}); {memory / 1e9:.1f} GB are available")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``; ``None`` elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def software_versions() -> dict[str, str]:
    """Versions that decide what the collected frames look like."""
    import mujoco

    return {"gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__, "numpy": np.__version__}


def ensure_dataset(cfg: "DataSource", splits: tuple[str, ...] = SPLITS, progress: bool = True) -> Path:
    """A dataset directory of ``cfg`` holding ``splits``, collecting what is missing (once).

    Names carry a hash of everything that determines the content (``cfg.data.identity(cfg.env)``), so a
    request never gets other data that happens to exist; an existing directory is checked
    against the request when it is opened (``open_dataset(path, expect=cfg.data.identity(cfg.env, splits))``).
    The full dataset (``cfg.data.dataset_name(cfg.env)``) is used whenever it exists. An entry point that
    needs only the held-out split (planning) does not collect the training episodes: it
    collects ``cfg.data.heldout_dataset_name(cfg.env)``, which holds just the held-out episodes.
    Unfinished writes of dead processes (``<name>.partial-<pid>``) are removed, and reported.
    """
    path, _ = _dataset_path(cfg, splits)
    remove_stale_writes(path)
    if path.exists():
        return path
    # two processes asking for one new dataset: the second waits for the first and uses its copy
    lock = DirectoryLock(cfg.data.root, "dataset root (a collection)", ".collect.lock").acquire(wait=True)
    try:
        path, collect_splits = _dataset_path(cfg, splits)
        if not path.exists():
            what = "it" if collect_splits == SPLITS else f"the {cfg.data.heldout_episodes} held-out episodes"
            print(f"dataset {path} not found: collecting {what} (once)")
            build_dataset(cfg, splits=collect_splits, path=path, progress=progress)
    finally:
        lock.release()
    return path


def _dataset_path(cfg: "DataSource", splits: tuple[str, ...]) -> tuple[Path, tuple[str, ...]]:
    """Where ``ensure_dataset`` finds (or collects) the dataset of ``cfg`` holding ``splits``, and which
    splits a collection there writes."""
    root = Path(cfg.data.root)
    legacy_full = None if cfg.data.name else root / legacy_name(cfg, SPLITS)  # an explicit name is used as given
    full = _existing(root / cfg.data.dataset_name(cfg.env), legacy_full, cfg.data.identity(cfg.env))
    if full is not None or cfg.data.name or set(splits) - {"heldout"}:
        path, collect_splits = full or root / cfg.data.dataset_name(cfg.env), SPLITS
    else:
        path = _existing(root / cfg.data.heldout_dataset_name(cfg.env), root / legacy_name(cfg, ("heldout",)),
                         cfg.data.identity(cfg.env, ("heldout",))) or root / cfg.data.heldout_dataset_name(cfg.env)
        collect_splits = ("heldout",)
    return path, collect_splits


def _existing(path: Path, legacy: Path | None, identity: dict) -> Path | None:
    """``path`` if it exists; else ``legacy`` (the name before names carried their hash) if it exists
    and holds ``identity``; else ``None``."""
    if path.exists():
        return path
    if legacy is None or not legacy.is_dir():
        return None
    try:
        open_dataset(legacy, verify=False, expect=identity)
    except DatasetError as err:
        print(f"not using {legacy}: {err}", file=sys.stderr)
        return None
    print(f"using {legacy} (named before dataset names carried a hash of their settings; it holds the data "
          f"{path.name} would)", file=sys.stderr)
    return legacy


def legacy_name(cfg: "DataSource", splits: tuple[str, ...]) -> str:
    """The name a dataset of ``cfg`` had before names carried a hash of every setting."""
    prefix = f"{cfg.env.name}-{cfg.data.policy.name}-{cfg.env.image_size}px"
    if splits == ("heldout",):
        return f"{prefix}-heldout{cfg.data.heldout_episodes}x{cfg.env.episode_steps}-e{cfg.data.eval_seed}"
    return f"{prefix}-{cfg.data.train_episodes}x{cfg.env.episode_steps}-s{cfg.data.seed}"


def load_dataset(cfg: "DataSource", splits: tuple[str, ...] = SPLITS, verify: bool = True,
                 progress: bool = True) -> Dataset:
    """The dataset of ``cfg`` holding ``splits`` (collected first when missing), opened and checked
    against the request: what the entry points call."""
    return open_dataset(ensure_dataset(cfg, splits, progress), verify=verify, expect=cfg.data.identity(cfg.env, splits))
