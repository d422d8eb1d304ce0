"""PSNR / SSIM / MS-SSIM against scikit-image and pytorch-msssim; streaming == one shot."""

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
