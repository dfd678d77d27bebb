"""What a frame encoder's layers hold of Push-T's state, read linearly:

    python benchmarks/pusht_features.py --data data/pusht-expert-96px-1000x100-s0-eab8759917 \\
        --encoder runs/pretrain/pusht-small/checkpoint [--frames 3000] [--out results/benchmarks/pusht_features.json]

For the pretrained ViT (a JEPA pretraining checkpoint, or the encoder inside a world-model checkpoint) and a
random-init ViT of the same architecture: kernel ridge R^2 of single frames' agent x, y, the T's x, y and its
angle as sin / cos (the first five values of the state) from every token at full width after the patch
embedding and after the last layer, and from the last layer's tokens projected on their principal components
(256 and 1024, as the world model projects them); and from the pixels average-pooled to 16 x 16. ``--frames`` training frames of the train split
(the regularisation chosen per quantity on the last 500 of them), 1000 held-out frames. Prints a table and
writes JSON. About 5 minutes on 2 cores at 3000 frames.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from experiments.provenance import write_json
from worldmodel.data import open_dataset
from worldmodel.jepa.vit import EncoderConfig, ViTEncoder, normalize_images

QUANTITIES = ("agent_x", "agent_y", "T_x", "T_y", "T_angle_sin", "T_angle_cos")
LAMBDAS = (1e-3, 1e-2, 1e-1, 1e0, 1e1, 1e2)


def targets(states: np.ndarray) -> np.ndarray:
    return np.stack([states[:, 0], states[:, 1], states[:, 2], states[:, 3], np.sin(states[:, 4]),
                     np.cos(states[:, 4])], 1)


def load_vit(path: str) -> ViTEncoder:
    """The ViT of a JEPA pretraining checkpoint, or of a world-model checkpoint's frozen encoder."""
    from worldmodel.checkpoint import CheckpointError
    from worldmodel.dynamics import WorldModel
    from worldmodel.jepa.model import load_encoder

    try:
        model = WorldModel.from_pretrained(path, torch.device("cpu"), allow_unverified=True)
    except CheckpointError:  # a JEPA pretraining checkpoint
        return load_encoder(path)
    vit = getattr(model.encoder, "vit", None)
    if vit is None:
        raise ValueError(f"{path} is a world model without a pretrained ViT (its encoder is {model.cfg.encoder!r})")
    return vit


@torch.no_grad()
def layer_tokens(vit: ViTEncoder, frames: np.ndarray, batch: int = 100) -> dict[str, np.ndarray]:
    """Every token at full width, flattened, after the patch embedding (``embed``) and the last layer (``last``)."""
    out: dict[str, list[np.ndarray]] = {"embed": [], "last": []}
    for b in range(0, len(frames), batch):
        x = torch.from_numpy(frames[b : b + batch]).permute(0, 3, 1, 2)
        h = vit.vit.patch_embed(normalize_images(x)) + vit.vit.pos_embed
        out["embed"].append(h.flatten(1).numpy())
        out["last"].append(vit.vit.norm(vit.vit.blocks(h)).flatten(1).numpy())
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def pixels(frames: np.ndarray, side: int = 16) -> np.ndarray:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    return F.adaptive_avg_pool2d(x, side).flatten(1).numpy().astype(np.float64)


def ridge_r2(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
             val: int = 500) -> np.ndarray:
    """Kernel ridge per quantity (features standardised, a floor under small scales), its regularisation
    chosen on the last ``val`` training rows; R^2 on the test rows."""
    mu, sd = f_train.mean(0), f_train.std(0)
    sd = sd + 0.1 * np.median(sd)
    scale = sd * np.sqrt(f_train.shape[1])
    a, b = (f_train - mu) / scale, (f_test - mu) / scale

    def fit(x, y, lam):
        return np.linalg.solve(x @ x.T + lam * np.eye(len(x)), y - y.mean(0)), y.mean(0)

    def r2(p, y):
        return 1 - ((p - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)

    fit_rows, val_rows = slice(0, len(a) - val), slice(len(a) - val, len(a))
    scores = []
    for lam in LAMBDAS:
        alpha, mean = fit(a[fit_rows], y_train[fit_rows], lam)
        scores.append(r2(a[val_rows] @ (a[fit_rows].T @ alpha) + mean, y_train[val_rows]))
    best = np.argmax(np.array(scores), 0)
    out = np.zeros(y_train.shape[1])
    for j, k in enumerate(best):
        alpha, mean = fit(a, y_train[:, j : j + 1], LAMBDAS[k])
        out[j] = r2(b @ (a.T @ alpha) + mean, y_test[:, j : j + 1])[0]
    return out


def principal(f_train: np.ndarray, f_test: np.ndarray, dim: int, fit_rows: int = 2000):
    mu = f_train.mean(0)
    _, _, vt = np.linalg.svd(f_train[:fit_rows] - mu, full_matrices=False)
    return (f_train - mu) @ vt[:dim].T, (f_test - mu) @ vt[:dim].T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a dataset folder (collect.py) with train and heldout splits")
    parser.add_argument("--encoder", required=True, help="a JEPA pretraining checkpoint or a world-model checkpoint")
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/benchmarks/pusht_features.json")
    args = parser.parse_args()
    if args.frames < 1000:
        raise SystemExit(f"--frames must be >= 1000 (500 of them choose the regularisation), got {args.frames}")
    torch.manual_seed(args.seed)
    dataset = open_dataset(args.data)
    rng = np.random.default_rng(args.seed)

    def draw(split: str, n: int):
        episodes = dataset.split(split)
        rows = np.sort(rng.choice(len(episodes.obs), n, replace=False))
        return np.asarray(episodes.obs[rows]), targets(np.asarray(episodes.states[rows]))

    x_train, y_train = draw("train", args.frames)
    x_test, y_test = draw("heldout", 1000)
    pretrained = load_vit(args.encoder).eval()
    random_init = ViTEncoder(EncoderConfig(**pretrained.cfg.to_dict())).eval()
    rows: dict[str, list[float]] = {}

    def report(name: str, r2: np.ndarray) -> None:
        rows[name] = [round(float(v), 3) for v in r2]
        print(f"{name:36s} " + "  ".join(f"{q} {v:5.2f}" for q, v in zip(QUANTITIES, r2)), flush=True)

    for name, vit in (("pretrained", pretrained), ("random-init", random_init)):
        train, test = layer_tokens(vit, x_train), layer_tokens(vit, x_test)
        for layer in ("embed", "last"):
            report(f"{name} {layer} ({train[layer].shape[1]} dims)", ridge_r2(train[layer], y_train, test[layer], y_test))
        for dim in (256, 1024):
            p_train, p_test = principal(train["last"], test["last"], dim)
            report(f"{name} last, PCA {dim}", ridge_r2(p_train, y_train, p_test, y_test))
    report("pixels 16 x 16", ridge_r2(pixels(x_train), y_train, pixels(x_test), y_test))
    path = write_json(args.out, {"data": args.data, "encoder": args.encoder, "train_frames": args.frames,
                                 "test_frames": 1000, "quantities": QUANTITIES, "r2": rows})
    print(f"written to {path}")


if __name__ == "__main__":
    main()
