"""PSNR / SSIM / MS-SSIM against scikit-image and pytorch-msssim; streaming == one shot."""

import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import tokbench
from tokbench.metrics import EvalBatch, build_metric


def _pair(b=3, h=72, w=80, noise=0.08, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some spatial structure
    y = (x + noise * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)
    return x, y


def _batch(x, y, start=0):
    tok = tokbench.load_tokenizer("jpeg", quality=50)
    tokens = tokbench.Tokens(ids=torch.zeros(x.shape[0], 4, dtype=torch.long), codebook_size=16)
    return EvalBatch(originals=x, reconstructions=y, tokens=tokens, tokenizer=tok,
                     index=torch.arange(start, start + x.shape[0]))


def _hwc(t):
    return t.permute(1, 2, 0).double().numpy()


def test_psnr_matches_skimage():
    x, y = _pair()
    m = build_metric("psnr")
    m.update(_batch(x, y))
    ref = [peak_signal_noise_ratio(_hwc(a), _hwc(b), data_range=1.0) for a, b in zip(x, y)]
    np.testing.assert_allclose(m.last_rows["psnr"].numpy(), ref, rtol=1e-10)
    assert m.compute()["psnr"] == pytest.approx(np.mean(ref), rel=1e-10)


def test_ssim_standard_equals_skimage_gaussian():
    x, y = _pair(h=128, w=100)
    m = build_metric("ssim")
    m.update(_batch(x, y))
    ref = [structural_similarity(_hwc(a), _hwc(b), data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False) for a, b in zip(x, y)]
    np.testing.assert_allclose(m.last_rows["ssim"].numpy(), ref, rtol=1e-6)


def test_torchmetrics_ssim_differs_by_its_padded_border():
    """Why tokbench does not use torchmetrics' SSIM: it averages the map over a reflection-padded
    border too; on the valid region alone the two agree."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    x, y = _pair(h=128, w=128)
    full, ssim_map = tm_ssim(y.double(), x.double(), data_range=1.0, reduction="none", return_full_image=True)
    ours = build_metric("ssim")
    ours.update(_batch(x, y))
    assert (ours.last_rows["ssim"] - full).abs().max() > 1e-3
    valid = ssim_map[..., 5:-5, 5:-5].flatten(1).mean(1)
    np.testing.assert_allclose(ours.last_rows["ssim"].numpy(), valid.numpy(), rtol=1e-6)


def test_llamagen_protocol_is_skimage_on_uint8_with_data_range_2():
    x, y = _pair()
    psnr = build_metric("psnr", protocol="llamagen")
    ssim = build_metric("ssim", protocol="llamagen")
    batch = _batch(x, y)
    psnr.update(batch)
    ssim.update(batch)
    # LlamaGen's reconstruction_vq_ddp.py: the reconstruction (in [-1, 1]) saved as uint8 by
    # clamp(127.5*x+128), /255; the reference (x+1)/2 as it is; skimage metrics, restored image first
    q = lambda t: (torch.clamp(127.5 * (t * 2 - 1) + 128.0, 0, 255).to(torch.uint8).float() / 255)  # noqa: E731
    ref_psnr = [peak_signal_noise_ratio(_hwc(q(b)).astype(np.float32), _hwc(a).astype(np.float32)) for a, b in zip(x, y)]
    ref_ssim = [structural_similarity(_hwc(q(b)).astype(np.float32), _hwc(a), data_range=2.0, channel_axis=-1)
                for a, b in zip(x, y)]
    np.testing.assert_allclose(psnr.last_rows["psnr_llamagen"].numpy(), ref_psnr, rtol=1e-9)
    np.testing.assert_allclose(ssim.last_rows["ssim_llamagen"].numpy(), ref_ssim, rtol=1e-6)  # skimage: float32
    assert "ssim_llamagen" in ssim.compute()


def test_ms_ssim_close_to_pytorch_msssim_and_needs_size():
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y = _pair(b=2, h=192, w=200)
    m = build_metric("ms-ssim")
    m.update(_batch(x, y))
    ref = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
    np.testing.assert_allclose(m.last_rows["ms_ssim"].numpy(), ref.numpy(), rtol=1e-5)
    small = build_metric("ms-ssim")
    with pytest.raises(tokbench.TokbenchError, match="at least 161 px"):
        small.update(_batch(*_pair(h=64, w=64)))


def test_streaming_and_merged_states_equal_one_pass():
    x, y = _pair(b=6)
    whole = build_metric("psnr")
    whole.update(_batch(x, y))
    a, b = build_metric("psnr"), build_metric("psnr")
    a.update(_batch(x[:2], y[:2]))
    b.update(_batch(x[2:], y[2:], start=2))
    a.merge_state(b)  # what a distributed all-reduce of the "sum" states does
    assert a.compute()["psnr"] == pytest.approx(whole.compute()["psnr"], rel=1e-12)
    assert a.compute()["psnr_std"] == pytest.approx(whole.compute()["psnr_std"], rel=1e-9)


def test_identical_images_counted_not_averaged():
    x, _ = _pair(b=2)
    y = x.clone()
    y[1] = (y[1] + 0.1).clamp(0, 1)
    m = build_metric("psnr")
    m.update(_batch(x, y))
    out = m.compute()
    assert out["psnr_identical"] == 1.0
    assert out["psnr"] == pytest.approx(peak_signal_noise_ratio(_hwc(x[1]), _hwc(y[1]), data_range=1.0))


def test_std_outputs_equal_numpy_over_the_per_image_values():
    """`<metric>_std` is the population standard deviation over images (numpy's np.std, ddof=0) of
    per-image values computed independently (scikit-image, pytorch-msssim), across streamed batches."""
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y = _pair(b=5, h=168, w=176, noise=0.1, seed=3)
    y[1] = (x[1] + 0.02 * torch.randn_like(x[1])).clamp(0, 1)  # spread the values out
    refs = {
        "psnr": [peak_signal_noise_ratio(_hwc(a), _hwc(b), data_range=1.0) for a, b in zip(x, y)],
        "ssim": [structural_similarity(_hwc(a), _hwc(b), data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False) for a, b in zip(x, y)],
        "ms_ssim": pytorch_msssim.ms_ssim(x.double(), y.double(), data_range=1.0, size_average=False).tolist(),
    }
    for name, key in (("psnr", "psnr"), ("ssim", "ssim"), ("ms-ssim", "ms_ssim")):
        m = build_metric(name)
        m.update(_batch(x[:2], y[:2]))
        m.update(_batch(x[2:], y[2:], start=2))
        out = m.compute()
        assert np.std(refs[key]) > 1e-3, key  # a real spread, so a wrong formula cannot pass by luck
        assert out[key] == pytest.approx(np.mean(refs[key]), rel=1e-6), key
        assert out[f"{key}_std"] == pytest.approx(np.std(refs[key]), rel=1e-5), key


# --- Edge cases found by mutation testing (mutmut on tokbench/metrics/pixel.py, README "Development") ---


def test_ms_ssim_at_the_smallest_size_odd_at_every_scale():
    """161 px is the smallest side MS-SSIM accepts (pytorch-msssim: side > 10 * 2**4); 161 -> 81 -> 41 ->
    21 -> 11 is odd at every scale, so the padding of the 2x2 pooling is used at each step."""
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y = _pair(b=2, h=161, w=167, seed=5)
    m = build_metric("ms-ssim")
    m.update(_batch(x, y))
    ref = pytorch_msssim.ms_ssim(x.double(), y.double(), data_range=1.0, size_average=False)
    np.testing.assert_allclose(m.last_rows["ms_ssim"].numpy(), ref.numpy(), rtol=1e-6)
    with pytest.raises(tokbench.TokbenchError, match=r"at least 161 px a side, got \(160, 167\)"):
        build_metric("ms-ssim").update(_batch(*_pair(b=1, h=160, w=167)))


def test_ms_ssim_of_anticorrelated_images_is_zero_as_pytorch_msssim():
    """A negative contrast-structure term is clipped to 0 (pytorch-msssim's relu), so MS-SSIM is 0, not NaN."""
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, _ = _pair(b=2, h=176, w=176, seed=6)
    y = 1 - x
    m = build_metric("ms-ssim")
    m.update(_batch(x, y))
    ref = pytorch_msssim.ms_ssim(x.double(), y.double(), data_range=1.0, size_average=False)
    assert torch.isfinite(m.last_rows["ms_ssim"]).all()
    np.testing.assert_allclose(m.last_rows["ms_ssim"].numpy(), ref.numpy(), atol=1e-12)


def test_ssim_needs_the_window_size_and_works_at_it():
    """skimage accepts an image exactly as wide as the window (11 px Gaussian, 7 px for llamagen) and
    refuses a smaller one; so does tokbench, with a TokbenchError naming the size."""
    x, y = _pair(b=2, h=11, w=13, seed=7)
    m = build_metric("ssim")
    m.update(_batch(x, y))
    ref = [structural_similarity(_hwc(a), _hwc(b), data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                 sigma=1.5, use_sample_covariance=False) for a, b in zip(x, y)]
    np.testing.assert_allclose(m.last_rows["ssim"].numpy(), ref, rtol=1e-6)
    with pytest.raises(tokbench.TokbenchError, match=r"at least 11 px a side, got \(10, 13\)"):
        build_metric("ssim").update(_batch(*_pair(b=1, h=10, w=13)))
    x7, y7 = _pair(b=1, h=7, w=9, seed=8)
    ll = build_metric("ssim", protocol="llamagen")
    ll.update(_batch(x7, y7))
    assert np.isfinite(ll.last_rows["ssim_llamagen"].numpy()).all()
    with pytest.raises(tokbench.TokbenchError, match=r"at least 7 px a side, got \(6, 9\)"):
        build_metric("ssim", protocol="llamagen").update(_batch(*_pair(b=1, h=6, w=9)))


def test_all_identical_gives_inf_and_no_images_gives_nan():
    x, _ = _pair(b=2)
    m = build_metric("psnr")
    m.update(_batch(x, x.clone()))
    assert m.compute() == {"psnr": float("inf")}
    with warnings.catch_warnings():  # torchmetrics warns about compute() before update()
        warnings.simplefilter("ignore")
        assert np.isnan(build_metric("psnr").compute()["psnr"])


def test_std_of_nearly_equal_values_equals_numpy():
    """Per-image PSNRs that differ by ~1e-3 dB around 40 dB: a float32 sum, or E[x^2] - E[x]^2 in single
    precision, would lose the spread entirely."""
    g = torch.Generator().manual_seed(9)
    x = 0.2 + 0.6 * torch.rand(6, 3, 16, 16, generator=g)
    offsets = 0.01 * (1 + 1e-4 * torch.arange(6, dtype=torch.float64))
    y = (x.double() + offsets.view(-1, 1, 1, 1)).float()
    ref = [peak_signal_noise_ratio(_hwc(a), _hwc(b), data_range=1.0) for a, b in zip(x, y)]
    m = build_metric("psnr")
    for i in range(0, 6, 2):
        m.update(_batch(x[i:i + 2], y[i:i + 2], start=i))
    out = m.compute()
    assert 1e-4 < np.std(ref) < 1e-2
    assert out["psnr"] == pytest.approx(np.mean(ref), rel=1e-9)
    assert out["psnr_std"] == pytest.approx(np.std(ref), rel=1e-3)


def test_llamagen_quantisation_at_the_range_ends_and_half_steps():
    """LlamaGen stores clamp(127.5 x' + 128, 0, 255) as uint8 for x' = 2x - 1: truncation, so 0 -> 0,
    1 -> 255 and k/255 -> k (numpy reference in float32, as LlamaGen's torch code)."""
    from tokbench.metrics.pixel import quantise_llamagen

    k = torch.arange(256, dtype=torch.float32)
    x = torch.cat([k / 255, (k[:-1] + 0.5) / 255, torch.tensor([0.0, 1.0, 0.25, 0.75])])
    xs = x.numpy().astype(np.float32)
    ref = np.clip(np.float32(127.5) * (xs * np.float32(2) - np.float32(1)) + np.float32(128), 0, 255)
    ref = ref.astype(np.uint8).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(quantise_llamagen(x).numpy(), ref)
    assert quantise_llamagen(torch.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]


def test_conventions_ms_ssim_protocols_and_direction():
    """All three are higher-is-better (the report marks the best value by it); MS-SSIM has no LlamaGen
    variant; each protocol() names exactly the keys compute() returns, with the data range it uses."""
    with pytest.raises(tokbench.TokbenchError, match="^ms-ssim has only the standard protocol$"):
        build_metric("ms-ssim", protocol="llamagen")
    with pytest.raises(tokbench.TokbenchError, match="unknown protocol 'llamagan'"):
        build_metric("psnr", protocol="llamagan")
    for name in ("psnr", "ssim", "ms-ssim"):  # a misspelt option is refused, not dropped
        with pytest.raises(tokbench.TokbenchError, match=f"bad options for metric '{name}' .*prtocol"):
            build_metric(name, prtocol="standard")
    x, y = _pair(b=2, h=168, w=168)
    for name, protocol, text in (("psnr", "standard", "data range 1"), ("psnr", "llamagen", "data range 1"),
                                 ("ssim", "standard", "data range 1"), ("ssim", "llamagen", "data_range=2.0"),
                                 ("ms-ssim", "standard", "data range 1")):
        m = build_metric(name, protocol=protocol)
        assert m.higher_is_better is True, name
        m.update(_batch(x, y))
        values = {k for k in m.compute() if not k.endswith("_std")}
        assert set(m.protocol()) == values == set(m.last_rows), (name, protocol)
        assert text in next(iter(m.protocol().values())), (name, protocol)


def test_identical_pairs_counted_across_batches():
    """Three batches of three pairs, one identical pair in each of two batches: 2 identical, the mean
    over the 7 others (skimage)."""
    x, y = _pair(b=9, seed=10)
    y[1], y[5] = x[1], x[5]
    m = build_metric("psnr")
    for i in range(0, 9, 3):
        m.update(_batch(x[i:i + 3], y[i:i + 3], start=i))
    out = m.compute()
    ref = [peak_signal_noise_ratio(_hwc(x[i]), _hwc(y[i]), data_range=1.0) for i in range(9) if i not in (1, 5)]
    assert out["psnr_identical"] == 2.0
    assert out["psnr"] == pytest.approx(np.mean(ref), rel=1e-10)


@pytest.mark.parametrize("protocol", ["standard", "llamagen"])
def test_ssim_of_dark_images_where_the_constants_dominate(protocol):
    """On dark images the means are near 0, so SSIM rests on C1 = (0.01 L)^2 and C2 = (0.03 L)^2 with the
    protocol's data range L (1, or LlamaGen's 2): compared with skimage there."""
    g = torch.Generator().manual_seed(11)
    x = torch.nn.functional.avg_pool2d(0.04 * torch.rand(2, 3, 40, 44, generator=g), 3, 1, 1)
    y = (x + 0.01 * torch.randn(2, 3, 40, 44, generator=g)).clamp(0, 1)
    m = build_metric("ssim", protocol=protocol)
    m.update(_batch(x, y))
    if protocol == "standard":
        ref = [structural_similarity(_hwc(a), _hwc(b), data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False) for a, b in zip(x, y)]
    else:
        q = np.floor(np.clip(255 * _hwc_all(y) + 0.5, 0, 255)) / 255  # uint8 k: 127.5 (2v - 1) + 128 = 255 v + 0.5
        ref = [structural_similarity(q[i], _hwc(x[i]), data_range=2.0, channel_axis=-1) for i in range(2)]
    np.testing.assert_allclose(m.last_rows[m.label].numpy(), ref, rtol=1e-6)


def _hwc_all(t):
    return t.permute(0, 2, 3, 1).double().numpy()


def test_pixel_helpers_default_to_data_range_1_and_scale_with_it():
    """The module-level helpers (data range 1 by default) against skimage, also on a 0..255 scale."""
    from tokbench.metrics.pixel import ms_ssim_per_image, psnr_per_image, ssim_per_image

    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y = _pair(b=1, h=168, w=168, seed=12)
    for scale in (1.0, 255.0):
        xs, ys = scale * x, scale * y
        a, b = _hwc(xs[0]), _hwc(ys[0])
        kw = {"data_range": scale} if scale != 1.0 else {}  # the default must be 1
        ref = peak_signal_noise_ratio(a, b, data_range=scale)
        assert float(psnr_per_image(xs, ys, **kw)) == pytest.approx(ref, rel=1e-10)
        ref = structural_similarity(a, b, data_range=scale, channel_axis=-1, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
        assert float(ssim_per_image(xs, ys, **kw)) == pytest.approx(ref, rel=1e-6)
        ref = float(pytorch_msssim.ms_ssim(xs.double(), ys.double(), data_range=scale))
        assert float(ms_ssim_per_image(xs, ys, **kw)) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("shape,n", [((2, 5, 130, 61), 11), ((1, 1, 48, 200), 7), ((3, 2, 11, 11), 11),
                                     ((1, 3, 97, 96), 11)])
def test_banded_filter_equals_the_grouped_convolution(shape, n):
    # block edges (48 rows), a last partial block, sizes below one block and equal to the window
    from tokbench.metrics.pixel import _window, valid_filter

    t = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    w = _window("gaussian", n, 1.5, torch.float64, t.device)
    flat = t.flatten(0, -3).unsqueeze(1)
    ref = torch.nn.functional.conv2d(torch.nn.functional.conv2d(flat, w.view(1, 1, n, 1)), w.view(1, 1, 1, n))
    out = valid_filter(t, w)
    assert out.shape == (*shape[:-2], shape[-2] - n + 1, shape[-1] - n + 1)
    torch.testing.assert_close(out, ref.view(out.shape), rtol=0, atol=1e-14)
