"""guide_noise: the smooth offsets and the model's guide_offset (the trainer's use of them:
``tests/test_training.py``)."""

import pytest
import torch

from training.archs import DefocusDeblurNet
from training.archs.dme_arch import clamp_map
from training.config import ConfigError, from_dict
from training.guide_noise import GRID_CELLS, smooth_offsets
from training.presets import MAP_MAX, get_config


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(4, 1, 64, 64), (3, 1, 48, 80), (1, 1, 8, 8)])
def test_offsets_are_smooth_fields_of_bounded_std(shape):
    offsets = smooth_offsets(shape, 0.06, _generator())
    assert offsets.shape == shape and offsets.dtype == torch.float32
    stds = offsets.flatten(1).std(dim=1)
    assert (stds <= 0.06 + 1e-6).all() and (stds > 0).all()
    assert len(set(stds.tolist())) == shape[0]  # each crop draws its own std
    if shape[-1] >= 4 * GRID_CELLS:
        # Upsampled from a coarse grid: neighbours differ far less than white noise's (sqrt 2 std).
        step = (offsets[..., :, 1:] - offsets[..., :, :-1]).flatten(1).std(dim=1)
        assert (step < 0.25 * stds).all()


def test_offsets_are_a_function_of_the_generator():
    a = smooth_offsets((2, 1, 32, 32), 0.05, _generator(7))
    torch.testing.assert_close(a, smooth_offsets((2, 1, 32, 32), 0.05, _generator(7)), rtol=0, atol=0)
    assert not torch.equal(a, smooth_offsets((2, 1, 32, 32), 0.05, _generator(8)))
    assert torch.equal(smooth_offsets((2, 1, 32, 32), 0.0, _generator(7)), torch.zeros(2, 1, 32, 32))


def test_the_restorer_reads_the_offset_estimate_and_the_map_loss_the_estimate():
    torch.manual_seed(0)
    model = DefocusDeblurNet(get_config("small")).eval()
    image = torch.rand(2, 3, 32, 32)
    offset = torch.full((2, 1, 32, 32), -1.0)
    offset[1] = 2 * MAP_MAX  # out of range both ways: the restorer still reads [0, MAP_MAX]
    with torch.no_grad():
        plain_out, plain_est = model(image)
        out, est = model(image, guide_offset=offset)
        torch.testing.assert_close(est, plain_est, rtol=0, atol=0)
        torch.testing.assert_close(out, model.restore(image, clamp_map(plain_est + offset)))
        assert not torch.allclose(out, plain_out, atol=1e-4)
        # A given map is read as it is: the offset perturbs estimates only.
        truth = torch.rand(2, 1, 32, 32) * MAP_MAX
        torch.testing.assert_close(model(image, truth, guide_offset=offset)[0], model(image, truth)[0])


@pytest.mark.parametrize("value", [-0.01, MAP_MAX + 0.5])
def test_guide_noise_out_of_range_is_refused(value):
    with pytest.raises(ConfigError, match=f"guide_noise {value} must be in"):
        from_dict({"train": {"guide_noise": value}, "stage": [{"kind": "joint", "steps": 1}]})
