"""Writes a `World` as a nuScenes map-expansion v1.3 JSON (the layers `NuScenesMap` loads).

Geometry layers: node, line, polygon. Semantic layers point into them by token. Lines are sampled every
2.5 m or closer because the devkit's patch queries test line *nodes* against the patch.
"""

from __future__ import annotations

import math

from shapely.geometry import MultiPolygon, Polygon, box

from netroller.data.synth.geometry import Arc, Line
from netroller.data.synth.tokens import TokenFactory
from netroller.data.synth.world import (
    CROSSING_WIDTH,
    HALF_JUNCTION,
    HALF_ROAD,
    LANE_WIDTH,
    LANES_PER_DIR,
    World,
)

MAP_VERSION = "1.3"
NODE_SPACING = 2.5


class _Builder:
    def __init__(self, token: TokenFactory):
        self.token = token
        self._nodes: dict[tuple[float, float], str] = {}
        self.layers: dict[str, list] = {
            name: []
            for name in (
                "polygon",
                "line",
                "node",
                "drivable_area",
                "road_segment",
                "road_block",
                "lane",
                "ped_crossing",
                "walkway",
                "stop_line",
                "carpark_area",
                "road_divider",
                "lane_divider",
                "traffic_light",
                "lane_connector",
            )
        }

    def node(self, x: float, y: float) -> str:
        """A node at (x, y); nodes are shared, as in the real maps, so that neighbouring records meet in
        common nodes (what `NuScenesMap.get_next_roads` follows)."""
        key = (round(float(x), 4), round(float(y), 4))
        t = self._nodes.get(key)
        if t is None:
            t = self._nodes[key] = self.token()
            self.layers["node"].append({"token": t, "x": key[0], "y": key[1]})
        return t

    def _ring(self, coords) -> list[str]:
        out: list[str] = []
        for x, y in list(coords)[:-1]:
            t = self.node(x, y)
            if not out or out[-1] != t:
                out.append(t)
        if len(out) > 1 and out[0] == out[-1]:
            out.pop()
        return out

    def polygon(self, poly: Polygon) -> str:
        poly = poly.buffer(0) if not poly.is_valid else poly
        ext = self._ring(poly.exterior.coords)
        holes = [{"node_tokens": self._ring(h.coords)} for h in poly.interiors]
        t = self.token()
        self.layers["polygon"].append({"token": t, "exterior_node_tokens": ext, "holes": holes})
        return t

    def line(self, pts) -> tuple[str, list[str]]:
        nodes = [self.node(x, y) for x, y in pts]
        t = self.token()
        self.layers["line"].append({"token": t, "node_tokens": nodes})
        return t, nodes


def _densify(p0, p1, spacing: float = NODE_SPACING) -> list[tuple[float, float]]:
    n = max(1, math.ceil(math.hypot(p1[0] - p0[0], p1[1] - p0[1]) / spacing))
    return [(p0[0] + (p1[0] - p0[0]) * i / n, p0[1] + (p1[1] - p0[1]) * i / n) for i in range(n + 1)]


def _with_arm_vertices(world: World, i: int, j: int) -> Polygon:
    """The junction's polygon with vertices where each arm's lanes, road blocks and road meet it, so that the
    edges of the arms' records are made of the junction's own nodes."""
    poly = world.junction_polygon(i, j)
    cx, cy = world.xs[i], world.ys[j]
    offsets = sorted(
        {0.0, HALF_ROAD, -HALF_ROAD}
        | {s * k * LANE_WIDTH for s in (-1, 1) for k in range(1, LANES_PER_DIR + 1)}
    )
    extra = [(cx + e, cy + o) for e in (-HALF_JUNCTION, HALF_JUNCTION) for o in offsets]
    extra += [(cx + o, cy + e) for e in (-HALF_JUNCTION, HALF_JUNCTION) for o in offsets]
    coords = list(poly.exterior.coords)
    out = []
    for p, q in zip(coords[:-1], coords[1:], strict=True):
        out.append(p)
        dx, dy = q[0] - p[0], q[1] - p[1]
        seg2 = dx * dx + dy * dy
        if seg2 == 0:
            continue
        between = []
        for r in extra:
            t = ((r[0] - p[0]) * dx + (r[1] - p[1]) * dy) / seg2
            cross = (r[0] - p[0]) * dy - (r[1] - p[1]) * dx
            if 1e-9 < t < 1 - 1e-9 and abs(cross) < 1e-6 * math.sqrt(seg2):
                between.append((t, r))
        out.extend(r for _, r in sorted(between))
    return Polygon(out)


def _arcline(piece) -> dict:
    if isinstance(piece, Line):
        end = piece.end()
        return {
            "start_pose": [piece.start[0], piece.start[1], piece.heading],
            "end_pose": [end[0], end[1], piece.heading],
            "shape": "LSL",
            "radius": 999.999,
            "segment_length": [0.0, piece.length, 0.0],
        }
    assert isinstance(piece, Arc)
    end = piece.end()
    return {
        "start_pose": [piece.start[0], piece.start[1], piece.heading],
        "end_pose": [end[0], end[1], math.remainder(end[2], 2 * math.pi)],
        "shape": "LSL" if piece.turn == 1 else "RSR",
        "radius": piece.radius,
        "segment_length": [piece.length, 0.0, 0.0],
    }


def map_expansion(world: World, token: TokenFactory) -> dict:
    """The map-expansion JSON object of `world`."""
    b = _Builder(token)
    L = b.layers
    drivable_token = token()
    polys = list(world.drivable.geoms) if isinstance(world.drivable, MultiPolygon) else [world.drivable]
    L["drivable_area"].append({"token": drivable_token, "polygon_tokens": [b.polygon(p) for p in polys]})

    n = len(world.xs)
    segment_token: dict[tuple[int, int], str] = {}
    block_token: dict[tuple[int, int, bool], str] = {}
    lane_tokens = [token() for _ in world.lanes]
    for road, si, lo, hi in world.road_segments():
        st = token()
        segment_token[(road.index, si)] = st
        poly = Polygon(
            [
                road.point(lo, -HALF_ROAD),
                road.point(hi, -HALF_ROAD),
                road.point(hi, HALF_ROAD),
                road.point(lo, HALF_ROAD),
            ]
        )
        L["road_segment"].append(
            {
                "token": st,
                "polygon_token": b.polygon(poly),
                "is_intersection": False,
                "drivable_area_token": drivable_token,
            }
        )
        for positive in (True, False):
            side = math.copysign(HALF_ROAD, world.lane_lateral(positive, 0))
            a0, a1 = (lo, hi) if positive else (hi, lo)
            poly = Polygon(
                [road.point(a0, 0.0), road.point(a1, 0.0), road.point(a1, side), road.point(a0, side)]
            )
            frm, _ = b.line([road.point(a0, 0.0), road.point(a0, side)])
            to, _ = b.line([road.point(a1, 0.0), road.point(a1, side)])
            bt = token()
            block_token[(road.index, si, positive)] = bt
            L["road_block"].append(
                {
                    "token": bt,
                    "polygon_token": b.polygon(poly.buffer(0) if not poly.exterior.is_ccw else poly),
                    "from_edge_line_token": frm,
                    "to_edge_line_token": to,
                    "road_segment_token": st,
                }
            )
        # Dividers: the centre line, and per side the dashed lane dividers and the solid edge line.
        p_lo, p_hi = lo + CROSSING_WIDTH, hi - CROSSING_WIDTH
        line_t, _ = b.line(_densify(road.point(p_lo, 0.0), road.point(p_hi, 0.0)))
        L["road_divider"].append({"token": token(), "line_token": line_t, "road_segment_token": st})
        for sign in (-1.0, 1.0):
            for j in range(1, LANES_PER_DIR + 1):
                lat = sign * j * LANE_WIDTH
                kind = "DOUBLE_DASHED_WHITE" if j < LANES_PER_DIR else "SINGLE_SOLID_WHITE"
                line_t, nodes = b.line(_densify(road.point(p_lo, lat), road.point(p_hi, lat)))
                L["lane_divider"].append(
                    {
                        "token": token(),
                        "line_token": line_t,
                        "lane_divider_segments": [{"node_token": nt, "segment_type": kind} for nt in nodes],
                    }
                )
    for i in range(n):
        for j in range(n):
            st = token()
            segment_token[("junction", i, j)] = st  # type: ignore[index]
            L["road_segment"].append(
                {
                    "token": st,
                    "polygon_token": b.polygon(_with_arm_vertices(world, i, j)),
                    "is_intersection": True,
                    "drivable_area_token": drivable_token,
                }
            )

    for lp, lt in zip(world.lanes, lane_tokens, strict=True):
        if lp.kind == "lane":
            piece = lp.piece
            assert isinstance(piece, Line)
            c, s = math.cos(piece.heading), math.sin(piece.heading)
            nx, ny = -s, c
            ex, ey, _ = piece.end()
            hw = LANE_WIDTH / 2.0
            frm, _ = b.line(
                [
                    (piece.start[0] + nx * hw, piece.start[1] + ny * hw),
                    (piece.start[0] - nx * hw, piece.start[1] - ny * hw),
                ]
            )
            to, _ = b.line([(ex + nx * hw, ey + ny * hw), (ex - nx * hw, ey - ny * hw)])
            left = _densify(
                (piece.start[0] + nx * hw, piece.start[1] + ny * hw), (ex + nx * hw, ey + ny * hw)
            )
            right = _densify(
                (piece.start[0] - nx * hw, piece.start[1] - ny * hw), (ex - nx * hw, ey - ny * hw)
            )
            left_nodes = [b.node(x, y) for x, y in left]
            right_nodes = [b.node(x, y) for x, y in right]
            outer = lp.k == LANES_PER_DIR - 1
            inner_type, outer_type = "NIL", "DOUBLE_DASHED_WHITE"
            # Which side of the lane faces the centre line depends on the traffic side.
            left_type = (
                (inner_type if lp.k == 0 else outer_type)
                if world.right_hand
                else ("SINGLE_SOLID_WHITE" if outer else outer_type)
            )
            right_type = (
                ("SINGLE_SOLID_WHITE" if outer else outer_type)
                if world.right_hand
                else (inner_type if lp.k == 0 else outer_type)
            )
            L["lane"].append(
                {
                    "token": lt,
                    "polygon_token": b.polygon(lp.polygon()),
                    "lane_type": "CAR",
                    "from_edge_line_token": frm,
                    "to_edge_line_token": to,
                    "left_lane_divider_segments": [
                        {"node_token": t, "segment_type": left_type} for t in left_nodes
                    ],
                    "right_lane_divider_segments": [
                        {"node_token": t, "segment_type": right_type} for t in right_nodes
                    ],
                }
            )
        else:
            L["lane_connector"].append({"token": lt, "polygon_token": b.polygon(lp.polygon())})

    crossing_tokens = []
    for c in world.crossings:
        ct = token()
        crossing_tokens.append(ct)
        L["ped_crossing"].append(
            {
                "token": ct,
                "polygon_token": b.polygon(c["polygon"]),
                "road_segment_token": segment_token[(c["road"], c["span"])],
            }
        )
    for s in world.stop_lines:
        L["stop_line"].append(
            {
                "token": token(),
                "polygon_token": b.polygon(s["polygon"]),
                "stop_line_type": "PED_CROSSING",
                "ped_crossing_tokens": [crossing_tokens[s["crossing"]]],
                "traffic_light_tokens": [],
                "road_block_token": block_token[(s["road"], s["span"], s["positive"])],
            }
        )
    x0, y0, x1, y1 = world.bounds
    for wk in world.walkways:
        for p in list(wk.geoms) if isinstance(wk, MultiPolygon) else [wk]:
            if not p.is_empty and p.intersects(box(x0, y0, x1, y1)):
                L["walkway"].append({"token": token(), "polygon_token": b.polygon(p)})

    arclines = {lt: [_arcline(lp.piece)] for lp, lt in zip(world.lanes, lane_tokens, strict=True)}
    connectivity = {
        lt: {
            "incoming": [lane_tokens[i] for i in lp.incoming],
            "outgoing": [lane_tokens[i] for i in lp.outgoing],
        }
        for lp, lt in zip(world.lanes, lane_tokens, strict=True)
    }
    out: dict = {"version": MAP_VERSION}
    out.update(L)
    out["arcline_path_3"] = arclines
    out["connectivity"] = connectivity
    out["canvas_edge"] = [float(world.canvas[0]), float(world.canvas[1])]
    return out
