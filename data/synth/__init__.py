"""Synthetic nuScenes: a small simulated world written as a genuine nuScenes v1.0-mini dataset.

from netroller.data.synth import SynthConfig, generate
root = generate(SynthConfig(out=Path("work/nuscenes"), scenes=4, samples_per_scene=8))
"""

from netroller.data.synth.build import generate
from netroller.data.synth.config import SceneScript, SynthConfig

__all__ = ["SceneScript", "SynthConfig", "generate"]
