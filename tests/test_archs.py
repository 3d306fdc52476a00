"""Tests of ``training.archs``: shapes, SFT math, gradients, determinism, pooling and tiling.

References are written independently of the modules under test: the SFT layer and
the condition network are recomputed in float64 numpy from their conv weights.
"""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.archs import ConditionNet, DefocusDeblurNet, DefocusMapEstimator, SFTLayer
from training.archs.deblur_arch import VARIANTS, DeblurNet
from training.presets import get_config

POOLING_VARIANTS = ("sft_dec", "sft_fdec")


def tiny_config(variant: str = "sft_dec", scale: int = 2, **overrides):
    """The ``small`` preset shrunk to a few thousand parameters (fast on 2 CPU cores)."""
    sizes = dict(
        scale=scale,
        dme_channels=8,
        dme_blocks=1,
        dme_dilated_blocks=1,
        channels=8,
        num_blocks=2,
        cond_channels=4,
        dme_full_channels=4 if scale > 1 else 0,
    )
    sizes.update(overrides)
    return dataclasses.replace(get_config("small", variant), **sizes)


def tiny_model(variant: str = "sft_dec", scale: int = 2, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return DefocusDeblurNet(tiny_config(variant, scale, **overrides)).eval()


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.5) -> None:
    """Replace every parameter (biases included) by N(0, std): no zero-init shortcuts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to multiples of ``multiple``: reflect, or replicate when the image is
    too small to reflect (the rule of ``runtime.tiling.pad_to``)."""
    h, w = x.shape[-2:]
    dh, dw = -h % multiple, -w % multiple
    mode = "reflect" if dh < h and dw < w else "replicate"
    return F.pad(x, (0, dw, 0, dh), mode=mode)


def _tolerance(dtype: torch.dtype, expected: np.ndarray) -> dict:
    """assert_allclose tolerances: float32 rounding, or float16's (~1e-3 per operation)
    relative to the largest value."""
    if dtype == torch.float16:
        return {"rtol": 2e-2, "atol": 2e-2 * float(np.abs(expected).max())}
    return {"rtol": 1e-4, "atol": 1e-5}


# ----------------------------------------------------------------------------- numpy reference
def np_conv1x1(x: np.ndarray, conv: torch.nn.Conv2d) -> np.ndarray:
    """1x1 convolution of (N, Cin, H, W) in float64."""
    w = conv.weight.detach().double().numpy()[:, :, 0, 0]
    b = conv.bias.detach().double().numpy()
    return np.einsum("oc,nchw->nohw", w, x) + b[None, :, None, None]


def np_leaky(x: np.ndarray, slope: float = 0.1) -> np.ndarray:
    return np.where(x > 0, x, slope * x)


def np_spatial_head(head, cond: np.ndarray) -> np.ndarray:
    """SFTGAN head: conv1x1 - LeakyReLU(0.1) - conv1x1."""
    return np_conv1x1(np_leaky(np_conv1x1(cond, head[0])), head[2])


def np_channel_head(head, pooled: np.ndarray) -> np.ndarray:
    """Channel head on pooled features: conv1x1 - ReLU - conv1x1."""
    return np_conv1x1(np.maximum(np_conv1x1(pooled, head[0]), 0.0), head[2])


def np_sft(layer: SFTLayer, x: np.ndarray, cond: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    if layer.mode == "full":
        gamma = np_spatial_head(layer.gamma, cond)
    else:  # (N, C, 1, 1) * (N, 1, H, W) -> (N, C, H, W)
        gamma = np_channel_head(layer.gamma_c, pooled) * np_spatial_head(layer.gamma_s, cond)
    if layer.mode == "fdec":
        beta = np_channel_head(layer.beta_c, pooled) * np_spatial_head(layer.beta_s, cond)
    else:
        beta = np_spatial_head(layer.beta, cond)
    return x * (1.0 + gamma) + beta


def np_condition_mean(net: ConditionNet, dmap: np.ndarray) -> np.ndarray:
    """pixel_unshuffle by strided slicing (channel i * s + j), three 1x1 convs, spatial mean."""
    s = net.scale
    x = np.concatenate([dmap[:, :, i::s, j::s] for i in range(s) for j in range(s)], axis=1)
    body = net.body
    x = np_leaky(np_conv1x1(x, body[0]))
    x = np_leaky(np_conv1x1(x, body[2]))
    return np_conv1x1(x, body[4]).mean(axis=(2, 3))


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch,height,width", [(1, 2, 2), (2, 2, 6), (1, 6, 4), (2, 16, 10)])
def test_forward_shapes_multiples(variant, batch, height, width, device, dtype):
    model = tiny_model(variant).to(device, dtype)
    image = torch.rand(batch, 3, height, width, device=device, dtype=dtype)
    with torch.no_grad():
        out, dmap = model(image)
    assert out.shape == (batch, 3, height, width) and out.dtype == dtype
    assert dmap.shape == (batch, 1, height, width) and dmap.device.type == device.type
    assert torch.isfinite(out).all() and torch.isfinite(dmap).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("height,width", [(1, 1), (3, 5), (7, 2), (13, 1), (9, 11)])
def test_forward_odd_sizes_via_padding(variant, height, width, device):
    model = tiny_model(variant).to(device)
    multiple = model.config.size_multiple
    image = torch.rand(1, 3, height, width, device=device)
    padded = pad_to_multiple(image, multiple)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert torch.equal(padded[..., :height, :width], image)
    with torch.no_grad():
        out, dmap = model(padded)
    assert out[..., :height, :width].shape == (1, 3, height, width)
    assert dmap[..., :height, :width].shape == (1, 1, height, width)
    assert out.shape[-2:] == padded.shape[-2:]


@pytest.mark.parametrize("height,width,axis", [(7, 8, "height"), (8, 7, "width"), (1, 1, "height")])
def test_non_multiple_size_raises(height, width, axis):
    """The graph does not pad: a size off ``size_multiple`` fails in pixel_unshuffle,
    naming the axis (torch's message; the runtime pads before it gets there)."""
    model = tiny_model(scale=2)
    with pytest.raises(RuntimeError, match=f"expects {axis} to be divisible by downscale_factor"):
        model(torch.rand(1, 3, height, width))


@pytest.mark.parametrize("height,width", [(7, 9), (1, 1), (5, 2)])
def test_scale_one_accepts_any_size(height, width):
    model = tiny_model("sft_dec", scale=1)
    assert model.config.size_multiple == 1
    with torch.no_grad():
        out, dmap = model(torch.rand(1, 3, height, width))
    assert out.shape == (1, 3, height, width) and dmap.shape == (1, 1, height, width)


def test_dme_full_resolution_stage_matches_reference():
    """The features entering the DME's residual blocks: the half-resolution conv of the
    space-to-depth image plus the full-resolution stage, recomputed with F.conv2d."""
    dme = DefocusMapEstimator(channels=8, num_blocks=1, scale=2, full_channels=4).eval()
    randomize_(dme)
    image = torch.rand(2, 3, 12, 10)
    seen = []
    dme.body.register_forward_pre_hook(lambda _module, inputs: seen.append(inputs[0]))
    with torch.no_grad():
        dme(image)
        first, (conv_a, _, conv_b, _, _, merge) = dme.conv_first, dme.full
        want = F.conv2d(F.pixel_unshuffle(image, 2), first.weight, first.bias, padding=1)
        full = F.relu(F.conv2d(image, conv_a.weight, conv_a.bias, padding=1))
        full = F.relu(F.conv2d(full, conv_b.weight, conv_b.bias, padding=1))
        want = want + F.conv2d(F.pixel_unshuffle(full, 2), merge.weight, merge.bias)
    torch.testing.assert_close(seen[0], want, rtol=1e-5, atol=1e-5)


def test_dme_full_resolution_stage_needs_space_to_depth():
    with pytest.raises(ValueError, match="a full-resolution stage needs scale > 1"):
        DefocusMapEstimator(channels=8, num_blocks=1, scale=1, full_channels=4)


@pytest.fixture(scope="module", params=VARIANTS)
def paper_model(request):
    torch.manual_seed(0)
    return DefocusDeblurNet(get_config("paper", request.param)).eval()


@pytest.mark.parametrize("height,width", [(16, 16), (9, 15)])
def test_paper_preset_small_inputs(paper_model, height, width):
    image = torch.rand(1, 3, height, width)
    with torch.no_grad():
        out, dmap = paper_model(image)
        restored = paper_model.restore(image, dmap)
    assert out.shape == (1, 3, height, width) and dmap.shape == (1, 1, height, width)
    torch.testing.assert_close(restored, out, rtol=0, atol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_uses_pooling(variant):
    assert tiny_model(variant).uses_pooling == (variant in POOLING_VARIANTS)


def test_bad_variant_and_mode_raise():
    with pytest.raises(ValueError, match="variant must be one of .* got 'bogus'"):
        DeblurNet(variant="bogus")
    with pytest.raises(ValueError, match="SFT mode must be one of .* got 'bogus'"):
        SFTLayer(8, 4, mode="bogus")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_config("huge")


# ----------------------------------------------------------------------------- SFT math
@pytest.mark.parametrize("mode", ["full", "dec", "fdec"])
@pytest.mark.parametrize(
    "batch,channels,cond_channels,height,width", [(1, 6, 4, 5, 7), (2, 3, 5, 1, 1), (3, 8, 2, 4, 1)]
)
def test_sft_layer_matches_reference(mode, batch, channels, cond_channels, height, width, device, dtype):
    layer = SFTLayer(channels, cond_channels, mode)
    randomize_(layer, seed=1)
    layer.to(dtype)  # the float64 reference reads the weights as rounded to dtype
    x = torch.randn(batch, channels, height, width).to(dtype)
    cond = torch.randn(batch, cond_channels, height, width).to(dtype)
    pooled = torch.randn(batch, cond_channels, 1, 1).to(dtype)
    expected = np_sft(layer, x.double().numpy(), cond.double().numpy(), pooled.double().numpy())
    layer.to(device)
    actual = layer(x.to(device), cond.to(device), pooled.to(device) if mode != "full" else None)
    np.testing.assert_allclose(
        actual.detach().cpu().double().numpy(), expected, **_tolerance(dtype, expected)
    )


@pytest.mark.parametrize("mode", ["dec", "fdec"])
def test_decomposed_gamma_is_rank_one(mode):
    """gamma (and beta for fdec) per sample = outer(channel vector, spatial map),
    a matrix of rank 1 over (C, H * W)."""
    layer = SFTLayer(6, 4, mode)
    randomize_(layer, seed=2)
    cond = torch.randn(1, 4, 5, 5)
    pooled = torch.randn(1, 4, 1, 1)
    ones = torch.ones(1, 6, 5, 5)
    zeros = torch.zeros(1, 6, 5, 5)
    with torch.no_grad():
        beta = layer(zeros, cond, pooled)
        gamma = layer(ones, cond, pooled) - 1.0 - beta

    def rank(m):
        return int(torch.linalg.matrix_rank(m[0].reshape(6, 25).double(), rtol=1e-4))

    assert rank(gamma) == 1
    assert rank(beta) == (1 if mode == "fdec" else 5)  # full head: rank <= Cc + 1 (bias) = 5


def test_untrained_sft_is_near_identity():
    """Heads closed by 0.1-scaled convs and zero biases: a fresh layer barely moves the features."""
    torch.manual_seed(0)
    for mode in ("full", "dec", "fdec"):
        layer = SFTLayer(16, 8, mode)
        x = torch.randn(2, 16, 6, 6)
        out = layer(x, torch.rand(2, 8, 6, 6), torch.rand(2, 8, 1, 1))
        assert (out - x).abs().mean() < 0.25 * x.abs().mean()


@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("height,width", [(6, 6), (12, 6), (6, 18)])
def test_condition_mean_matches_reference(scale, height, width, device, dtype):
    model = tiny_model("sft_dec", scale=scale)
    randomize_(model.condition, seed=3)
    model.to(dtype)
    dmap = torch.rand(2, 1, height, width).to(dtype)
    expected = np_condition_mean(model.condition, dmap.double().numpy())
    actual = model.to(device).condition_mean(dmap.to(device)).detach().cpu().double().numpy()
    assert actual.shape == (2, model.config.cond_channels)
    np.testing.assert_allclose(actual, expected, **_tolerance(dtype, expected))


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_gets_gradient(variant):
    model = tiny_model(variant).train()
    image, gt_map, target = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8), torch.rand(2, 3, 8, 8)
    out, estimated = model(image, defocus_map=gt_map)
    loss = F.l1_loss(out, target) + F.l1_loss(estimated, gt_map)
    loss.backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_ground_truth_map_cuts_dme_from_deblur_loss(variant):
    """forward(image, gt) with a loss on the deblurred image only trains nothing in the DME."""
    model = tiny_model(variant).train()
    out, _ = model(torch.rand(1, 3, 8, 8), defocus_map=torch.rand(1, 1, 8, 8))
    out.square().mean().backward()
    assert all(p.grad is None for p in model.dme.parameters())
    assert all(p.grad is not None for p in model.deblur.parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_estimated_map_carries_deblur_gradient_to_dme(variant):
    model = tiny_model(variant).train()
    out, _ = model(torch.rand(1, 3, 8, 8))
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.dme.parameters())


# ----------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("variant", VARIANTS)
def test_same_seed_same_weights_and_outputs(variant):
    first, second = tiny_model(variant, seed=7), tiny_model(variant, seed=7)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    image = torch.rand(1, 3, 10, 6)
    with torch.no_grad():
        for x, y in zip(first(image), second(image)):
            assert torch.equal(x, y)


def test_different_seed_different_weights():
    a, b = tiny_model(seed=1).state_dict(), tiny_model(seed=2).state_dict()
    assert not torch.equal(a["dme.conv_first.weight"], b["dme.conv_first.weight"])


# ----------------------------------------------------------------------------- pooled statistics
@pytest.mark.parametrize("variant", VARIANTS[1:])
@pytest.mark.parametrize("scale", [1, 2])
def test_external_cond_mean_equals_internal_pooling(variant, scale, device):
    model = tiny_model(variant, scale=scale)
    randomize_(model, seed=4, std=0.2)  # large enough modulations to see the statistics act
    model.to(device)
    image, dmap = torch.rand(2, 3, 8, 6, device=device), torch.rand(2, 1, 8, 6, device=device)
    with torch.no_grad():
        internal = model.restore(image, dmap)
        cond_mean = model.condition_mean(dmap)
        external = model.restore(image, dmap, cond_mean)
        other = model.restore(image, dmap, cond_mean + 1.0)
    torch.testing.assert_close(external, internal, rtol=1e-6, atol=1e-6)
    if variant in POOLING_VARIANTS:  # the statistics are really used ...
        assert (other - internal).abs().max() > 1e-2
    else:  # ... and ignored where there is no pooling
        assert torch.equal(other, internal)


@pytest.mark.parametrize("variant", POOLING_VARIANTS)
def test_pooling_does_not_mix_batch_items(variant, device):
    model = tiny_model(variant).to(device)
    image, dmap = torch.rand(3, 3, 6, 8, device=device), torch.rand(3, 1, 6, 8, device=device)
    with torch.no_grad():
        batched = model.restore(image, dmap)
        single = torch.cat([model.restore(image[i : i + 1], dmap[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- tiling
@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("row_cuts,col_cuts", [((1,), (2,)), ((1, 2), (1, 3, 4)), ((), (5,))])
def test_condition_mean_is_pixel_weighted_mean_over_aligned_tiles(scale, row_cuts, col_cuts):
    """Cuts are in units of ``scale`` cells; tiles have unequal sizes, so weighting matters."""
    model = tiny_model("sft_dec", scale=scale)
    rows, cols = 3 * scale, 6 * scale
    dmap = torch.rand(2, 1, rows, cols) * 2
    row_edges = [0, *(c * scale for c in row_cuts), rows]
    col_edges = [0, *(c * scale for c in col_cuts), cols]
    with torch.no_grad():
        whole = model.condition_mean(dmap)
        weighted = torch.zeros_like(whole)
        for r0, r1 in zip(row_edges, row_edges[1:]):
            for c0, c1 in zip(col_edges, col_edges[1:]):
                tile = dmap[..., r0:r1, c0:c1]
                weighted += model.condition_mean(tile) * tile[0, 0].numel()
    torch.testing.assert_close(weighted / (rows * cols), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_restore_tile_with_global_statistics_matches_whole_image(variant, device):
    """A tile plus a margin of half the receptive field, fed the whole image's pooled statistics,
    reproduces the whole-image output in its interior exactly (up to float rounding)."""
    model = tiny_model(variant, scale=2, num_blocks=1).to(device)
    image, dmap = torch.rand(1, 3, 32, 32, device=device), torch.rand(1, 1, 32, 32, device=device)
    margin = 12  # restore RF at scale 2 with 1 block: 2 * (1 + 2 * 5) = 22 px, half = 11
    r0, r1, c0, c1 = 12, 20, 14, 20
    with torch.no_grad():
        cond_mean = model.condition_mean(dmap) if model.uses_pooling else None
        whole = model.restore(image, dmap)
        window = (..., slice(r0 - margin, r1 + margin), slice(c0 - margin, c1 + margin))
        tile = model.restore(image[window], dmap[window], cond_mean)
    inner = tile[..., margin : margin + r1 - r0, margin : margin + c1 - c0]
    torch.testing.assert_close(inner, whole[..., r0:r1, c0:c1], rtol=1e-5, atol=1e-5)


# --- the focus gate -------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_focus_gate_passes_focus_through_and_blends_to_the_deblurred(variant):
    """Below gate_low the input itself, from gate_high on the ungated output, linear between."""
    plain = tiny_model(variant)
    randomize_(plain, std=0.2)
    gated = DefocusDeblurNet(tiny_config(variant, gate_low=0.1, gate_high=0.3)).eval()
    gated.load_state_dict(plain.state_dict())
    image = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(1))
    dmap = torch.linspace(0.0, 0.5, 10).expand(2, 1, 8, 10).contiguous()
    with torch.no_grad():
        want = plain.restore(image, dmap)
        got = gated.restore(image, dmap)
    weight = ((dmap - 0.1) / 0.2).clamp(0, 1)
    torch.testing.assert_close(got, image + weight * (want - image))
    focus, blurred = dmap[0, 0, 0] <= 0.1, dmap[0, 0, 0] >= 0.3
    assert torch.equal(got[..., focus], image[..., focus])
    torch.testing.assert_close(got[..., blurred], want[..., blurred])


def test_focus_gate_reads_the_map_detached():
    """The image loss reaches the map only through the condition features, scaled by the
    gate's weight: it cannot teach the estimator to open the gate."""
    plain = tiny_model()
    randomize_(plain, std=0.2)
    gated = DefocusDeblurNet(tiny_config(gate_low=0.1, gate_high=0.3)).eval()
    gated.load_state_dict(plain.state_dict())
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    dmap = torch.full((1, 1, 8, 8), 0.2, requires_grad=True)
    gated.restore(image, dmap).sum().backward()
    got = dmap.grad.clone()
    dmap.grad = None
    (0.5 * plain.restore(image, dmap)).sum().backward()  # weight 0.5 at map 0.2
    torch.testing.assert_close(got, dmap.grad)


@pytest.mark.parametrize("low, high", [(0.3, 0.1), (0.2, 0.2), (-0.1, 0.2), (0.0, 1.5)])
def test_focus_gate_bounds_are_checked(low, high):
    with pytest.raises(ValueError, match="focus gate .* must satisfy 0 <= low < high <= 1"):
        tiny_config(gate_low=low, gate_high=high)
