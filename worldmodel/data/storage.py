"""On-disk datasets: Minari for exchange, flat ``.npy`` arrays for fast training reads.

A dataset is a directory::

    <name>/
      manifest.json            env, image size, policy, seeds, counts, file checksums
      <split>/minari/          a Minari dataset (HDF5 backend, lossless), one per split
      <split>/<array>.npy      the same episodes as flat arrays (see episodes.py)

Minari is Gymnasium's offline-data standard: any Minari user can open
``<split>/minari`` with ``minari.MinariDataset(path)``. Training reads the ``.npy``
arrays through memory maps, because random windows out of HDF5 episodes are far
slower (``benchmarks/collect.py`` measures both).

Writes are atomic: everything goes to ``<name>.partial-<pid>/`` and the directory is
renamed to ``<name>`` only after ``manifest.json`` (written last) is complete. A
reader refuses a directory without a manifest, a manifest edited after it was written
(it carries a checksum of itself), a file whose checksum or size disagrees with it, and
arrays whose shapes disagree with the counts and image size it states. What a dataset
holds is :func:`dataset_identity` of its manifest; opening one with ``expect=`` (a
``DataConfig.identity``) refuses other data, naming the settings that differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.data.episodes import Episodes
from worldmodel.files import changed_keys, config_hash, file_sha256, inside, stale_leftovers

FORMAT_VERSION = 2  # 2 adds the manifest's own checksum; 1 is still read
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "heldout")


def split_groups(splits) -> list[str]:
    """The groups of splits collected together: ``fit`` (train and val, one seed, split by episode)
    and ``heldout`` (its own seed)."""
    return [g for g, members in (("fit", {"train", "val"}), ("heldout", {"heldout"})) if members & set(splits)]


class DatasetError(RuntimeError):
    """A dataset is missing, incomplete or corrupt."""


def dataset_checksum(files: dict[str, dict]) -> str:
    """One checksum for the whole dataset: sha256 over the sorted per-file checksums."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}:{files[rel]['sha256']}\n".encode())
    return h.hexdigest()


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's content (without this checksum)."""
    return config_hash({k: v for k, v in manifest.items() if k != "manifest_checksum"}, length=64)


def remove_stale_writes(path: Path) -> None:
    """Remove (and report) ``<path>.partial-<pid>`` directories whose writer no longer runs."""
    for stale in stale_leftovers(path.parent, path.name, ("partial",)):
        print(f"removing {stale}: an unfinished write of a process that no longer runs", file=sys.stderr)
        shutil.rmtree(stale, ignore_errors=True)


def write_dataset(
    path: str | Path,
    splits: dict[str, Episodes],
    meta: dict[str, Any],
    minari_env_id: str | None = None,
) -> Path:
    """Write ``splits`` as a dataset directory at ``path``, atomically.

    Args:
        path: final directory; must not exist yet.
        splits: split name -> episodes.
        meta: JSON-serialisable facts for the manifest (env, policy, seeds, ...).
        minari_env_id: Gymnasium id to record in the Minari copies; no Minari copy
            when ``None``.
    """
    path = Path(path).absolute()  # Minari's HDF5 backend mishandles relative paths
    if path.exists():
        raise FileExistsError(f"dataset directory {path} already exists; remove it or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_writes(path)
    tmp = path.parent / f"{path.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for split, episodes in splits.items():
            (tmp / split).mkdir()
            for stem, array in episodes.arrays().items():
                np.save(tmp / split / f"{stem}.npy", np.ascontiguousarray(array))
            if minari_env_id is not None:
                _write_minari(tmp / split / "minari", episodes, minari_env_id, f"hjepa/{path.name}-{split}-v0")
        files = {
            str(p.relative_to(tmp)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **meta,
            "splits": {
                split: {
                    "episodes": ep.num_episodes,
                    "steps": ep.num_steps,
                    "frames": ep.num_steps + ep.num_episodes,
                    "terminated_episodes": int(ep.terminated.sum()),
                }
                for split, ep in splits.items()
            },
            "files": files,
            "checksum": dataset_checksum(files),
        }
        manifest["manifest_checksum"] = manifest_checksum(manifest)
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_minari(path: Path, episodes: Episodes, env_id: str, dataset_id: str) -> None:
    import gymnasium
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    spec = gymnasium.spec(env_id)
    obs_space = gymnasium.spaces.Box(0, 255, episodes.obs.shape[1:], np.uint8)
    act_space = gymnasium.spaces.Box(-np.inf, np.inf, episodes.actions.shape[1:], np.float32)
    storage = MinariStorage.new(
        path, observation_space=obs_space, action_space=act_space, env_spec=spec, jpeg_encoding=False
    )
    storage.update_metadata(
        {"dataset_id": dataset_id, "minari_version": minari.__version__, "algorithm_name": "hjepa.collect"}
    )

    def buffers():
        for e in range(episodes.num_episodes):
            ep = episodes.episode(e)
            n = int(episodes.lengths[e])
            term = np.zeros(n, dtype=bool)
            term[-1] = bool(episodes.terminated[e])
            infos = {"state": ep["states"], **{k.split(".", 1)[1]: v for k, v in ep.items() if k.startswith("physics.")}}
            yield EpisodeBuffer(
                id=e,
                seed=int(episodes.seeds[e]),
                observations=ep["obs"],
                actions=ep["actions"],
                rewards=ep["rewards"],
                terminations=term,
                truncations=~term & (np.arange(n) == n - 1),
                infos=infos,
            )

    storage.update_episodes(buffers())


@dataclass
class Dataset:
    """An opened dataset: its manifest and its splits (memory-mapped arrays)."""

    path: Path
    manifest: dict[str, Any]

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str, in_memory: bool = False) -> Episodes:
        """Episodes of split ``name``; memory-mapped unless ``in_memory``."""
        if name not in self.manifest["splits"]:
            raise KeyError(f"split {name!r} not in dataset {self.path}; it has {self.split_names}")
        mode = None if in_memory else "r"
        load = lambda stem: np.load(self.path / name / f"{stem}.npy", mmap_mode=mode, allow_pickle=False)  # noqa: E731
        stems = [p[: -len(".npy")] for p in self.manifest["files"] if p.startswith(f"{name}/") and p.endswith(".npy")]
        stems = [s.split("/", 1)[1] for s in stems]
        physics = {s.split(".", 1)[1]: load(s) for s in stems if s.startswith("physics.")}
        fields = {s: load(s) for s in stems if not s.startswith("physics.")}
        return Episodes(**fields, physics=physics)

    def minari_path(self, name: str) -> Path:
        """Directory of split ``name``'s Minari copy (open with ``minari.MinariDataset``)."""
        p = self.path / name / "minari"
        if not p.is_dir():
            raise DatasetError(f"dataset {self.path} has no Minari copy of split {name!r}")
        return p


def open_dataset(path: str | Path, verify: bool = True, expect: dict[str, Any] | None = None) -> Dataset:
    """Open a dataset directory, refusing incomplete, corrupt or edited ones.

    Args:
        path: the dataset directory (holding ``manifest.json``).
        verify: recompute every file's sha256 against the manifest (sizes, the manifest's own
            checksum and the arrays' shapes are always checked).
        expect: what the dataset must hold (``DataConfig.identity(env, splits)``); a dataset holding
            anything else is refused, naming the settings that differ.
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"dataset path {path} does not exist (expected a directory written by collect.py)")
    if path.name.rsplit(".partial-", 1)[0] != path.name:
        raise DatasetError(f"{path} is an unfinished write (a collection was interrupted); delete it")
    if not (path / MANIFEST).is_file():
        raise DatasetError(f"{path} has no {MANIFEST}: not a complete dataset")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path / MANIFEST} is not valid JSON: {err}") from None
    if manifest.get("format_version") not in (1, FORMAT_VERSION):
        raise DatasetError(f"{path}: format_version {manifest.get('format_version')!r}, expected 1 or {FORMAT_VERSION}")
    if manifest["format_version"] >= 2 and manifest.get("manifest_checksum") != manifest_checksum(manifest):
        raise DatasetError(f"{path}/{MANIFEST} was edited after the dataset was written (its content does not match "
                           f"its manifest_checksum); collect the dataset again instead of editing it")
    files = manifest["files"]
    if dataset_checksum(files) != manifest["checksum"]:
        raise DatasetError(f"{path}: the manifest's file list does not match its checksum {manifest['checksum']}")
    for rel, info in files.items():
        try:
            f = inside(path, rel, "the manifest lists a file")
        except ValueError as err:
            raise DatasetError(f"{path}: {err}") from None
        if not f.is_file():
            raise DatasetError(f"{path}: file {rel} listed in the manifest is missing")
        if f.stat().st_size != info["bytes"]:
            raise DatasetError(f"{path}: {rel} has {f.stat().st_size} bytes, manifest says {info['bytes']}")
        if verify and file_sha256(f) != info["sha256"]:
            raise DatasetError(f"{path}: checksum mismatch for {rel} (expected sha256 {info['sha256'][:12]}...)")
    dataset = Dataset(path=path, manifest=manifest)
    for split in dataset.split_names:
        check_split_arrays(dataset, split)
    if expect is not None:
        held = dataset_identity(manifest, [g for g in ("fit", "heldout") if g in expect])
        changed = changed_keys(held, expect)
        if changed:
            raise DatasetError(f"dataset {path} holds other data than was asked for: {'; '.join(changed)} "
                               f"(dataset -> request); remove it, or choose another root or name")
    return dataset


def dataset_identity(manifest: dict[str, Any], groups: list[str] | None = None) -> dict[str, Any]:
    """What a manifest says its dataset holds, in the form of ``DataConfig.identity`` (``groups``:
    which split groups, ``fit`` and/or ``heldout``; default both)."""
    env, splits = manifest["env"], manifest["splits"]
    count = lambda split: splits.get(split, {}).get("episodes", 0)  # noqa: E731
    out = {"env": {"name": env["name"], "version": env["version"], "episode_steps": env["episode_steps"],
                   "kwargs": env["kwargs"]},
           "policy": manifest["policy"]}
    groups = ["fit", "heldout"] if groups is None else groups
    if "fit" in groups:
        out["fit"] = {"seed": manifest["seed"], "train_episodes": count("train"), "val_episodes": count("val")}
    if "heldout" in groups:
        out["heldout"] = {"seed": manifest["eval_seed"], "episodes": count("heldout")}
    return out


def check_split_arrays(dataset: Dataset, split: str) -> None:
    """The arrays of ``split`` have the counts and image size the manifest states (array headers only)."""
    info, size = dataset.manifest["splits"][split], dataset.manifest.get("image_size")
    load = lambda stem: np.load(dataset.path / split / f"{stem}.npy", mmap_mode="r", allow_pickle=False)  # noqa: E731
    try:
        obs, actions, states, lengths = load("obs"), load("actions"), load("states"), load("lengths")
    except (OSError, ValueError) as err:
        raise DatasetError(f"{dataset.path}/{split}: an array is unreadable ({err})") from None
    problems = []
    if obs.ndim != 4 or obs.dtype != np.uint8 or (size is not None and obs.shape[1:3] != (size, size)):
        problems.append(f"obs is {obs.dtype} {obs.shape}, manifest says {size}x{size} uint8 images")
    if len(obs) != info["frames"] or len(states) != info["frames"]:
        problems.append(f"obs/states have {len(obs)}/{len(states)} frames, manifest says {info['frames']}")
    if len(actions) != info["steps"] or int(np.sum(lengths)) != info["steps"]:
        problems.append(f"actions/lengths hold {len(actions)}/{int(np.sum(lengths))} steps, "
                        f"manifest says {info['steps']}")
    if len(lengths) != info["episodes"]:
        problems.append(f"{len(lengths)} episodes, manifest says {info['episodes']}")
    if problems:
        raise DatasetError(f"{dataset.path}/{split} disagrees with its manifest: {'; '.join(problems)}")
