"""I-JEPA ablations: ``python experiments/ablate.py [pretrain overrides ...]``.

Trains the default JEPA and one variant per switch of the seed's ablation table
(random-patch masking, pixel targets, no EMA, a predictor as wide as the encoder)
with the same small budget, and writes ``<out>/ablation.md`` and ``ablation.json``:
linear-probe R^2 on held-out frames and collapse status per variant. Overrides apply
to every variant (default budget: ``train.steps=600``); ``ablate_out=DIR`` moves the
outputs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from experiments.conf import load
from experiments.provenance import write_json
from experiments.pretrain_encoder import run

VARIANTS: dict[str, list[str]] = {
    "default (blocks, latent, EMA, narrow)": [],
    "random-patch masking": ["model.masks.strategy=random"],
    "pixel targets": ["model.targets=pixels"],
    "no EMA (both branches trained)": ["model.ema=false"],
    "wide predictor (= encoder width)": ["model.predictor_width=0"],
}
PUBLISHED = {  # the seed's section 9.4 (I-JEPA, ViT-L, ImageNet linear probe)
    "default (blocks, latent, EMA, narrow)": "73.4",
    "random-patch masking": "-4.3",
    "pixel targets": "-5.2",
    "no EMA (both branches trained)": "collapse",
    "wide predictor (= encoder width)": "-2.4",
}


def main(argv: list[str]) -> None:
    out = Path(next((a.split("=", 1)[1] for a in argv if a.startswith("ablate_out=")), "runs/ablate"))
    common = [a for a in argv if not a.startswith("ablate_out=")]
    if not any(a.startswith("train.steps=") for a in common):
        common.insert(0, "train.steps=600")
    rows = []
    for i, (name, switch) in enumerate(VARIANTS.items()):
        print(f"\n=== {name} ===", flush=True)
        cfg = load("pretrain", common + switch + [f"out_dir={out}/variant{i}", "resume=true"])
        summary = run(cfg)
        last = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
        history = (Path(cfg.out_dir) / "log.csv").read_text().strip().splitlines()
        final = dict(zip(history[0].split(","), history[-1].split(",")))
        rows.append({"variant": name, "overrides": switch, "steps": summary["steps"],
                     "collapsed": last["collapsed"], "emb_std": float(final["emb_std"]),
                     "eff_rank": float(final["eff_rank"]), "probe": last["probe"]["pretrained"],
                     "random_init": last["probe"]["random_init"], "published": PUBLISHED[name]})
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ablation.json", rows)
    (out / "ablation.md").write_text(markdown(rows, common))
    print("\n" + markdown(rows, common))


def markdown(rows: list[dict], common: list[str]) -> str:
    r0 = rows[0]["random_init"]
    keys = list(r0["r2_by_quantity"])
    lines = [
        f"JEPA ablations ({' '.join(common)}); linear probe R^2 on held-out frames "
        f"({rows[0]['probe']['test_frames']}); random-init encoder: "
        + ", ".join(f"{k} {v:.3f}" for k, v in r0["r2_by_quantity"].items()) + ".",
        "",
        "| variant | " + " | ".join(f"R^2 {k}" for k in keys) + " | R^2 mean | emb. std | eff. rank | collapsed | "
        "I-JEPA paper (IN-1K lin.) |",
        "|---|" + "---|" * len(keys) + "---|---|---|---|---|",
    ]
    for r in rows:
        p = r["probe"]
        lines.append(
            f"| {r['variant']} | " + " | ".join(f"{p['r2_by_quantity'][k]:.3f}" for k in keys) + f" | "
            f"{p['r2_mean']:.3f} | {r['emb_std']:.4f} | {r['eff_rank']:.1f} | {'yes' if r['collapsed'] else 'no'} | "
            f"{r['published']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main(sys.argv[1:])
