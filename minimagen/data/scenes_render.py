"""Rendering the "scenes" domain: shaded 3-D objects on a lit floor, ray cast per pixel, numpy only.

The captioned shapes (`shapes.py`) are flat pure hues on white: 97.7 % of their pixel values sit at 0
or 1, so clipping is always right and there is nothing for guidance or super-resolution to fix. These
scenes have the statistics of photographs instead: mid-tone colours, smooth shading, soft shadows,
specular highlights, a textured floor and wall under a gradient of light, values well inside (0, 1).

The world (x right, y up, z towards the viewer) is seen by an orthographic camera tilted down by
ELEVATION degrees, so an object looks the same size in every slot. Objects stand on the floor y = 0 at
x = SLOT_X[slot]; a wall stands at z = -WALL_Z. Every pixel is supersample x supersample rays
(`supersample=None` picks enough that every image is cast with >= 128 x 128 rays, so a 16 px and a
128 px render of one scene agree after box filtering). Each ray meets the floor or wall analytically and
every object inside its own window (objects never overlap: the widest is SIZE_WIDTH["large"] = 0.92 <
1 = the slot spacing). Shading of an object ray with albedo c (a COLORS entry) and unit normal n:
    D = AMBIENT + SKY * n_y + KEY * max(n . L, 0)          hemisphere ambient + Lambert (point light)
    s = shiny ? min(SPEC_KEY * lobe(n . H) + SPEC_BACK * lobe(n . H_back), SPEC_MAX) : 0
    f = shiny ? (1 - s) (F0 + F1 (1 - n . v)^3) : 0          Fresnel-like share of the room mirrored
    colour = (1 - s - f) * c * D + (s + f * env) * HIGHLIGHT
with H the half vector between the light and the view direction v (Blinn-Phong), lobe(x) =
clip((x - cut) / (1 - cut), 0, 1)^2 (a highlight with a clear edge) and env the brightness of the room
in the mirror direction (floor below, wall above). The back light gives flat tops (the cube's, the
cylinder's cap) their own spot; cube edges and the cylinder's rim are rounded (BEVEL), so they catch
highlights too. A soft blob of shadow falls on the floor behind each object (smooth, so it is
evaluated once per pixel); the empty room is cached per image size.

`object_layers` returns one object's contribution split into the parts that are linear in its albedo;
`scenes_scoring` fits them to an image. Map: vocabulary and geometry -> camera and background ->
ray casts per shape -> shading -> object_pixels / shadow_factor -> render_scene, object_layers,
pixel_statistics.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------
# Vocabulary and geometry (world units; the image spans VIEW = 3 units, one per slot)
# ---------------------------------------------------------------------------------------------------
SHAPES = ("sphere", "cube", "cylinder", "cone")
COLORS = {  # name -> albedo in [0, 1]: muted mid-tones, hues about 0, 30, 50, 120, 220, 280 degrees
    "red": (0.72, 0.26, 0.24), "orange": (0.84, 0.52, 0.20), "yellow": (0.80, 0.72, 0.26),
    "green": (0.32, 0.60, 0.32), "blue": (0.26, 0.42, 0.74), "purple": (0.56, 0.32, 0.66),
}
SIZES = ("small", "large")
SIZE_WIDTH = {"small": 0.62, "large": 0.92}   # projected width in world units (1/5 and 3/10 of the image)
MATERIALS = ("matte", "shiny")
POSITIONS = ("left", "center", "right")       # the three slots, left to right
SLOT_X = {"left": -1.0, "center": 0.0, "right": 1.0}
HEIGHT = {"sphere": 1.0, "cube": None, "cylinder": 0.9, "cone": 1.1}  # height / width (cube: its side)
CUBE_YAW = math.radians(25.0)                 # the cube turns to show two side faces
BEVEL = 0.15                                  # cube edges and the cylinder's rim are rounded (x width)
VIEW = 3.0                                    # world units across the image (square images)
B_TOP = 2.05                                  # image-plane height of the top row; the floor line b = 0
ELEVATION = math.radians(28.0)                # camera looks down by this angle
WALL_Z = 3.2                                  # the wall stands at z = -WALL_Z (horizon at b = 1.5)
SIN, COS = math.sin(ELEVATION), math.cos(ELEVATION)
RIGHT = np.array([1.0, 0.0, 0.0])             # camera axes in world coordinates
UP = np.array([0.0, COS, -SIN])
FORWARD = np.array([0.0, -SIN, -COS])         # the direction of every ray
VIEW_DIR = -FORWARD                           # towards the camera
KEY_LIGHT = np.array([-2.6, 5.2, 3.0])        # point light: front-left, high; shadows fall back-right
BACK_LIGHT = np.array([-1.2, 5.0, -4.0])      # specular-only light behind: spots on flat tops
AMBIENT, SKY, KEY = 0.24, 0.14, 0.68          # D = AMBIENT + SKY * n_y + KEY * max(n . L, 0)
SPEC_KEY, SPEC_BACK, SPEC_MAX = 0.85, 0.55, 0.88
SPEC_CUT = {"key": 0.80, "back": 0.88}        # lobe(x) = clip((x - cut) / (1 - cut), 0, 1)^2
FRESNEL = (0.14, 0.55)                        # f = F0 + F1 (1 - n . v)^3: share of the room mirrored
HIGHLIGHT = np.array([0.96, 0.95, 0.92])      # the lights' colour seen in a highlight
FLOOR_ALBEDO = np.array([0.76, 0.71, 0.64])   # warm grey
WALL_ALBEDO = np.array([0.60, 0.62, 0.67])    # cool grey
SHADOW_STRENGTH = 0.6                         # floor light lost at the centre of a shadow
MIN_RAYS = 128                                # supersample=None: at least this many rays across


def auto_supersample(image_size: int) -> int:
    """Rays per pixel side when none is given: >= MIN_RAYS rays across the image, at least 2 per pixel
    below 512 px (one ray a pixel leaves no visible steps at 512 px and above, and costs a quarter)."""
    return max(1 if image_size >= 512 else 2, math.ceil(MIN_RAYS / image_size))


def object_height(shape: str, width: float) -> float:
    if shape == "cube":
        return cube_side(width)
    return HEIGHT[shape] * width


def cube_side(width: float) -> float:
    return width / (math.cos(CUBE_YAW) + math.sin(CUBE_YAW))  # the turned cube's footprint is width wide


# ---------------------------------------------------------------------------------------------------
# Camera and background
# ---------------------------------------------------------------------------------------------------
def sample_grid(image_size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Image-plane coordinates of the ray centres: a [n] (columns, left to right) and b [n] (rows, top
    to bottom), n = image_size * supersample; pixel i holds rays i * supersample .. (i + 1) * supersample - 1."""
    t = (np.arange(image_size * supersample) + 0.5) / (image_size * supersample)   # (0, 1)
    return (t - 0.5) * VIEW, B_TOP - t * VIEW


def _texture(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mild mottling, a fixed sum of sinusoids in surface coordinates (1 +- about 0.05)."""
    return 1.0 + 0.025 * (np.sin(5.1 * u + 1.9 * v) + np.sin(3.3 * v - 4.3 * u + 0.7)
                          + 0.6 * np.sin(13.1 * u - 8.7 * v + 2.0) + 0.6 * np.sin(11.3 * v + 9.7 * u + 0.3))


def _box_filter(samples: np.ndarray, supersample: int) -> np.ndarray:
    """Average supersample x supersample blocks: [h * s, w * s, ...] -> [h, w, ...]."""
    (hs, ws), s = samples.shape[:2], supersample
    return samples.reshape(hs // s, s, ws // s, s, *samples.shape[2:]).mean(axis=(1, 3))


@functools.lru_cache(maxsize=16)
def _background(image_size: int, supersample: int) -> np.ndarray:
    """The empty room, [H, W, 3] float64: lit floor and wall, box-filtered over supersample^2 rays a pixel."""
    a, b = sample_grid(image_size, supersample)
    A, B = np.meshgrid(a, b)                                        # [n, n], rows = b
    floor = B < WALL_Z * SIN                                        # floor below the horizon b = 1.5
    z = np.where(floor, -B / SIN, -WALL_Z)                          # floor: z = -b / sin(elevation)
    y = np.where(floor, 0.0, (B - WALL_Z * SIN) / COS)              # wall: b = y cos + WALL_Z sin
    lx, ly, lz = KEY_LIGHT[0] - A, KEY_LIGHT[1] - y, KEY_LIGHT[2] - z
    dist = np.sqrt(lx * lx + ly * ly + lz * lz)
    normal_dot = np.where(floor, ly, lz) / dist                     # n = +y (floor), +z (wall)
    light = 0.22 + 0.9 * normal_dot * (6.0 / dist) ** 1.5           # ambient + Lambert with a falloff
    corner = 1.0 - 0.22 * np.exp(-np.where(floor, z + WALL_Z, y) / 0.35)  # darker where floor meets wall
    tex = np.where(floor, _texture(A, z), 1.0 + 0.5 * (_texture(0.8 * A, 0.4 * y) - 1.0))
    albedo = np.where(floor[..., None], FLOOR_ALBEDO, WALL_ALBEDO)
    return _box_filter(albedo * (light * corner * tex)[..., None], supersample)


def background_image(image_size: int, supersample: int | None = None) -> np.ndarray:
    """The empty room, [H, W, 3] float64 (a copy of a cached render)."""
    return _background(*_check_size(image_size, supersample)).copy()


# ---------------------------------------------------------------------------------------------------
# Ray casts: rays start at object-local points p = (px, py, pz) and travel along FORWARD; each cast
# returns (hit, point, normal) with point and normal as (x, y, z) tuples of arrays, object-local
# ---------------------------------------------------------------------------------------------------
def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _unit(v):
    n = np.sqrt(_dot(v, v))
    return v[0] / n, v[1] / n, v[2] / n


def _bevel(to_edge: np.ndarray, width: float) -> np.ndarray:
    """How far a normal turns near an edge rounded over BEVEL * width, as tan(angle): 1 (45 deg) on it."""
    return np.tan(np.pi / 4 * np.clip(1.0 - to_edge / (BEVEL * width), 0.0, 1.0) ** 2)


def _cast_sphere(a, b, width):  # in the image plane: the sphere is a disc of radius r around (0, r cos)
    r = width / 2
    du, dv = a / r, (b - r * COS) / r
    w = np.sqrt(np.maximum(1.0 - du * du - dv * dv, 0.0))        # depth of the unit sphere towards us
    normal = (du, dv * COS + w * SIN, -dv * SIN + w * COS)          # du RIGHT + dv UP + w VIEW_DIR
    return du * du + dv * dv <= 1.0, (r * normal[0], r + r * normal[1], r * normal[2]), normal


def _cast_cube(p, width):
    s, c, sn = cube_side(width), math.cos(CUBE_YAW), math.sin(CUBE_YAW)
    q = (c * p[0] - sn * p[2], p[1], sn * p[0] + c * p[2])        # cube frame: yaw by -CUBE_YAW
    d = (-sn * FORWARD[2], FORWARD[1], c * FORWARD[2])
    lo, hi = (-s / 2, 0.0, -s / 2), (s / 2, s, s / 2)
    near = [np.minimum((lo[i] - q[i]) / d[i], (hi[i] - q[i]) / d[i]) for i in range(3)]  # slab method
    far = [np.maximum((lo[i] - q[i]) / d[i], (hi[i] - q[i]) / d[i]) for i in range(3)]
    t_in = np.maximum(np.maximum(near[0], near[1]), near[2])
    hit = t_in <= np.minimum(np.minimum(far[0], far[1]), far[2])
    n = []
    for i in range(3):                                              # face normal + rounded edges
        u = q[i] + t_in * d[i]                                      # hit point, cube frame
        on_face = near[i] == t_in                                   # the face the ray enters through
        bend = _bevel(np.minimum(u - lo[i], hi[i] - u), width) * np.where(hi[i] - u < u - lo[i], 1.0, -1.0)
        n.append(np.where(on_face, -np.sign(d[i]), bend))
    n = _unit(n)
    point = (p[0], p[1] + t_in * FORWARD[1], p[2] + t_in * FORWARD[2])
    return hit, point, (c * n[0] + sn * n[2], n[1], -sn * n[0] + c * n[2])  # back to the world frame


def _cast_cylinder(p, width):
    r, h = width / 2, object_height("cylinder", width)
    px, py, pz = p
    dy, dz = FORWARD[1], FORWARD[2]                                 # FORWARD has no x component
    root = np.sqrt(np.maximum(r * r - px * px, 0.0))
    t_side = (root - pz) / dz                                       # front of the side, z = +root
    side = (np.abs(px) <= r) & (py + t_side * dy >= 0) & (py + t_side * dy <= h)
    t_top = (h - py) / dy
    top = px * px + (pz + t_top * dz) ** 2 <= r * r
    use_top = top & (~side | (t_top < t_side))
    t = np.where(use_top, t_top, t_side)
    y, z = py + t * dy, pz + t * dz
    rho = np.maximum(np.hypot(px, z), 1e-9)
    bend = _bevel(np.where(use_top, r - rho, h - y), width)         # rounded rim
    up, out = np.where(use_top, 1.0, bend), np.where(use_top, bend, 1.0)
    return side | top, (px, y, z), _unit((out * px / rho, up, out * z / rho))


def _cast_cone(p, width):
    r, h = width / 2, object_height("cone", width)
    k2 = (r / h) ** 2
    px, py, pz = p
    dy, dz = FORWARD[1], FORWARD[2]
    e = h - py                                                      # x^2 + z^2 = k^2 (h - y)^2
    qa = dz * dz - k2 * dy * dy
    qb = 2 * (pz * dz + k2 * e * dy)
    qc = px * px + pz * pz - k2 * e * e
    disc = qb * qb - 4 * qa * qc
    sq = np.sqrt(np.maximum(disc, 0.0))
    t = np.full_like(px, np.inf)
    for root in ((-qb + sq) / (2 * qa), (-qb - sq) / (2 * qa)):     # the nearer root on the real nappe
        y = py + root * dy
        t = np.where((disc >= 0) & (y >= 0) & (y <= h), root, t)
    hit = np.isfinite(t)
    t = np.where(hit, t, 0.0)
    y, z = py + t * dy, pz + t * dz
    return hit, (px, y, z), _unit((px, k2 * (h - y), z))            # gradient of x^2 + z^2 - k^2 (h - y)^2


# ---------------------------------------------------------------------------------------------------
# Shading, shadows, one object
# ---------------------------------------------------------------------------------------------------
def _lobe(cos: np.ndarray, cut: float) -> np.ndarray:
    return np.clip((cos - cut) / (1.0 - cut), 0.0, 1.0) ** 2


def shade(point, normal, shiny: bool) -> tuple[np.ndarray, np.ndarray]:
    """(weight, light) at world points with unit normals ((x, y, z) tuples): colour = c * weight + light *
    HIGHLIGHT, i.e. (1 - s - f) * c * D + (s + f * env) * HIGHLIGHT (see the module docstring)."""
    to_key = _unit(tuple(KEY_LIGHT[i] - point[i] for i in range(3)))
    diffuse = AMBIENT + SKY * normal[1] + KEY * np.maximum(_dot(normal, to_key), 0.0)
    if not shiny:
        return diffuse, np.zeros_like(diffuse)
    h_key = _unit(tuple(to_key[i] + VIEW_DIR[i] for i in range(3)))  # Blinn-Phong half vectors
    to_back = _unit(tuple(BACK_LIGHT[i] - point[i] for i in range(3)))
    h_back = _unit(tuple(to_back[i] + VIEW_DIR[i] for i in range(3)))
    s = np.minimum(SPEC_KEY * _lobe(_dot(normal, h_key), SPEC_CUT["key"])
                   + SPEC_BACK * _lobe(_dot(normal, h_back), SPEC_CUT["back"]), SPEC_MAX)
    n_v = np.clip(_dot(normal, VIEW_DIR), 0.0, 1.0)
    f = (1.0 - s) * (FRESNEL[0] + FRESNEL[1] * (1.0 - n_v) ** 3)   # glancing angles mirror the room
    reflected_y = 2.0 * n_v * normal[1] - VIEW_DIR[1]               # y of the view ray's mirror image
    env = 0.55 + 0.2 * np.tanh(3.0 * reflected_y)                   # the floor below (0.35), the wall above
    return (1.0 - s - f) * diffuse, s + f * env


def _pixel_window(lo: float, hi: float, image_size: int, along_b: bool) -> slice:
    """Pixels (rows if along_b else columns) that hold image-plane coordinates in [lo, hi]."""
    f = ((B_TOP - hi, B_TOP - lo) if along_b else (lo + VIEW / 2, hi + VIEW / 2))  # 0 .. VIEW from the edge
    return slice(max(int(f[0] / VIEW * image_size), 0), min(math.ceil(f[1] / VIEW * image_size), image_size))


def object_pixels(shape: str, size: str, material: str, position: str, image_size: int, supersample: int,
                  offset: tuple[float, float] = (0.0, 0.0)) -> tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray]:
    """One object, box-filtered over its window of pixels: (rows, cols, coverage, weight, light), each
    [h, w]: the fraction of rays that hit it, and the means of hit * weight and hit * light from `shade`,
    so the window shows c * weight + light * HIGHLIGHT + (1 - coverage) * what lies behind.
    offset: (da, db) moves the picture of the object across the image plane (world units; the scorer
    uses it to tolerate objects drawn a little off their slot)."""
    width, x0 = SIZE_WIDTH[size], SLOT_X[position]
    height = object_height(shape, width)
    da, db = offset
    rows = _pixel_window(db - 0.6 * width * SIN, db + height * COS + 0.6 * width * SIN, image_size, along_b=True)
    cols = _pixel_window(da + x0 - 0.55 * width, da + x0 + 0.55 * width, image_size, along_b=False)
    a, b = sample_grid(image_size, supersample)
    ss = supersample
    A, B = np.meshgrid(a[cols.start * ss:cols.stop * ss] - x0 - da, b[rows.start * ss:rows.stop * ss] - db)
    if shape == "sphere":
        hit, point, normal = _cast_sphere(A, B, width)
    else:
        p = (A, B * COS + 10.0 * SIN, -B * SIN + 10.0 * COS)     # A RIGHT + B UP - 10 FORWARD: before everything
        hit, point, normal = {"cube": _cast_cube, "cylinder": _cast_cylinder, "cone": _cast_cone}[shape](p, width)
    weight, light = shade((point[0] + x0, point[1], point[2]), normal, material == "shiny")
    return (rows, cols, _box_filter(hit.astype(np.float64), ss), _box_filter(np.where(hit, weight, 0.0), ss),
            _box_filter(np.where(hit, light, 0.0), ss))


def shadow_factor(shape: str, size: str, position: str, image_size: int,
                  offset: tuple[float, float] = (0.0, 0.0)) -> tuple[slice, slice, np.ndarray]:
    """(rows, cols, factor [h, w]): floor light left by the object's soft shadow at the pixel centres,
    1 - SHADOW_STRENGTH at its core (smooth, so one ray per pixel suffices). The shadow is a blob around
    the segment from the object's foot to where the key light throws its top: behind and to the right.
    offset: as for object_pixels."""
    width, x0 = SIZE_WIDTH[size], SLOT_X[position]
    height = object_height(shape, width)
    away = np.array([x0, height, 0.0]) - KEY_LIGHT                  # light ray through the object's top
    reach = away[[0, 2]] * height / -away[1]                        # where it meets y = 0, (dx, dz)
    radius = 0.5 * width
    xs = (min(0.0, reach[0]) - 1.3 * radius + x0, max(0.0, reach[0]) + 1.3 * radius + x0)
    zs = (min(0.0, reach[1]) - 1.3 * radius, max(0.0, reach[1]) + 1.3 * radius)
    da, db = offset
    rows = _pixel_window(db - zs[1] * SIN, min(db - zs[0] * SIN, WALL_Z * SIN), image_size, along_b=True)
    cols = _pixel_window(xs[0] + da, xs[1] + da, image_size, along_b=False)
    a, b = sample_grid(image_size, 1)
    X, Z = np.meshgrid(a[cols] - x0 - da, -(b[rows] - db) / SIN)    # floor coordinates, object-local
    along = np.clip((X * reach[0] + Z * reach[1]) / (reach @ reach), 0.0, 1.0)
    dist = np.hypot(X - along * reach[0], Z - along * reach[1])     # to the segment foot -> shadow tip
    soft = np.clip((1.3 * radius - dist) / (0.8 * radius), 0.0, 1.0)  # 1 inside 0.5 r, 0 beyond 1.3 r
    core = soft * soft * (3 - 2 * soft) * (1.0 - 0.45 * along)      # smoothstep, paler towards the tip
    return rows, cols, 1.0 - SHADOW_STRENGTH * core[..., None]


# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------
def _check_size(image_size, supersample) -> tuple[int, int]:
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"image_size={image_size!r}: use an int >= 8 (objects need a few pixels)")
    if supersample is None:
        return int(image_size), auto_supersample(int(image_size))
    if not isinstance(supersample, (int, np.integer)) or supersample < 1:
        raise ValueError(f"supersample={supersample!r}: use an int >= 1, or None for >= {MIN_RAYS} rays across")
    return int(image_size), int(supersample)


def render_scene(spec, image_size: int, supersample: int | None = None) -> torch.Tensor:
    """Draw `spec` (a scenes.SceneSpec) as a [3, image_size, image_size] float32 tensor in (0, 1)."""
    size, ss = _check_size(image_size, supersample)
    canvas = _background(size, ss).copy()                           # [H, W, 3]
    for o in spec.objects:                                          # shadows first: objects hide the floor
        rows, cols, factor = shadow_factor(o.shape, o.size, o.position, size)
        canvas[rows, cols] *= factor
    for o in spec.objects:
        rows, cols, cover, weight, light = object_pixels(o.shape, o.size, o.material, o.position, size, ss)
        canvas[rows, cols] = (weight[..., None] * COLORS[o.color] + light[..., None] * HIGHLIGHT
                              + (1 - cover[..., None]) * canvas[rows, cols])
    return torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32))  # [3, H, W]


def object_layers(shape: str, size: str, material: str, position: str, image_size: int,
                  supersample: int | None = None, offset: tuple[float, float] = (0.0, 0.0)) -> dict[str, np.ndarray]:
    """One object alone in the room, split into the parts linear in its albedo c:
        image = c * albedo_weight[..., None] + highlight + rest                        ([H, W, 3])
    albedo_weight [H, W]: mean of hit * (1 - s) * D over each pixel's rays; highlight [H, W, 3]: mean of
    hit * s, times HIGHLIGHT; rest [H, W, 3]: the (shadowed) room times 1 - coverage; coverage [H, W];
    shadow [H, W]: the factor its shadow leaves on whatever lies behind it (rest = room * shadow * (1 - coverage)).
    offset: (da, db) in world units moves the object and its shadow across the image plane."""
    size_, ss = _check_size(image_size, supersample)
    room = _background(size_, ss).copy()
    rows_s, cols_s, factor = shadow_factor(shape, size, position, size_, offset)
    room[rows_s, cols_s] *= factor
    out = {k: np.zeros((size_, size_)) for k in ("coverage", "albedo_weight", "light")}
    rows, cols, *parts = object_pixels(shape, size, material, position, size_, ss, offset)
    for key, part in zip(("coverage", "albedo_weight", "light"), parts):
        out[key][rows, cols] = part
    shadow = np.ones((size_, size_, 1))
    shadow[rows_s, cols_s] = factor
    return {"albedo_weight": out["albedo_weight"], "highlight": out["light"][..., None] * HIGHLIGHT,
            "rest": room * (1 - out["coverage"][..., None]), "coverage": out["coverage"], "shadow": shadow[..., 0]}


def pixel_statistics(images) -> dict[str, float]:
    """Intensity statistics of images in [0, 1] ([N, 3, H, W] tensor/array or a list of [3, H, W]),
    after uint8 quantisation as training data stores them: fraction of values at exactly 0 or 255, mean
    and standard deviation of all values, and the 1st / 99th percentiles."""
    x = np.concatenate([np.asarray(i, dtype=np.float64).ravel() for i in images] or [np.zeros(0)])
    if x.size == 0:
        raise ValueError("images is empty; pass at least one image")
    q = np.round(np.clip(x, 0.0, 1.0) * 255)                        # what prepare.py stores
    return {"fraction_at_0_or_1": float(np.mean((q == 0) | (q == 255))), "mean": float(q.mean() / 255),
            "std": float(q.std() / 255), "p01": float(np.percentile(q, 1) / 255),
            "p99": float(np.percentile(q, 99) / 255)}
