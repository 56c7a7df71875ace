"""The paper's preprocessing: each step against an independent computation."""

import cv2
import numpy as np
import pytest

from vertex_jax.data.preprocess import (Geometry, PreprocessConfig, crop_box, equalize_minmax,
                                        fit_size, preprocess)


def test_equalisation_matches_opencv_on_8_bit():
    rng = np.random.default_rng(0)
    img = rng.normal(90, 30, (120, 80)).clip(0, 255).astype(np.uint8)
    ours = np.rint(equalize_minmax(img) * (255 / 65535)).astype(np.int64)
    diff = np.abs(ours - cv2.equalizeHist(img))
    # 16-bit intermediate then 8-bit: equal but for rare double-rounding ties.
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_equalisation_uses_the_full_bit_depth():
    rng = np.random.default_rng(1)
    # 12-bit content squeezed into 4096 levels: 8-bit equalisation would merge
    # neighbouring levels; ours keeps one output level per input level.
    img = rng.integers(1000, 1400, (200, 150)).astype(np.uint16)
    out = equalize_minmax(img)
    assert len(np.unique(out)) == len(np.unique(img))
    assert out.min() == 0 and out.max() == 65535
    # Uniformly spread: output is the empirical CDF (rank-based), so its mean is ~0.5.
    assert abs(out.mean() / 65535 - 0.5) < 0.01
    # Monotone: a higher input level never maps lower.
    order = np.argsort(img.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= 0)


def test_equalisation_is_invariant_to_monotone_remapping():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 4096, (64, 64)).astype(np.uint16)
    remapped = (np.sqrt(img.astype(np.float64) / 4095) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(equalize_minmax(img), equalize_minmax(remapped))


def test_constant_image_gives_zeros():
    out, _ = preprocess(np.full((100, 60), 700, np.uint16))
    assert out.max() == 0


@pytest.mark.parametrize("shape,hits", [((2789, 1978), "width"), ((1097, 378), "height"),
                                        ((300, 200), "width"), ((2000, 500), "height")])
def test_resize_fits_canvas_and_keeps_aspect(shape, hits):
    h, w = fit_size(shape, (1024, 512))
    assert h <= 1024 and w <= 512
    assert (w == 512) if hits == "width" else (h == 1024)
    assert abs(h / w - shape[0] / shape[1]) < 2.0 / min(h, w) * shape[0] / shape[1] + 1e-9


def test_crop_pad_and_geometry_round_trip():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 4096, (1000, 700)).astype(np.uint16)
    cfg = PreprocessConfig(canvas=(256, 128))
    canvas, geo = preprocess(img, cfg)
    assert canvas.shape == (256, 128) and canvas.dtype == np.uint8
    assert geo.crop == (50, 35, 950, 665) == crop_box(img.shape, 0.05)
    top, left = geo.offset
    h, w = geo.resized
    # Zero padding outside the content, content centred.
    assert canvas[:top].max(initial=0) == 0 and canvas[top + h:].max(initial=0) == 0
    assert abs((256 - h) - 2 * top) <= 1 and abs((128 - w) - 2 * left) <= 1
    pts = np.array([[35.0, 50.0], [664.0, 949.0], [300.5, 420.25]])
    np.testing.assert_allclose(geo.to_original(geo.to_canvas(pts)), pts, atol=1e-9)
    # The crop box corners land on the content corners.
    np.testing.assert_allclose(geo.to_canvas(np.array([[35.0, 50.0]]))[0], [left, top])
    assert Geometry.from_dict(geo.to_dict()) == geo


def test_heatmap_maps_back_onto_the_right_place():
    img = np.zeros((800, 600), np.uint16)
    img[100:700, 60:540] = np.arange(480, dtype=np.uint16)[None]  # some content
    canvas, geo = preprocess(img, PreprocessConfig(canvas=(256, 128)))
    # A hot square on the canvas at a known original location.
    target = np.array([[400.0, 300.0]])  # x, y in the original
    cx, cy = geo.to_canvas(target)[0]
    heat = np.zeros((256, 128), np.float32)
    heat[int(cy) - 2:int(cy) + 3, int(cx) - 2:int(cx) + 3] = 1.0
    back = geo.heatmap_to_original(heat)
    assert back.shape == img.shape
    ys, xs = np.nonzero(back > 0.5 * back.max())
    weights = back[ys, xs]
    centre = np.average(xs, weights=weights), np.average(ys, weights=weights)
    sy, sx = geo.scale
    # Within one canvas pixel of the target (the square was placed at int(cx), int(cy)).
    assert abs(centre[0] - 400) < 1.0 / sx and abs(centre[1] - 300) < 1.0 / sy
    assert back[:geo.crop[0]].max() == 0  # outside the crop box: nothing


def test_uint16_output_and_determinism():
    rng = np.random.default_rng(4)
    img = (np.linspace(0, 1, 500)[:, None] * np.linspace(0.5, 1, 300)[None] * 65535
           + rng.normal(0, 50, (500, 300))).clip(0, 65535).astype(np.uint16)
    cfg = PreprocessConfig(canvas=(128, 64), out_dtype="uint16", border_crop=0.0)
    a, _ = preprocess(img, cfg)
    b, _ = preprocess(img.copy(), cfg)
    assert a.dtype == np.uint16 and a.max() > 60000
    np.testing.assert_array_equal(a, b)


def test_bad_settings_and_input_raise():
    with pytest.raises(ValueError, match="border_crop"):
        PreprocessConfig(border_crop=0.6)
    with pytest.raises(ValueError, match="out_dtype"):
        PreprocessConfig(out_dtype="float32")
    with pytest.raises(ValueError, match="2-D"):
        preprocess(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8 or uint16"):
        preprocess(np.zeros((10, 10), np.float32))
