"""Training configuration files (TOML), e.g. ``configs/small.toml``.

[model]  preset, variant, gate_low, gate_high
[data]   source = "builtin" | "corpus" (builtin + ``make data``'s train split) |
         a folder of sharp images (searched recursively); ded = folder of
         (blurry, sharp, defocus_map) triplets; pairs = folder of (blurry,
         sharp) pairs; crop, max_radius_px, workers, pool_size, pool_crop
[train]  batch, lr, lr_min, warmup_steps, betas, ema_decay, seed, turn_consistency,
         guide_noise, radius_weight, map_quantile,
         amp, channels_last, compile, log_every, val_every, ckpt_every, budget_seconds
[[stage]] kind = "gt_map" | "joint" | "finetune" | "end_to_end" | "dme", steps
"""

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import List, Optional, Tuple

from training.archs.deblur_arch import VARIANTS
from training.losses import STAGES
from training.presets import MAP_MAX, MAP_RADIUS_SCALE_PX, PRESETS, NetConfig, get_config


class ConfigError(ValueError):
    """A training config that cannot be used, with a one-line reason."""


@dataclass
class ModelSection:
    preset: str = "small"
    variant: str = "sft_dec"
    #: The focus gate (``NetConfig.gate_low`` / ``gate_high``, map units); 0 = none.
    gate_low: float = 0.0
    gate_high: float = 0.0

    def net_config(self) -> NetConfig:
        """The preset's network with this section's variant and focus gate."""
        return replace(
            get_config(self.preset, self.variant), gate_low=self.gate_low, gate_high=self.gate_high
        )


@dataclass
class DataSection:
    source: str = "builtin"
    ded: Optional[str] = None
    pairs: Optional[str] = None
    crop: int = 256
    max_radius_px: float = 10.0
    workers: int = 2
    #: >0: keep this many pre-rendered samples on the training device, refreshed
    #: in the background, and cut each batch from them (fast, not bit-reproducible).
    pool_size: int = 0
    pool_crop: int = 384
    val_size: int = 256
    #: Shares of rendered items wholly in focus and uniformly blurred
    #: (``SyntheticDefocusDataset``): what a deblurring tool must leave alone, and
    #: the flat-depth blur that a layered scene never shows.
    in_focus_fraction: float = 0.0
    uniform_fraction: float = 0.0


@dataclass
class TrainSection:
    batch: int = 16
    lr: float = 1e-4
    lr_min: float = 1e-4
    warmup_steps: int = 0
    betas: Tuple[float, float] = (0.9, 0.999)
    #: >0: validate and ship an exponential moving average of the weights, updated
    #: after every step with this decay (BasicSR uses 0.999). 0 ships the raw weights.
    ema_decay: float = 0.0
    seed: int = 0
    #: >0: half of each batch is rendered, the other half is the same crops turned by
    #: one of the square's symmetries (``training.dihedral``), and the map term gains
    #: this weight x L_turn, the difference between the two halves' maps turned back.
    turn_consistency: float = 0.0
    #: >0: where the deblurring net reads the estimated map (joint, end_to_end,
    #: finetune), it reads it plus a smooth random offset of per-crop std up to this,
    #: in map units (``training.guide_noise``): it learns how far to trust a map.
    guide_noise: float = 0.0
    #: >0: L_dme weighs each pixel's error by 1 + this x its true map (``losses.dme_loss``).
    #: Pixels blurred 7-10 px are a few percent of the crops, and an unweighted estimator
    #: reads them 2-4 px too small.
    radius_weight: float = 0.0
    #: L_dme as the pinball loss of this quantile (``losses.dme_loss``): 0.5 is the
    #: paper's L1; above it under-reading the blur costs more than over-reading.
    map_quantile: float = 0.5
    #: bf16 autocast: always on CUDA; on a CPU only where it has bf16 instructions
    #: (``training.amp.cpu_has_bf16``), else the run trains in FP32 and says so.
    amp: bool = True
    channels_last: bool = True
    #: torch.compile the network: its many small element-wise ops fused into few
    #: kernels (fewer launches, less memory traffic). Compiling costs ~1 min once.
    compile: bool = False
    #: Losses are averaged on the device and read (one sync) every this many steps.
    log_every: int = 10
    val_every: int = 500
    ckpt_every: int = 200
    #: >0: after a short probe, rescale the stage lengths to fit this many seconds.
    budget_seconds: float = 0.0


@dataclass
class Stage:
    kind: str
    steps: int


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    stages: List[Stage] = field(default_factory=list)

    @property
    def rendered_batch(self) -> int:
        """Crops rendered per step: half the batch where the rest are turned copies."""
        return self.train.batch // 2 if self.train.turn_consistency > 0 else self.train.batch

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> str:
        """Stage kind of the (0-based) global step."""
        end = 0
        for stage in self.stages:
            end += stage.steps
            if step < end:
                return stage.kind
        return self.stages[-1].kind

    def rescale(self, total: int) -> None:
        """Scale every stage so the run lasts ``total`` steps, keeping proportions."""
        old = self.total_steps
        for stage in self.stages:
            stage.steps = max(1, round(stage.steps * total / old))

    def to_dict(self) -> dict:
        return {
            "model": vars(self.model),
            "data": vars(self.data),
            "train": {**vars(self.train), "betas": list(self.train.betas)},
            "stage": [vars(s) for s in self.stages],
        }


#: Settings a resumed run must share with the run it continues: they decide its data
#: and its updates. The others (intervals, workers, compile, the time budget) may change.
RESUME_FIXED = {
    "model": ("gate_low", "gate_high"),
    "data": (
        "source",
        "ded",
        "pairs",
        "crop",
        "max_radius_px",
        "pool_size",
        "pool_crop",
        "in_focus_fraction",
        "uniform_fraction",
    ),
    "train": (
        "batch",
        "lr",
        "lr_min",
        "warmup_steps",
        "betas",
        "ema_decay",
        "seed",
        "turn_consistency",
        "guide_noise",
        "radius_weight",
        "map_quantile",
        "amp",
    ),
}


def resume_conflict(saved: dict, config: TrainConfig) -> Optional[str]:
    """The first of ``RESUME_FIXED`` where ``config`` differs from ``saved`` (the run's
    ``to_dict()``), as ``"train.lr = 0.0001 (the run has 0.0003)"``; None if all agree.
    A setting the saved run predates counts as its default."""
    defaults, current = TrainConfig().to_dict(), config.to_dict()
    for section, keys in RESUME_FIXED.items():
        for key in keys:
            old = saved.get(section, {}).get(key, defaults[section][key])
            if old != current[section][key]:
                return f"{section}.{key} = {current[section][key]!r} (the run has {old!r})"
    return None


def _section(cls, data: dict, name: str):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"[{name}] has unknown keys: {', '.join(sorted(unknown))}")
    if "betas" in data:
        data = {**data, "betas": tuple(data["betas"])}
    return cls(**data)


def from_dict(raw: dict) -> TrainConfig:
    unknown = set(raw) - {"model", "data", "train", "stage"}
    if unknown:
        raise ConfigError(f"unknown sections: {', '.join(sorted(unknown))}")
    stages = [_section(Stage, s, "stage") for s in raw.get("stage", [])]
    if not stages:
        raise ConfigError("no [[stage]] tables: give at least one stage")
    for stage in stages:
        if stage.kind not in STAGES:
            raise ConfigError(f"stage kind {stage.kind!r} is not one of {', '.join(STAGES)}")
        if stage.steps < 1:
            raise ConfigError(f"stage {stage.kind!r} has {stage.steps} steps; need >= 1")
    config = TrainConfig(
        _section(ModelSection, raw.get("model", {}), "model"),
        _section(DataSection, raw.get("data", {}), "data"),
        _section(TrainSection, raw.get("train", {}), "train"),
        stages,
    )
    if config.model.preset not in PRESETS:
        raise ConfigError(
            f"[model] preset {config.model.preset!r} is not one of {', '.join(sorted(PRESETS))}"
        )
    if config.model.variant not in VARIANTS:
        raise ConfigError(f"[model] variant {config.model.variant!r} is not one of {', '.join(VARIANTS)}")
    try:
        config.model.net_config()
    except ValueError as exc:
        raise ConfigError(f"[model] {exc}") from None
    if config.train.batch < 1 or config.data.crop < 16 or config.train.log_every < 1:
        raise ConfigError("batch and log_every must be >= 1 and crop >= 16")
    top_px = MAP_MAX * MAP_RADIUS_SCALE_PX
    if not 0 < config.data.max_radius_px <= top_px:
        raise ConfigError(
            f"max_radius_px {config.data.max_radius_px:g} must be in (0, {top_px:g}]: "
            "the estimator's output is clamped to that trained range"
        )
    shares = (config.data.in_focus_fraction, config.data.uniform_fraction)
    if min(shares) < 0 or sum(shares) > 1:
        raise ConfigError(f"in_focus_fraction and uniform_fraction {shares} must be >= 0 with a sum <= 1")
    if config.train.turn_consistency < 0:
        raise ConfigError(f"turn_consistency {config.train.turn_consistency} must be >= 0")
    if not 0 <= config.train.guide_noise <= MAP_MAX:
        raise ConfigError(f"guide_noise {config.train.guide_noise} must be in [0, {MAP_MAX}] map units")
    if config.train.radius_weight < 0:
        raise ConfigError(f"radius_weight {config.train.radius_weight} must be >= 0")
    if not 0 < config.train.map_quantile < 1:
        raise ConfigError(f"map_quantile {config.train.map_quantile} must be in (0, 1)")
    if not 0 <= config.train.ema_decay < 1:
        raise ConfigError(f"ema_decay {config.train.ema_decay} must be in [0, 1)")
    return config


def load_config(path: Path) -> TrainConfig:
    """Read and check a TOML training config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return from_dict(raw)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
