"""Procedural rendering of one toy scene: stuff bands with their own textures, things drawn on top.

Each stuff concept has distinct colour statistics and texture so a small CNN/ViT can tell them
apart; things are shapes with varied colour, size and position, drawn in order so later ones
occlude earlier ones. The label map is written alongside, pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cocu_core.toyworld.concepts import BY_NAME

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "blue": (40, 70, 210),
    "yellow": (235, 210, 40),
    "green": (50, 170, 60),
    "orange": (240, 140, 30),
    "purple": (140, 50, 170),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "pink": (240, 130, 180),
    "brown": (120, 75, 40),
}
COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)

TOP_STUFF = ("sky", "wall")
GROUND_STUFF = ("grass", "water", "sand", "snow", "road", "forest")


@dataclass
class Scene:
    """What was drawn: the bands, the things (name, colour, area after occlusion) and the maps."""

    image: np.ndarray  # uint8 [H, W, 3]
    label: np.ndarray  # uint8 [H, W]
    stuff: list[str] = field(default_factory=list)
    things: list[tuple[str, str]] = field(default_factory=list)  # (concept, colour name)


class _Grid:
    """Why: coordinate grids are reused by every shape of every image of one size."""

    _cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def get(cls, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size not in cls._cache:
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
            cls._cache[size] = (yy, xx)
        return cls._cache[size]


def _texture(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Why: each stuff class gets its own colour statistics and texture frequency."""
    yy, xx = _Grid.get(size)
    n = rng.standard_normal((size, size)).astype(np.float32)
    s = size / 64.0
    if name == "sky":
        base = np.array([110, 170, 235], np.float32) + rng.uniform(-20, 20, 3)
        img = base + (yy / size)[..., None] * np.array([50, 40, 10], np.float32) + 4 * n[..., None]
    elif name == "grass":
        base = np.array([60, 150, 50], np.float32) + rng.uniform(-15, 15, 3)
        img = base + 28 * n[..., None] * np.array([0.6, 1.0, 0.5], np.float32)
    elif name == "water":
        base = np.array([30, 100, 170], np.float32) + rng.uniform(-15, 15, 3)
        ph = rng.uniform(0, 2 * np.pi)
        wave = np.sin(yy * (1.3 / s) + 0.35 * np.sin(xx * (0.4 / s) + ph) + ph)
        img = base + 25 * wave[..., None] * np.array([0.5, 0.8, 1.0], np.float32) + 5 * n[..., None]
    elif name == "sand":
        base = np.array([220, 195, 140], np.float32) + rng.uniform(-15, 15, 3)
        speck = (rng.random((size, size)) < 0.08).astype(np.float32)
        img = base + 10 * n[..., None] - 45 * speck[..., None]
    elif name == "snow":
        base = np.array([238, 242, 250], np.float32) + rng.uniform(-8, 5, 3)
        img = base - 10 * np.abs(n)[..., None]
    elif name == "road":
        base = np.array([95, 95, 100], np.float32) + rng.uniform(-15, 15, 1)
        img = base + 8 * n[..., None]
        mid = rng.uniform(0.35, 0.65) * size
        dash = (np.abs(xx - mid) < 1.2 * s) & ((yy // (6 * s)) % 2 == 0)
        img = np.where(dash[..., None], np.array([235, 235, 200], np.float32), img)
    elif name == "wall":
        base = np.array([165, 70, 50], np.float32) + rng.uniform(-20, 20, 3)
        bh = 5 * s
        row = yy // bh
        off = (row % 2) * 5 * s
        mortar = ((yy % bh) < 1) | (((xx + off) % (10 * s)) < 1)
        img = base + 10 * n[..., None]
        img = np.where(mortar[..., None], np.array([200, 195, 185], np.float32), img)
    elif name == "forest":
        base = np.array([25, 80, 35], np.float32) + rng.uniform(-10, 10, 3)
        blob = np.sin(xx * (0.9 / s) + rng.uniform(0, 6)) * np.sin(yy * (0.7 / s) + rng.uniform(0, 6))
        img = base + 22 * blob[..., None] * np.array([0.4, 1.0, 0.4], np.float32) + 8 * n[..., None]
    else:  # pragma: no cover - guarded by the concept tables
        raise ValueError(f"unknown stuff {name!r}")
    return img


def _shade(colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.array(colour, np.float32) + rng.uniform(-25, 25, 3), 0, 255)


def _draw_thing(
    name: str, rng: np.random.Generator, size: int, cx: float, cy: float, s: float, colour: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Why: one shape per thing class; returns (mask, rgb) where rgb is only read under the mask."""
    yy, xx = _Grid.get(size)
    rgb = np.broadcast_to(colour, (size, size, 3)).astype(np.float32).copy()
    if name == "ball":
        r = s / 2
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mask = d2 <= r * r
        light = 1.25 - 0.6 * np.sqrt(((yy - cy + r / 3) ** 2 + (xx - cx + r / 3) ** 2)) / max(r, 1)
        rgb = rgb * np.clip(light, 0.5, 1.3)[..., None]
    elif name == "box":
        w, h = s, s * rng.uniform(0.7, 1.0)
        mask = (np.abs(xx - cx) <= w / 2) & (np.abs(yy - cy) <= h / 2)
        edge = mask & ((np.abs(xx - cx) > w / 2 - 1.5) | (np.abs(yy - cy) > h / 2 - 1.5) | (np.abs(xx - cx) < 0.8))
        rgb = np.where(edge[..., None], rgb * 0.45, rgb)
    elif name == "tent":
        top, base = cy - s / 2, cy + s / 2
        half = (yy - top) / max(s, 1) * (s / 2)
        mask = (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)
        door = mask & (np.abs(xx - cx) <= half * 0.25) & (yy > cy)
        rgb = np.where(door[..., None], rgb * 0.3, rgb)
    elif name == "boat":
        hull_top, hull_bot = cy + s * 0.1, cy + s * 0.4
        t = (yy - hull_top) / max(hull_bot - hull_top, 1)
        hull = (yy >= hull_top) & (yy <= hull_bot) & (np.abs(xx - cx) <= s / 2 * (1 - 0.4 * t))
        sail = (yy >= cy - s / 2) & (yy < hull_top) & (xx >= cx) & (xx - cx <= (yy - (cy - s / 2)) * 0.6)
        mask = hull | sail
        rgb = np.where(sail[..., None], np.array([245, 245, 245], np.float32), rgb)
    elif name == "kite":
        w, h = s * 0.7, s
        diamond = np.abs(xx - cx) / (w / 2) + np.abs(yy - cy) / (h / 2) <= 1
        tail = (np.abs(xx - cx - (yy - cy - h / 2) * 0.3) < 0.8) & (yy > cy + h / 2) & (yy < cy + h)
        mask = diamond | tail
        cross = diamond & ((np.abs(xx - cx) < 0.7) | (np.abs(yy - cy) < 0.7))
        rgb = np.where((cross | tail)[..., None], np.array([30, 30, 30], np.float32), rgb)
    elif name == "car":
        w, h = s, s * 0.32
        body = (np.abs(xx - cx) <= w / 2) & (np.abs(yy - cy) <= h / 2)
        cabin = (np.abs(xx - cx) <= w * 0.28) & (yy >= cy - h / 2 - h * 0.8) & (yy < cy - h / 2)
        wr = h * 0.45
        wheels = ((yy - cy - h / 2) ** 2 + (xx - cx + w * 0.3) ** 2 <= wr * wr) | (
            (yy - cy - h / 2) ** 2 + (xx - cx - w * 0.3) ** 2 <= wr * wr
        )
        mask = body | cabin | wheels
        rgb = np.where(wheels[..., None], np.array([20, 20, 20], np.float32), rgb)
        rgb = np.where(cabin[..., None], np.array([170, 210, 230], np.float32), rgb)
    elif name == "tree":
        r = s * 0.33
        crown = (yy - (cy - s * 0.15)) ** 2 + (xx - cx) ** 2 <= r * r
        trunk = (np.abs(xx - cx) <= max(s * 0.07, 1)) & (yy >= cy - s * 0.1) & (yy <= cy + s / 2)
        mask = crown | trunk
        green = np.array([30, 120 + rng.uniform(-30, 40), 30], np.float32)
        rgb = np.where(crown[..., None], green, np.array([100, 60, 30], np.float32))
    elif name == "person":
        hr = s * 0.12
        head = (yy - (cy - s * 0.38)) ** 2 + (xx - cx) ** 2 <= hr * hr
        body = (np.abs(xx - cx) <= s * 0.14) & (yy > cy - s * 0.26) & (yy <= cy + s * 0.1)
        legs = (yy > cy + s * 0.1) & (yy <= cy + s / 2) & (np.abs(np.abs(xx - cx) - s * 0.07) <= max(s * 0.04, 0.6))
        mask = head | body | legs
        rgb = np.where(head[..., None], np.array([225, 180, 140], np.float32), rgb)
        rgb = np.where(legs[..., None], np.array([40, 40, 90], np.float32), rgb)
    else:  # pragma: no cover
        raise ValueError(f"unknown thing {name!r}")
    return mask, rgb


def _place(name: str, rng: np.random.Generator, size: int, horizon: float, has_water: bool) -> tuple[float, float, float]:
    """Why: things sit where they would in a photo (kites up high, the rest on the ground)."""
    s = rng.uniform(0.22, 0.45) * size
    cx = rng.uniform(0.15, 0.85) * size
    if name == "kite":
        cy = rng.uniform(0.12, max(0.14, horizon / size - 0.05)) * size
        s *= 0.8
    else:
        cy = rng.uniform(max(horizon + s * 0.2, 0.45 * size), 0.88 * size - s * 0.25)
        cy = min(cy, size - s / 2)
    return cx, cy, s


def render_scene(
    rng: np.random.Generator, size: int, max_things: int, p_third_stuff: float, thing_names: tuple[str, ...]
) -> Scene:
    """Why: one deterministic draw of a scene from `rng`: bands, then things, then noise."""
    horizon = rng.uniform(0.3, 0.55) * size
    top = TOP_STUFF[0] if rng.random() < 0.75 else TOP_STUFF[1]
    ground = [GROUND_STUFF[rng.integers(len(GROUND_STUFF))]]
    if rng.random() < p_third_stuff:
        other = [g for g in GROUND_STUFF if g != ground[0]]
        ground.append(other[rng.integers(len(other))])
    yy, _ = _Grid.get(size)
    img = _texture(top, rng, size)
    label = np.full((size, size), BY_NAME[top].id, np.uint8)
    bounds = [horizon]
    if len(ground) == 2:
        bounds.append(rng.uniform(horizon + 0.2 * size, 0.85 * size))
    bounds.append(float(size))
    wobble = np.sin(np.arange(size, dtype=np.float32) * rng.uniform(0.1, 0.3) + rng.uniform(0, 6)) * rng.uniform(0, 2)
    for g, lo, hi in zip(ground, bounds[:-1], bounds[1:]):
        band = (yy >= lo + wobble[None, :]) & (yy < hi + (wobble[None, :] if hi < size else 0))
        tex = _texture(g, rng, size)
        img = np.where(band[..., None], tex, img)
        label[band] = BY_NAME[g].id

    n_things = int(rng.integers(1, max_things + 1))
    things: list[tuple[str, str]] = []
    has_water = "water" in ground
    for _ in range(n_things):
        name = thing_names[rng.integers(len(thing_names))]
        if name == "boat" and not has_water and rng.random() < 0.7:
            name = thing_names[rng.integers(len(thing_names))]
        cname = COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        cx, cy, s = _place(name, rng, size, horizon, has_water)
        mask, rgb = _draw_thing(name, rng, size, cx, cy, s, _shade(PALETTE[cname], rng))
        if not mask.any():
            continue
        img = np.where(mask[..., None], rgb, img)
        label[mask] = BY_NAME[name].id
        things.append((name, cname))

    gain = rng.uniform(0.85, 1.15)
    img = img * gain + rng.standard_normal((size, size, 1)).astype(np.float32) * 3
    image = np.clip(img, 0, 255).astype(np.uint8)
    stuff = [top] + ground
    return Scene(image=image, label=label, stuff=stuff, things=things)
