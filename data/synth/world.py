"""The static world of one map location: a grid of two-way roads with lanes, parking strips, sidewalks,
junctions, ped crossings and stop lines, plus the lane graph that vehicles (and the ego) drive on.

Everything is plain geometry (shapely polygons, `Line` / `Arc` pieces); `mapexp.py` writes it as a
map-expansion JSON, `render.py` and `lidar.py` draw it.

Cross-section of a road (right-hand traffic; mirrored for left-hand): centre line (road divider), two 3.5 m
lanes per direction (`k` = 0 beside the centre, 1 beside the kerb), a 2.5 m parking strip, then the 3 m
sidewalk of the block. Junction boxes are square with 5 m corner radii; all roads run through to the world's
edge so every junction has four arms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from shapely.geometry import LineString, Polygon, box
from shapely.ops import unary_union

from netroller.data.synth.geometry import Arc, Line, Piece

LANE_WIDTH = 3.5
LANES_PER_DIR = 2
PARKING_WIDTH = 2.5
SIDEWALK_WIDTH = 3.0
CORNER_RADIUS = 5.0
HALF_ROAD = LANES_PER_DIR * LANE_WIDTH + PARKING_WIDTH  # 9.5 m
HALF_JUNCTION = HALF_ROAD + CORNER_RADIUS  # 14.5 m
CROSSING_WIDTH = 4.0
STOP_LINE_GAP = 0.5
STOP_LINE_WIDTH = 0.4
BLOCK_LENGTHS = (80.0, 90.0, 100.0)  # distances between neighbouring junctions a location may use
CANVAS_MARGIN = 40.0  # metres between the canvas origin and the world

# Direction codes: 0 east, 1 north, 2 west, 3 south; exact headings so that straight driving is exact.
HEADINGS = (0.0, math.pi / 2.0, math.pi, -math.pi / 2.0)
UNIT = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


@dataclass
class Road:
    """A straight two-way road through the whole world; `horizontal` roads run along x at `coord` = y."""

    index: int
    horizontal: bool
    coord: float
    junction_coords: list[float]  # along the road, ascending
    lo: float  # world extent along the road
    hi: float

    def spans(self) -> list[tuple[float, float]]:
        """Along-road extents of the pieces between junction boxes (and to the world's edge)."""
        cuts = (
            [self.lo]
            + [c for j in self.junction_coords for c in (j - HALF_JUNCTION, j + HALF_JUNCTION)]
            + [self.hi]
        )
        return [(cuts[i], cuts[i + 1]) for i in range(0, len(cuts), 2)]

    def point(self, along: float, lateral: float) -> tuple[float, float]:
        """World point at `along` the road and `lateral` metres to the left of its +direction."""
        return (along, self.coord + lateral) if self.horizontal else (self.coord - lateral, along)


@dataclass
class LanePiece:
    """One node of the lane graph: a lane between junctions (`kind` "lane") or a path through a junction
    (`kind` "connector", `turn` straight / left / right)."""

    index: int
    kind: str
    direction: int  # direction code at its start
    k: int  # lane index: 0 beside the centre line, 1 beside the parking strip
    piece: Piece
    road: int | None = None  # lanes: the road
    span: int | None = None  # lanes: the span index along the road
    junction: tuple[int, int] | None = None  # connectors: junction (i, j)
    turn: str = "straight"
    outgoing: list[int] = field(default_factory=list)
    incoming: list[int] = field(default_factory=list)

    @property
    def length(self) -> float:
        return self.piece.length

    def polygon(self) -> Polygon:
        if self.kind == "lane":
            return _rect_along(self.piece, LANE_WIDTH / 2.0)
        pts = self.piece.poses(np.linspace(0.0, self.piece.length, 12))[:, :2]
        return LineString(pts).buffer(LANE_WIDTH / 2.0, cap_style=2, join_style=2)


@dataclass
class World:
    """A map location's roads, areas, markings and lane graph."""

    location: str
    right_hand: bool
    xs: list[float]  # junction x coordinates
    ys: list[float]  # junction y coordinates
    bounds: tuple[float, float, float, float]  # world rectangle x0, y0, x1, y1
    canvas: tuple[float, float]  # canvas_edge (width, height) in metres
    roads: list[Road]
    lanes: list[LanePiece]
    drivable: Polygon
    blocks: list[Polygon]  # the areas between roads (sidewalk + inner terrain)
    walkways: list[Polygon]
    crossings: list[
        dict
    ]  # {"polygon", "junction", "road", "span", "path": (p0, p1) sidewalk to sidewalk, "away"}
    stop_lines: list[
        dict
    ]  # {"polygon", "crossing", "road", "span", "positive": traffic in the road's +direction}
    parking_slots: list[dict]  # {"x", "y", "yaw", "road", "span"} centres in parking strips
    sidewalk_rings: list[np.ndarray] = field(default_factory=list)  # (n, 2) closed paths 1.5 m from the kerb

    def side(self) -> float:
        """+1 where traffic keeps right, -1 where it keeps left."""
        return 1.0 if self.right_hand else -1.0

    def lane_lateral(self, direction_positive: bool, k: int) -> float:
        """Lateral offset (to the left of the road's +direction) of lane `k`'s centre for that direction."""
        off = (k + 0.5) * LANE_WIDTH * self.side()
        return -off if direction_positive else off

    def road_segments(self) -> list[tuple[Road, int, float, float]]:
        """(road, span index, lo, hi) of every road segment between junction boxes."""
        return [(r, i, lo, hi) for r in self.roads for i, (lo, hi) in enumerate(r.spans())]

    def junction_polygon(self, i: int, j: int) -> Polygon:
        x, y = self.xs[i], self.ys[j]
        return box(x - HALF_JUNCTION, y - HALF_JUNCTION, x + HALF_JUNCTION, y + HALF_JUNCTION).intersection(
            self.drivable
        )


def _rect_along(line: Line, half_width: float, lateral: float = 0.0) -> Polygon:
    """Rectangle around `line`, shifted `lateral` metres to its left."""
    c, s = math.cos(line.heading), math.sin(line.heading)
    nx, ny = -s, c
    x0, y0 = line.start[0] + nx * lateral, line.start[1] + ny * lateral
    x1, y1 = x0 + c * line.length, y0 + s * line.length
    return Polygon(
        [
            (x0 + nx * half_width, y0 + ny * half_width),
            (x0 - nx * half_width, y0 - ny * half_width),
            (x1 - nx * half_width, y1 - ny * half_width),
            (x1 + nx * half_width, y1 + ny * half_width),
        ]
    )


def build_world(location: str, *, right_hand: bool, junctions: int, extension: float, block: float) -> World:
    """A `junctions` x `junctions` grid of roads, `block` metres apart, running `extension` metres beyond the
    outer junctions to the world's edge."""
    x0 = CANVAS_MARGIN
    span = (junctions - 1) * block
    xs = [x0 + extension + i * block for i in range(junctions)]
    ys = [x0 + extension + j * block for j in range(junctions)]
    x1 = x0 + 2 * extension + span
    bounds = (x0, x0, x1, x1)
    canvas = (x1 + CANVAS_MARGIN, x1 + CANVAS_MARGIN)
    world_rect = box(*bounds)

    roads = [Road(j, True, y, list(xs), x0, x1) for j, y in enumerate(ys)]
    roads += [Road(junctions + i, False, x, list(ys), x0, x1) for i, x in enumerate(xs)]

    # Blocks: cells between roads, pulled back to the kerb, corners rounded; outer cells reach past the edge
    # so that only kerb corners get rounded.
    cut_x = [x0 - 20.0] + xs + [x1 + 20.0]
    cut_y = [x0 - 20.0] + ys + [x1 + 20.0]
    blocks = []
    for a in range(len(cut_x) - 1):
        for b in range(len(cut_y) - 1):
            bx0 = cut_x[a] + (HALF_ROAD if a > 0 else 0.0)
            bx1 = cut_x[a + 1] - (HALF_ROAD if a + 1 < len(cut_x) - 1 else 0.0)
            by0 = cut_y[b] + (HALF_ROAD if b > 0 else 0.0)
            by1 = cut_y[b + 1] - (HALF_ROAD if b + 1 < len(cut_y) - 1 else 0.0)
            cell = (
                box(bx0, by0, bx1, by1)
                .buffer(-CORNER_RADIUS, join_style=2)
                .buffer(CORNER_RADIUS, resolution=4)
            )
            blocks.append(cell.intersection(world_rect))
    drivable = world_rect.difference(unary_union(blocks))
    walkways = []
    rings = []
    for blk in blocks:
        inner = blk.buffer(-SIDEWALK_WIDTH, join_style=2)
        walkways.append(blk.difference(inner))
        ring = blk.buffer(-SIDEWALK_WIDTH / 2.0, join_style=2)
        if ring.geom_type == "Polygon" and not ring.is_empty:
            rings.append(np.asarray(ring.exterior.coords))

    world = World(
        location=location,
        right_hand=right_hand,
        xs=xs,
        ys=ys,
        bounds=bounds,
        canvas=canvas,
        roads=roads,
        lanes=[],
        drivable=drivable,
        blocks=blocks,
        walkways=walkways,
        crossings=[],
        stop_lines=[],
        parking_slots=[],
        sidewalk_rings=rings,
    )
    _build_lanes(world)
    _build_crossings(world)
    _build_parking(world)
    return world


def _direction_of(road: Road, positive: bool) -> int:
    if road.horizontal:
        return 0 if positive else 2
    return 1 if positive else 3


def _build_lanes(world: World) -> None:
    n = len(world.xs)
    lane_at: dict[tuple[int, bool, int, int], int] = {}  # (road, positive, k, span) -> lane index
    for road in world.roads:
        for si, (lo, hi) in enumerate(road.spans()):
            for positive in (True, False):
                d = _direction_of(road, positive)
                for k in range(LANES_PER_DIR):
                    lat = world.lane_lateral(positive, k)
                    start = road.point(lo if positive else hi, lat)
                    piece = Line(start, HEADINGS[d], hi - lo)
                    idx = len(world.lanes)
                    world.lanes.append(LanePiece(idx, "lane", d, k, piece, road=road.index, span=si))
                    lane_at[(road.index, positive, k, si)] = idx

    def road_through(i: int, j: int, horizontal: bool) -> tuple[Road, int]:
        return (world.roads[j], i) if horizontal else (world.roads[n + i], j)

    far_turn = 1 if world.right_hand else -1  # the turn across oncoming traffic
    for i in range(n):
        for j in range(n):
            for d in range(4):
                horizontal = d in (0, 2)
                positive = d in (0, 1)
                road, m = road_through(i, j, horizontal)
                for k in range(LANES_PER_DIR):
                    src = lane_at[(road.index, positive, k, m if positive else m + 1)]
                    moves = [("straight", d)]
                    if k == 0:
                        moves.append(("left" if far_turn == 1 else "right", (d + far_turn) % 4))
                    if k == LANES_PER_DIR - 1:
                        moves.append(("right" if far_turn == 1 else "left", (d - far_turn) % 4))
                    for turn, d2 in moves:
                        h2 = d2 in (0, 2)
                        p2 = d2 in (0, 1)
                        road2, m2 = road_through(i, j, h2)
                        dst = lane_at[(road2.index, p2, k, m2 + 1 if p2 else m2)]
                        a = world.lanes[src].piece.end()
                        b = world.lanes[dst].piece.start
                        if turn == "straight":
                            piece: Piece = Line((a[0], a[1]), HEADINGS[d], 2 * HALF_JUNCTION)
                        else:
                            radius = abs((b[0] - a[0]) * UNIT[d][0] + (b[1] - a[1]) * UNIT[d][1])
                            piece = Arc(
                                (a[0], a[1]), HEADINGS[d], radius, 1 if turn == "left" else -1, math.pi / 2
                            )
                        idx = len(world.lanes)
                        world.lanes.append(
                            LanePiece(idx, "connector", d, k, piece, junction=(i, j), turn=turn)
                        )
                        world.lanes[src].outgoing.append(idx)
                        world.lanes[idx].incoming.append(src)
                        world.lanes[idx].outgoing.append(dst)
                        world.lanes[dst].incoming.append(idx)


def _build_crossings(world: World) -> None:
    n = len(world.xs)
    for i in range(n):
        for j in range(n):
            for road, centre in ((world.roads[j], world.xs[i]), (world.roads[n + i], world.ys[j])):
                for sign in (-1.0, 1.0):
                    a0 = centre + sign * HALF_JUNCTION
                    a1 = centre + sign * (HALF_JUNCTION + CROSSING_WIDTH)
                    lo, hi = min(a0, a1), max(a0, a1)
                    poly = Polygon(
                        [
                            road.point(lo, -HALF_ROAD),
                            road.point(hi, -HALF_ROAD),
                            road.point(hi, HALF_ROAD),
                            road.point(lo, HALF_ROAD),
                        ]
                    )
                    mid = (lo + hi) / 2.0
                    kerb = HALF_ROAD + SIDEWALK_WIDTH / 2.0  # from sidewalk to sidewalk
                    path = (road.point(mid, -kerb), road.point(mid, kerb))
                    ux, uy = (1.0, 0.0) if road.horizontal else (0.0, 1.0)
                    away = (sign * ux, sign * uy)  # along the road, away from the junction
                    ci = len(world.crossings)
                    # The span of the road this crossing lies on: the one beyond the junction on `sign`'s side.
                    m = road.junction_coords.index(centre)
                    span = m + 1 if sign > 0 else m
                    world.crossings.append(
                        {
                            "polygon": poly,
                            "junction": (i, j),
                            "road": road.index,
                            "span": span,
                            "path": path,
                            "away": away,
                        }
                    )
                    # Stop line for traffic arriving at the junction over this crossing.
                    positive = sign < 0  # arriving in +direction means coming from the low side
                    s0 = centre + sign * (HALF_JUNCTION + CROSSING_WIDTH + STOP_LINE_GAP)
                    s1 = s0 + sign * STOP_LINE_WIDTH
                    lat_in = world.lane_lateral(positive, 0)
                    lat_out = world.lane_lateral(positive, LANES_PER_DIR - 1)
                    l0 = min(lat_in, lat_out) - LANE_WIDTH / 2.0
                    l1 = max(lat_in, lat_out) + LANE_WIDTH / 2.0
                    sl = Polygon(
                        [
                            road.point(min(s0, s1), l0),
                            road.point(max(s0, s1), l0),
                            road.point(max(s0, s1), l1),
                            road.point(min(s0, s1), l1),
                        ]
                    )
                    world.stop_lines.append(
                        {
                            "polygon": sl,
                            "crossing": ci,
                            "road": road.index,
                            "span": span,
                            "positive": positive,
                        }
                    )


def _build_parking(world: World) -> None:
    """Parking slots every 6.5 m along both kerbs of every road segment, clear of crossings."""
    lat = LANES_PER_DIR * LANE_WIDTH + PARKING_WIDTH / 2.0
    for road in world.roads:
        for si, (lo, hi) in enumerate(road.spans()):
            a, b = lo + CROSSING_WIDTH + 6.0, hi - CROSSING_WIDTH - 6.0
            if b <= a:
                continue
            for along in np.arange(a, b, 6.5):
                for positive in (True, False):
                    # Parked cars face the direction of the traffic beside them.
                    lateral = world.lane_lateral(positive, 0)
                    lateral = math.copysign(lat, lateral)
                    d = _direction_of(road, positive)
                    x, y = road.point(float(along), lateral)
                    world.parking_slots.append(
                        {"x": x, "y": y, "yaw": HEADINGS[d], "road": road.index, "span": si}
                    )
