"""Size presets and the units of the defocus map.

Nothing here imports torch, so the export manifest and tests can read it cheaply.
"""

from dataclasses import asdict, dataclass, replace

#: The defocus map is the circle-of-confusion radius in pixels divided by this.
#: A map value of 1.0 means a blur disc of radius 10 px; 0 means in focus.
MAP_RADIUS_SCALE_PX = 10.0

MAP_UNITS = f"circle-of-confusion radius in pixels / {MAP_RADIUS_SCALE_PX:g}"
#: The trained range of the map is [0, MAP_MAX]: training renders blur radii up to
#: MAP_MAX * MAP_RADIUS_SCALE_PX = 10 px, and the estimator's output is clamped to it.
MAP_MAX = 1.0
INPUT_NORMALISATION = "RGB, float32 in [0, 1] (8-bit / 255, 16-bit / 65535), NCHW"


@dataclass(frozen=True)
class NetConfig:
    """Hyper-parameters of ``DefocusDeblurNet``.

    Attributes:
        preset: Name of the preset this config came from.
        variant: ``concat``, ``sft``, ``sft_dec`` (the paper's) or ``sft_fdec``.
        scale: Space-to-depth factor of both sub-networks; H and W must be
            multiples of it (the runtime pads, see ``size_multiple``).
        dme_channels, dme_blocks: width and residual blocks of the DME network.
        dme_dilated_blocks: residual blocks with dilation 2, 4, 8, ... after those.
        dme_full_channels: channels of the DME's full-resolution first stage (0 = none;
            only with ``scale`` > 1).
        channels, num_blocks: width and conditioned blocks of the deblurring net.
        cond_channels: Condition feature channels Cc.
        gate_low, gate_high: the focus gate, in map units (``gate_high`` = 0: none).
            Where the map is at most ``gate_low`` the input passes unchanged, from
            ``gate_high`` on the deblurring net's output is used whole, and in
            between they blend linearly: what is in focus is left alone.
    """

    preset: str
    variant: str = "sft_dec"
    scale: int = 1
    dme_channels: int = 64
    dme_blocks: int = 4
    dme_dilated_blocks: int = 0
    dme_full_channels: int = 0
    channels: int = 128
    num_blocks: int = 16
    cond_channels: int = 32
    gate_low: float = 0.0
    gate_high: float = 0.0

    def __post_init__(self):
        if self.gate_high and not 0 <= self.gate_low < self.gate_high <= MAP_MAX:
            raise ValueError(
                f"focus gate {self.gate_low:g}-{self.gate_high:g} must satisfy 0 <= low < high <= {MAP_MAX:g}"
            )

    @property
    def gate_text(self) -> str:
        """The focus gate in words: ``focus gate 0.01-0.04`` or ``no focus gate``."""
        return f"focus gate {self.gate_low:g}-{self.gate_high:g}" if self.gate_high else "no focus gate"

    @property
    def size_multiple(self) -> int:
        return self.scale

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NetConfig":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown network config keys: {sorted(unknown)}")
        return cls(**data)


PRESETS = {
    # DID-ANet's widths at full resolution: 64-channel DME with 4 residual blocks,
    # 16 conditioned blocks at 128 channels.
    "paper": NetConfig(preset="paper"),
    # CPU deployment: both nets work on 2x2 space-to-depth cells, which quarters
    # the MACs per pixel and doubles the receptive field of every 3x3 conv. Six
    # estimator blocks (62 px receptive field) estimated the map better than three
    # (38 px) at equal training; three dilated ones (174 px) then cut its error in
    # flat regions, where blur shows only at the surrounding edges, for 8% more
    # MACs. A 16-channel full-resolution first stage then lowered the map's error
    # on held-out photos a little, in focus most, for 3% more (models/default/README.md).
    "small": NetConfig(
        preset="small",
        scale=2,
        dme_channels=24,
        dme_blocks=6,
        dme_dilated_blocks=3,
        dme_full_channels=16,
        channels=48,
        num_blocks=6,
        cond_channels=32,
    ),
}


def get_config(preset: str, variant: str = "sft_dec") -> NetConfig:
    """Return the config of ``preset`` with ``variant`` applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], variant=variant)
