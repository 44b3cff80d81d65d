"""Camera images rendered from the world: the ground is ray-cast per pixel onto the z = 0 plane and coloured
from the rasterized map (asphalt, paint, crossings, sidewalks, terrain), the sky is a gradient, and every
annotated object is drawn as a shaded box in its class colour (painter's algorithm, near-plane clipping).

An object-id buffer drawn alongside gives each object's visible pixel count, which sets its visibility bin.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from netroller.data.synth.geometry import BOX_FACES
from netroller.data.synth.raster import GROUND_COLOURS, RESOLUTION
from netroller.data.synth.sensors import Camera

NEAR = 0.1  # metres, near clipping plane
FAR = 300.0  # metres of ground drawn before the horizon haze
FOG = np.array([196.0, 206.0, 216.0])
SKY_HORIZON = np.array([200.0, 214.0, 230.0])
SKY_ZENITH = np.array([96.0, 140.0, 205.0])
LIGHT = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
JPEG_QUALITY = 90
GROUND_COLOURS_F = GROUND_COLOURS.astype(np.float32)
FACE_INDEX = np.array(BOX_FACES)  # (6, 4)


@dataclass(frozen=True)
class RenderBox:
    """An object to draw: (8, 3) world corners from `geometry.box_corners`, its colour and its id (>= 1)."""

    ident: int
    corners: np.ndarray
    colour: tuple[int, int, int]


@dataclass(frozen=True)
class BoxView:
    """What one camera sees of one object."""

    visible_px: int
    total_px: float  # area of its silhouette inside the image, as if nothing occluded it
    bbox: tuple[float, float, float, float]  # silhouette bounds clipped to the image
    centre: tuple[float, float] | None  # projected box centre, if in front of the camera


class CameraRenderer:
    """Renders one camera for any ego pose.

    The ego moves in the ground plane (yaw only), so where each pixel's ray meets the ground, in the ego
    frame, is fixed: it is computed once, and a frame only rotates those points into the world.
    """

    def __init__(self, cam: Camera, labels: np.ndarray):
        self.cam = cam
        self.labels = labels
        k = cam.intrinsic
        u, v = np.meshgrid(np.arange(cam.width, dtype=np.float64), np.arange(cam.height, dtype=np.float64))
        rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], axis=-1).reshape(
            -1, 3
        )
        self.ego_from_cam = cam.ego_from_cam()
        d = rays @ self.ego_from_cam[:3, :3].T  # ego-frame directions
        o = self.ego_from_cam[:3, 3]
        norm = np.linalg.norm(d, axis=1)
        dz = d[:, 2]
        hit = dz < -1e-9
        t = np.where(hit, -o[2] / np.where(hit, dz, -1.0), np.inf)
        dist = t * norm
        ground = hit & (dist < FAR)
        self.ground_idx = np.flatnonzero(ground)
        gi = self.ground_idx
        self.ground_xy = np.stack([o[0] + t[gi] * d[gi, 0], o[1] + t[gi] * d[gi, 1]], axis=1)  # ego frame
        self.fog = (1.0 - np.exp(-dist[gi] / 220.0)).astype(np.float32)[:, None]
        elev = np.clip(dz / norm, -1.0, 1.0)
        a = np.clip(elev * 2.5, 0.0, 1.0)[:, None]
        self.sky = (SKY_HORIZON * (1 - a) + SKY_ZENITH * a).astype(np.float32)
        self.fog_term = (FOG[None, :] * self.fog).astype(np.float32)

    def render(
        self, world_from_ego: np.ndarray, boxes: list[RenderBox]
    ) -> tuple[Image.Image, dict[int, BoxView]]:
        cam = self.cam
        world_from_cam = world_from_ego @ self.ego_from_cam
        rot, origin = world_from_cam[:3, :3], world_from_cam[:3, 3]
        img = self._background(world_from_ego)
        image = Image.fromarray(img, mode="RGB")
        ids = Image.new("I", (cam.width, cam.height), 0)
        views = self._draw_boxes(image, ids, rot, origin, boxes)
        return image, views

    def _background(self, world_from_ego: np.ndarray) -> np.ndarray:
        r = world_from_ego[:2, :2]
        xy = self.ground_xy @ r.T + world_from_ego[:2, 3]
        h, w = self.labels.shape
        col = np.floor(xy[:, 0] / RESOLUTION).astype(np.int64)
        row = np.floor(h - xy[:, 1] / RESOLUTION).astype(np.int64)
        np.clip(col, 0, w - 1, out=col)
        np.clip(row, 0, h - 1, out=row)
        lab = self.labels[row, col]
        out = self.sky.copy()
        out[self.ground_idx] = GROUND_COLOURS_F[lab] * (1.0 - self.fog) + self.fog_term
        out += 0.5
        return out.astype(np.uint8).reshape(self.cam.height, self.cam.width, 3)

    def _draw_boxes(
        self, image: Image.Image, ids: Image.Image, rot, origin, boxes: list[RenderBox]
    ) -> dict[int, BoxView]:
        if not boxes:
            return {}
        cam = self.cam
        k = cam.intrinsic
        corners = np.stack([b.corners for b in boxes])  # (B, 8, 3) world
        pc = (corners - origin) @ rot  # (B, 8, 3) camera frame
        z = pc[..., 2]
        any_front = (z >= NEAR).any(axis=1)
        all_front = (z >= NEAR).all(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([k[0, 0] * pc[..., 0] / z + k[0, 2], k[1, 1] * pc[..., 1] / z + k[1, 2]], axis=-1)
        off = (
            (uv[..., 0].max(axis=1) < 0)
            | (uv[..., 0].min(axis=1) > cam.width)
            | (uv[..., 1].max(axis=1) < 0)
            | (uv[..., 1].min(axis=1) > cam.height)
        )
        keep = any_front & ~(all_front & off)
        centres = corners.mean(axis=1)  # (B, 3)
        face_centres = corners[:, FACE_INDEX].mean(axis=2)  # (B, 6, 3)
        normals = face_centres - centres[:, None]
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        facing = np.einsum("bfk,bfk->bf", normals, origin - face_centres) > 0
        shade = 0.45 + 0.55 * np.clip(normals @ LIGHT, 0.0, None)  # (B, 6)
        # Painter's order by the distance from the camera to each box's footprint (not its centre, which
        # misorders a long bus beside a car): ground-standing boxes that do not overlap sort correctly.
        ex = (corners[:, 0, :2] - corners[:, 3, :2]) / 2.0  # half length axis
        ey = (corners[:, 0, :2] - corners[:, 1, :2]) / 2.0  # half width axis
        hl = np.linalg.norm(ex, axis=1)
        hw = np.linalg.norm(ey, axis=1)
        d = origin[:2] - centres[:, :2]
        a = np.einsum("bk,bk->b", d, ex) / hl
        c = np.einsum("bk,bk->b", d, ey) / hw
        dist = np.hypot(a - np.clip(a, -hl, hl), c - np.clip(c, -hw, hw))
        order = [i for i in np.argsort(-dist, kind="stable") if keep[i]]  # far to near
        draw = ImageDraw.Draw(image)
        draw_id = ImageDraw.Draw(ids)
        views: dict[int, BoxView] = {}
        for i in order:
            b = boxes[i]
            silhouette = []
            for f, face in enumerate(BOX_FACES):
                if not facing[i, f]:
                    continue
                if all_front[i]:
                    fuv = uv[i, list(face)]
                else:
                    poly = _clip_near(pc[i, list(face)])
                    if len(poly) < 3:
                        continue
                    fuv = _project(poly, k)
                silhouette.append(fuv)
                sh = shade[i, f]
                colour = (
                    int(b.colour[0] * sh + 0.5),
                    int(b.colour[1] * sh + 0.5),
                    int(b.colour[2] * sh + 0.5),
                )
                pts = [(float(x), float(y)) for x, y in fuv]
                draw.polygon(pts, fill=colour)
                draw_id.polygon(pts, fill=b.ident)
            if not silhouette:
                continue
            hull = _convex_hull(np.concatenate(silhouette, axis=0))
            clipped = _clip_rect(hull, cam.width, cam.height)
            if len(clipped) >= 3:
                area = _area(clipped)
                bbox = (
                    float(clipped[:, 0].min()),
                    float(clipped[:, 1].min()),
                    float(clipped[:, 0].max()),
                    float(clipped[:, 1].max()),
                )
            else:
                area, bbox = 0.0, (0.0, 0.0, 0.0, 0.0)
            cc = (centres[i] - origin) @ rot
            centre = (
                (float(k[0, 0] * cc[0] / cc[2] + k[0, 2]), float(k[1, 1] * cc[1] / cc[2] + k[1, 2]))
                if cc[2] > NEAR
                else None
            )
            views[b.ident] = BoxView(0, area, bbox, centre)
        if views:
            counts = np.bincount(np.asarray(ids, dtype=np.int64).ravel(), minlength=max(views) + 1)
            views = {i: BoxView(int(counts[i]), v.total_px, v.bbox, v.centre) for i, v in views.items()}
        return views


def encode_jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()


def _project(pc: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.stack(
        [k[0, 0] * pc[:, 0] / pc[:, 2] + k[0, 2], k[1, 1] * pc[:, 1] / pc[:, 2] + k[1, 2]], axis=1
    )


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon to z >= NEAR."""
    if (poly[:, 2] >= NEAR).all():
        return poly
    out = []
    n = len(poly)
    for i in range(n):
        p, q = poly[i], poly[(i + 1) % n]
        pin, qin = p[2] >= NEAR, q[2] >= NEAR
        if pin:
            out.append(p)
        if pin != qin:
            t = (NEAR - p[2]) / (q[2] - p[2])
            out.append(p + t * (q - p))
    return np.array(out) if out else np.zeros((0, 3))


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain."""
    p = sorted(set(map(tuple, np.round(pts, 6).tolist())))
    if len(p) <= 2:
        return np.array(p)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for q in p:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], q) <= 0:
            lower.pop()
        lower.append(q)
    for q in reversed(p):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], q) <= 0:
            upper.pop()
        upper.append(q)
    return np.array(lower[:-1] + upper[:-1])


def _clip_rect(poly: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip a convex polygon to the image rectangle."""
    pts = [tuple(p) for p in poly]
    for axis, bound, keep_less in (
        (0, 0.0, False),
        (0, float(width), True),
        (1, 0.0, False),
        (1, float(height), True),
    ):
        if not pts:
            break
        out = []
        for i in range(len(pts)):
            p, q = pts[i], pts[(i + 1) % len(pts)]
            pin = p[axis] <= bound if keep_less else p[axis] >= bound
            qin = q[axis] <= bound if keep_less else q[axis] >= bound
            if pin:
                out.append(p)
            if pin != qin:
                t = (bound - p[axis]) / (q[axis] - p[axis])
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        pts = out
    return np.array(pts) if pts else np.zeros((0, 2))


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
