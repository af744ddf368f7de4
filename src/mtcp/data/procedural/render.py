"""Ray casting a `Scene` into an RGB image and every label the project uses.

One primary ray per pixel centre (pixel ``i`` spans ``[i, i+1)``, so its centre is
``i + 0.5``; this matches the continuous coordinates that `mtcp.data.transforms`
uses when it scales and flips intrinsics). Ray directions have camera-z component
1, so the hit parameter is the z-depth directly. Each primitive is intersected only
inside the screen rectangle its bounding box projects to, which keeps the cost of
small objects (limbs, balls) small. After the cast, decals re-label the wall/floor
pixels they cover, and realistic imperfections are added: sensor depth holes
(random blobs, grazing angles, beyond range, glossy objects) and void label pixels
(thin bands along some object outlines and small blobs).

Determinism: randomness comes only from the generators passed in; imperfections are
placed in normalised image coordinates, so any (H, W) shows the same scene with the
same holes. Per-pixel arithmetic is elementwise float32 (+ - * / sqrt floor), which
is bit-exact across CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from mtcp.data.procedural import primitives as P
from mtcp.data.procedural import scene as S

#: NYU-v2 Kinect intrinsics at 640x480, scaled to the requested size
NYU_SIZE = (480, 640)
NYU_INTRINSICS = (518.86, 519.47, 325.58, 253.74)
#: depth sensor limits: beyond this range (m) or below this cosine of incidence -> no depth
MAX_RANGE = 10.0
MIN_INCIDENCE_COS = 0.08
IGNORE = 255
_F32 = np.float32


def intrinsics(height: int, width: int) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of the NYU camera scaled to an image of ``height x width``."""
    fx, fy, cx, cy = NYU_INTRINSICS
    sx, sy = width / NYU_SIZE[1], height / NYU_SIZE[0]
    return fx * sx, fy * sy, cx * sx, cy * sy


@dataclass(frozen=True)
class _Grid:
    """Per-size constants: camera-frame ray directions and normalised pixel centres."""

    xc: np.ndarray  # [1, W] (u + 0.5 - cx) / fx
    yc: np.ndarray  # [H, 1]
    inv_len: np.ndarray  # [H, W] 1 / |(xc, yc, 1)|
    un: np.ndarray  # [1, W] pixel centres / W
    vn: np.ndarray  # [H, 1]
    k: tuple[float, float, float, float]


@lru_cache(maxsize=8)
def _grid(height: int, width: int) -> _Grid:
    fx, fy, cx, cy = intrinsics(height, width)
    u = np.arange(width, dtype=np.float64) + 0.5
    v = np.arange(height, dtype=np.float64) + 0.5
    xc = ((u - cx) / fx).astype(_F32)[None, :]
    yc = ((v - cy) / fy).astype(_F32)[:, None]
    inv_len = (1.0 / np.sqrt(xc * xc + yc * yc + _F32(1))).astype(_F32)
    grid = _Grid(
        xc,
        yc,
        inv_len,
        (u / width).astype(_F32)[None, :],
        (v / height).astype(_F32)[:, None],
        (fx, fy, cx, cy),
    )
    for a in (grid.xc, grid.yc, grid.inv_len, grid.un, grid.vn):
        a.setflags(write=False)
    return grid


_CORNER_SEL = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=bool)


def _windows(
    scene: S.Scene, lo: np.ndarray, hi: np.ndarray, grid: _Grid, height: int, width: int
) -> list[tuple[slice, slice] | None]:
    """Screen rectangles (with a 1-pixel margin) covering each world box [lo, hi]."""
    if len(lo) == 0:
        return []
    corners = np.where(_CORNER_SEL[None], hi[:, None, :], lo[:, None, :]) - np.array(scene.cam_pos)
    r = scene.cam_rot
    cam = [
        corners[..., 0] * r[0][j] + corners[..., 1] * r[1][j] + corners[..., 2] * r[2][j] for j in range(3)
    ]
    fx, fy, cx, cy = grid.k
    z = cam[2]
    zs = np.maximum(z, 1e-3)
    u, v = fx * cam[0] / zs + cx, fy * cam[1] / zs + cy
    out: list[tuple[slice, slice] | None] = []
    for i in range(len(lo)):
        zmin, zmax = z[i].min(), z[i].max()
        if zmax <= 0.05:
            out.append(None)
            continue
        if zmin <= 0.05:  # straddles the camera plane: be conservative
            out.append((slice(0, height), slice(0, width)))
            continue
        x0, x1 = max(int(np.floor(u[i].min())) - 1, 0), min(int(np.ceil(u[i].max())) + 1, width)
        y0, y1 = max(int(np.floor(v[i].min())) - 1, 0), min(int(np.ceil(v[i].max())) + 1, height)
        out.append((slice(y0, y1), slice(x0, x1)) if x0 < x1 and y0 < y1 else None)
    return out


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def _tri(x: np.ndarray) -> np.ndarray:
    """Triangle wave in [0, 1] with period 1 (a cheap, exactly reproducible 'sine')."""
    return np.abs(_frac(x) - _F32(0.5)) * _F32(2)


def _hash01(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Integer hash of cell indices -> [0, 1): per-plank / per-cell variation."""
    h = np.floor(a).astype(np.int32).view(np.uint32) * np.uint32(2654435761)
    if b is not None:
        h = h ^ (np.floor(b).astype(np.int32).view(np.uint32) * np.uint32(2246822519))
        h = h * np.uint32(3266489917)
    return (h >> np.uint32(16)).astype(_F32) * _F32(1.0 / 65536)


def _pattern(surf: S.Surface, center: S.Vec3, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """Mixing weight in [0, 1] between a surface's two colours at world points (px, py, pz)."""
    t, q = surf.texture, surf.params
    if t == S.CHECKER:
        k = np.floor(px * _F32(1 / q[0])) + np.floor(pz * _F32(1 / q[0]))
        return k - _F32(2) * np.floor(k * _F32(0.5))
    if t == S.PLANKS:
        w = q[0] * 0.5
        across = pz * _F32(1 / w)
        seam = _frac(across) < _F32(0.06)
        grain = _tri(px * _F32(1.3) + _hash01(across) * _F32(7)) * _F32(0.25)
        return np.maximum(_hash01(across) * _F32(0.6) + grain, seam)
    if t == S.WALLPAPER:
        return (_frac((px + pz) * _F32(1 / q[0])) < _F32(q[1])).astype(_F32)
    if t == S.GRAIN:
        g = _frac(px * _F32(q[0]) + _F32(q[1]) + _F32(0.6) * _tri(pz * _F32(1.7) + py * _F32(2.3)))
        return g * g
    if t == S.DRAWERS:
        return (_frac(py * _F32(1 / q[0])) < _F32(0.05)).astype(_F32)
    if t == S.HOOPS:
        return (_frac(py * _F32(1 / q[0])) < _F32(0.12)).astype(_F32)
    if t == S.BAND:
        return (np.abs(py - _F32(center[1])) < _F32(0.35 * q[0])).astype(_F32)
    raise ValueError(f"texture {t} needs decal coordinates")


def _decal_coords(
    decal: S.Decal, px: np.ndarray, py: np.ndarray, pz: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """In-plane coordinates of world points relative to the decal's centre (rotated for rugs)."""
    if decal.face == 0:
        a, b = px - _F32(decal.center[0]), pz - _F32(decal.center[1])
        c, s = float(np.cos(decal.angle)), float(np.sin(decal.angle))
        return a * _F32(c) + b * _F32(s), b * _F32(c) - a * _F32(s)
    h = pz if decal.face in (2, 3) else px
    return h - _F32(decal.center[0]), py - _F32(decal.center[1])


def _decal_pattern(decal: S.Decal, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    surf, q = decal.surface, decal.surface.params
    hu, hv = decal.half
    if surf.texture == S.RUG_PATTERN:
        border = (np.abs(u) > _F32(hu - 0.12)) | (np.abs(v) > _F32(hv - 0.12))
        return np.maximum(_tri((u + v) * _F32(1 / q[0])), border)
    if surf.texture == S.CELLS:
        frame = (np.abs(u) > _F32(hu - 0.04)) | (np.abs(v) > _F32(hv - 0.04))
        inside = _F32(0.35) + _F32(0.65) * _hash01(
            u * _F32(1 / q[4]) + _F32(64), v * _F32(1 / q[4]) + _F32(64)
        )
        return np.where(frame, _F32(0), inside)
    if surf.texture == S.DOOR_PANELS:
        frame = (np.abs(u) > _F32(hu - 0.06)) | (v > _F32(hv - 0.06))
        panel = (np.abs(np.abs(u) - _F32(hu * 0.5)) < _F32(0.02)) | (np.abs(v) < _F32(0.02))
        grain = _F32(0.25) * _tri(u * _F32(9) + _F32(0.3) * _tri(v * _F32(1.3)))
        return np.maximum(grain, frame | panel)
    return np.zeros(u.shape, _F32)


def _blobs(
    rng: np.random.Generator, n: int, r_range: tuple[float, float], grid: _Grid, height: int, width: int
) -> np.ndarray:
    """A mask of ``n`` random ellipses placed in normalised image coordinates."""
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(n):
        cu, cv = rng.uniform(0, 1, size=2)
        ru = rng.uniform(*r_range)
        rv = ru * rng.uniform(0.6, 1.6) * (640 / 480)
        x0, x1 = max(int((cu - ru) * width) - 1, 0), min(int((cu + ru) * width) + 2, width)
        y0, y1 = max(int((cv - rv) * height) - 1, 0), min(int((cv + rv) * height) + 2, height)
        if x0 >= x1 or y0 >= y1:
            continue
        du = (grid.un[:, x0:x1] - _F32(cu)) * _F32(1 / ru)
        dv = (grid.vn[y0:y1] - _F32(cv)) * _F32(1 / rv)
        mask[y0:y1, x0:x1] |= du * du + dv * dv <= 1
    return mask


def _boundaries(ids: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of a different id (a 2-pixel band straddling each boundary)."""
    e = np.zeros(ids.shape, dtype=bool)
    dh = ids[:, 1:] != ids[:, :-1]
    dv = ids[1:] != ids[:-1]
    e[:, 1:] |= dh
    e[:, :-1] |= dh
    e[1:] |= dv
    e[:-1] |= dv
    return e


def _dilate(m: np.ndarray) -> np.ndarray:
    d = m.copy()
    d[:, 1:] |= m[:, :-1]
    d[:, :-1] |= m[:, 1:]
    d[1:] |= m[:-1]
    d[:-1] |= m[1:]
    return d


def render_scene(
    scene: S.Scene,
    height: int,
    width: int,
    rng_imperfections: np.random.Generator,
    rng_noise: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Render ``scene``; returns numpy arrays (labels uint8 with 255 = void).

    Keys: ``image`` uint8 [3,H,W]; ``depth`` float32 [H,W] (z in metres, 0 = hole);
    ``normals`` float32 [3,H,W] (camera frame, facing the camera, 0 at holes);
    ``semseg``, ``instance``, ``human_parts``, ``sal``, ``edge`` uint8 [H,W];
    ``surface`` uint8 [H,W] (primitive/decal index, for tests and debugging).
    """
    g = _grid(height, width)
    r = scene.cam_rot
    o = scene.cam_pos
    # world-space ray directions (camera-z component 1): d = R @ (xc, yc, 1)
    dx = r[0][0] * g.xc + r[0][1] * g.yc + _F32(r[0][2])
    dy = r[1][0] * g.xc + r[1][1] * g.yc + _F32(r[1][2])
    dz = r[2][0] * g.xc + r[2][1] * g.yc + _F32(r[2][2])

    # ---- primary visibility: room first (everywhere), then the solids in their windows
    t, face = P.room_inside(o, dx, dy, dz, scene.room)
    sid = face.astype(np.uint8)
    fi = face.astype(np.intp)
    nx, ny, nz = (np.take(P.ROOM_FACE_NORMALS[:, j], fi) for j in range(3))

    prims, decals = scene.prims, scene.decals
    n_room = len(scene.room_surfaces)
    surfaces = scene.room_surfaces + [p.surface for p in prims] + [d.surface for d in decals]
    boxes = [p.bounds() for p in prims] + [
        (
            tuple(min(c[k] for c in d.corners) for k in range(3)),
            tuple(max(c[k] for c in d.corners) for k in range(3)),
        )
        for d in decals
    ]
    lo = np.array([b[0] for b in boxes], dtype=np.float64).reshape(-1, 3)
    hi = np.array([b[1] for b in boxes], dtype=np.float64).reshape(-1, 3)
    wins = _windows(scene, lo, hi, g, height, width)

    for k, p in enumerate(prims):
        win = wins[k]
        if win is None:
            continue
        wdx, wdy, wdz = dx[win], dy[win], dz[win]
        if p.kind == "box":
            tk, ax, ay, az = P.box(o, wdx, wdy, wdz, p.center, p.axes, p.half)
        elif p.kind == "sphere":
            tk, ax, ay, az = P.sphere(o, wdx, wdy, wdz, p.center, p.radius)
        else:
            tk, ax, ay, az = P.cylinder(o, wdx, wdy, wdz, p.center, p.radius, p.height)
        tw = t[win]
        m = tk < tw
        np.copyto(tw, tk, where=m)
        np.copyto(sid[win], n_room + k, where=m)
        np.copyto(nx[win], ax, where=m)
        np.copyto(ny[win], ay, where=m)
        np.copyto(nz[win], az, where=m)

    px = _F32(o[0]) + t * dx
    py = _F32(o[1]) + t * dy
    pz = _F32(o[2]) + t * dz

    # ---- decals: re-label the face pixels they cover (same depth and normal)
    pattern = np.zeros((height, width), dtype=_F32)
    for k, d in enumerate(decals):
        win = wins[len(prims) + k]
        if win is None:
            continue
        sw = sid[win]
        u, v = _decal_coords(d, px[win], py[win], pz[win])
        m = (sw == d.face) & (np.abs(u) <= _F32(d.half[0])) & (np.abs(v) <= _F32(d.half[1]))
        np.copyto(sw, n_room + len(prims) + k, where=m)
        np.copyto(pattern[win], _decal_pattern(d, u, v), where=m)

    # ---- textures of the structure (whole image) and of the solids (their windows)
    floor = scene.room_surfaces[0]
    np.copyto(pattern, _pattern(floor, (0.0, 0.0, 0.0), px, py, pz), where=sid == 0)
    wall = scene.room_surfaces[2]
    np.copyto(pattern, _pattern(wall, (0.0, 0.0, 0.0), px, py, pz), where=(sid >= 2) & (sid <= 5))
    for k, p in enumerate(prims):
        win = wins[k]
        if win is None or p.surface.texture == S.FLAT:
            continue
        np.copyto(
            pattern[win],
            _pattern(p.surface, p.center, px[win], py[win], pz[win]),
            where=sid[win] == n_room + k,
        )

    # ---- orientation, camera-frame normals, labels
    nd = nx * dx + ny * dy + nz * dz
    flip = np.where(nd > 0, _F32(-1), _F32(1))
    nx *= flip
    ny *= flip
    nz *= flip
    cos_inc = -(nd * flip) * g.inv_len

    def table(attr: str, dtype: type) -> np.ndarray:
        return np.array([getattr(s, attr) for s in surfaces], dtype=dtype)

    sidx = sid.astype(np.intp)
    semseg = table("cls", np.uint8)[sidx]
    instance = table("inst", np.uint8)[sidx]
    parts = table("part", np.uint8)[sidx]
    sal = table("salient", np.uint8)[sidx]
    edge = _boundaries(instance)

    # ---- imperfections (drawn in a fixed order from their own generator)
    rim = rng_imperfections
    holes = _blobs(rim, int(rim.integers(1, 5)), (0.015, 0.06), g, height, width)
    holes |= (cos_inc < _F32(MIN_INCIDENCE_COS)) | (t > _F32(MAX_RANGE)) | table("depth_invalid", bool)[sidx]
    void = _blobs(rim, int(rim.integers(0, 3)), (0.008, 0.025), g, height, width)
    objects = sorted({s.inst for s in surfaces if s.salient})
    chosen = {i for i in objects if rim.random() < 0.4}
    if chosen:
        near = _dilate(np.array([s.inst in chosen for s in surfaces], dtype=bool)[sidx])
        void |= edge & near

    valid = ~holes
    depth = np.where(valid, t, _F32(0))
    normals = np.stack(
        [
            (r[0][0] * nx + r[1][0] * ny + r[2][0] * nz) * valid,
            (r[0][1] * nx + r[1][1] * ny + r[2][1] * nz) * valid,
            (r[0][2] * nx + r[1][2] * ny + r[2][2] * nz) * valid,
        ]
    )
    for lab in (semseg, sal, parts):
        np.copyto(lab, IGNORE, where=void)
    if not scene.has_figure:
        parts.fill(IGNORE)

    # ---- appearance: Lambertian point light + ambient, two-colour textures, sensor noise
    lx, ly, lz = (_F32(c) - q for c, q in zip(scene.light, (px, py, pz), strict=True))
    d2 = lx * lx + ly * ly + lz * lz
    ndl = np.maximum((nx * lx + ny * ly + nz * lz) / np.sqrt(d2), _F32(0))
    shade = (_F32(scene.ambient) + _F32(scene.diffuse) * ndl / (_F32(1) + _F32(0.05) * d2)) * _F32(
        scene.exposure * 255.0
    )
    col_a, col_b = table("colour_a", _F32), table("colour_b", _F32)
    img = np.empty((3, height, width), dtype=_F32)
    for c in range(3):  # per-channel take: much cheaper than one fancy-indexed gather
        a = np.take(col_a[:, c], sidx)
        img[c] = (a + (np.take(col_b[:, c], sidx) - a) * pattern) * shade
    img += rng_noise.standard_normal((3, height, width), dtype=_F32) * _F32(scene.noise * 255.0)
    np.clip(img, 0, 255, out=img)
    image = (img + _F32(0.5)).astype(np.uint8)

    return {
        "image": image,
        "depth": depth,
        "normals": normals,
        "semseg": semseg,
        "instance": instance,
        "human_parts": parts,
        "sal": sal,
        "edge": edge.astype(np.uint8),
        "surface": sid,
    }


def render_sample(seed: int, split_code: int, index: int, height: int, width: int) -> tuple[S.Scene, dict]:
    """The scene and rendering of key (seed, split, index): three independent streams
    (layout, imperfections, sensor noise) spawned from ``SeedSequence([seed, split, index])``."""
    s_scene, s_imp, s_noise = np.random.SeedSequence([seed, split_code, index]).spawn(3)
    scene = S.sample_scene(np.random.default_rng(s_scene))
    out = render_scene(scene, height, width, np.random.default_rng(s_imp), np.random.default_rng(s_noise))
    return scene, out
