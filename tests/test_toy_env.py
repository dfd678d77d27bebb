"""An env added the documented way, one module and one config file (tests/toy_env/), found through
HJEPA_ENV_PATH: its config file's sections reach the entry points, and plan.py runs on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.models import tiny_world_model

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).parent / "toy_env"


def run(args: list[str], env_path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HJEPA_ENV_PATH": str(env_path)}
    return subprocess.run([sys.executable, *args, f"hydra.run.dir={tmp_path}/hydra"], cwd=ROOT, env=environ,
                          capture_output=True, text=True, timeout=300)


def test_a_toy_env_of_one_module_and_one_config_file_runs_through_plan_py(tmp_path):
    assert sorted(p.name for p in TOY.iterdir() if p.suffix in (".py", ".yaml")) == ["dot.py", "dot.yaml"]
    model = tmp_path / "model"
    tiny_world_model(block=2, moving=True).save_pretrained(
        model, extra={"env": "dot", "env_kwargs": {"image_size": 64, "antialias": True}})
    out = run([str(ROOT / "experiments" / "plan.py"), "env=dot", f"model={model}", f"data.root={tmp_path}/data",
               "data.num_envs=1", "progress=false", "videos=1", f"output_dir={tmp_path}/out"], TOY, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (result,) = (tmp_path / "out").glob("plan-dot-*.json")
    summary = json.loads(result.read_text())
    # dot.yaml's plan section: 3 tasks, goal 5 steps ahead, budget 10, flat CEM only (no slow level)
    assert [r["agent"] for r in summary["results"]] == ["cem-mpc", "random", "zero"]
    assert all(r["episodes"] == 3 for r in summary["results"])
    p = summary["protocol"]
    assert (p["goal_offset"], p["budget"], p["env"]) == (5, 10, "hjepa-toy/Dot-v0")
    assert summary["mpc"]["cem"]["samples"] == 20
    # its data section and env section: 10 held-out episodes of 30 steps at 64 px, nothing else collected
    (dataset,) = [d for d in (tmp_path / "data").iterdir() if not d.name.startswith(".")]
    assert dataset.name.startswith("dot-uniform-64px-heldout10x30-e1000-")
    assert len(summary["videos"]) == 1 and Path(summary["videos"][0]).is_file()


def test_an_env_is_unknown_without_its_path_and_a_bad_path_is_named(tmp_path):
    out = run([str(ROOT / "experiments" / "plan.py"), "env=dot", "model="], tmp_path / "missing", tmp_path)
    assert out.returncode != 0 and "HJEPA_ENV_PATH names" in out.stderr and "missing" in out.stderr
    out = run([str(ROOT / "experiments" / "plan.py"), "env=dot", "model="], tmp_path, tmp_path)  # an empty directory
    assert out.returncode != 0 and "env/dot" in out.stderr  # Hydra's list of the env choices there are


def test_a_misspelt_section_of_an_env_config_file_is_refused_naming_the_file(tmp_path):
    (tmp_path / "dot.py").write_text((TOY / "dot.py").read_text())
    (tmp_path / "dot.yaml").write_text((TOY / "dot.yaml").read_text().replace("plan:", "plann:"))
    code = "from experiments.conf import load; load('plan', ['env=dot'])"
    environ = {**os.environ, "HJEPA_ENV_PATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    assert f"{tmp_path}/dot.yaml: unknown section 'plann'" in out.stderr and "plan" in out.stderr
