"""Two-object interaction scenes for the synthetic action dataset.

Each class is a *relation* between two objects A and B that usually start far apart, so a model
needs both local motion (where each object goes) and long-range context (where the other one
is). Nuisances, drawn independently of the class: the axis between the objects, start
positions, object size/shape/colour, speed and its variation within the clip, a moving
textured background, an optional distractor object, and pixel noise.

Coordinates are fractions of the frame side, (x, y); time is u in [0, 1] over the clip.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Trajectory = tuple[np.ndarray, np.ndarray]  # positions of A and B, each (T, 2)


def _unit(angle: float | np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _time_warp(frames: int, rng: np.random.Generator) -> np.ndarray:
    """Monotonic 0..1 clock whose speed varies within the clip (derivative 1 + a*cos > 0)."""
    base = np.linspace(0.0, 1.0, frames)
    a = rng.uniform(-0.6, 0.6)
    return base + a * np.sin(2 * np.pi * base) / (2 * np.pi)


# Scenes are drawn in a canonical frame (the pair's axis along x, centred on the origin);
# render_scene then rotates the whole motion by a random angle (Nuisance.rotation_deg).


def _along_axis(u: np.ndarray, rng: np.random.Generator, dist: np.ndarray) -> Trajectory:
    """A left of B on the x axis, centre distance `dist(u)`; the change is shared unevenly."""
    share = rng.uniform(0.25, 0.75)  # fraction of the distance change made by A
    change = dist[0] - dist
    a = np.stack([-dist[0] / 2 + share * change, np.zeros_like(u)], axis=-1)
    b = np.stack([dist[0] / 2 - (1 - share) * change, np.zeros_like(u)], axis=-1)
    return a, b


def approach(u, rng) -> Trajectory:
    far, near = rng.uniform(0.55, 0.8), rng.uniform(0.14, 0.25)
    return _along_axis(u, rng, far + (near - far) * u)


def separate(u, rng) -> Trajectory:
    far, near = rng.uniform(0.55, 0.8), rng.uniform(0.14, 0.25)
    return _along_axis(u, rng, near + (far - near) * u)


def bounce_off(u, rng) -> Trajectory:
    far, near = rng.uniform(0.5, 0.75), rng.uniform(0.14, 0.22)
    turn = rng.uniform(0.4, 0.6)
    return _along_axis(u, rng, near + (far - near) * np.abs(u - turn) / max(turn, 1 - turn))


def _travel(rng) -> float:
    return rng.uniform(0.25, 0.5)


def _pair(rng) -> np.ndarray:
    return np.array([rng.uniform(0.35, 0.6), 0.0])


def move_same_direction(u, rng) -> Trajectory:
    gap = _pair(rng)
    heading = _unit(rng.uniform(np.pi / 3, 2 * np.pi / 3) * rng.choice([-1.0, 1.0]))
    length = _travel(rng)
    ratio = rng.uniform(0.85, 1.15)  # the two speeds differ a little
    a = -gap / 2 + heading * length * (u[:, None] - 0.5)
    b = gap / 2 + heading * length * ratio * (u[:, None] - 0.5)
    return a, b


def move_opposite_direction(u, rng) -> Trajectory:
    gap = _pair(rng)
    # Across the axis (+-30 deg), as in move_same_direction: the distance changes little.
    heading = _unit(rng.uniform(np.pi / 3, 2 * np.pi / 3) * rng.choice([-1.0, 1.0]))
    la, lb = _travel(rng), _travel(rng)
    a = -gap / 2 + heading * la * (u[:, None] - 0.5)
    b = gap / 2 - heading * lb * (u[:, None] - 0.5)
    return a, b


def _slow_drift(u, rng) -> np.ndarray:
    return _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0.0, 0.1) * (u[:, None] - 0.5)


def _arc(rng) -> tuple[float, float]:
    radius = rng.uniform(0.2, 0.3)
    sweep = rng.uniform(0.6, 1.1) * np.pi
    return radius, sweep


def orbit(u, rng) -> Trajectory:
    a = _slow_drift(u, rng)
    radius, sweep = _arc(rng)
    direction = rng.choice([-1.0, 1.0])
    b = a + radius * _unit(rng.uniform(0, 2 * np.pi) + direction * sweep * u)
    return a, b


def pass_by(u, rng) -> Trajectory:
    a = _slow_drift(u, rng)
    radius, sweep = _arc(rng)
    heading_angle = rng.uniform(0, 2 * np.pi)
    side = rng.choice([-1.0, 1.0])
    closest = radius * _unit(heading_angle + side * np.pi / 2)
    # Same path length as an orbit's arc so that speed alone does not tell them apart.
    b = a + closest + _unit(heading_angle) * radius * sweep * (u[:, None] - rng.uniform(0.3, 0.7))
    return a, b


def chase(u, rng) -> Trajectory:
    heading = np.array([1.0, 0.0])
    lateral = np.array([0.0, rng.uniform(-0.05, 0.05)])
    a = heading * _travel(rng) * (u[:, None] - 0.5)
    gap0, gap1 = rng.uniform(0.35, 0.55), rng.uniform(0.12, 0.2)
    b = a - heading * (gap0 + (gap1 - gap0) * u)[:, None] + lateral
    return a, b


# Order matters: `num_classes=k` uses the first k. The default six form three confusable pairs.
SCENES: dict[str, Callable[[np.ndarray, np.random.Generator], Trajectory]] = {
    "approach": approach,
    "separate": separate,
    "move_same_direction": move_same_direction,
    "move_opposite_direction": move_opposite_direction,
    "orbit": orbit,
    "pass_by": pass_by,
    "chase": chase,
    "bounce_off": bounce_off,
}


# --- the pretraining vocabulary: the same primitives, composed ---------------------------------
# A broader set of classes from the same visual world, the CPU-sized analogue of Kinetics-400 for
# HMDB51: each class is one combination of how the pair's distance changes, whether the axis
# between the objects turns, and how the pair as a whole drifts. The target scenes above are close
# to some of the combinations (approach ~ closer/still/still, chase ~ closer/still/along, orbit
# ~ steady/turn/still), as Kinetics shares concepts with HMDB51, but not drawn the same way.

def _distance(kind: str, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    far, near = rng.uniform(0.5, 0.75), rng.uniform(0.14, 0.22)
    turn = rng.uniform(0.4, 0.6)
    v_shape = np.abs(u - turn) / max(turn, 1 - turn)  # 1 at both ends, 0 at the turning point
    return {
        "closer": far + (near - far) * u,
        "apart": near + (far - near) * u,
        "steady": np.full_like(u, rng.uniform(0.3, 0.55)),
        "closer_apart": near + (far - near) * v_shape,
        "apart_closer": far + (near - far) * v_shape,
    }[kind]


_DISTANCES = ("closer", "apart", "steady", "closer_apart", "apart_closer")
_TURNS = ("still", "turn")
_DRIFTS = ("still", "along", "across")


def _composed(distance: str, turn: str, drift: str) -> Callable[[np.ndarray, np.random.Generator], Trajectory]:
    def motion(u: np.ndarray, rng: np.random.Generator) -> Trajectory:
        d = _distance(distance, u, rng)
        sweep = rng.uniform(0.6, 1.1) * np.pi * rng.choice([-1.0, 1.0]) if turn == "turn" else 0.0
        axis = _unit(sweep * u)  # (T, 2): the direction from A to B
        heading = {"still": np.zeros(2), "along": np.array([1.0, 0.0]),
                   "across": np.array([0.0, 1.0])}[drift] * rng.choice([-1.0, 1.0])
        centre = heading * _travel(rng) * (u[:, None] - 0.5)
        return centre - axis * d[:, None] / 2, centre + axis * d[:, None] / 2

    return motion


# 5 x 2 x 3 = 30 classes, named distance-turn-drift.
COMPOSED: dict[str, Callable[[np.ndarray, np.random.Generator], Trajectory]] = {
    f"{d}-{t}-{m}": _composed(d, t, m) for d in _DISTANCES for t in _TURNS for m in _DRIFTS
}
VOCABULARIES = {"target": SCENES, "pretrain": COMPOSED}


@dataclass(frozen=True)
class Nuisance:
    """How strong the class-independent distractions are (0 disables one)."""

    noise_std: tuple[float, float] = (2.0, 6.0)  # pixel noise, in 0..255 units
    background_contrast: tuple[float, float] = (10.0, 25.0)
    background_speed: float = 0.5  # pixels per frame, each axis
    distractor_prob: float = 0.25
    rotation_deg: float = 25.0  # the whole motion is rotated by U(-r, r) degrees
    object_radius: tuple[float, float] = (0.06, 0.1)  # fraction of the frame side


# Calibrated on CPU (docs/data.md): "default" is learnable by a small 3D CNN in a few epochs
# on 10-20 clips per class without being solved; "hard" needs far more data and epochs.
DIFFICULTY = {
    "easy": Nuisance(noise_std=(0.0, 2.0), background_contrast=(0.0, 10.0), background_speed=0.0,
                     distractor_prob=0.0, rotation_deg=20.0, object_radius=(0.07, 0.11)),
    "default": Nuisance(),
    "hard": Nuisance(noise_std=(3.0, 10.0), background_contrast=(15.0, 45.0), background_speed=1.5,
                     distractor_prob=0.6, rotation_deg=180.0, object_radius=(0.045, 0.08)),
}


def _fit_in_frame(points: np.ndarray, margin: float, rng: np.random.Generator) -> np.ndarray:
    """Shrink if needed, then place the whole motion at a random spot that stays in frame."""
    lo, hi = points.reshape(-1, 2).min(0), points.reshape(-1, 2).max(0)
    extent = hi - lo
    room = 1.0 - 2 * margin
    scale = min(1.0, float(room / max(extent.max(), 1e-6)))
    centre = (lo + hi) / 2
    points = (points - centre) * scale
    half = extent * scale / 2
    low = margin + half
    offset = low + rng.uniform(0, 1, size=2) * np.maximum(1 - margin - half - low, 0.0)
    return points + offset


def _distractor_path(frames: int, rng: np.random.Generator, margin: float) -> np.ndarray:
    """Straight motion that reflects off the frame border (triangle wave)."""
    start = rng.uniform(margin, 1 - margin, size=2)
    velocity = _unit(rng.uniform(0, 2 * np.pi)) * rng.uniform(0.2, 0.6) / max(frames - 1, 1)
    raw = start + velocity * np.arange(frames)[:, None] - margin
    span = 1 - 2 * margin
    folded = np.abs((raw % (2 * span)) - span)  # reflect into [0, span]
    return span - folded + margin


def _colour(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform(0, 1)
    sat, val = rng.uniform(0.55, 1.0), rng.uniform(0.75, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    rgb = val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)
    return (rgb * 255).astype(np.float32)


def _background(frames: int, size: int, rng: np.random.Generator, nuisance: Nuisance):
    """A smooth random texture translating at a constant random velocity."""
    import torch  # here: the config validates the vocabulary names without importing torch
    import torch.nn.functional as F

    cells = max(2, size // 8)
    low = rng.uniform(-1, 1, size=(1, 3, cells, cells)).astype(np.float32)
    # Upsample a 3x3 tiling and keep the middle tile: the texture wraps without a seam.
    tiled = torch.from_numpy(np.tile(low, (1, 1, 3, 3)))
    tex = F.interpolate(tiled, size=(6 * size, 6 * size), mode="bicubic", align_corners=False)
    tex = tex[0, :, 2 * size:4 * size, 2 * size:4 * size].permute(1, 2, 0).numpy()
    base = rng.uniform(60, 150) + rng.uniform(-20, 20, size=3)
    tex = base + tex * rng.uniform(*nuisance.background_contrast)
    vel = rng.uniform(-nuisance.background_speed, nuisance.background_speed, size=2)
    out = np.empty((frames, size, size, 3), np.float32)
    for t in range(frames):
        dy, dx = np.round(vel * t).astype(int)
        out[t] = np.roll(tex, (dy, dx), axis=(0, 1))[:size, :size]
    return out


def _paint(canvas: np.ndarray, centres_px: np.ndarray, radius_px: float, square: bool,
           colour: np.ndarray) -> None:
    """Anti-aliased disc or square at sub-pixel positions, blended into (T, S, S, 3) in place."""
    size = canvas.shape[1]
    grid = np.arange(size, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - centres_px[:, 0, None, None]
    dy = grid[None, :, None] - centres_px[:, 1, None, None]
    dist = np.maximum(np.abs(dx), np.abs(dy)) if square else np.sqrt(dx * dx + dy * dy)
    alpha = np.clip(radius_px + 0.5 - dist, 0.0, 1.0)[..., None]
    canvas *= 1 - alpha
    canvas += alpha * colour


def render_scene(scene: str, *, frames: int, size: int, rng: np.random.Generator,
                 nuisance: Nuisance = Nuisance()) -> np.ndarray:
    """One clip of class `scene` -> uint8 (frames, size, size, 3)."""
    motion = SCENES.get(scene) or COMPOSED.get(scene)
    if motion is None:
        raise KeyError(f"unknown synthetic scene {scene!r}; known: {', '.join([*SCENES, *COMPOSED])}")
    u = _time_warp(frames, rng)
    a, b = motion(u, rng)
    theta = np.deg2rad(rng.uniform(-nuisance.rotation_deg, nuisance.rotation_deg))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    a, b = a @ rot.T, b @ rot.T
    radii = rng.uniform(*nuisance.object_radius, size=2)
    margin = float(radii.max()) + 0.02
    ab = _fit_in_frame(np.stack([a, b]), margin, rng)

    canvas = _background(frames, size, rng, nuisance)
    if rng.uniform() < nuisance.distractor_prob:
        d_radius = rng.uniform(0.035, 0.07)
        path = _distractor_path(frames, rng, d_radius + 0.01)
        _paint(canvas, path * size, d_radius * size, bool(rng.integers(2)), _colour(rng))
    for pos, radius in zip(ab, radii):
        _paint(canvas, pos * size, radius * size, bool(rng.integers(2)), _colour(rng))
    noise_std = rng.uniform(*nuisance.noise_std)
    canvas += rng.normal(0.0, noise_std, size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
