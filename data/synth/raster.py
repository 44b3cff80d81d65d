"""Rasterizes a `World` at 0.1 m per pixel: ground labels for the renderer and the map table's PNG mask.

Array layout is nuScenes' `MapMask`: row 0 is the canvas' top (largest y), column 0 is x = 0.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from shapely.geometry import LineString, MultiPolygon, Polygon

from netroller.data.synth.world import (
    CROSSING_WIDTH,
    HALF_ROAD,
    LANE_WIDTH,
    LANES_PER_DIR,
    World,
)

RESOLUTION = 0.1  # metres per pixel, the devkit's native map-mask resolution

# Ground labels.
TERRAIN, ASPHALT, PARKING, SIDEWALK, WHITE, YELLOW = range(6)
GROUND_COLOURS = np.array(
    [
        (96, 128, 70),  # terrain (grass)
        (78, 78, 82),  # asphalt
        (92, 90, 94),  # parking strip
        (160, 156, 148),  # sidewalk
        (232, 232, 228),  # white paint
        (226, 190, 40),  # yellow paint
    ],
    dtype=np.uint8,
)
LABEL_INTENSITY = np.array([12.0, 6.0, 7.0, 18.0, 60.0, 55.0], dtype=np.float32)

DASH, GAP = 3.0, 6.0  # lane-divider dashes
PAINT = 0.15  # line width in metres


def _px(world: World, pts) -> list[tuple[float, float]]:
    h = world.canvas[1] / RESOLUTION
    return [(x / RESOLUTION, h - y / RESOLUTION) for x, y in pts]


def _fill_with_holes(img: Image.Image, world: World, geom, value: int) -> None:
    """Polygons with holes: draw the exterior into a scratch mask, cut the holes, paste."""
    polys = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
    for p in polys:
        if p.is_empty:
            continue
        x0, y0, x1, y1 = p.bounds
        h = world.canvas[1] / RESOLUTION
        c0, c1 = int(math.floor(x0 / RESOLUTION)) - 1, int(math.ceil(x1 / RESOLUTION)) + 1
        r0, r1 = int(math.floor(h - y1 / RESOLUTION)) - 1, int(math.ceil(h - y0 / RESOLUTION)) + 1
        mask = Image.new("1", (c1 - c0, r1 - r0), 0)
        d = ImageDraw.Draw(mask)
        d.polygon([(x - c0, y - r0) for x, y in _px(world, p.exterior.coords)], fill=1)
        for hole in p.interiors:
            d.polygon([(x - c0, y - r0) for x, y in _px(world, hole.coords)], fill=0)
        img.paste(value, (c0, r0, c1, r1), mask)


def _stripe(line: LineString, width: float) -> Polygon:
    return line.buffer(width / 2.0, cap_style=2)


def painted_lines(world: World) -> list[tuple[Polygon, int]]:
    """Road paint as (polygon, label): centre lines, lane dividers, kerb-side edge lines, crossings, stop lines."""
    out: list[tuple[Polygon, int]] = []
    centre_label = YELLOW if world.right_hand else WHITE
    for road, _si, lo, hi in world.road_segments():
        lo, hi = lo + CROSSING_WIDTH, hi - CROSSING_WIDTH  # paint stops at the crossings
        for off in (-0.15, 0.15):
            out.append((_stripe(LineString([road.point(lo, off), road.point(hi, off)]), PAINT), centre_label))
        for sign in (-1.0, 1.0):
            for j in range(1, LANES_PER_DIR):  # dashed dividers between same-direction lanes
                lat = sign * j * LANE_WIDTH
                a = lo + 1.0
                while a < hi - 1.0:
                    b = min(a + DASH, hi - 1.0)
                    out.append((_stripe(LineString([road.point(a, lat), road.point(b, lat)]), PAINT), WHITE))
                    a += DASH + GAP
            lat = sign * LANES_PER_DIR * LANE_WIDTH  # solid edge line beside the parking strip
            out.append((_stripe(LineString([road.point(lo, lat), road.point(hi, lat)]), PAINT), WHITE))
    for c in world.crossings:
        road = world.roads[c["road"]]
        minx, miny, maxx, maxy = c["polygon"].bounds
        lo, hi = (minx, maxx) if road.horizontal else (miny, maxy)
        lat = -HALF_ROAD + 0.5
        while lat + 0.5 <= HALF_ROAD:
            p = [
                road.point(lo, lat),
                road.point(hi, lat),
                road.point(hi, lat + 0.5),
                road.point(lo, lat + 0.5),
            ]
            out.append((Polygon(p), WHITE))
            lat += 1.0
    for s in world.stop_lines:
        out.append((s["polygon"], WHITE))
    return out


def rasterize(world: World) -> np.ndarray:
    """(H, W) uint8 ground labels over the whole canvas."""
    w = int(round(world.canvas[0] / RESOLUTION))
    h = int(round(world.canvas[1] / RESOLUTION))
    img = Image.new("L", (w, h), TERRAIN)
    draw = ImageDraw.Draw(img)
    _fill_with_holes(img, world, world.drivable, ASPHALT)
    for road, _si, lo, hi in world.road_segments():
        for sign in (-1.0, 1.0):
            a, b = sign * LANES_PER_DIR * LANE_WIDTH, sign * HALF_ROAD
            p = [road.point(lo, a), road.point(hi, a), road.point(hi, b), road.point(lo, b)]
            draw.polygon(_px(world, p), fill=PARKING)
    for wk in world.walkways:
        _fill_with_holes(img, world, wk, SIDEWALK)
    for poly, label in painted_lines(world):
        draw.polygon(_px(world, poly.exterior.coords), fill=label)
    return np.asarray(img)


def semantic_prior_png(labels: np.ndarray) -> Image.Image:
    """The map table's mask: drivable surface and sidewalks 255, the rest 0."""
    return Image.fromarray(np.where(labels != TERRAIN, 255, 0).astype(np.uint8), mode="L")
