"""VAD's configuration and its named recipes.

`debug()` is the CPU-small model used by tests and the embedded pipeline; `vad_tiny()` and `vad_base()` carry
the published VAD dimensions (DESIGN.md §6). Variants call a base recipe and `dataclasses.replace` a few fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from netroller.data.index import DETECTION_CLASSES, FUT_STEPS, MAP_CLASSES, MAP_POINTS
from netroller.errors import ConfigError

# VAD's perception range: x lateral [-15, 15] m, y longitudinal [-30, 30] m, z [-2, 2] m.
VAD_PC_RANGE = (-15.0, -30.0, -2.0, 15.0, 30.0, 2.0)
# The height range the BEV pillars' reference points span (VAD's `pc_range` z is [-5, 3] for the
# encoder's pillars; we keep the detection z range, which covers every annotated box centre).
NUSCENES_SIZE = (1600, 900)


@dataclass(frozen=True, kw_only=True)
class VADConfig:
    """Every size and weight of the compact VAD; the model, dataset and losses read it."""

    embed_dims: int = 256
    """C: width of every query and feature token."""
    ffn_dims: int = 512
    """Hidden width of each transformer feed-forward block."""
    num_heads: int = 8
    """Attention heads (embed_dims must divide by it)."""
    dropout: float = 0.1
    """Dropout inside attention/FFN blocks."""
    bev_h: int = 100
    """BEV rows, along y (longitudinal, 60 m)."""
    bev_w: int = 100
    """BEV columns, along x (lateral, 30 m)."""
    pc_range: tuple[float, float, float, float, float, float] = VAD_PC_RANGE
    """x_min, y_min, z_min, x_max, y_max, z_max in metres, lidar frame."""
    image_size: tuple[int, int] = (640, 360)
    """(width, height) every camera image is resized to."""
    backbone_widths: tuple[int, ...] = (64, 128, 256, 512)
    """Channels of the ResNet-style stages (the first stage follows a stride-4 stem; each next halves)."""
    backbone_blocks: tuple[int, ...] = (2, 2, 2, 2)
    """Residual blocks per stage."""
    neck_levels: int = 2
    """How many of the last backbone stages the FPN-style neck merges into its single output level."""
    encoder_layers: int = 3
    """BEV encoder layers (self-attention + spatial cross-attention + FFN)."""
    det_layers: int = 3
    """Agent (detection/motion) decoder layers."""
    map_layers: int = 3
    """Map decoder layers."""
    pillar_points: int = 4
    """Reference points per BEV pillar at evenly spaced heights (VAD: 4)."""
    sampling_points: int = 4
    """Points each query samples per head in the deformable attentions (BEV self-attention, decoders)."""
    num_agent_queries: int = 300
    """Agent queries; each predicts one box, its class and its future."""
    num_map_vectors: int = 100
    """Map instance queries."""
    map_points: int = MAP_POINTS
    """Points per map vector."""
    fut_steps: int = FUT_STEPS
    """Future steps (0.5 s each) of agents and ego."""
    fut_modes: int = 6
    """Agent motion modes."""
    ego_modes: int = 3
    """Planning modes, one per driving command."""
    num_det_classes: int = len(DETECTION_CLASSES)
    """Detection classes (DETECTION_CLASSES)."""
    num_map_classes: int = len(MAP_CLASSES)
    """Map classes (MAP_CLASSES)."""
    # Loss weights (VAD's config values where it has them).
    w_cls: float = 2.0
    """Detection focal classification weight."""
    w_box: float = 0.25
    """Detection box L1 weight."""
    w_motion_reg: float = 0.2
    """Agent future min-over-modes L1 weight."""
    w_motion_cls: float = 0.2
    """Agent motion mode classification weight."""
    w_map_cls: float = 0.8
    """Map class focal weight."""
    w_map_pts: float = 1.0
    """Map points L1 weight (normalized coordinates)."""
    w_plan_reg: float = 1.0
    """Planning L1 weight."""
    w_plan_col: float = 1.0
    """Ego-agent collision constraint weight."""
    w_plan_bound: float = 1.0
    """Ego-boundary constraint weight."""
    w_plan_dir: float = 0.5
    """Ego-lane direction constraint weight."""
    col_distance: float = 2.0
    """Metres: planned points nearer than this to a GT agent's future position are penalised."""
    bound_margin: float = 1.0
    """Metres: planned points nearer than this to a boundary vector are penalised."""
    dir_distance: float = 2.0
    """Metres: the direction loss applies where a lane divider lies within this distance."""

    def __post_init__(self) -> None:
        positive = (
            "embed_dims",
            "ffn_dims",
            "num_heads",
            "bev_h",
            "bev_w",
            "encoder_layers",
            "det_layers",
            "map_layers",
            "pillar_points",
            "sampling_points",
            "num_agent_queries",
            "num_map_vectors",
            "map_points",
            "fut_steps",
            "fut_modes",
            "ego_modes",
            "num_det_classes",
            "num_map_classes",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"VADConfig.{name} must be a positive integer, got {value!r}")
        if self.embed_dims % self.num_heads:
            raise ConfigError(
                f"VADConfig.embed_dims ({self.embed_dims}) must divide by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"VADConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if len(self.pc_range) != 6 or any(self.pc_range[i] >= self.pc_range[i + 3] for i in range(3)):
            raise ConfigError(
                f"VADConfig.pc_range must be (xmin, ymin, zmin, xmax, ymax, zmax), got {self.pc_range!r}"
            )
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise ConfigError(
                f"VADConfig.image_size must be (width, height), each >= 32, got {self.image_size!r}"
            )
        if len(self.backbone_widths) != len(self.backbone_blocks) or not self.backbone_widths:
            raise ConfigError(
                f"VADConfig.backbone_blocks {self.backbone_blocks!r} must have one entry per backbone_widths "
                f"{self.backbone_widths!r}"
            )
        if not 1 <= self.neck_levels <= len(self.backbone_widths):
            raise ConfigError(
                f"VADConfig.neck_levels must be in [1, {len(self.backbone_widths)}], got {self.neck_levels!r}"
            )
        for name in ("col_distance", "bound_margin", "dir_distance"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"VADConfig.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def head_dims(self) -> int:
        return self.embed_dims // self.num_heads


def scaled_image(scale: float) -> tuple[int, int]:
    """nuScenes' 1600x900 scaled by `scale`, rounded to a multiple of 32 (the backbone's stride)."""
    w, h = NUSCENES_SIZE
    return (max(32, round(w * scale / 32) * 32), max(32, round(h * scale / 32) * 32))


def vad_tiny() -> VADConfig:
    """VAD-Tiny: BEV 100x100, 3/3/3 layers, image scale 0.4 (640x352)."""
    return VADConfig(image_size=scaled_image(0.4))


def vad_base() -> VADConfig:
    """VAD-Base: BEV 200x200, 6/6/6 layers, image scale 0.8 (1280x736)."""
    return dataclasses.replace(
        vad_tiny(),
        bev_h=200,
        bev_w=200,
        encoder_layers=6,
        det_layers=6,
        map_layers=6,
        image_size=scaled_image(0.8),
    )


def debug() -> VADConfig:
    """CPU-small: BEV 20x10 (3 m cells), 1 layer each, 128x72 images, a few queries; seconds per step."""
    return dataclasses.replace(
        vad_tiny(),
        embed_dims=64,
        ffn_dims=128,
        num_heads=4,
        dropout=0.0,
        bev_h=20,
        bev_w=10,
        image_size=(128, 72),
        backbone_widths=(16, 32, 64),
        backbone_blocks=(1, 1, 1),
        encoder_layers=1,
        det_layers=1,
        map_layers=1,
        pillar_points=4,
        sampling_points=4,
        num_agent_queries=30,
        num_map_vectors=20,
    )


RECIPES: dict[str, Callable[[], VADConfig]] = {"debug": debug, "vad-tiny": vad_tiny, "vad-base": vad_base}


def recipe(name: str) -> VADConfig:
    """The named recipe's config; ConfigError naming the choices for an unknown name."""
    if name not in RECIPES:
        raise ConfigError(f"unknown VAD recipe {name!r}; expected one of {', '.join(RECIPES)}")
    return RECIPES[name]()


def config_to_dict(cfg: VADConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> VADConfig:
    """Inverse of `config_to_dict` (JSON lists back to tuples); ConfigError for unknown fields."""
    names = {f.name for f in dataclasses.fields(VADConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"VADConfig has no field(s) {', '.join(unknown)}")
    return VADConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
