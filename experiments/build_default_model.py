"""Rebuild a default world model from scratch: ``python experiments/build_default_model.py [env=pointmaze]``.

Runs the three stages with their default configs (each resumes or reuses what a
previous run left), then exports the world model without its training state to
``models/<env>/`` (what ``plan.py`` loads by default; ``models/pointmaze-large/`` for
``env=pointmaze env.maze=large``) in fp16, with its provenance:

1. ``collect.py``: the dataset (Reacher: uniform random torques; maze: the mixed policy; seeds 0 / 1000);
2. ``pretrain_encoder.py``: JEPA pretraining of the small ViT encoder (skipped where the env's world
   model trains its own encoder, ``dynamics.encoder=pixels`` or ``conv``: Push-T);
3. ``train_dynamics.py``: the action-conditioned predictor on the frozen encoder (or with its own);
4. ``distill_dynamics.py`` (Reacher, where a narrower predictor keeps the success at a fraction of
   the planning time): the model of stage 3 is exported to ``models/<env>-teacher/`` and its
   predictor distilled into the 256-wide one of ``models/<env>/``;
5. ``train_slow.py``: the slow level (level 2) on the exported model's latents, installed in
   ``models/<env>/slow`` (what ``hierarchy=true`` plans with);
6. ``train_policy.py``: the amortized goal-conditioned policy on the same latents, installed in
   ``models/<env>/policy`` (``planners=[policy]``, ``mpc.proposal=policy``).

Arguments are Hydra overrides, each applied to every stage whose config has its key (``env.image_size=96``
to all, ``dynamics.latent_dim=16`` to the stages with a ``dynamics`` section; one that no stage has is an
error), and this
script's switches: ``slow=false`` skips stage 5, ``policy=false`` stage 6, ``slow_only=true`` runs only
stage 5 on the model already exported to ``models/<env>/`` (collecting its dataset again where it is
missing), and
``distill=true|false`` runs stage 4 or not (default: on the envs in ``DISTILLED``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from experiments import distill_dynamics, pretrain_encoder, train_dynamics, train_policy, train_slow
from experiments.conf import SCHEMAS, load
from experiments.provenance import git_commit
from worldmodel.checkpoint import WEIGHTS, load_config
from worldmodel.data.collect import ensure_dataset
from worldmodel.dynamics import FRAME_ENCODERS, WorldModel
from worldmodel.files import file_sha256

EXPORT_ROOT = Path(__file__).resolve().parents[1] / "models"


def keep_previous(target: Path) -> Path | None:
    """Move a model already in ``target`` (with its slow level) aside to ``<target>.previous-<time>``,
    so that exporting a new one loses nothing; the place it went, or ``None`` if there was none."""
    if not target.exists() or not any(target.iterdir()):
        return None
    stem = f"{target.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
    kept, n = target.with_name(stem), 1
    while kept.exists():  # two exports within a second
        kept, n = target.with_name(f"{stem}-{n}"), n + 1
    target.rename(kept)
    print(f"the model that was in {target} is kept in {kept}")
    return kept


# this script's switches and their defaults (None: per env)
FLAGS = {"slow": True, "policy": True, "slow_only": False, "distill": None}
DISTILLED = ("reacher",)  # envs whose shipped model plans with a distilled predictor (docs/results.md#distilled-reacher)
BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def own_flags(overrides: list[str]) -> tuple[dict[str, bool], list[str]]:
    """This script's switches (``slow=false``, ``slow_only=true``, any spelling of a boolean), and the
    overrides left for the stages' configs."""
    flags, rest = dict(FLAGS), []
    for o in overrides:
        key, eq, value = o.partition("=")
        if key not in FLAGS:
            rest.append(o)
        elif not eq or value.lower() not in BOOLEANS:
            raise ValueError(f"{o!r}: {key} is this script's switch and takes true or false, e.g. {key}=false")
        else:
            flags[key] = BOOLEANS[value.lower()]
    return flags, rest


STAGES = ("pretrain", "train_dynamics", "distill_dynamics", "train_slow", "train_policy")


def override_key(override: str) -> str:
    """The dotted key an override sets (``dynamics.pool`` of ``dynamics.pool=4``)."""
    return override.lstrip("+~").split("=", 1)[0]


@functools.cache
def schema_node(stage: str) -> DictConfig:
    return OmegaConf.structured(SCHEMAS[stage])


def has_key(stage: str, key: str) -> bool:
    """Whether the stage's schema has the dotted ``key`` (every stage composes the groups ``env`` and
    ``preset``, and an env's settings are typed by its own config class)."""
    if key in ("env", "preset") or key.startswith("env."):
        return True
    node = schema_node(stage)
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return True


def stage_load(stage: str, overrides: list[str]):
    """The stage's config with the overrides its schema has a key for."""
    return load(stage, [o for o in overrides if has_key(stage, override_key(o))])


def check_overrides(overrides: list[str]) -> None:
    """Refuse an override no stage's config has a key for (a typo would otherwise be dropped silently)."""
    unknown = [o for o in overrides if not any(has_key(stage, override_key(o)) for stage in STAGES)]
    if unknown:
        raise ValueError(f"{unknown[0]!r}: no stage's config has {override_key(unknown[0])!r} (the stages: "
                         f"{', '.join(STAGES)})")


def main(overrides: list[str]) -> Path:
    built_by = "python experiments/build_default_model.py " + " ".join(overrides)
    flags, overrides = own_flags(overrides)
    check_overrides(overrides)
    with_slow, slow_only = flags["slow"], flags["slow_only"]
    if slow_only and not with_slow:
        raise ValueError("slow=false and slow_only=true ask for nothing to be built")
    pre = stage_load("pretrain", overrides + ["resume=true"])
    if slow_only:
        target = EXPORT_ROOT / pre.env.model_name
        if not (target / "config.json").exists():
            raise FileNotFoundError(f"slow_only=true trains the slow level of {target}, which holds no model")
        install_slow(overrides, target)
        print(f"slow level installed in {target / 'slow'}")
        return target
    timed("collect", lambda c: ensure_dataset(c, progress=c.train.progress), pre)
    dyn = stage_load("train_dynamics", overrides + ["resume=true", f"encoder_checkpoint={pre.out_dir}/checkpoint"])
    pretrained = FRAME_ENCODERS[dyn.dynamics.encoder].pretrained
    if pretrained and not (Path(pre.out_dir) / "summary.json").exists():
        timed("pretrain_encoder", pretrain_encoder.run, pre)
    if not (Path(dyn.out_dir) / "summary.json").exists():
        timed("train_dynamics", train_dynamics.run, dyn)
    model, config = trained(Path(dyn.out_dir) / "checkpoint")
    config["provenance"] = {
        "built_by": built_by,
        "commit": git_commit(),
        "dataset": config.get("dataset"),
        "dataset_checksum": config.get("dataset_checksum"),
        "data_seed": pre.data.seed,
        "eval_seed": pre.data.eval_seed,
        "dynamics_summary": json.loads((Path(dyn.out_dir) / "summary.json").read_text()),
    }
    if pretrained:
        config["provenance"].update({
            "pretrain_summary": json.loads((Path(pre.out_dir) / "summary.json").read_text()),
            "pretrain_config": json.loads((Path(pre.out_dir) / "checkpoint" / "config.json").read_text()),
        })
    distill = pre.env.name in DISTILLED if flags["distill"] is None else flags["distill"]
    target = export(model, config, EXPORT_ROOT / (f"{pre.env.model_name}-teacher" if distill else pre.env.model_name))
    if distill:
        target = export_student(overrides, target, EXPORT_ROOT / pre.env.model_name, config["provenance"])
    if with_slow:
        install_slow(overrides, target)
    if flags["policy"]:
        install_policy(overrides, target)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 2**20
    print(f"default world model{' (with its slow level)' if with_slow else ''} exported to {target} ({size:.1f} MiB)")
    return target


def timed(stage: str, run, cfg):
    """Run one stage and say how long it took (the build's cost, stage by stage)."""
    start = time.perf_counter()
    out = run(cfg)
    print(f"{stage}: {(time.perf_counter() - start) / 60:.1f} min")
    return out


def export_student(overrides: list[str], teacher: Path, target: Path, provenance: dict) -> Path:
    """Stage 4: the predictor of the exported ``teacher`` distilled into a narrower one, the student
    exported to ``target`` (fp16, its predictor fp32) with the teacher's provenance and the distillation's."""
    stage = overrides + [f"model={os.path.relpath(teacher)}"]
    dis = stage_load("distill_dynamics", stage + ["resume=true", "resume_allow=[model]"])
    if not (Path(dis.out_dir) / "summary.json").exists():
        distill_dynamics.run(dis)
    student, config = trained(Path(dis.out_dir) / "checkpoint")
    if config.get(distill_dynamics.TEACHER_KEY) != file_sha256(teacher / WEIGHTS):
        raise ValueError(f"{dis.out_dir} was distilled from other weights than {teacher}'s; remove it to distil again")
    config["distilled_from"] = os.path.relpath(teacher)  # where the teacher ships (its weights' sha256 checked above)
    config["provenance"] = {**provenance, "distilled_by": "python experiments/distill_dynamics.py " + " ".join(stage),
                            "distill_summary": json.loads((Path(dis.out_dir) / "summary.json").read_text())}
    # fp16 is lossless for the encoder and head (the fp16-shipped teacher's); the predictor stays as trained:
    # rounding it re-drew several Reacher outcomes (docs/results.md#distilled-reacher)
    return export(student, config, target, keep=("predictor.",))


def trained(source: Path) -> tuple[WorldModel, dict]:
    """The world model of training checkpoint ``source`` and what its training recorded (data, settings)."""
    model = WorldModel.from_pretrained(source)
    return model, {k: v for k, v in load_config(source).items() if k not in model.config()}


def export(model: WorldModel, config: dict, target: Path, keep: tuple[str, ...] = ()) -> Path:
    """``model`` written to ``target`` with ``config`` in fp16 (half the bytes; loading casts back to fp32),
    the weights named by ``keep`` as they are; a model already in ``target`` is kept aside first."""
    keep_previous(target)
    return model.save_pretrained(target, extra=config, dtype=torch.float16, keep=keep)


def install_slow(overrides: list[str], target: Path) -> Path:
    """Stage 5: the slow level of the exported model ``target``, installed in ``target/slow``."""
    model = os.path.relpath(target)  # provenance names the model relative to the repository
    slow = stage_load("train_slow", overrides + ["resume=true", "resume_allow=[model,install]", f"model={model}",
                                           "install=true"])
    timed("train_slow", train_slow.run, slow)
    return target


def install_policy(overrides: list[str], target: Path) -> Path:
    """Stage 6: the amortized policy of the exported model ``target``, installed in ``target/policy``."""
    model = os.path.relpath(target)
    policy = stage_load("train_policy", overrides + ["resume=true", "resume_allow=[model,install]", f"model={model}",
                                               "install=true"])
    timed("train_policy", train_policy.run, policy)
    return target


if __name__ == "__main__":
    main(sys.argv[1:])
