"""The synthetic CAN-bus expansion: `can_bus/<scene>_pose.json` for every scene, as nuScenes ships it.

Only the `pose` message is written; it is the one VAD's converter reads (through the devkit's
`NuScenesCanBus.get_messages(scene, "pose")`). Each message follows the expansion's README:
- `pos`: the ego position in the global frame (the `ego_pose` table's, at a higher rate);
- `orientation`: the ego rotation quaternion [w, x, y, z];
- `vel`, `accel`, `rotation_rate`: in the ego frame (x forward, y left, z up); `accel` holds gravity in z as
  the real messages do (about 9.8 m/s/s there).

Real pose messages come at 50 Hz; here at `POSE_HZ`, which keeps the files small and still gives several
messages between keyframes. The messages start a little before or after the scene's first keyframe (real
scenes do both: VAD's converter falls back to the first message when none precedes a sample) and end past the
last one. Keys are written in the real files' (alphabetical) order, since VAD's converter reads the values in
file order.
"""

from __future__ import annotations

import numpy as np

from netroller.data.synth.geometry import yaw_quaternion
from netroller.data.synth.scenario import KEYFRAME_DT, Scenario

POSE_HZ = 20
GRAVITY = 9.81
FIRST_MESSAGE_US = (-300_000, 100_000)  # range of the first message's time relative to the first keyframe
TAIL_US = 300_000  # messages go on this long after the last keyframe


def pose_messages(scenario: Scenario, start_us: int, keyframes: int, rng: np.random.Generator) -> list[dict]:
    """The scene's `pose` messages in time order; `start_us` is the first keyframe's timestamp."""
    period = 1_000_000 // POSE_HZ
    first = int(rng.integers(FIRST_MESSAGE_US[0], FIRST_MESSAGE_US[1] + 1))
    end = int(round((keyframes - 1) * KEYFRAME_DT * 1_000_000)) + TAIL_US
    offsets = np.arange(first, end + 1, period, dtype=np.int64)  # µs from the first keyframe
    t = offsets * 1e-6
    poses = scenario.ego_poses(t)  # (n, 3) x, y, yaw
    speed = float(scenario.script.speed)
    # Constant speed along the path: the velocity is along the heading, the yaw rate is speed x curvature and
    # the only acceleration is the centripetal one, toward the turn's centre (the ego's left for a left turn).
    yaw_rate = speed * scenario.ego_path.curvature(scenario.ego_s0 + speed * t)
    out = []
    for k in range(len(offsets)):
        x, y, yaw = (float(v) for v in poses[k])
        w = float(yaw_rate[k])
        out.append(
            {
                "accel": [0.0, speed * w, GRAVITY],
                "orientation": yaw_quaternion(yaw),
                "pos": [x, y, 0.0],
                "rotation_rate": [0.0, 0.0, w],
                "utime": int(start_us + offsets[k]),
                "vel": [speed, 0.0, 0.0],
            }
        )
    return out
