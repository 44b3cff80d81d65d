"""VAD's configuration and its named recipes, with the values of the official configs
(`VAD_tiny_e2e.py`, `VAD_base_e2e.py`).

`vad_tiny()` and `vad_base()` build the released models; `debug()` is a small configuration of the same
modules for tests and the embedded pipeline. Variants call a base recipe and `dataclasses.replace` a few
fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from netroller.errors import ConfigError

# VAD's perception range: x lateral [-15, 15] m, y longitudinal [-30, 30] m, z [-2, 2] m (lidar frame).
VAD_PC_RANGE = (-15.0, -30.0, -2.0, 15.0, 30.0, 2.0)
# The NMS-free coders keep boxes whose centres fall inside these (x, y, z) bounds.
VAD_POST_CENTER_RANGE = (-20.0, -35.0, -10.0, 20.0, 35.0, 10.0)
# ImageNet statistics in RGB order, on 0-255 pixels (`img_norm_cfg`, to_rgb=True).
IMG_MEAN = (123.675, 116.28, 103.53)
IMG_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True, kw_only=True)
class VADConfig:
    """Every size and weight of VAD; the modules, the image pipeline and the losses read it."""

    # Images and backbone.
    image_scale: float = 0.4
    """Factor the 1600x900 camera images are scaled by before padding to a multiple of 32."""
    resnet_depth: int = 50
    """ResNet depth (18, 34, 50 or 101) in mmdet's layout."""
    resnet_base_channels: int = 64
    """Width of the ResNet stem (64 in the released nets; each stage doubles it)."""
    resnet_out_indices: tuple[int, ...] = (3,)
    """Backbone stages fed to the FPN (0 = C2 ... 3 = C5)."""
    num_levels: int = 1
    """FPN output levels (the extra ones are made on the last output, 'on_output')."""
    use_grid_mask: bool = True
    """GridMask augmentation of the images in training."""
    # Widths.
    embed_dims: int = 256
    """C: width of every query and feature token."""
    ffn_dims: int = 512
    """Hidden width of every transformer feed-forward block."""
    num_heads: int = 8
    """Heads of every multi-head attention."""
    dropout: float = 0.1
    """Dropout inside attention and FFN blocks."""
    num_cams: int = 6
    """Cameras per sample."""
    # BEV encoder.
    bev_h: int = 100
    """BEV rows, along y (longitudinal, 60 m)."""
    bev_w: int = 100
    """BEV columns, along x (lateral, 30 m)."""
    pc_range: tuple[float, float, float, float, float, float] = VAD_PC_RANGE
    """x_min, y_min, z_min, x_max, y_max, z_max in metres, lidar frame."""
    encoder_layers: int = 3
    """BEV encoder layers (temporal self-attention, spatial cross-attention, FFN)."""
    pillar_points: int = 4
    """Reference heights per BEV pillar in the spatial cross-attention."""
    sca_points: int = 8
    """Sampling points per head and level of the spatial cross-attention (MSDeformableAttention3D)."""
    tsa_points: int = 4
    """Sampling points per head of the temporal self-attention."""
    rotate_center: tuple[float, float] = (100.0, 100.0)
    """BEV pixel (x, y) the previous BEV is turned about by the ego's yaw change (the official value for
    both presets: the middle of VAD-Base's 200x200 BEV, a corner of VAD-Tiny's 100x100)."""
    queue_length: int = 3
    """Frames per training sample: the current one and `queue_length - 1` earlier ones for the previous BEV."""
    # Decoders.
    det_layers: int = 3
    """Detection decoder layers."""
    map_layers: int = 3
    """Map decoder layers."""
    decoder_points: int = 4
    """Sampling points per head of the decoders' deformable cross-attention."""
    num_query: int = 300
    """Agent queries; each predicts one box, its class and its futures."""
    num_classes: int = 10
    """Detection classes."""
    map_num_vec: int = 100
    """Map instance queries."""
    map_num_pts: int = 20
    """Points per map vector."""
    map_num_classes: int = 3
    """Map classes: divider, ped_crossing, boundary."""
    # Motion and planning.
    fut_ts: int = 6
    """Future steps (0.5 s each) of agents and ego."""
    fut_mode: int = 6
    """Agent motion modes."""
    ego_fut_mode: int = 3
    """Planning modes, one per driving command."""
    map_thresh: float = 0.5
    """Map score below which an instance is left out of the motion head's agent-map attention."""
    dis_thresh: float = 0.2
    """Normalised distance beyond which a map instance is left out of an agent's attention."""
    query_thresh: float = 0.0
    """Score below which agents and map instances are left out of the ego interactions."""
    max_boxes: int = 100
    """Boxes the NMS-free coder keeps per sample."""
    max_map: int = 50
    """Map vectors the NMS-free map coder keeps per sample."""
    # Loss weights (the official config's).
    w_cls: float = 2.0
    w_bbox: float = 0.25
    w_traj: float = 0.2
    w_traj_cls: float = 0.2
    w_map_cls: float = 2.0
    w_map_pts: float = 1.0
    w_map_dir: float = 0.005
    w_plan_reg: float = 1.0
    w_plan_bound: float = 1.0
    w_plan_col: float = 1.0
    w_plan_dir: float = 0.5
    plan_bound_dis_thresh: float = 1.0
    """Metres: the map-boundary constraint acts on planned points nearer than this to a boundary."""

    def __post_init__(self) -> None:
        positive = (
            "resnet_depth", "resnet_base_channels", "num_levels", "embed_dims", "ffn_dims", "num_heads", "num_cams", "bev_h",
            "bev_w", "encoder_layers", "pillar_points", "sca_points", "tsa_points", "queue_length",
            "det_layers", "map_layers", "decoder_points", "num_query", "num_classes", "map_num_vec",
            "map_num_pts", "map_num_classes", "fut_ts", "fut_mode", "ego_fut_mode", "max_boxes", "max_map",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"VADConfig.{name} must be a positive integer, got {value!r}")
        if self.resnet_depth not in (18, 34, 50, 101):
            raise ConfigError(f"VADConfig.resnet_depth must be 18, 34, 50 or 101, got {self.resnet_depth!r}")
        if self.embed_dims % self.num_heads:
            raise ConfigError(
                f"VADConfig.embed_dims ({self.embed_dims}) must divide by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"VADConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 < self.image_scale <= 1.0:
            raise ConfigError(f"VADConfig.image_scale must be in (0, 1], got {self.image_scale!r}")
        if not self.resnet_out_indices or any(not 0 <= i <= 3 for i in self.resnet_out_indices):
            raise ConfigError(
                f"VADConfig.resnet_out_indices must be stage numbers in 0..3, got {self.resnet_out_indices!r}"
            )
        if self.num_levels < len(self.resnet_out_indices):
            raise ConfigError(
                f"VADConfig.num_levels ({self.num_levels}) must be >= the {len(self.resnet_out_indices)} "
                "backbone stages fed to the FPN"
            )
        if len(self.pc_range) != 6 or any(self.pc_range[i] >= self.pc_range[i + 3] for i in range(3)):
            raise ConfigError(
                f"VADConfig.pc_range must be (xmin, ymin, zmin, xmax, ymax, zmax), got {self.pc_range!r}"
            )

    @property
    def real_w(self) -> float:
        """Metres the BEV spans along x."""
        return self.pc_range[3] - self.pc_range[0]

    @property
    def real_h(self) -> float:
        """Metres the BEV spans along y."""
        return self.pc_range[4] - self.pc_range[1]


def vad_tiny() -> VADConfig:
    """VAD-Tiny (`VAD_tiny_e2e.py`): ResNet-50 C5 + 1-level FPN, BEV 100x100, 3/3/3 layers, scale 0.4."""
    return VADConfig()


def vad_base() -> VADConfig:
    """VAD-Base (`VAD_base_e2e.py`): ResNet-50 C3-C5 + 4-level FPN, BEV 200x200, 6/6/6 layers, scale 0.8,
    queue of 4."""
    return dataclasses.replace(
        vad_tiny(),
        image_scale=0.8,
        resnet_out_indices=(1, 2, 3),
        num_levels=4,
        bev_h=200,
        bev_w=200,
        queue_length=4,
        encoder_layers=6,
        det_layers=6,
        map_layers=6,
    )


def debug() -> VADConfig:
    """The same modules, CPU-small: a quarter-width ResNet-18, BEV 20x10, 1 layer each, few queries. No
    GridMask: its one mask per batch is drawn per worker, and the debug recipe is what the tests compare
    one-worker and multi-worker training with."""
    return dataclasses.replace(
        vad_tiny(),
        use_grid_mask=False,
        image_scale=0.1,
        resnet_depth=18,
        resnet_base_channels=16,
        embed_dims=64,
        ffn_dims=128,
        num_heads=4,
        dropout=0.0,
        bev_h=20,
        bev_w=10,
        encoder_layers=1,
        det_layers=1,
        map_layers=1,
        num_query=30,
        map_num_vec=10,
        rotate_center=(5.0, 10.0),
        queue_length=2,
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
        raise ConfigError(f"VADConfig has no field(s) {', '.join(unknown)} (a run of an older netroller?)")
    return VADConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
