"""Defocus renderer, synthetic depth and dead leaves (training/data/render.py, depth.py, sources.py)."""

import math

import cv2
import numpy as np
import pytest

from training.data.depth import segment_image, synthetic_depth
from training.data.render import (
    Camera,
    Noise,
    add_noise,
    blur_by_radius,
    coc_radius,
    disc_kernel,
    gaussian_kernel,
    linear_to_srgb,
    render_defocus,
    sample_camera,
    sample_noise,
    srgb_to_linear,
)
from training.data.sources import dead_leaves

PSFS = ["disc", "gaussian"]


def _reference_decode(x):
    x = x.astype(np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _reference_encode(x):
    x = x.astype(np.float64)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def _texture(size=48, seed=0):
    return np.random.default_rng(seed).random((size, size, 3), dtype=np.float32)


def _point_spread(radius, psf="disc", size=81):
    image = np.zeros((size, size, 3), np.float32)
    image[size // 2, size // 2] = 1.0
    out = blur_by_radius(image, np.full((size, size), radius, np.float32), psf)[..., 0]
    yy, xx = np.mgrid[:size, :size] - size // 2
    return out, (out * (yy**2 + xx**2)).sum() / out.sum()


class TestTransferCurves:
    @pytest.mark.parametrize("shape", [(7,), (5, 4), (3, 5, 3)])
    def test_match_iec_formula(self, shape):
        x = np.random.default_rng(1).random(shape, dtype=np.float32)
        x.flat[0] = 0.0
        np.testing.assert_allclose(srgb_to_linear(x), _reference_decode(x), atol=1e-6)
        np.testing.assert_allclose(linear_to_srgb(x), _reference_encode(x), atol=1e-6)
        assert srgb_to_linear(x).shape == shape

    def test_round_trip_including_knees(self):
        x = np.concatenate([np.linspace(0, 1, 10001), [0.04045, 0.0031308]]).astype(np.float32)
        np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-6)

    def test_encode_clips(self):
        np.testing.assert_allclose(linear_to_srgb(np.array([-0.5, 1.5], np.float32)), [0.0, 1.0], atol=1e-6)


class TestKernels:
    @pytest.mark.parametrize("radius", [0.7, 1.0, 2.5, 5.0, 9.7])
    def test_disc_sums_to_one_with_right_support(self, radius):
        kernel = disc_kernel(radius)
        half = max(0, math.ceil(radius - 0.5))
        assert kernel.shape == (2 * half + 1, 2 * half + 1) and kernel.dtype == np.float32
        assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
        # Zero exactly where the pixel's square misses the disc.
        yy, xx = np.abs(np.mgrid[-half : half + 1, -half : half + 1])
        nearest = np.hypot(np.maximum(yy - 0.5, 0), np.maximum(xx - 0.5, 0))
        assert np.all(kernel[nearest >= radius] == 0) and np.all(kernel[nearest < radius - 0.1] > 0)
        np.testing.assert_allclose(kernel, kernel.T, atol=1e-7)

    @pytest.mark.parametrize("radius", [0.0, 0.3, 0.49])
    def test_small_disc_is_identity(self, radius):
        np.testing.assert_array_equal(disc_kernel(radius), [[1.0]])

    @pytest.mark.parametrize("radius", [2.0, 4.0, 7.5, 10.0])
    def test_disc_radius_from_moments(self, radius):
        # Uniform disc: E[d^2] = r^2 / 2, plus 1/6 for the pixel's own extent;
        # interior weight = 1 / area with area pi r^2.
        kernel = disc_kernel(radius)
        half = kernel.shape[0] // 2
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
        second_moment = (kernel * (yy**2 + xx**2)).sum()
        assert second_moment == pytest.approx(radius**2 / 2 + 1 / 6, rel=0.05)
        assert 1.0 / kernel.max() == pytest.approx(math.pi * radius**2, rel=0.02)

    @pytest.mark.parametrize("radius", [0.0, 2.0, 4.0, 8.0])
    def test_gaussian_sigma_is_half_radius(self, radius):
        kernel = gaussian_kernel(radius)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
        half = kernel.shape[0] // 2
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
        variance = (kernel * xx**2).sum()
        assert math.sqrt(variance) == pytest.approx(radius / 2, rel=0.02, abs=1e-6)


class TestBlurByRadius:
    @pytest.mark.parametrize("psf", PSFS)
    @pytest.mark.parametrize("radius", [3.0, 4.0, 6.0, 9.0])
    def test_point_spreads_over_pi_r_squared(self, psf, radius):
        # Both PSFs have E[d^2] = r^2 / 2 and effective area pi r^2 (disc: pi r^2
        # by definition; Gaussian: 4 pi sigma^2 with sigma = r / 2).
        out, second_moment = _point_spread(radius, psf)
        assert out.sum() == pytest.approx(1.0, abs=1e-3)
        effective_area = out.sum() ** 2 / (out**2).sum()
        assert 0.95 <= effective_area / (math.pi * radius**2) <= 1.25
        assert math.sqrt(2 * second_moment) == pytest.approx(radius, rel=0.05)

    @pytest.mark.parametrize("radius", [2.5, 5.5])
    def test_between_layers_blends_linearly(self, radius):
        # A radius between two levels gets the mean second moment of both.
        _, low = _point_spread(math.floor(radius))
        _, high = _point_spread(math.ceil(radius))
        _, mid = _point_spread(radius)
        assert mid == pytest.approx((low + high) / 2, rel=0.03)

    @pytest.mark.parametrize("psf", PSFS)
    @pytest.mark.parametrize("colour", [(0.2, 0.5, 0.9), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)])
    def test_constant_image_stays_constant(self, psf, colour):
        rng = np.random.default_rng(3)
        signed = cv2.resize(rng.uniform(-9, 9, (6, 6)).astype(np.float32), (64, 64))
        signed[20:40, 10:30] = 7.0  # a hard occlusion edge too
        image = np.broadcast_to(np.float32(colour), (64, 64, 3)).copy()
        np.testing.assert_allclose(blur_by_radius(image, signed, psf), image, atol=1e-5)

    def test_unknown_psf(self):
        with pytest.raises(ValueError, match="unknown psf 'box'"):
            blur_by_radius(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.float32), "box")


class TestOcclusion:
    size, radius = 64, 6.0

    def _scene(self):
        yy, xx = np.mgrid[: self.size, : self.size]
        image = np.zeros((self.size, self.size, 3), np.float32)
        image[..., 1] = ((yy // 4 + xx // 4) % 2).astype(np.float32)  # green checker background
        inside = (abs(yy - 32) < 12) & (abs(xx - 32) < 12)
        image[inside] = (1.0, 0.0, 0.0)  # red square in front
        return image, inside

    def test_sharp_foreground_keeps_edge_and_background_gets_none_of_it(self):
        image, inside = self._scene()
        signed = np.where(inside, 0.0, -self.radius).astype(np.float32)  # focus on the square
        out = blur_by_radius(image, signed)
        np.testing.assert_allclose(out[inside], image[inside], atol=1e-5)
        assert out[~inside][:, 0].max() < 1e-5  # no red leaks behind the occluder
        naive = cv2.filter2D(image, -1, disc_kernel(self.radius))
        edge = inside & ~cv2.erode(inside.astype(np.uint8), np.ones((3, 3))).astype(bool)
        assert np.abs(naive[edge] - image[edge]).max() > 0.2
        assert naive[~inside][:, 0].max() > 0.2

    def test_blurred_foreground_spills_over_sharp_background(self):
        image, inside = self._scene()
        signed = np.where(inside, self.radius, 0.0).astype(np.float32)  # focus on the background
        out = blur_by_radius(image, signed)
        ring = cv2.dilate(inside.astype(np.uint8), np.ones((5, 5))).astype(bool) & ~inside
        assert out[ring][:, 0].min() > 0.1  # red spread over the in-focus background
        far = ~cv2.dilate(inside.astype(np.uint8), np.ones((17, 17))).astype(bool)
        np.testing.assert_allclose(out[far], image[far], atol=1e-5)


class TestRenderDefocus:
    @pytest.mark.parametrize("psf", PSFS)
    def test_in_focus_is_identity(self, psf):
        sharp = _texture()
        depth = np.random.default_rng(0).uniform(1, 5, (48, 48)).astype(np.float32)
        blurry, radius = render_defocus(sharp, depth, Camera(2.0, 0.0), psf=psf, quantize=False)
        np.testing.assert_allclose(blurry, sharp, atol=2e-6)
        assert np.all(radius == 0)

    def test_flat_scene_on_focal_plane_is_identity(self):
        sharp = _texture()
        blurry, radius = render_defocus(
            sharp, np.full((48, 48), 3.0, np.float32), Camera(3.0, 8.0), quantize=False
        )
        np.testing.assert_allclose(blurry, sharp, atol=2e-6)
        assert np.all(radius == 0)

    def test_blurs_in_linear_light(self):
        sharp = np.zeros((32, 64, 3), np.float32)
        sharp[:, 32:] = 1.0
        blurry, _ = render_defocus(sharp, np.ones((32, 64), np.float32), Camera(2.0, 4.0), quantize=False)
        middle = blurry[16, 31:33, 0].mean()
        srgb_space = cv2.filter2D(sharp, -1, disc_kernel(4.0))[16, 31:33, 0].mean()
        assert srgb_space == pytest.approx(0.5, abs=1e-6)
        assert middle > 0.65  # linear mean 0.5 encodes to ~0.735

    def test_radius_map_is_thin_lens(self):
        depth = np.array([[1.0, 2.0], [4.0, 8.0]], np.float32)
        radius = render_defocus(np.zeros((2, 2, 3), np.float32), depth, Camera(2.0, 6.0))[1]
        expected = np.abs(1 / depth - 1 / 2.0)
        np.testing.assert_allclose(radius, expected * 6.0 / expected.max(), rtol=1e-6)

    def test_coc_sign_nearer_is_positive(self):
        signed = coc_radius(np.array([[1.0, 2.0, 4.0]], np.float32), Camera(2.0, 3.0))
        np.testing.assert_allclose(signed, [[3.0, 0.0, -1.5]], rtol=1e-6)

    def test_quantised_to_8_bit_and_in_range(self):
        sharp = _texture()
        depth = np.linspace(1, 4, 48 * 48, dtype=np.float32).reshape(48, 48)
        rng = np.random.default_rng(0)
        blurry, _ = render_defocus(sharp, depth, Camera(2.0, 5.0), noise=Noise(2e-3, 1e-3), rng=rng)
        assert blurry.dtype == np.float32 and 0.0 <= blurry.min() and blurry.max() <= 1.0
        np.testing.assert_allclose(blurry * 255, np.rint(blurry * 255), atol=1e-4)

    def test_noise_is_deterministic_in_rng(self):
        sharp, depth = _texture(), np.ones((48, 48), np.float32)
        noisy = [
            render_defocus(
                sharp, depth, Camera(2.0, 3.0), noise=Noise(1e-3, 1e-3), rng=np.random.default_rng(seed)
            )[0]
            for seed in (5, 5, 6)
        ]
        np.testing.assert_array_equal(noisy[0], noisy[1])
        assert np.abs(noisy[0] - noisy[2]).max() > 0

    @pytest.mark.parametrize("level", [0.05, 0.5])
    def test_noise_std_follows_poisson_gaussian(self, level):
        noise = Noise(shot=4e-3, read=1e-2)
        flat = np.full((256, 256, 3), level, np.float32)
        residual = add_noise(flat, noise, np.random.default_rng(0)) - flat
        expected = math.sqrt(noise.shot * level + noise.read**2)
        assert residual.std() == pytest.approx(expected, rel=0.03)
        assert abs(residual.mean()) < 3 * expected / 256

    @pytest.mark.parametrize("sharp_shape, depth_shape", [((8, 8), (8, 8)), ((8, 8, 3), (8, 9))])
    def test_bad_shapes(self, sharp_shape, depth_shape):
        with pytest.raises(ValueError, match="need sharp"):
            render_defocus(np.zeros(sharp_shape, np.float32), np.ones(depth_shape, np.float32), Camera(1, 1))

    def test_noise_needs_rng(self):
        with pytest.raises(ValueError, match="noise needs an rng"):
            render_defocus(_texture(8), np.ones((8, 8), np.float32), Camera(1, 1), noise=Noise(0, 0))


class TestSampling:
    def test_camera_range_and_determinism(self):
        depth = np.random.default_rng(0).uniform(1, 10, (16, 16)).astype(np.float32)
        cameras = [sample_camera(np.random.default_rng([7, i]), depth, 10.0) for i in range(300)]
        radii = np.array([c.max_radius_px for c in cameras])
        assert radii.min() >= 0 and radii.max() <= 10 and radii.max() > 9 and radii.min() < 1
        inside = np.mean([depth.min() <= c.focus_depth <= depth.max() for c in cameras])
        assert 0.75 < inside < 0.95
        assert sample_camera(np.random.default_rng([7, 3]), depth, 10.0) == cameras[3]

    def test_noise_levels_below_maxima(self):
        levels = [sample_noise(np.random.default_rng(i), 2e-3, 1e-3) for i in range(100)]
        assert all(2e-5 <= n.shot <= 2e-3 and 1e-5 <= n.read <= 1e-3 for n in levels)


class TestSyntheticDepth:
    @pytest.mark.parametrize("seed", range(6))
    def test_positive_finite_and_deterministic(self, seed):
        image = _texture(64, seed)
        depth = synthetic_depth(np.random.default_rng(seed), image)
        assert depth.shape == (64, 64) and depth.dtype == np.float32
        assert np.all(np.isfinite(depth)) and depth.min() > 0
        np.testing.assert_array_equal(depth, synthetic_depth(np.random.default_rng(seed), image))

    @pytest.mark.parametrize("seed", range(4))
    def test_segments_follow_image_edges(self, seed):
        # Three flat regions; the smoothing (sigma <= 3) may split a strip
        # along each edge, so only interiors 10 px from any edge are checked.
        image = np.zeros((96, 96, 3), np.float32)
        image[:, 48:] = (0.9, 0.8, 0.1)
        image[10:50, 5:40] = (0.1, 0.2, 0.95)
        labels = segment_image(np.random.default_rng(seed), image)
        regions = [labels[:, 58:], labels[20:40, 15:30], labels[60:, :38]]
        assert [len(np.unique(r)) for r in regions] == [1, 1, 1]
        assert len({int(r[0, 0]) for r in regions}) == 3


class TestDeadLeaves:
    def test_shapes_ranges_and_determinism(self):
        image, depth = dead_leaves(np.random.default_rng(0), 48, 64)
        assert image.shape == (48, 64, 3) and depth.shape == (48, 64)
        assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
        assert depth.min() > 0
        again = dead_leaves(np.random.default_rng(0), 48, 64)
        np.testing.assert_array_equal(image, again[0])
        np.testing.assert_array_equal(depth, again[1])

    def test_depth_constant_per_disc_and_spread(self):
        _, depth = dead_leaves(np.random.default_rng(1), 64, 64)
        assert len(np.unique(depth)) > 30
        assert 1 / depth.max() < 0.2 and 1 / depth.min() > 0.9  # ranks span the nearness range

    def test_front_disc_occludes(self):
        # A huge front disc covers the whole image: one colour, one depth.
        from training.data.sources import _front_to_back

        centres = np.array([[16.0, 16.0], [5.0, 5.0]])
        labels = _front_to_back(centres, np.array([40.0, 3.0]), 32, 32)
        assert np.all(labels == 0)
