"""Vectorized map elements around a lidar pose, in VAD's (MapTR's) conventions.

For a patch of 30 m (lidar x, lateral) x 60 m (lidar y, longitudinal) centred on the lidar:
- divider: `road_divider` + `lane_divider` lines clipped to the patch; each piece is one element.
- ped_crossing: outlines of the union of the crossing polygons (clipped to the patch), exteriors clockwise,
  holes counter-clockwise; a crossing cut by the patch edge stays a closed ring (MapTR keeps the cut edge
  by clipping the ring with the patch grown by 0.2 m).
- boundary: outlines of the union of `road_segment` and `lane` polygons (clipped to the patch), with the
  cut edges along the patch border removed (MapTR clips the ring with the patch shrunk by 0.2 m).
Every element is resampled to `MAP_POINTS` points evenly along its length. Only the lidar's ground position
and yaw are used (VAD's map frame ignores pitch and roll). Invalid polygons are skipped, as VAD does.

Geometry of each map is built once and indexed with an STRtree, so a query costs a few shapely calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import shapely
from shapely import affinity, ops
from shapely.geometry import LineString, MultiLineString, Polygon, box
from shapely.strtree import STRtree

from netroller.data.geometry import planar_global_to_local
from netroller.data.index import MAP_CLASSES, MAP_POINTS
from netroller.data.nusc import open_map

PATCH_X = 30.0  # lateral extent (lidar x), m
PATCH_Y = 60.0  # longitudinal extent (lidar y), m
_DIVIDER, _PED, _BOUNDARY = (MAP_CLASSES.index(c) for c in ("divider", "ped_crossing", "boundary"))


def _local_box(margin: float = 0.0) -> Polygon:
    hx, hy = PATCH_X / 2 + margin, PATCH_Y / 2 + margin
    return box(-hx, -hy, hx, hy)


class MapVectorizer:
    """The vector elements of one `NuScenesMap`, queried by lidar pose."""

    def __init__(self, nusc_map) -> None:
        nodes = {n["token"]: (n["x"], n["y"]) for n in nusc_map.node}
        lines_by_token = {rec["token"]: rec["node_tokens"] for rec in nusc_map.line}
        polys_by_token = {rec["token"]: rec for rec in nusc_map.polygon}

        def line(token: str) -> LineString | None:
            coords = [nodes[t] for t in lines_by_token[token]]
            return LineString(coords) if len(coords) >= 2 else None

        def polygon(token: str) -> Polygon | None:
            rec = polys_by_token[token]
            exterior = [nodes[t] for t in rec["exterior_node_tokens"]]
            holes = [[nodes[t] for t in h["node_tokens"]] for h in rec["holes"]]
            if len(exterior) < 3:
                return None
            poly = Polygon(exterior, [h for h in holes if len(h) >= 3])
            return poly if poly.is_valid else None

        dividers = [
            line(r["line_token"])
            for layer in ("road_divider", "lane_divider")
            for r in getattr(nusc_map, layer)
        ]
        peds = [polygon(r["polygon_token"]) for r in nusc_map.ped_crossing]
        surfaces = [
            polygon(r["polygon_token"])
            for layer in ("road_segment", "lane")
            for r in getattr(nusc_map, layer)
        ]
        self._dividers = _GeometrySet([g for g in dividers if g is not None and not g.is_empty])
        self._peds = _GeometrySet([g for g in peds if g is not None])
        self._surfaces = _GeometrySet([g for g in surfaces if g is not None])

    def polylines(self, lidar_to_global: np.ndarray) -> list[tuple[int, LineString]]:
        """The elements before resampling: (label into MAP_CLASSES, polyline in the lidar frame), in VAD's
        class order. These are the GT lines VAD's map evaluation reads (its `_format_gt` keeps them whole)."""
        coeffs = planar_global_to_local(lidar_to_global)
        patch = _local_box()
        elements: list[tuple[int, LineString]] = []

        for geom in self._dividers.clipped(coeffs, patch):
            elements.extend((_DIVIDER, ln) for ln in _parts(geom, LineString))

        peds = self._peds.clipped(coeffs, patch)
        for ring_lines in _outline_lines(peds, _local_box(+0.2)):
            elements.append((_PED, ring_lines))

        surfaces = self._surfaces.clipped(coeffs, patch)
        for ring_lines in _outline_lines(surfaces, _local_box(-0.2)):
            elements.append((_BOUNDARY, ring_lines))

        return [(label, ln) for label, ln in elements if ln.length > 1e-6]

    def vectors(self, lidar_to_global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(M, MAP_POINTS, 2)` float32 points in the lidar frame and `(M,)` int64 labels into MAP_CLASSES."""
        elements = self.polylines(lidar_to_global)
        if not elements:
            return np.zeros((0, MAP_POINTS, 2), np.float32), np.zeros((0,), np.int64)
        labels = np.array([label for label, _ in elements], dtype=np.int64)
        points = np.stack([resample(ln, MAP_POINTS) for _, ln in elements])
        # Clipping is exact up to floating point; clamp so every point is inside the patch, as VAD does.
        points[..., 0] = np.clip(points[..., 0], -PATCH_X / 2, PATCH_X / 2)
        points[..., 1] = np.clip(points[..., 1], -PATCH_Y / 2, PATCH_Y / 2)
        return points.astype(np.float32), labels


class _GeometrySet:
    """Global-frame geometries with an STRtree; returns those near a patch, moved into the lidar frame."""

    def __init__(self, geoms: list) -> None:
        self._geoms = np.array(geoms, dtype=object)
        self._tree = STRtree(self._geoms) if len(geoms) else None

    def clipped(self, coeffs, local_patch: Polygon) -> list:
        if self._tree is None:
            return []
        # The patch in global coordinates: invert the planar transform on the patch box.
        a, b, d, e, xoff, yoff = coeffs
        # local = A g + o  =>  g = A^T (local - o)  (A is a rotation)
        inv = (a, d, b, e, -(a * xoff + d * yoff), -(b * xoff + e * yoff))
        global_patch = affinity.affine_transform(local_patch, inv)
        idx = self._tree.query(global_patch, predicate="intersects")
        if len(idx) == 0:
            return []
        moved = [affinity.affine_transform(g, coeffs) for g in self._geoms[np.sort(idx)]]
        clipped = shapely.intersection(np.array(moved, dtype=object), local_patch)
        return [g for g in clipped if not g.is_empty]


def _parts(geom, kind: type) -> Iterable:
    """The non-empty pieces of type `kind` (LineString or Polygon) of a shapely result, collections unpacked
    (points and other degenerate pieces of a clipping are dropped)."""
    if isinstance(geom, kind):
        if not geom.is_empty:
            yield geom
    elif hasattr(geom, "geoms"):
        for part in geom.geoms:
            yield from _parts(part, kind)


def _outline_lines(polys: list, clip: Polygon) -> list[LineString]:
    """MapTR's outline extraction: union, rings oriented (exterior cw, holes ccw), clipped, pieces merged."""
    if not polys:
        return []
    union = ops.unary_union([p for g in polys for p in _parts(g, Polygon)])
    rings = []
    for poly in _parts(union, Polygon):
        ext = poly.exterior
        rings.append(LineString(list(ext.coords)[::-1]) if ext.is_ccw else LineString(ext.coords))
        for hole in poly.interiors:
            rings.append(LineString(hole.coords) if hole.is_ccw else LineString(list(hole.coords)[::-1]))
    out: list[LineString] = []
    for ring in rings:
        lines = ring.intersection(clip)
        if isinstance(lines, MultiLineString):
            lines = ops.linemerge(lines)
        out.extend(_parts(lines, LineString))
    return out


def resample(line: LineString, n: int) -> np.ndarray:
    """`n` points evenly spaced along `line` (both ends included), `(n, 2)` float64."""
    distances = np.linspace(0.0, line.length, n)
    return shapely.get_coordinates(shapely.line_interpolate_point(line, distances))


class MapCache:
    """One `MapVectorizer` per map name of a dataroot, built on first use."""

    def __init__(self, dataroot: Path) -> None:
        self.dataroot = Path(dataroot)
        self._maps: dict[str, MapVectorizer] = {}

    def get(self, map_name: str) -> MapVectorizer:
        if map_name not in self._maps:
            self._maps[map_name] = MapVectorizer(open_map(self.dataroot, map_name))
        return self._maps[map_name]

    def vectors(self, map_name: str, lidar_to_global: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.get(map_name).vectors(lidar_to_global)

    def polylines(self, map_name: str, lidar_to_global: np.ndarray) -> list[tuple[int, LineString]]:
        return self.get(map_name).polylines(lidar_to_global)
