"""Deterministic random layout of one indoor scene.

A scene is a box-shaped room (floor, four walls, ceiling) with a pinhole camera
inside it, 3-7 pieces of furniture and props standing on the floor, in ~80% of the
scenes an articulated human figure, and flat decals (a rug on the floor, pictures
and a door on the walls) that change the semantic class without any depth or normal
change. Everything is drawn from the given `numpy.random.Generator` only, and the
per-scene geometry uses plain Python float arithmetic (no BLAS), so the same
generator state gives the same scene on every machine and at every image size.

World frame: y up, floor at y = 0, the room spans ``[0, W] x [0, H] x [0, D]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

Vec3 = tuple[float, float, float]
Mat3 = tuple[Vec3, Vec3, Vec3]  # rows

#: semantic classes; structure and decals first, then salient objects
SEMSEG_CLASSES: tuple[str, ...] = (
    "floor",
    "wall",
    "ceiling",
    "rug",
    "picture",
    "door",
    "table",
    "cabinet",
    "ball",
    "barrel",
    "person",
)
FLOOR, WALL, CEILING, RUG, PICTURE, DOOR, TABLE, CABINET, BALL, BARREL, PERSON = range(len(SEMSEG_CLASSES))
#: classes that are salient (objects and the figure)
SALIENT_CLASSES = frozenset({TABLE, CABINET, BALL, BARREL, PERSON})

HUMAN_PART_CLASSES: tuple[str, ...] = (
    "background",
    "head",
    "torso",
    "upper_arm",
    "lower_arm",
    "upper_leg",
    "lower_leg",
)
HEAD, TORSO, UPPER_ARM, LOWER_ARM, UPPER_LEG, LOWER_LEG = range(1, 7)

# texture kinds (evaluated in render.py from the world hit point)
FLAT, CHECKER, PLANKS, WALLPAPER, GRAIN, CELLS, RUG_PATTERN, DRAWERS, HOOPS, BAND, DOOR_PANELS = range(11)


@dataclass
class Surface:
    """Labels and appearance shared by all pixels of one primitive or decal."""

    cls: int
    inst: int
    part: int = 0
    colour_a: Vec3 = (0.5, 0.5, 0.5)
    colour_b: Vec3 = (0.5, 0.5, 0.5)
    texture: int = FLAT
    params: tuple[float, ...] = (1.0,)
    depth_invalid: bool = False  # e.g. a glossy ball the depth sensor cannot see

    @property
    def salient(self) -> bool:
        return self.cls in SALIENT_CLASSES


@dataclass
class Primitive:
    """A solid: ``kind`` is "box" (center, axes, half), "sphere" (center, radius) or
    "cylinder" (center = bottom-cap centre, radius, height)."""

    kind: str
    surface: Surface
    center: Vec3
    axes: Mat3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    half: Vec3 = (0.0, 0.0, 0.0)
    radius: float = 0.0
    height: float = 0.0

    def bounds(self) -> tuple[Vec3, Vec3]:
        """World axis-aligned bounding box, used to cull rays in screen space."""
        if self.kind == "box":
            ext = tuple(sum(abs(self.axes[i][k]) * self.half[i] for i in range(3)) for k in range(3))
            return _sub(self.center, ext), _add(self.center, ext)  # type: ignore[arg-type]
        r = self.radius
        if self.kind == "sphere":
            return _sub(self.center, (r, r, r)), _add(self.center, (r, r, r))
        c = self.center
        return (c[0] - r, c[1], c[2] - r), (c[0] + r, c[1] + self.height, c[2] + r)


@dataclass
class Decal:
    """A flat rectangle on room face ``face`` (0 floor, 2..5 walls; see primitives).

    ``center``/``half`` are in the face's in-plane coordinates: (x, z) on the floor,
    (horizontal, y) on a wall, where horizontal is z on x-walls and x on z-walls;
    ``angle`` rotates a floor decal about the vertical.
    """

    face: int
    surface: Surface
    center: tuple[float, float]
    half: tuple[float, float]
    angle: float = 0.0
    corners: tuple[Vec3, ...] = ()


@dataclass
class Scene:
    room: Vec3
    cam_pos: Vec3
    cam_rot: Mat3  # world-from-camera rotation; columns are the camera x, y, z axes
    light: Vec3
    ambient: float
    diffuse: float
    exposure: float
    noise: float
    room_surfaces: list[Surface]
    prims: list[Primitive] = field(default_factory=list)
    decals: list[Decal] = field(default_factory=list)
    has_figure: bool = False


# ----------------------------------------------------------------------------- small maths
def _add(a: Vec3, b: Vec3) -> Vec3:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _sub(a: Vec3, b: Vec3) -> Vec3:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def _scale(a: Vec3, s: float) -> Vec3:
    return (a[0] * s, a[1] * s, a[2] * s)


def _cross(a: Vec3, b: Vec3) -> Vec3:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _unit(a: Vec3) -> Vec3:
    return _scale(a, 1.0 / math.sqrt(a[0] * a[0] + a[1] * a[1] + a[2] * a[2]))


def _matmul(a: Mat3, b: Mat3) -> Mat3:
    return tuple(tuple(sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)) for i in range(3))  # type: ignore[return-value]


def _matvec(a: Mat3, v: Vec3) -> Vec3:
    return tuple(a[i][0] * v[0] + a[i][1] * v[1] + a[i][2] * v[2] for i in range(3))  # type: ignore[return-value]


def _columns(a: Mat3) -> Mat3:
    return tuple(tuple(a[i][j] for i in range(3)) for j in range(3))  # type: ignore[return-value]


def rot_x(a: float) -> Mat3:
    c, s = math.cos(a), math.sin(a)
    return ((1.0, 0.0, 0.0), (0.0, c, -s), (0.0, s, c))


def rot_y(a: float) -> Mat3:
    c, s = math.cos(a), math.sin(a)
    return ((c, 0.0, s), (0.0, 1.0, 0.0), (-s, 0.0, c))


def rot_z(a: float) -> Mat3:
    c, s = math.cos(a), math.sin(a)
    return ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _jitter(rng: np.random.Generator, colour: Vec3, amount: float = 0.12) -> Vec3:
    """Per-instance colour variation around a class palette entry."""
    j = rng.uniform(1.0 - amount, 1.0 + amount, size=3)
    return tuple(float(min(1.0, c * k)) for c, k in zip(colour, j, strict=True))  # type: ignore[return-value]


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[int(rng.integers(len(options)))]


# ----------------------------------------------------------------------------- palettes
_FLOOR_COLOURS = [(0.55, 0.37, 0.22), (0.62, 0.48, 0.32), (0.45, 0.45, 0.47), (0.70, 0.66, 0.58)]
_WALL_COLOURS = [(0.82, 0.80, 0.72), (0.70, 0.78, 0.82), (0.80, 0.72, 0.68), (0.74, 0.80, 0.70)]
_RUG_COLOURS = [
    ((0.62, 0.12, 0.12), (0.85, 0.70, 0.30)),
    ((0.15, 0.22, 0.55), (0.80, 0.80, 0.75)),
    ((0.18, 0.45, 0.25), (0.75, 0.62, 0.35)),
]
_CABINET_COLOURS = [(0.92, 0.92, 0.90), (0.35, 0.35, 0.38), (0.55, 0.60, 0.68), (0.75, 0.55, 0.35)]
_BALL_COLOURS = [
    (0.90, 0.15, 0.10),
    (0.95, 0.80, 0.10),
    (0.15, 0.35, 0.90),
    (0.95, 0.50, 0.10),
    (0.20, 0.75, 0.25),
]
_BARREL_COLOURS = [(0.20, 0.45, 0.75), (0.25, 0.55, 0.30), (0.60, 0.62, 0.65), (0.70, 0.20, 0.20)]
_SKIN = [(0.92, 0.75, 0.62), (0.78, 0.57, 0.42), (0.55, 0.38, 0.26), (0.36, 0.24, 0.17)]
_SHIRT = [(0.85, 0.15, 0.20), (0.20, 0.40, 0.80), (0.95, 0.95, 0.95), (0.20, 0.65, 0.35), (0.95, 0.70, 0.15)]
_TROUSERS = [(0.15, 0.18, 0.35), (0.25, 0.25, 0.25), (0.55, 0.45, 0.30), (0.35, 0.40, 0.55)]


# ----------------------------------------------------------------------------- sampling
class _Layout:
    """Book-keeping while sampling: free floor space and the next ids."""

    def __init__(self, rng: np.random.Generator, room: Vec3, cam: Vec3, yaw: float) -> None:
        self.rng, self.room, self.cam, self.yaw = rng, room, cam, yaw
        self.discs: list[tuple[float, float, float]] = []  # (x, z, radius) footprints
        self.next_inst = 6  # 0..5 are the room faces

    def new_inst(self) -> int:
        self.next_inst += 1
        return self.next_inst

    def spot(self, radius: float, near: float = 1.0, far: float = 6.5) -> tuple[float, float] | None:
        """A free floor position for a footprint of ``radius``, preferably in view."""
        w, _, d = self.room
        for attempt in range(60):
            if attempt < 40:  # in front of the camera, within the horizontal field of view
                ang = self.yaw + _u(self.rng, -0.5, 0.5)
                dist = _u(self.rng, near, far)
                x = self.cam[0] + dist * math.sin(ang)
                z = self.cam[2] + dist * math.cos(ang)
            else:
                x, z = _u(self.rng, 0.0, w), _u(self.rng, 0.0, d)
            m = radius + 0.05
            if not (m <= x <= w - m and m <= z <= d - m):
                continue
            if (x - self.cam[0]) ** 2 + (z - self.cam[2]) ** 2 < (radius + 0.6) ** 2:
                continue
            if any((x - px) ** 2 + (z - pz) ** 2 < (radius + pr + 0.08) ** 2 for px, pz, pr in self.discs):
                continue
            self.discs.append((x, z, radius))
            return x, z
        return None


def _yaw_axes(yaw: float) -> Mat3:
    return _columns(rot_y(yaw))


def _table(lay: _Layout) -> list[Primitive]:
    rng = lay.rng
    w, d, h = _u(rng, 0.8, 1.6), _u(rng, 0.5, 0.9), _u(rng, 0.65, 0.8)
    spot = lay.spot(0.5 * math.hypot(w, d))
    if spot is None:
        return []
    yaw = _u(rng, 0.0, math.pi)
    rot = rot_y(yaw)
    axes = _columns(rot)
    surf = Surface(
        TABLE,
        lay.new_inst(),
        colour_a=_jitter(rng, (0.55, 0.35, 0.18)),
        texture=GRAIN,
        params=(_u(rng, 4.0, 9.0), _u(rng, 0.0, 1.0)),
    )
    surf.colour_b = _scale(surf.colour_a, 0.7)
    x, z = spot
    top = 0.025
    prims = [Primitive("box", surf, (x, h - top, z), axes, (w / 2, top, d / 2))]
    leg = 0.03
    for sx in (-1, 1):
        for sz in (-1, 1):
            off = _matvec(rot, (sx * (w / 2 - 0.07), 0.0, sz * (d / 2 - 0.07)))
            prims.append(
                Primitive(
                    "box",
                    surf,
                    (x + off[0], (h - 2 * top) / 2, z + off[2]),
                    axes,
                    (leg, (h - 2 * top) / 2, leg),
                )
            )
    return prims


def _cabinet(lay: _Layout) -> list[Primitive]:
    rng = lay.rng
    w, d, h = _u(rng, 0.4, 1.2), _u(rng, 0.35, 0.6), _u(rng, 0.5, 1.8)
    spot = lay.spot(0.5 * math.hypot(w, d))
    if spot is None:
        return []
    a = _jitter(rng, _pick(rng, _CABINET_COLOURS))  # type: ignore[arg-type]
    surf = Surface(
        CABINET,
        lay.new_inst(),
        colour_a=a,
        colour_b=_scale(a, 0.45),
        texture=DRAWERS,
        params=(_u(rng, 0.2, 0.45),),
    )
    return [
        Primitive(
            "box", surf, (spot[0], h / 2, spot[1]), _yaw_axes(_u(rng, 0.0, math.pi)), (w / 2, h / 2, d / 2)
        )
    ]


def _ball(lay: _Layout, furniture: list[Primitive]) -> list[Primitive]:
    rng = lay.rng
    r = _u(rng, 0.1, 0.28)
    a = _jitter(rng, _pick(rng, _BALL_COLOURS))  # type: ignore[arg-type]
    b = _jitter(rng, _pick(rng, _BALL_COLOURS))  # type: ignore[arg-type]
    surf = Surface(
        BALL,
        lay.new_inst(),
        colour_a=a,
        colour_b=b,
        texture=BAND,
        params=(r,),
        depth_invalid=bool(rng.random() < 0.15),
    )
    tops = [
        p
        for p in furniture
        if p.kind == "box"
        and (p.surface.cls == CABINET or (p.surface.cls == TABLE and p.center[1] - p.half[1] > 0.1))
    ]  # cabinets and table tops, not legs
    if tops and rng.random() < 0.3:
        top = tops[int(rng.integers(len(tops)))]
        if min(top.half[0], top.half[2]) > r:
            lx = _u(rng, -(top.half[0] - r), top.half[0] - r)
            lz = _u(rng, -(top.half[2] - r), top.half[2] - r)
            ax = top.axes
            x = top.center[0] + lx * ax[0][0] + lz * ax[2][0]
            z = top.center[2] + lx * ax[0][2] + lz * ax[2][2]
            return [Primitive("sphere", surf, (x, top.center[1] + top.half[1] + r, z), radius=r)]
    spot = lay.spot(r)
    if spot is None:
        return []
    return [Primitive("sphere", surf, (spot[0], r, spot[1]), radius=r)]


def _barrel(lay: _Layout) -> list[Primitive]:
    rng = lay.rng
    r, h = _u(rng, 0.12, 0.3), _u(rng, 0.4, 1.1)
    spot = lay.spot(r)
    if spot is None:
        return []
    a = _jitter(rng, _pick(rng, _BARREL_COLOURS))  # type: ignore[arg-type]
    surf = Surface(
        BARREL,
        lay.new_inst(),
        colour_a=a,
        colour_b=_scale(a, 0.4),
        texture=HOOPS,
        params=(_u(rng, 0.15, 0.3),),
    )
    return [Primitive("cylinder", surf, (spot[0], 0.0, spot[1]), radius=r, height=h)]


def _limb(start: Vec3, rot: Mat3, length: float, thick: float, surf: Surface) -> tuple[Primitive, Vec3]:
    """A box hanging from joint ``start`` along ``rot``'s -y axis; returns it and its end joint."""
    down = _matvec(rot, (0.0, -1.0, 0.0))
    center = _add(start, _scale(down, length / 2))
    prim = Primitive("box", surf, center, _columns(rot), (thick / 2, length / 2 + 0.02, thick / 2))
    return prim, _add(start, _scale(down, length))


def _figure(lay: _Layout) -> list[Primitive]:
    """An articulated person in a random plausible pose, feet on the floor."""
    rng = lay.rng
    s = _u(rng, 0.85, 1.1)
    inst = lay.new_inst()
    skin = _jitter(rng, _pick(rng, _SKIN), 0.05)  # type: ignore[arg-type]
    shirt = _jitter(rng, _pick(rng, _SHIRT))  # type: ignore[arg-type]
    trousers = _jitter(rng, _pick(rng, _TROUSERS))  # type: ignore[arg-type]
    long_sleeves, shorts = bool(rng.random() < 0.5), bool(rng.random() < 0.3)

    def surf(part: int, colour: Vec3) -> Surface:
        return Surface(PERSON, inst, part, colour, colour, FLAT)

    torso_h, torso_w, torso_d = 0.56 * s, 0.36 * s, 0.2 * s
    arm_t, leg_t = 0.09 * s, 0.13 * s
    lean = _u(rng, -0.1, 0.3)
    r_torso = rot_x(lean)
    local: list[Primitive] = [
        Primitive(
            "box",
            surf(TORSO, shirt),
            _matvec(r_torso, (0.0, torso_h / 2, 0.0)),
            _columns(r_torso),
            (torso_w / 2, torso_h / 2, torso_d / 2),
        ),
        Primitive(
            "sphere", surf(HEAD, skin), _matvec(r_torso, (0.0, torso_h + 0.14 * s, 0.0)), radius=0.11 * s
        ),
    ]
    for side in (-1.0, 1.0):
        shoulder = _matvec(r_torso, (side * (torso_w / 2 + arm_t / 2), torso_h - 0.05 * s, 0.0))
        r_up = _matmul(r_torso, _matmul(rot_z(side * _u(rng, 0.05, 1.3)), rot_x(-_u(rng, -0.5, 1.7))))
        upper, elbow = _limb(shoulder, r_up, 0.3 * s, arm_t, surf(UPPER_ARM, shirt))
        r_low = _matmul(r_up, rot_x(-_u(rng, 0.0, 2.0)))
        lower, _ = _limb(
            elbow, r_low, 0.28 * s, 0.8 * arm_t, surf(LOWER_ARM, shirt if long_sleeves else skin)
        )
        local += [upper, lower]
    support = int(rng.integers(2))
    for i, side in enumerate((-1.0, 1.0)):
        flex, knee = (
            (_u(rng, -0.25, 0.35), _u(rng, 0.0, 0.35))
            if i == support
            else (_u(rng, -0.4, 1.0), _u(rng, 0.0, 1.5))
        )
        r_up = _matmul(rot_z(side * _u(rng, 0.0, 0.25)), rot_x(-flex))
        upper, knee_pos = _limb(
            (side * 0.095 * s, 0.0, 0.0), r_up, 0.44 * s, leg_t, surf(UPPER_LEG, trousers)
        )
        lower, _ = _limb(
            knee_pos,
            _matmul(r_up, rot_x(knee)),
            0.44 * s,
            0.85 * leg_t,
            surf(LOWER_LEG, skin if shorts else trousers),
        )
        local += [upper, lower]

    # rest the lowest point on the floor; the footprint radius keeps other objects away
    lows, reach = [], 0.0
    for p in local:
        lo, hi = p.bounds()
        lows.append(lo[1])
        reach = max(reach, *(math.hypot(x, z) for x in (lo[0], hi[0]) for z in (lo[2], hi[2])))
    spot = lay.spot(reach, near=1.5, far=5.0)
    if spot is None:
        return []
    r_fig = rot_y(_u(rng, 0.0, 2 * math.pi))
    root = (spot[0], -min(lows), spot[1])
    out = []
    for p in local:
        p.center = _add(root, _matvec(r_fig, p.center))
        p.axes = _columns(_matmul(r_fig, _columns(p.axes)))
        out.append(p)
    return out


def _wall_frame(face: int, room: Vec3) -> tuple[float, float]:
    """The horizontal extent of wall ``face`` (its in-plane horizontal coordinate range)."""
    return (0.0, room[2]) if face in (2, 3) else (0.0, room[0])


def _wall_point(face: int, room: Vec3, h: float, y: float) -> Vec3:
    fixed = {2: 0.0, 3: room[0], 4: 0.0, 5: room[2]}[face]
    return (fixed, y, h) if face in (2, 3) else (h, y, fixed)


def _facing_wall(room: Vec3, cam: Vec3, yaw: float) -> int:
    """The wall hit by the camera's horizontal viewing direction."""
    fx, fz = math.sin(yaw), math.cos(yaw)
    tx = ((room[0] - cam[0]) / fx if fx > 0 else -cam[0] / fx) if fx != 0 else math.inf
    tz = ((room[2] - cam[2]) / fz if fz > 0 else -cam[2] / fz) if fz != 0 else math.inf
    if tx < tz:
        return 3 if fx > 0 else 2
    return 5 if fz > 0 else 4


def _decals(lay: _Layout) -> list[Decal]:
    rng, room = lay.rng, lay.room
    out: list[Decal] = []
    if rng.random() < 0.6:  # a rug on the floor, in view
        hw, hd = _u(rng, 0.5, 1.3), _u(rng, 0.4, 1.0)
        ang = lay.yaw + _u(rng, -0.4, 0.4)
        dist = _u(rng, 1.5, 4.0)
        cx = min(max(lay.cam[0] + dist * math.sin(ang), 0.2), room[0] - 0.2)
        cz = min(max(lay.cam[2] + dist * math.cos(ang), 0.2), room[2] - 0.2)
        a, b = _pick(rng, _RUG_COLOURS)  # type: ignore[misc]
        surf = Surface(
            RUG,
            lay.new_inst(),
            colour_a=_jitter(rng, a),
            colour_b=_jitter(rng, b),
            texture=RUG_PATTERN,
            params=(_u(rng, 0.08, 0.2), hw, hd),
        )
        angle = _u(rng, 0.0, math.pi)
        c, s = math.cos(angle), math.sin(angle)
        corners = tuple((cx + u * c - v * s, 0.0, cz + u * s + v * c) for u in (-hw, hw) for v in (-hd, hd))
        out.append(Decal(0, surf, (cx, cz), (hw, hd), angle, corners))
    facing = _facing_wall(room, lay.cam, lay.yaw)
    used: dict[int, list[tuple[float, float]]] = {}

    def wall_slot(half_w: float) -> tuple[int, float] | None:
        for _ in range(10):
            face = facing if rng.random() < 0.7 else int(rng.integers(2, 6))
            lo, hi = _wall_frame(face, room)
            if hi - lo < 2 * half_w + 0.4:
                continue
            h = _u(rng, lo + half_w + 0.2, hi - half_w - 0.2)
            if all(abs(h - oh) > half_w + ow + 0.1 for oh, ow in used.get(face, [])):
                used.setdefault(face, []).append((h, half_w))
                return face, h
        return None

    if rng.random() < 0.5:  # a door, from the floor up
        half_w, height = _u(rng, 0.4, 0.5), _u(rng, 1.95, 2.15)
        slot = wall_slot(half_w)
        if slot is not None:
            face, h = slot
            a = _jitter(rng, _pick(rng, [(0.50, 0.32, 0.18), (0.85, 0.85, 0.82), (0.35, 0.22, 0.12)]))  # type: ignore[arg-type]
            surf = Surface(
                DOOR,
                lay.new_inst(),
                colour_a=a,
                colour_b=_scale(a, 0.6),
                texture=DOOR_PANELS,
                params=(h, half_w, height),
            )
            corners = tuple(
                _wall_point(face, room, h + u, y) for u in (-half_w, half_w) for y in (0.0, height)
            )
            out.append(Decal(face, surf, (h, height / 2), (half_w, height / 2), 0.0, corners))
    for _ in range(int(rng.integers(0, 3))):  # pictures
        half_w, half_h = _u(rng, 0.15, 0.5), _u(rng, 0.15, 0.4)
        slot = wall_slot(half_w)
        if slot is None:
            continue
        face, h = slot
        y = _u(rng, 1.1, min(1.9, room[1] - half_h - 0.2))
        surf = Surface(
            PICTURE,
            lay.new_inst(),
            colour_a=_jitter(rng, (0.12, 0.10, 0.08)),
            colour_b=_jitter(rng, _pick(rng, _BALL_COLOURS), 0.3),  # type: ignore[arg-type]
            texture=CELLS,
            params=(h, y, half_w, half_h, _u(rng, 0.06, 0.15)),
        )
        corners = tuple(
            _wall_point(face, room, h + u, y + v) for u in (-half_w, half_w) for v in (-half_h, half_h)
        )
        out.append(Decal(face, surf, (h, y), (half_w, half_h), 0.0, corners))
    return out


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw one scene; all randomness comes from ``rng``."""
    room = (_u(rng, 3.5, 7.0), _u(rng, 2.4, 3.2), _u(rng, 3.5, 8.0))
    cam = (_u(rng, 0.5, room[0] - 0.5), _u(rng, 1.0, 1.7), _u(rng, 0.5, room[2] - 0.5))
    yaw = math.atan2(room[0] / 2 - cam[0], room[2] / 2 - cam[2]) + _u(rng, -0.7, 0.7)
    pitch, roll = _u(rng, -0.45, 0.02), _u(rng, -0.05, 0.05)
    fwd = (math.sin(yaw) * math.cos(pitch), math.sin(pitch), math.cos(yaw) * math.cos(pitch))
    right = _unit(_cross(fwd, (0.0, 1.0, 0.0)))
    down = _cross(fwd, right)
    c, s = math.cos(roll), math.sin(roll)
    right, down = _add(_scale(right, c), _scale(down, s)), _sub(_scale(down, c), _scale(right, s))
    cam_rot = _columns((right, down, fwd))  # rows of the transpose are the axes -> columns

    floor_tex = PLANKS if rng.random() < 0.5 else CHECKER
    floor_a = _jitter(rng, _pick(rng, _FLOOR_COLOURS))  # type: ignore[arg-type]
    wall_a = _jitter(rng, _pick(rng, _WALL_COLOURS), 0.06)  # type: ignore[arg-type]
    floor = Surface(
        FLOOR,
        0,
        colour_a=floor_a,
        colour_b=_scale(floor_a, _u(rng, 0.6, 0.8)),
        texture=floor_tex,
        params=(_u(rng, 0.3, 0.6), _u(rng, 0.0, 1.0)),
    )
    ceiling = Surface(CEILING, 1, colour_a=_jitter(rng, (0.93, 0.93, 0.90), 0.03))
    ceiling.colour_b = ceiling.colour_a
    wall_params = (_u(rng, 0.1, 0.3), _u(rng, 0.2, 0.6))
    walls = [
        Surface(
            WALL, 2 + k, colour_a=wall_a, colour_b=_scale(wall_a, 0.9), texture=WALLPAPER, params=wall_params
        )
        for k in range(4)
    ]

    lay = _Layout(rng, room, cam, yaw)
    decals = _decals(lay)
    prims: list[Primitive] = []
    has_figure = bool(rng.random() < 0.8)
    if has_figure:
        prims += _figure(lay)
        has_figure = bool(prims)
    for _ in range(int(rng.integers(3, 8))):
        kind = int(rng.integers(4))
        if kind == 0:
            prims += _table(lay)
        elif kind == 1:
            prims += _cabinet(lay)
        elif kind == 2:
            prims += _ball(lay, prims)
        else:
            prims += _barrel(lay)

    light = (_u(rng, 0.25, 0.75) * room[0], room[1] - 0.25, _u(rng, 0.25, 0.75) * room[2])
    return Scene(
        room=room,
        cam_pos=cam,
        cam_rot=cam_rot,
        light=light,
        ambient=_u(rng, 0.25, 0.45),
        diffuse=_u(rng, 0.9, 1.3),
        exposure=_u(rng, 0.85, 1.15),
        noise=_u(rng, 0.005, 0.025),
        room_surfaces=[floor, ceiling, *walls],
        prims=prims,
        decals=decals,
        has_figure=has_figure,
    )
