"""Helpers for the dtkd_ops tests: small REAL videos (PyAV, mpeg4 in .avi, HMDB51 layout) and
manifests over them. A uniquely named module (not conftest) so that other test folders' conftests
cannot shadow it."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["brush_hair", "clap", "wave"]


def write_video(path: Path, *, frames: int = 16, size: int = 64, fps: int = 8, seed: int = 0) -> Path:
    """A real mpeg4/.avi clip: a seeded random texture that slides one pixel per frame."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_dataset(root: Path, *, classes=CLASSES, per_split=None, frames=16, size=64, fps=8) -> pd.DataFrame:
    """Write ``root/<class>/<class>_<split>_<k>.avi`` and return its manifest (dtkd's columns)."""
    per_split = per_split or {"train": 4, "test": 2}
    rows, seed = [], 0
    for label_idx, label in enumerate(sorted(classes)):
        for split, n in per_split.items():
            for k in range(n):
                vid = f"{label}_{split}_{k}"
                path = write_video(root / label / f"{vid}.avi", frames=frames, size=size, fps=fps, seed=seed)
                seed += 1
                rows.append({"video_id": vid, "path": str(path.resolve()), "label": label, "label_idx": label_idx,
                             "split": split, "frames": frames, "fps": float(fps), "width": size, "height": size})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- tiny real models

N_FEATURES, N_CLASSES = 8, 3


def toy_data(n: int = 256, seed: int = 0):
    """A fixed test split: y = argmax(x @ W_true)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(N_FEATURES, N_CLASSES, generator=g)
    x = torch.randn(n, N_FEATURES, generator=g)
    return x, (x @ w_true).argmax(dim=1), w_true


def toy_model(noise: float, seed: int = 1, hidden: int = 0):
    """nn.Linear with W_true + noise: the more noise, the lower the top-1 (a real, picklable model).
    ``hidden`` > 0 adds an extra (identity-initialised) layer to make the model bigger."""
    import torch
    from torch import nn

    _, _, w_true = toy_data()
    g = torch.Generator().manual_seed(seed)
    layers = []
    if hidden:
        extra = nn.Linear(N_FEATURES, N_FEATURES, bias=False)
        with torch.no_grad():
            extra.weight.copy_(torch.eye(N_FEATURES))
        layers.append(extra)
        layers += [nn.Linear(N_FEATURES, N_FEATURES, bias=False) for _ in range(hidden - 1)]
        for layer in layers[1:]:
            with torch.no_grad():
                layer.weight.copy_(torch.eye(N_FEATURES))
    head = nn.Linear(N_FEATURES, N_CLASSES)
    with torch.no_grad():
        head.weight.copy_((w_true + noise * torch.randn(w_true.shape, generator=g)).T)
        head.bias.zero_()
    return nn.Sequential(*layers, head)


def toy_evaluate(model) -> dict:
    """Real evaluation on the fixed toy test split + the budget metrics."""
    import torch

    x, y, _ = toy_data()
    with torch.no_grad():
        top1 = float((model(x).argmax(dim=1) == y).float().mean())
    return {"top1": top1, "params": int(sum(p.numel() for p in model.parameters())), "latency_ms": 0.1}
