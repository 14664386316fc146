"""Tiny stand-in models for the distillation tests (CPU, milliseconds).

They follow dtkd.models' contract: one (B, C, T, H, W) tensor in, logits out; a spec with
``tap`` / ``tap_kind`` / ``feature_dim``; and ``ToyTap`` implements FeatureTap's contract
(.features 5-D after a forward, .remove(), context manager) for them.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, num_classes: int = 5, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU())
        self.stage = nn.Sequential(
            nn.Conv3d(width, width, 3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(width), nn.ReLU()
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)).mean(dim=(2, 3, 4)))


class TokenBlock(nn.Module):
    """Returns (tokens with class token, [T, H, W]) like an MViT block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: torch.Tensor, thw: list[int]):
        return tokens + self.mlp(self.norm(tokens)), thw


class TinyViT(nn.Module):
    def __init__(self, num_classes: int = 5, dim: int = 12) -> None:
        super().__init__()
        self.embed = nn.Conv3d(3, dim, (2, 4, 4), stride=(2, 4, 4))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.block = TokenBlock(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        thw = list(x.shape[2:])
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
        tokens, _ = self.block(tokens, thw)
        return self.head(self.norm(tokens[:, 0]))


class ToyTap:
    def __init__(self, model: nn.Module, spec) -> None:
        self.kind = spec.tap_kind
        self.features = None
        self._handle = model.get_submodule(spec.tap).register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        if self.kind == "vit_tokens":
            tokens, thw = output
            t = tokens[:, 1:]
            self.features = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *thw)
        else:
            self.features = output

    def pooled(self) -> torch.Tensor:
        return self.features.mean(dim=(2, 3, 4))

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def cnn_spec(name: str, width: int) -> SimpleNamespace:
    return SimpleNamespace(name=name, family="cnn", tap="stage", tap_kind="cnn5d", feature_dim=width)


def vit_spec(name: str, dim: int) -> SimpleNamespace:
    return SimpleNamespace(name=name, family="vit", tap="block", tap_kind="vit_tokens", feature_dim=dim)


NUM_CLASSES = 5


def make_setup(seed: int = 0):
    """(student, student_spec, [TeacherRef vit, TeacherRef cnn]) with different widths."""
    from dtkd.distill import TeacherRef

    torch.manual_seed(seed)
    student = TinyCNN(NUM_CLASSES, width=6)
    cnn = TinyCNN(NUM_CLASSES, width=10)
    vit = TinyViT(NUM_CLASSES, dim=12)
    teachers = [
        TeacherRef(name="vit", model=vit, spec=vit_spec("tiny_vit", 12), role="vit"),
        TeacherRef(name="cnn", model=cnn, spec=cnn_spec("tiny_cnn_m", 10), role="cnn"),
    ]
    return student, cnn_spec("tiny_cnn", 6), teachers


def make_batch(batch: int = 4, seed: int = 1):
    """Views of different sizes: the student sees 4x16x16, the teachers 8x24x24 / 4x20x20."""
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "student": torch.randn(batch, 3, 4, 16, 16, generator=g),
        "vit": torch.randn(batch, 3, 8, 24, 24, generator=g),
        "cnn": torch.randn(batch, 3, 4, 20, 20, generator=g),
    }
    target = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
    return inputs, target


def tiny_zoo(num_classes: int, num_batches: int):
    """The zoo's CPU models as the tiny setting uses them: student x3d_tiny, teachers mvit_tiny
    (ViT) and x3d_tiny_m (CNN), seeded, and ``num_batches`` random 3-clip batches of 8x64^2 per
    view. Returns (student, student spec, teacher refs, batches)."""
    from dtkd import models
    from dtkd.distill import TeacherRef

    torch.manual_seed(0)
    student = models.build("x3d_tiny", num_classes)
    refs = [
        TeacherRef("vit", models.build("mvit_tiny", num_classes), models.get_spec("mvit_tiny"), "vit"),
        TeacherRef("cnn", models.build("x3d_tiny_m", num_classes), models.get_spec("x3d_tiny_m"), "cnn"),
    ]
    g = torch.Generator().manual_seed(1)
    batches = [{k: torch.randn(3, 3, 8, 64, 64, generator=g) for k in ("student", "vit", "cnn")}
               for _ in range(num_batches)]
    return student, models.get_spec("x3d_tiny"), refs, batches


class TinyClips(torch.utils.data.Dataset):
    """``n`` random 8x64x64 clips, the same tensor for every view of ``views``, labels 0..num_classes-1."""

    def __init__(self, n: int, num_classes: int, views=("student", "vit", "cnn")) -> None:
        g = torch.Generator().manual_seed(2)
        self.x = torch.randn(n, 3, 8, 64, 64, generator=g)
        self.num_classes, self.views = num_classes, tuple(views)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"inputs": {k: self.x[i] for k in self.views}, "label": i % self.num_classes, "index": i}


def zoo_distiller(zoo, method: str, num_classes: int, **cfg):
    """A ``method`` distiller (DistillConfig ``cfg``) on a fresh x3d_tiny with the weights of the
    ``tiny_zoo`` student, so that every test starts from the same student and none trains it."""
    from dtkd import models
    from dtkd.distill import DistillConfig, build_distiller

    student, spec, refs = zoo[:3]
    fresh = models.build("x3d_tiny", num_classes)
    fresh.load_state_dict(student.state_dict())
    return build_distiller(DistillConfig(method=method, **cfg), fresh, spec, refs)
