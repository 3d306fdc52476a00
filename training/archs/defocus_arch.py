"""The full model: defocus map estimation -> condition network -> deblurring."""

from typing import Optional, Tuple

from torch import Tensor, nn

from training.archs.condition_arch import ConditionNet
from training.archs.deblur_arch import DeblurNet
from training.archs.dme_arch import DefocusMapEstimator, clamp_map
from training.presets import NetConfig


class DefocusDeblurNet(nn.Module):
    """Single-image defocus deblurring with defocus-map-conditioned SFT (Ye et al.).

    The three sub-networks are exposed separately because deployment runs them as
    separate graphs: ``estimate`` (image -> map), ``condition_mean`` (map -> the
    pooled condition statistics of the whole image) and ``restore`` (image, map,
    statistics -> sharp image). A user-supplied or rescaled map and exact tiling
    of large images both come from that split.

    Args:
        config: A ``NetConfig`` (see ``training.presets``).

    Shape:
        image (N, 3, H, W) RGB in [0, 1], H and W multiples of ``config.scale``.
        ``forward`` returns (deblurred (N, 3, H, W), defocus map (N, 1, H, W)).
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        self.config = config
        self.dme = DefocusMapEstimator(
            config.dme_channels,
            config.dme_blocks,
            config.scale,
            config.dme_dilated_blocks,
            config.dme_full_channels,
        )
        self.condition = None
        if config.variant != "concat":
            self.condition = ConditionNet(config.cond_channels, config.scale)
        self.deblur = DeblurNet(
            config.channels, config.cond_channels, config.num_blocks, config.variant, config.scale
        )

    @property
    def uses_pooling(self) -> bool:
        """True where the SFT layers pool condition features over the whole image."""
        return self.config.variant in ("sft_dec", "sft_fdec")

    def estimate(self, image: Tensor) -> Tensor:
        """(N, 3, H, W) -> defocus map (N, 1, H, W)."""
        return self.dme(image)

    def condition_mean(self, defocus_map: Tensor) -> Tensor:
        """Global mean of the condition features: (N, 1, H, W) -> (N, Cc).

        The condition net is point-wise per ``scale`` cell, so the mean over an image
        is the pixel-weighted mean of the means over any aligned tiling of it.
        """
        return self.condition(defocus_map).mean(dim=(2, 3))

    def restore(self, image: Tensor, defocus_map: Tensor, cond_mean: Optional[Tensor] = None) -> Tensor:
        """Deblur ``image`` guided by ``defocus_map``.

        Args:
            image: (N, 3, H, W).
            defocus_map: (N, 1, H, W), estimated, ground truth or user-supplied.
            cond_mean: (N, Cc) pooled condition statistics of the whole image; if
                None they are pooled over this input (identical for a whole image).

        Returns:
            (N, 3, H, W) deblurred image; with a focus gate, the input itself where
            the map is at most ``gate_low``.
        """
        if self.condition is None:
            residual = self.deblur(image, defocus_map)
        else:
            cond = self.condition(defocus_map)
            pooled = None
            if self.uses_pooling:
                mean = cond.mean(dim=(2, 3)) if cond_mean is None else cond_mean
                pooled = mean[:, :, None, None]
            residual = self.deblur(image, cond, pooled)
        if not self.config.gate_high:
            return image + residual
        return image + self.focus_weight(defocus_map) * residual

    def focus_weight(self, defocus_map: Tensor) -> Tensor:
        """How much of the deblurring net's residual each pixel gets: 0 where the map is
        at most ``NetConfig.gate_low`` (in focus: the input passes unchanged), 1 from
        ``gate_high`` on, linear in between; (N, 1, H, W).

        The map is read detached: the image loss cannot teach the estimator to call an
        in-focus region blurred so that the net may change it there.
        """
        low, high = self.config.gate_low, self.config.gate_high
        return ((defocus_map.detach() - low) / (high - low)).clamp(0.0, 1.0)

    def forward(
        self,
        image: Tensor,
        defocus_map: Optional[Tensor] = None,
        cond_mean: Optional[Tensor] = None,
        estimate_only: bool = False,
        guide_offset: Optional[Tensor] = None,
    ) -> Tuple[Optional[Tensor], Tensor]:
        """Estimate the map and restore from it, or from ``defocus_map`` where one is
        given (stage 1 feeds the ground truth). ``estimate_only`` skips the restoration
        (None in its place): the estimator's own training stage needs nothing else.
        ``guide_offset`` (N, 1, H, W) is added to the estimate the restorer reads, which
        stays in the trained range (``training.guide_noise``); the returned estimate is
        the estimator's own."""
        estimated = self.estimate(image)
        if estimate_only:
            return None, estimated
        guide = estimated if defocus_map is None else defocus_map
        if guide_offset is not None and defocus_map is None:
            guide = clamp_map(estimated + guide_offset)
        return self.restore(image, guide, cond_mean), estimated
