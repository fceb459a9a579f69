"""Ground-truth matting cases, generated on the fly from a recipe and a seed.

Every case is (image, alpha, foreground): a foreground painted with a real
photo's texture, composited over another real photo with a known alpha, so
any matte can be scored exactly. Nothing is stored: `make(Case(...))` gives
the same pixels for the same recipe and seed on every machine (NumPy's
PCG64 stream, OpenCV drawing and resizing are deterministic).

Kinds, each one of the hard cases of the alpha-matting benchmark of Rhemann
et al. (CVPR 2009):
  hair     1–3 px strands growing out of a head-like blob, long and curling,
           antialiased by 4x4 supersampling (coverage = alpha)
  fur      dense short 1–2 px strands all round a body (a fringe)
  glass    a smooth semi-transparent body, alpha 0.2–0.8, with a solid rim;
           its colour is a tint (the photo's texture smoothed at 1.2% of the
           short side: cup-sized patterns, as busy at large scale as the
           background behind it)
  motion   a solid shape motion-blurred along a random direction
  defocus  a solid shape blurred by a disc (out-of-focus edge)
  solid    a plain antialiased shape (the easy case)
  tinted   the glass body again, coloured like most real glass, veils and
           smoke: its tint changes only across the object (the photo
           smoothed at 15% of the short side)
and the see-through kinds of seethrough.py (flat partial plateaus, a veil,
lace, a shadow, chiffon), each over several backgrounds (Case.bg).
For motion and defocus the blur acts on the whole foreground layer, as a lens
does: coverage and premultiplied colour are blurred together, so the true
foreground colour at the edge is the local mean of the object's colours.

Photos are scikit-image's sample images (public domain / CC0), which ship
inside the package, so no download is needed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

try:
    from . import seethrough
except ImportError:           # imported as a top-level module
    import seethrough

KINDS = ("hair", "fur", "glass", "motion", "defocus", "solid", "tinted")
SS = 4                # supersampling factor for strand coverage
FG_PHOTOS = {"hair": "chelsea", "fur": "chelsea", "glass": "coffee", "motion": "rocket",
             "defocus": "astronaut", "solid": "coffee", "tinted": "coffee"}
BG_PHOTOS = {"hair": "astronaut", "fur": "grass", "glass": "motorcycle", "motion": "coffee",
             "defocus": "gravel", "solid": "rocket", "tinted": "motorcycle"}
TINT_SIGMA = {"glass": 12, "tinted": 150}   # the tint's smoothing, in 1/1000 of the short side


@dataclass(frozen=True)
class Case:
    kind: str
    width: int
    height: int
    seed: int = 0
    bg: str = ""              # background photo; "" = the kind's own (BG_PHOTOS)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.width}x{self.height}" + (f"-{self.bg}" if self.bg else "")

    @property
    def bg_photo(self) -> str:
        return self.bg or BG_PHOTOS[self.kind]

    @property
    def see_through(self) -> bool:
        return self.kind in seethrough.KINDS

    def recipe(self) -> dict:
        fg = seethrough.FG_PHOTOS[self.kind] if self.see_through else FG_PHOTOS[self.kind]
        return dict(asdict(self), fg_photo=fg, bg_photo=self.bg_photo, supersampling=SS)


def photo(name: str) -> np.ndarray:
    import skimage.data
    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return np.dstack([img] * 3) if img.ndim == 2 else img[..., :3]


def textured(name: str, w: int, h: int, tile_short: int) -> np.ndarray:
    """A photo at close to its native scale, mirror-tiled to w x h, so the
    texture keeps real high frequencies at 4K instead of being an upscaled blur."""
    p = photo(name)
    s = tile_short / min(p.shape[:2])
    p = cv2.resize(p, (max(1, round(p.shape[1] * s)), max(1, round(p.shape[0] * s))),
                   interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
    reps = (h // p.shape[0] + 2, w // p.shape[1] + 2)
    row = np.concatenate([p, p[:, ::-1]] * (reps[1] // 2 + 1), axis=1)
    tile = np.concatenate([row, row[::-1]] * (reps[0] // 2 + 1), axis=0)
    return np.ascontiguousarray(tile[:h, :w])


def _blob(w: int, h: int, rng, cx: float, cy: float, rx: float, ry: float, wobble: float = 0.08):
    """Closed, smoothly wobbling contour (float32 Nx2 points)."""
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = np.ones_like(t)
    for k in (2, 3, 5):
        r += wobble / k * np.sin(k * t + rng.uniform(0, 2 * np.pi))
    return np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)], 1).astype(np.float32)


def _fill_aa(w: int, h: int, contour: np.ndarray) -> np.ndarray:
    """Exact-ish coverage of a filled polygon: OpenCV fill at 1/16 px subpixel
    precision on a 4x grid, area-averaged."""
    big = np.zeros((h * SS, w * SS), np.uint8)
    pts = np.round(contour * SS * 16).astype(np.int32)
    cv2.fillPoly(big, [pts], 255, lineType=cv2.LINE_8, shift=4)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _strands(w: int, h: int, rng, roots: np.ndarray, normals: np.ndarray, length: tuple,
             width: tuple, curl: float) -> np.ndarray:
    """Coverage of strands drawn at SS x resolution in horizontal bands (so a
    6000x4000 case needs ~100 MB, not 1.5 GB), area-averaged to alpha."""
    paths, widths = [], []
    for (x, y), (nx, ny) in zip(roots, normals):
        n = int(rng.uniform(*length))
        ang = np.arctan2(ny, nx) + rng.normal(0, 0.35)
        turn = rng.normal(0, curl)
        steps = max(4, n // 6)
        pts = [(x, y)]
        for _ in range(steps):
            turn += rng.normal(0, curl * 0.5)
            ang += turn / steps
            x, y = x + np.cos(ang) * n / steps, y + np.sin(ang) * n / steps
            pts.append((x, y))
        paths.append(np.array(pts, np.float64))
        widths.append(rng.uniform(*width))
    out = np.zeros((h, w), np.float32)
    band = max(64, (1 << 22) // (w * SS * SS) // 8 * 8)
    boxes = [(p[:, 1].min() - 8, p[:, 1].max() + 8) for p in paths]
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        big = np.zeros(((y1 - y0) * SS, w * SS), np.uint8)
        for p, wd, (lo, hi) in zip(paths, widths, boxes):
            if hi < y0 or lo > y1:
                continue
            q = np.round((p - (0, y0)) * SS * 16).astype(np.int32)
            cv2.polylines(big, [q], False, 255, thickness=max(1, round(wd * SS)),
                          lineType=cv2.LINE_8, shift=4)
        out[y0:y1] = cv2.resize(big, (w, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return out


def _contour_normals(contour: np.ndarray, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, len(contour), n)
    nxt = contour[(idx + 1) % len(contour)] - contour[idx - 1]
    normal = np.stack([nxt[:, 1], -nxt[:, 0]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    # The contour runs counter-clockwise in image coordinates: flip to outward.
    c = contour.mean(0)
    flip = ((contour[idx] - c) * normal).sum(1) < 0
    normal[flip] *= -1
    return contour[idx], normal


def make_alpha(case: Case) -> np.ndarray:
    """The ground-truth matte of a case."""
    if case.see_through:
        return _see_through(case)[0]
    return _alpha(*_coverage(case))


def _see_through(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([case.seed, 100 + seethrough.KINDS.index(case.kind)])
    return seethrough.layers(case, rng, _blob, _fill_aa, textured, _smooth)


def _alpha(shape: np.ndarray, kernel: np.ndarray | None) -> np.ndarray:
    a = shape if kernel is None else _blur(shape, kernel)
    return np.clip(a, 0, 1).astype(np.float32)


def _blur(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REPLICATE)


def _coverage(case: Case) -> tuple[np.ndarray, np.ndarray | None]:
    """Sharp coverage of the foreground, and the blur kernel (lens or motion)
    that acts on the whole foreground layer, or None."""
    w, h, rng = case.width, case.height, np.random.default_rng([case.seed, KINDS.index(case.kind)])
    u = min(w, h) / 1000.0            # 1 unit = 1/1000 of the short side
    cx, cy = w * rng.uniform(0.45, 0.55), h * rng.uniform(0.5, 0.6)
    if case.kind == "hair":
        body = _blob(w, h, rng, cx, cy, 210 * u, 250 * u)
        alpha = _fill_aa(w, h, body)
        s = u * 1000 / 2000           # strand widths in px are absolute (1–3 px at any size)
        roots, normals = _contour_normals(body, int(900 * max(1.0, s)), rng)
        upper = roots[:, 1] < cy + 80 * u
        hair = _strands(w, h, rng, roots[upper], normals[upper], (60 * u, 320 * u), (1.0, 3.0), 2.5)
        return np.maximum(alpha, hair), None
    if case.kind == "fur":
        body = _blob(w, h, rng, cx, cy, 300 * u, 220 * u, wobble=0.1)
        alpha = _fill_aa(w, h, body)
        roots, normals = _contour_normals(body, int(len(body) * 8 * max(1.0, u)), rng)
        fur = _strands(w, h, rng, roots, normals, (8 * u, 40 * u), (1.0, 2.0), 1.0)
        return np.maximum(alpha, fur), None
    if case.kind in TINT_SIGMA:
        body = _blob(w, h, rng, cx, cy, 180 * u, 300 * u, wobble=0.04)
        inside = _fill_aa(w, h, body)
        dist = cv2.distanceTransform((inside > 0.5).astype(np.uint8), cv2.DIST_L2, 5)
        rim = 14 * u
        # Fresnel-like: nearly clear in the middle, denser towards the rim, opaque rim.
        t = np.clip(dist / (120 * u), 0, 1)
        body_a = 0.8 - 0.6 * t
        a = np.where(dist < rim, 1.0, body_a).astype(np.float32)
        a = cv2.GaussianBlur(a, (0, 0), 1.0)
        return np.minimum(a, inside).astype(np.float32), None
    shape = _fill_aa(w, h, _blob(w, h, rng, cx, cy, 260 * u, 200 * u, wobble=0.2))
    if case.kind == "solid":
        return shape, None
    if case.kind == "defocus":
        r = max(2, int(round(12 * u)))
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)).astype(np.float32)
        return shape, k / k.sum()
    if case.kind == "motion":
        n = max(3, int(round(40 * u))) | 1
        k = np.zeros((n, n), np.float32)
        ang = rng.uniform(0, np.pi)
        c = n // 2
        cv2.line(k, (int(c - np.cos(ang) * c), int(c - np.sin(ang) * c)),
                 (int(c + np.cos(ang) * c), int(c + np.sin(ang) * c)), 1.0, 1, cv2.LINE_AA)
        return shape, k / k.sum()
    raise ValueError(f"unknown kind {case.kind!r}; one of {KINDS}")


def _smooth(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; past 64 px it is done at 1/k scale (k = sigma/16) and
    scaled back, which a blur that wide cannot tell apart from the full one."""
    if sigma <= 64:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    k = int(sigma // 16)
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / k)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def make(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 HxWx3, alpha float32 HxW, foreground uint8 HxWx3)."""
    w, h = case.width, case.height
    if case.see_through:
        alpha, fgf = _see_through(case)
        bg = textured(case.bg_photo, w, h, max(256, min(w, h) // 2))
        a = alpha[..., None]
        img = np.clip(fgf * a + bg * (1 - a) + 0.5, 0, 255).astype(np.uint8)
        return img, alpha, np.clip(fgf + 0.5, 0, 255).astype(np.uint8)
    shape, kernel = _coverage(case)
    alpha = _alpha(shape, kernel)
    fg = textured(FG_PHOTOS[case.kind], w, h, max(256, min(w, h) // 3))
    if case.kind in ("hair", "fur"):
        # Strand colour: the photo's texture, darkened and warmed like hair, so
        # foreground and background differ in colour but not trivially.
        fg = np.clip(fg.astype(np.float32) * (0.55, 0.45, 0.35), 0, 255).astype(np.uint8)
    bg = textured(case.bg_photo, w, h, max(256, min(w, h) // 2))
    if case.kind in TINT_SIGMA:
        # A glass body's own colour is its tint, which varies slowly; the
        # photo's fine texture would be a picture printed on the glass.
        fg = _smooth(fg, TINT_SIGMA[case.kind] * min(w, h) / 1000.0)
    if kernel is not None:
        # Lens and motion blur spread the foreground's light, not only its
        # coverage: the premultiplied colour is blurred with the same kernel,
        # so the true foreground colour at a blurred edge is a local mean.
        premult = _blur(fg.astype(np.float32) * shape[..., None], kernel)
        safe = np.maximum(alpha, 1e-6)[..., None]
        fg = np.where(alpha[..., None] > 1e-4, premult / safe, fg)
        fg = np.clip(fg + 0.5, 0, 255).astype(np.uint8)
    a = alpha[..., None]
    img = np.clip(fg * a + bg * (1 - a) + 0.5, 0, 255).astype(np.uint8)
    return img, alpha, fg


def degrade(alpha: np.ndarray, size: int = 1024, blur: float = 1.0) -> np.ndarray:
    """What the model hands refinement: the matte at its input resolution
    (size x size, aspect squashed like the model's tensor), slightly blurred
    and quantised to 8 bits."""
    low = cv2.resize(alpha, (size, size), interpolation=cv2.INTER_AREA)
    low = cv2.GaussianBlur(low, (0, 0), blur)
    return np.round(np.clip(low, 0, 1) * 255).astype(np.uint8)
