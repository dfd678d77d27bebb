"""JEPA pretraining throughput (images/s) per encoder size, on the local device.

    python benchmarks/pretrain.py [--sizes tiny small] [--steps 10] [--batch 64] [--device auto]

Times full training steps (masks, forward, backward, AdamW, EMA) on random images,
after warm-up steps; prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch

from experiments.provenance import device_description, write_json
from worldmodel.jepa import JEPA, EncoderConfig, JEPAConfig, make_optimizer, sample_masks
from worldmodel.training import ema_update, resolve_device


def images_per_second(size: str, batch: int, steps: int, device: torch.device, amp: bool, compile: bool) -> float:
    cfg = JEPAConfig(encoder=EncoderConfig(size=size), predictor_width=96 if size != "tiny" else 32,
                     predictor_heads=3 if size != "tiny" else 2)
    model = JEPA(cfg).to(device)
    opt = make_optimizer(model)
    for group in opt.param_groups:
        group["lr"] = 1e-4
    forward = torch.compile(model) if compile else model
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 64, 64), dtype=torch.uint8, device=device)
    ctx_amp = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()

    def step():
        ctx, tgt = sample_masks(gen, batch, cfg.encoder.grid, cfg.masks)
        with ctx_amp:
            loss = forward(images, ctx.to(device), [t.to(device) for t in tgt])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(model.target_encoder, model.encoder, 0.996)

    for _ in range(3 if not compile else 6):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/benchmarks/pretrain.json")
    args = parser.parse_args()
    device = resolve_device(args.device, 0)
    cuda = device.type == "cuda"
    variants = [("fp32", False, False)] + ([("bf16", True, False), ("bf16+compile", True, True)] if cuda else [])
    rows = []
    for size in args.sizes:
        for name, amp, comp in variants:
            rate = images_per_second(size, args.batch, args.steps, device, amp, comp)
            rows.append({"size": size, "variant": name, "batch": args.batch, "images_per_s": rate})
            print(f"{size:<6} {name:<13} batch {args.batch}: {rate:8.1f} images/s", flush=True)
    result = {"device": device_description(), "threads": torch.get_num_threads(), "rows": rows}
    out = write_json(args.out, result)
    print(f"device: {result['device']}; written to {out}")


if __name__ == "__main__":
    main()
