"""Vectorised analytic ray intersection with the few shapes a procedural room needs.

All rays share one origin ``o`` (the camera centre, three Python floats) and come as
three float32 direction arrays ``dx, dy, dz`` of one shape (a window of the image).
Directions need not be unit length: the renderer uses directions whose camera-z
component is 1, so the returned ray parameter ``t`` *is* the z-depth.

Each function returns ``(t, nx, ny, nz)``: the nearest hit in front of the origin
(``inf`` where the ray misses) and the outward unit normal in the world frame
(undefined where it misses). Per-ray work uses only ``+ - * /``, ``sqrt`` and
comparisons, which IEEE-754 rounds identically on every CPU (no SIMD-dispatched
transcendental kernels, no BLAS), so renders are bit-identical across machines.
Scalars are Python floats so that NumPy keeps the arrays in float32.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray
Vec3 = tuple[float, float, float]

#: hits closer than this to the origin are ignored (self-intersection guard)
EPS = 1e-4
_INF = np.float32(np.inf)
_f32 = np.float32

#: room faces, in this order: floor (y=0), ceiling (y=H), walls x=0, x=W, z=0, z=D
ROOM_FACE_NORMALS = np.array(
    [[0, 1, 0], [0, -1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float32
)


def _positive_or_inf(t: Array) -> Array:
    """Keep t > 0; anything else (negative, nan from 0/0, -inf) becomes +inf."""
    return np.where(t > 0, t, _INF)


def room_inside(o: Vec3, dx: Array, dy: Array, dz: Array, size: Vec3) -> tuple[Array, Array]:
    """Exit point of rays starting inside the box ``[0, W] x [0, H] x [0, D]``.

    Returns ``(t, face)`` with ``face`` indexing `ROOM_FACE_NORMALS` (int8); a ray
    from inside always exits, so ``t`` is finite. The room is rendered first, over
    the whole image, so it is the one place where per-face normals come from a table.
    """
    ox, oy, oz = o
    w, h, d = size
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = _positive_or_inf(np.where(dx > 0, _f32(w - ox), _f32(-ox)) / dx)
        ty = _positive_or_inf(np.where(dy > 0, _f32(h - oy), _f32(-oy)) / dy)
        tz = _positive_or_inf(np.where(dz > 0, _f32(d - oz), _f32(-oz)) / dz)
    t = np.minimum(np.minimum(tx, ty), tz)
    face_x = np.where(dx > 0, np.int8(3), np.int8(2))
    face_y = np.where(dy > 0, np.int8(1), np.int8(0))
    face_z = np.where(dz > 0, np.int8(5), np.int8(4))
    face = np.where(tx == t, face_x, np.where(ty == t, face_y, face_z))
    return t, face


def box(
    o: Vec3, dx: Array, dy: Array, dz: Array, center: Vec3, axes: tuple[Vec3, Vec3, Vec3], half: Vec3
) -> tuple[Array, Array, Array, Array]:
    """Oriented box: ``axes[i]`` is its i-th local unit axis in world coordinates,
    ``half[i]`` the half extent along it (slab method in the box's frame)."""
    rel = (o[0] - center[0], o[1] - center[1], o[2] - center[2])
    lo: list[Array] = []
    hi: list[Array] = []
    dl: list[Array] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for (ax, ay, az), h in zip(axes, half, strict=True):
            ol = ax * rel[0] + ay * rel[1] + az * rel[2]
            d = dx * ax + dy * ay + dz * az
            t1 = (-h - ol) / d
            t2 = (h - ol) / d
            lo.append(np.minimum(t1, t2))
            hi.append(np.maximum(t1, t2))
            dl.append(d)
    m12 = np.maximum(lo[1], lo[2])
    tnear = np.maximum(lo[0], m12)
    tfar = np.minimum(np.minimum(hi[0], hi[1]), hi[2])
    hit = (tnear <= tfar) & (tnear > EPS)
    t = np.where(hit, tnear, _INF)
    # the entry face is the slab entered last; its outward normal opposes the ray
    is0 = lo[0] >= m12
    is1 = ~is0 & (lo[1] >= lo[2])
    is2 = ~(is0 | is1)
    n0 = -np.sign(dl[0]) * is0
    n1 = -np.sign(dl[1]) * is1
    n2 = -np.sign(dl[2]) * is2
    a0, a1, a2 = axes
    nx = n0 * a0[0] + n1 * a1[0] + n2 * a2[0]
    ny = n0 * a0[1] + n1 * a1[1] + n2 * a2[1]
    nz = n0 * a0[2] + n1 * a1[2] + n2 * a2[2]
    return t, nx, ny, nz


def sphere(o: Vec3, dx: Array, dy: Array, dz: Array, center: Vec3, radius: float) -> tuple[Array, ...]:
    """Sphere seen from outside (the nearer root of the quadratic)."""
    ocx, ocy, ocz = o[0] - center[0], o[1] - center[1], o[2] - center[2]
    c = ocx * ocx + ocy * ocy + ocz * ocz - radius * radius
    a = dx * dx + dy * dy + dz * dz
    b = dx * ocx + dy * ocy + dz * ocz
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a
    t = np.where((disc >= 0) & (t > EPS), t, _INF)
    with np.errstate(invalid="ignore"):  # misses (t = inf) give nan normals, never used
        nx, ny, nz = ocx + t * dx, ocy + t * dy, ocz + t * dz
        inv = 1 / np.sqrt(nx * nx + ny * ny + nz * nz)  # not 1/r: cancellation in float32
        return t, nx * inv, ny * inv, nz * inv


def cylinder(
    o: Vec3, dx: Array, dy: Array, dz: Array, base: Vec3, radius: float, height: float
) -> tuple[Array, ...]:
    """Finite vertical (world-y) cylinder with caps; ``base`` is the bottom cap's centre."""
    ocx, ocz = o[0] - base[0], o[2] - base[2]
    y0, y1 = base[1], base[1] + height
    c = ocx * ocx + ocz * ocz - radius * radius
    a = dx * dx + dz * dz
    b = dx * ocx + dz * ocz
    disc = b * b - a * c
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = (-b - np.sqrt(np.maximum(disc, 0))) / a
        ys = o[1] + ts * dy
        side = (disc >= 0) & (ts > EPS) & (ys >= y0) & (ys <= y1)
        t = np.where(side, ts, _INF)
        cap_sign = 0.0
        if o[1] > y1 or o[1] < y0:  # a cap is visible only from beyond its plane
            y_cap, cap_sign = (y1, 1.0) if o[1] > y1 else (y0, -1.0)
            tc = (y_cap - o[1]) / dy
            xc = ocx + tc * dx
            zc = ocz + tc * dz
            cap = (tc > EPS) & (xc * xc + zc * zc <= radius * radius) & (tc < t)
            t = np.where(cap, tc, t)
        else:
            cap = np.zeros(t.shape, dtype=bool)
    with np.errstate(invalid="ignore"):  # misses (t = inf) give nan normals, never used
        nx, nz = ocx + t * dx, ocz + t * dz
        inv = ~cap / np.sqrt(nx * nx + nz * nz)  # not 1/r: cancellation in float32
        return t, nx * inv, cap * _f32(cap_sign), nz * inv
