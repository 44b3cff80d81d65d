"""nuScenes' fixed vocabularies (categories with their lidarseg `index`, attributes, visibility levels) and
the object classes the synthetic world places: size, fixed render colour, lidar intensity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# (index, name, description) as in nuScenes v1.0 category.json (the lidarseg-era table, all 32 classes).
CATEGORIES: tuple[tuple[int, str, str], ...] = (
    (
        0,
        "noise",
        "Any lidar return that does not correspond to a physical object, such as dust, vapor, noise, fog, raindrops, smoke and reflections.",
    ),
    (1, "animal", "All animals, e.g. cats, rats, dogs, deer, birds."),
    (2, "human.pedestrian.adult", "Adult subcategory."),
    (3, "human.pedestrian.child", "Child subcategory."),
    (4, "human.pedestrian.construction_worker", "Construction worker"),
    (
        5,
        "human.pedestrian.personal_mobility",
        "A small electric or self-propelled vehicle, e.g. skateboard, segway, or scooters, on which the person typically travels in a upright position. Driver and (if applicable) rider should be included in the bounding box along with the vehicle.",
    ),
    (6, "human.pedestrian.police_officer", "Police officer."),
    (7, "human.pedestrian.stroller", "Strollers. If a person is in the stroller, include in the annotation."),
    (
        8,
        "human.pedestrian.wheelchair",
        "Wheelchairs. If a person is in the wheelchair, include in the annotation.",
    ),
    (
        9,
        "movable_object.barrier",
        "Temporary road barrier placed in the scene in order to redirect traffic. Commonly used at construction sites. This includes concrete barrier, metal barrier and water barrier. No fences.",
    ),
    (
        10,
        "movable_object.debris",
        "Movable object that is left on the driveable surface that is too large to be driven over safely, e.g tree branch, full trash bag etc.",
    ),
    (
        11,
        "movable_object.pushable_pullable",
        "Objects that a pedestrian may push or pull. For example dolleys, wheel barrows, garbage-bins, or shopping carts.",
    ),
    (12, "movable_object.trafficcone", "All types of traffic cone."),
    (
        13,
        "static_object.bicycle_rack",
        "Area or device intended to park or secure the bicycles in a row. It includes all the bikes parked in it and any empty slots that are intended for parking bikes.",
    ),
    (
        14,
        "vehicle.bicycle",
        "Human or electric powered 2-wheeled vehicle designed to travel at lower speeds either on road surface, sidewalks or bike paths.",
    ),
    (15, "vehicle.bus.bendy", "Bendy bus subcategory. Annotate each section of the bendy bus individually."),
    (16, "vehicle.bus.rigid", "Rigid bus subcategory."),
    (
        17,
        "vehicle.car",
        "Vehicle designed primarily for personal use, e.g. sedans, hatch-backs, wagons, vans, mini-vans, SUVs and jeeps. If the vehicle is designed to carry more than 10 people use vehicle.bus. If it is primarily designed to haul cargo use vehicle.truck. ",
    ),
    (
        18,
        "vehicle.construction",
        "Vehicles primarily designed for construction. Typically very slow moving or stationary. Cranes and extremities of construction vehicles are only included in annotations if they interfere with traffic. Trucks used to haul rocks or building materials are considered vehicle.truck rather than vehicle.construction.",
    ),
    (19, "vehicle.emergency.ambulance", "All types of ambulances."),
    (
        20,
        "vehicle.emergency.police",
        "All types of police vehicles including police bicycles and motorcycles.",
    ),
    (
        21,
        "vehicle.motorcycle",
        "Gasoline or electric powered 2-wheeled vehicle designed to move rapidly (at the speed of standard cars) on the road surface. This category includes all motorcycles, vespas and scooters.",
    ),
    (22, "vehicle.trailer", "Any vehicle trailer, both for trucks, cars and bikes."),
    (
        23,
        "vehicle.truck",
        "Vehicles primarily designed to haul cargo including pick-ups, lorrys, trucks and semi-tractors. Trailers hauled after a semi-tractor should be labeled as vehicle.trailer",
    ),
    (
        24,
        "flat.driveable_surface",
        "All paved or unpaved surfaces that a car can drive on with no concern of traffic rules.",
    ),
    (
        25,
        "flat.other",
        "All other forms of horizontal ground-level structures that do not belong to any of driveable_surface, curb, sidewalk and terrain. Includes elevated parts of traffic islands, delimiters, rail tracks, stairs with at most 3 steps and larger bodies of water (lakes, rivers).",
    ),
    (
        26,
        "flat.sidewalk",
        "Sidewalk, pedestrian walkways, bike paths, etc. Part of the ground designated for pedestrians or cyclists. Sidewalks do not have to be next to a road.",
    ),
    (
        27,
        "flat.terrain",
        "Natural horizontal surfaces such as ground level horizontal vegetation (< 20 cm tall), grass, rolling hills, soil, sand and gravel.",
    ),
    (
        28,
        "static.manmade",
        "Includes man-made structures but not limited to: buildings, walls, guard rails, fences, poles, drainages, hydrants, flags, banners, street signs, electric circuit boxes, traffic lights, parking meters and stairs with more than 3 steps.",
    ),
    (
        29,
        "static.other",
        "Points in the background that are not distinguishable, or objects that do not match any of the above labels.",
    ),
    (
        30,
        "static.vegetation",
        "Any vegetation in the frame that is higher than the ground, including bushes, plants, potted plants, trees, etc. Only tall grass (> 20cm) is part of this, ground level grass is part of `terrain`.",
    ),
    (
        31,
        "vehicle.ego",
        "The vehicle on which the cameras, radar and lidar are mounted, that is sometimes visible at the bottom of the image.",
    ),
)

ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    (
        "vehicle.stopped",
        "Vehicle, with a driver/rider in/on it, is currently stationary but has an intent to move.",
    ),
    (
        "vehicle.parked",
        "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    ),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)

# (token, level, description) as in nuScenes visibility.json; token "1" is the least visible bin.
VISIBILITY: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)


def visibility_token(fraction: float) -> str:
    """The visibility bin of a visible fraction in [0, 1]."""
    if fraction < 0.4:
        return "1"
    if fraction < 0.6:
        return "2"
    if fraction < 0.8:
        return "3"
    return "4"


@dataclass(frozen=True)
class ObjectClass:
    """A kind of object the world places: nuScenes category, nominal size (w, l, h), render colour, intensity."""

    category: str
    size: tuple[float, float, float]
    colour: tuple[int, int, int]
    intensity: float
    kind: Literal["vehicle", "cycle", "pedestrian", "static"]


# Render colours: one fixed, saturated colour per class so that images and annotations can be matched.
OBJECT_CLASSES: dict[str, ObjectClass] = {
    c.category: c
    for c in (
        ObjectClass("vehicle.car", (1.95, 4.6, 1.7), (235, 135, 25), 30.0, "vehicle"),
        ObjectClass("vehicle.truck", (2.5, 7.0, 3.0), (190, 20, 20), 35.0, "vehicle"),
        ObjectClass("vehicle.bus.rigid", (2.95, 11.0, 3.4), (240, 200, 0), 35.0, "vehicle"),
        ObjectClass("vehicle.construction", (2.8, 6.2, 3.2), (130, 90, 40), 35.0, "vehicle"),
        ObjectClass("vehicle.trailer", (2.9, 11.5, 3.8), (120, 60, 160), 30.0, "vehicle"),
        ObjectClass("vehicle.motorcycle", (0.8, 2.1, 1.5), (220, 0, 140), 25.0, "cycle"),
        ObjectClass("vehicle.bicycle", (0.6, 1.75, 1.3), (0, 170, 200), 20.0, "cycle"),
        ObjectClass("human.pedestrian.adult", (0.67, 0.73, 1.75), (20, 60, 230), 15.0, "pedestrian"),
        ObjectClass("human.pedestrian.child", (0.5, 0.5, 1.2), (110, 150, 255), 15.0, "pedestrian"),
        ObjectClass("movable_object.barrier", (2.5, 0.5, 1.0), (255, 150, 200), 80.0, "static"),
        ObjectClass("movable_object.trafficcone", (0.4, 0.4, 1.0), (255, 45, 0), 90.0, "static"),
    )
}
