"""DriveLM-nuScenes QA for the synthetic keyframes, every answer derived from the ground truth.

Format (DriveLM v1.1): {scene_token: {"scene_description": str, "key_frames": {sample_token:
{"key_object_infos": {"<c1,CAM_FRONT,u,v>": {...}}, "QA": {"perception": [{"Q", "A"}], "prediction": [...],
"planning": [...], "behavior": [...]}}}}}. Object tags name the camera and the object's 2D box centre in that
camera's image (pixels of the generated image size).
"""

from __future__ import annotations

import math

import numpy as np

from netroller.data.synth.scenario import KEYFRAME_DT, Scenario

CLASS_WORDS = {
    "vehicle.car": ("car", "Vehicle", "orange"),
    "vehicle.truck": ("truck", "Vehicle", "red"),
    "vehicle.bus.rigid": ("bus", "Vehicle", "yellow"),
    "vehicle.construction": ("construction vehicle", "Vehicle", "brown"),
    "vehicle.trailer": ("trailer", "Vehicle", "purple"),
    "vehicle.motorcycle": ("motorcycle", "Vehicle", "magenta"),
    "vehicle.bicycle": ("bicycle", "Vehicle", "cyan"),
    "human.pedestrian.adult": ("pedestrian", "Pedestrian", "blue"),
    "human.pedestrian.child": ("child", "Pedestrian", "light blue"),
    "movable_object.barrier": ("barrier", "Traffic element", "pink"),
    "movable_object.trafficcone": ("traffic cone", "Traffic element", "orange-red"),
}
CAMERA_DIRECTION = {
    "CAM_FRONT": "front",
    "CAM_FRONT_LEFT": "front left",
    "CAM_FRONT_RIGHT": "front right",
    "CAM_BACK": "back",
    "CAM_BACK_LEFT": "back left",
    "CAM_BACK_RIGHT": "back right",
}
# Bump when the questions or answers change (`make pipeline` regenerates the data then). 2: FUTURE_QUESTION.
# 3: its answer in whole metres and m/s.
QA_VERSION = 3
MAX_KEY_OBJECTS = 3
FUTURE_QUESTION = "Where will the ego vehicle drive in the next 3 seconds?"
"""The planning question whose answer states the ego's ground-truth future (`_future_answer`): privileged
information that the pipeline's positive control teacher-forces the GM on."""
MIN_VISIBLE_PX = 40
FUTURE_STEPS = 6  # 3 s


def scene_description(sc: Scenario) -> str:
    counts: dict[str, int] = {}
    for a in sc.agents:
        word = CLASS_WORDS[a.cls.category][0]
        counts[word] = counts.get(word, 0) + 1
    what = {
        "straight": "drives straight",
        "left": "turns left at an intersection",
        "right": "turns right at an intersection",
    }
    parts = ", ".join(f"{n} {_plural(w) if n > 1 else w}" for w, n in sorted(counts.items()))
    return f"Synthetic: ego {what[sc.script.manoeuvre]} at {sc.script.speed:.1f} m/s; around it {parts}."


def _plural(word: str) -> str:
    return {"bus": "buses", "child": "children"}.get(word, word + "s")


def _status(agent) -> str:
    if agent.speed == 0.0:
        return {"vehicle": "Parked", "cycle": "Parked", "pedestrian": "Standing"}.get(
            agent.cls.kind, "Stationary"
        )
    return "Moving"


def _motion_answer(agent, t: float) -> str:
    if agent.speed == 0.0:
        return "Parked." if agent.cls.kind in ("vehicle", "cycle") else "Stationary."
    p = agent.poses(np.array([t, t + 2.0]))
    turn = math.remainder(float(p[1, 2] - p[0, 2]), 2 * math.pi)
    if turn > 0.3:
        return "Turning left."
    if turn < -0.3:
        return "Turning right."
    return "Going ahead."


def _ego_frame(ego_pose: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(n, 2) world points into the ego frame (x forward, y left)."""
    c, s = math.cos(ego_pose[2]), math.sin(ego_pose[2])
    d = pts - ego_pose[:2]
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)


def _behaviour(sc: Scenario, t: float) -> tuple[str, str]:
    ego = sc.ego_poses(np.array([t, min(t + 3.0, sc.duration)]))
    fut = _ego_frame(ego[0], ego[1:, :2])[0]
    if fut[1] >= 2.0:
        steer = "The ego vehicle is steering to the left."
        action = "Turn left at the intersection"
    elif fut[1] <= -2.0:
        steer = "The ego vehicle is steering to the right."
        action = "Turn right at the intersection"
    else:
        steer = "The ego vehicle is going straight."
        action = "Keep going straight"
    v = sc.script.speed
    speed = "slowly" if v < 5 else ("with normal speed" if v < 10 else "fast")
    return f"{steer} The ego vehicle is driving {speed}.", action


def _future_answer(sc: Scenario, t: float) -> str:
    """The ego's future in words and whole numbers, in metres of the ego frame at t (x ahead, y left): where
    it is 3 s later, its speed, and where it is 1 and 2 s later (the scene's last pose where the scene ends
    sooner). The 3 s position comes first so that a short harvest (T=28) already holds it. Whole metres and
    m/s, so that a val answer is a string training answers have (the positive control's random-weight GM has
    no sense of numbers: its adapter can only learn what each answer's tokens mean from training)."""
    times = np.minimum(t + np.array([0.0, 1.0, 2.0, 3.0]), sc.duration)
    ego = sc.ego_poses(times)
    fut = np.round(_ego_frame(ego[0], ego[1:, :2])).astype(int)
    (x1, y1), (x2, y2), (x3, y3) = fut
    side = "left" if y3 >= 0 else "right"
    return (
        f"In 3 seconds the ego vehicle will be {x3} m ahead and {abs(y3)} m to the {side}, driving at "
        f"{round(sc.script.speed)} m/s; after 1 and 2 seconds at ({x1}, {y1}) and ({x2}, {y2})."
    )


def _in_path(sc: Scenario, t: float, agent) -> tuple[bool, bool]:
    """Whether the agent comes within the ego's driving corridor (12 m ahead) in the next 3 s, and whether it
    gets closer than 8 m ahead there (a reason to slow down)."""
    times = t + np.arange(1, FUTURE_STEPS + 1) * KEYFRAME_DT
    ego = sc.ego_poses(times)
    pos = agent.poses(times)[:, :2]
    rel = np.array([_ego_frame(e, p[None])[0] for e, p in zip(ego, pos, strict=True)])
    corridor = (np.abs(rel[:, 1]) < 2.5) & (rel[:, 0] > -1.0)
    return bool((corridor & (rel[:, 0] < 12.0)).any()), bool((corridor & (rel[:, 0] < 8.0)).any())


def build(frames) -> dict:
    """`frames`: (scene_token, sample_token, scene_state, keyframe_result) in dataset order."""
    out: dict = {}
    for scene_token, sample_token, st, r in frames:
        sc: Scenario = st.scenario
        t = r["frame"] * KEYFRAME_DT
        if scene_token not in out:  # once per scene, not per keyframe
            out[scene_token] = {"scene_description": scene_description(sc), "key_frames": {}}
        entry = out[scene_token]
        ego_xy = np.array(r["ego_t"][:2])
        cands = []
        for a in r["anns"]:
            best = max(a["views"].items(), key=lambda kv: kv[1].visible_px, default=None)
            if best is None or best[1].visible_px < MIN_VISIBLE_PX:
                continue
            dist = float(np.linalg.norm(np.array(a["translation"][:2]) - ego_xy))
            cands.append((dist, a, best[0], best[1]))
        cands.sort(key=lambda c: (c[0], c[1]["i"]))
        infos, tags = {}, []
        for n, (_, a, cam, view) in enumerate(cands[:MAX_KEY_OBJECTS], start=1):
            x1, y1, x2, y2 = view.bbox
            tag = f"<c{n},{cam},{(x1 + x2) / 2:.1f},{(y1 + y2) / 2:.1f}>"
            agent = sc.agents[a["i"]]
            word, category, colour = CLASS_WORDS[agent.cls.category]
            infos[tag] = {
                "Category": category,
                "Status": _status(agent) if category != "Traffic element" else None,
                "Visual_description": f"{colour.capitalize()} {word}.",
                "2d_bbox": [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
            }
            tags.append((tag, agent, cam, word))
        behaviour, action = _behaviour(sc, t)
        qa: dict[str, list] = {"perception": [], "prediction": [], "planning": [], "behavior": []}
        if tags:
            listing = ", ".join(
                f"a {_status(ag).lower() if ag.cls.kind != 'static' else 'placed'} {word} {tag} to the {CAMERA_DIRECTION[cam]} of the ego vehicle"
                for tag, ag, cam, word in tags
            )
            qa["perception"].append(
                {
                    "Q": "What are the important objects in the current scene? Those objects will be considered for the future reasoning and driving decision.",
                    "A": f"There is {listing}.",
                }
            )
        else:
            qa["perception"].append(
                {
                    "Q": "What are the important objects in the current scene? Those objects will be considered for the future reasoning and driving decision.",
                    "A": "There are no important objects close to the ego vehicle.",
                }
            )
        for tag, ag, _cam, _word in tags:
            qa["perception"].append(
                {"Q": f"What is the moving status of object {tag}?", "A": _motion_answer(ag, t)}
            )
            in_path, too_close = _in_path(sc, t, ag)
            qa["prediction"].append(
                {
                    "Q": f"Will {tag} be in the moving direction of the ego vehicle?",
                    "A": "Yes." if in_path else "No.",
                }
            )
            if too_close:
                a_txt = f"The action is to slow down. The reason is that {tag} will be close in the path of the ego vehicle, high probability."
            elif in_path:
                a_txt = f"The action is to keep going at the same speed. The reason is that {tag} is ahead in the path of the ego vehicle at a safe distance, high probability."
            else:
                a_txt = f"The action is to keep going at the same speed. The reason is that {tag} is not in the path of the ego vehicle, high probability."
            qa["planning"].append(
                {
                    "Q": f"What actions could the ego vehicle take based on {tag}? Why take this action and what's the probability?",
                    "A": a_txt,
                }
            )
        qa["planning"].append(
            {"Q": "What is the safe action of the ego vehicle?", "A": f"{action} at a constant speed."}
        )
        qa["planning"].append({"Q": FUTURE_QUESTION, "A": _future_answer(sc, t)})
        qa["behavior"].append({"Q": "Predict the behavior of the ego vehicle.", "A": behaviour})
        entry["key_frames"][sample_token] = {"key_object_infos": infos, "QA": qa}
    return out
