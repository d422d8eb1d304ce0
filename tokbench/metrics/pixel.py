"""Pixel-fidelity metrics: PSNR, SSIM, MS-SSIM, per image, averaged over the data set.

Two named protocols:
- `standard` (default): float images in [0, 1] with data range 1; SSIM/MS-SSIM with the Gaussian
  window (11, sigma 1.5) over the valid region, as Wang et al.'s reference code and scikit-image.
- `llamagen`: what LlamaGen's tokenizer evaluation (tokenizer/tokenizer_image/reconstruction_vq_ddp.py)
  computes, and TokenFlow and others reuse to report: the reconstruction quantised to uint8 as
  clamp(127.5 x + 128) for x in [-1, 1] (round half up of 255 v), the reference left as it is (uint8
  values already, unless resized for evaluation), then scikit-image's PSNR (data range 1) and
  `structural_similarity(..., data_range=2.0, channel_axis=-1)`: a 7x7 uniform window with sample
  covariance, and a data range twice the true one, which inflates SSIM. Use it only to compare with
  numbers published that way; reports show it next to the standard value.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..core import TokbenchError
from .base import BenchMetric, EvalBatch, register_metric

PROTOCOLS = ("standard", "llamagen")


def quantise_llamagen(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> k / 255 for the uint8 k that LlamaGen's evaluation stores: the float32
    expression clamp(127.5 * x' + 128, 0, 255).to(uint8) on x' = 2x - 1 (truncation, i.e. round half up)."""
    return torch.clamp(127.5 * (x.float() * 2 - 1) + 128.0, 0, 255).to(torch.uint8).float() / 255


def psnr_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each pair, (B,) float64; identical images give +inf."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _window(kind: str, size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if kind == "gaussian":
        r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        w = torch.exp(-(r**2) / (2 * sigma**2))
    else:
        w = torch.ones(size, dtype=torch.float64)
    return (w / w.sum()).to(dtype=dtype, device=device)


FILTER_BLOCK = 48  # output rows per banded product; 32-96 are within 20% of each other on CPU


def _band(rows: int, w: torch.Tensor) -> torch.Tensor:
    """(rows, rows + len(w) - 1) matrix whose row i holds w at columns i .. i + len(w) - 1."""
    n = w.numel()
    out = torch.zeros(rows, rows + n - 1, dtype=w.dtype, device=w.device)
    i = torch.arange(rows, device=w.device)
    for k in range(n):
        out[i, i + k] = w[k]
    return out


def valid_filter(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable filtering of the last two dimensions with the 1-D window `w`, valid region only
    (each side shrinks by len(w) - 1): the correlation `F.conv2d(F.conv2d(t, w_col), w_row)` computes.

    Written as banded matrix products over blocks of FILTER_BLOCK outputs rather than as the grouped
    convolution that torchmetrics and kornia use: in float64 (SSIM's precision here) CPU convolutions
    take a slow path, and the products are about 5x faster at 256 px for the same sums
    (tests/test_pixel_metrics.py compares both)."""
    n = w.numel()
    h, wd = t.shape[-2] - n + 1, t.shape[-1] - n + 1
    rows = torch.empty(*t.shape[:-2], h, t.shape[-1], dtype=t.dtype, device=t.device)
    band = _band(FILTER_BLOCK, w)
    for i in range(0, h, FILTER_BLOCK):
        m = min(FILTER_BLOCK, h - i)
        torch.matmul(band if m == FILTER_BLOCK else _band(m, w), t[..., i:i + m + n - 1, :],
                     out=rows[..., i:i + m, :])
    out = torch.empty(*t.shape[:-2], h, wd, dtype=t.dtype, device=t.device)
    band = band.T.contiguous()
    for j in range(0, wd, FILTER_BLOCK):
        m = min(FILTER_BLOCK, wd - j)
        torch.matmul(rows[..., j:j + m + n - 1], band if m == FILTER_BLOCK else _band(m, w).T,
                     out=out[..., j:j + m])
    return out


def ssim_components(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float,
    window: str = "gaussian",
    size: int = 11,
    sigma: float = 1.5,
    sample_covariance: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel SSIM and contrast-structure term, (B, C) each, float64.

    Statistics come from a separable window applied over the valid region only (no padding), as
    Wang et al.'s reference ssim.m, scikit-image (which filters with reflection and then crops the
    window radius) and pytorch-msssim do. torchmetrics instead also averages the SSIM map over a
    reflection-padded border, which shifts SSIM by up to about 0.01 on 128 px images.
    """
    x, y = x.double(), y.double()
    if min(x.shape[-2:]) < size:
        raise TokbenchError(f"SSIM needs images of at least {size} px a side, got {tuple(x.shape[-2:])}")
    w = _window(window, size, sigma, x.dtype, x.device)
    # the five local moments filtered together, as one tensor; the arithmetic after it in place
    moments = torch.empty(5, *x.shape, dtype=x.dtype, device=x.device)
    moments[0], moments[1] = x, y
    torch.mul(x, x, out=moments[2])
    torch.mul(y, y, out=moments[3])
    torch.mul(x, y, out=moments[4])
    ux, uy, exx, eyy, exy = valid_filter(moments, w).unbind(0)
    cov_norm = size * size / (size * size - 1) if sample_covariance else 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    uxuy = ux * uy
    squares = ux.square_().add_(uy.square_())
    # cs = (2 cov_xy + c2) / (var_x + var_y + c2), with var and cov from E[.] - products of means
    cs = exy.sub_(uxuy).mul_(2 * cov_norm).add_(c2).div_(exx.add_(eyy).sub_(squares).mul_(cov_norm).add_(c2))
    ssim = uxuy.mul_(2).add_(c1).div_(squares.add_(c1)).mul_(cs)
    return ssim.flatten(2).mean(-1), cs.flatten(2).mean(-1)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Gaussian-window SSIM (11 px, sigma 1.5, population covariance), mean over channels, (B,)."""
    return ssim_components(x, y, data_range)[0].mean(1)


def ssim_uniform_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float, win_size: int = 7) -> torch.Tensor:
    """scikit-image's default `structural_similarity` (7x7 uniform window, sample covariance), (B,)."""
    return ssim_components(x, y, data_range, "uniform", win_size, sample_covariance=True)[0].mean(1)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003


def ms_ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Multi-scale SSIM per image, (B,): contrast-structure at the first four scales and SSIM at the
    fifth (2x2 average pooling between scales), per channel, then the mean over channels."""
    x, y = x.double(), y.double()
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=torch.float64, device=x.device)
    terms = []
    for level in range(len(MS_SSIM_WEIGHTS)):
        ssim, cs = ssim_components(x, y, data_range)
        if level < len(MS_SSIM_WEIGHTS) - 1:
            terms.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[-2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=pad)
            y = F.avg_pool2d(y, kernel_size=2, padding=pad)
    terms.append(torch.relu(ssim))
    stacked = torch.stack(terms)  # (levels, B, C)
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean(1)


class _MeanOverImages(BenchMetric):
    """Shared state for metrics reported as a per-image mean (and standard deviation)."""

    key = "value"

    def __init__(self, protocol: str = "standard", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if protocol not in PROTOCOLS:
            raise TokbenchError(f"{self.name}: unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
        self.mode = protocol
        self.add_moment_states()
        self.add_state("infinite", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def label(self) -> str:
        return self.name if self.mode == "standard" else f"{self.name}_{self.mode}"

    def per_image(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        x, y = batch.originals, batch.reconstructions
        if self.mode == "llamagen":  # only the reconstruction is saved as uint8; the reference stays float
            y = quantise_llamagen(y)
        v = self.per_image(x, y).double()
        finite = torch.isfinite(v)
        self.add_moments(v[finite])
        self.infinite += int((~finite).sum())
        self.last_rows = {self.label: v.cpu()}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        if int(self.count) == 0:
            return {self.label: float("inf") if int(self.infinite) else float("nan")}
        out = self.moments(self.label)
        if int(self.infinite):  # identical pairs (PSNR = inf) are left out of the mean, and counted
            out[f"{self.label}_identical"] = float(self.infinite)
        return out


@register_metric("psnr")
class PSNR(_MeanOverImages):
    """Peak signal-to-noise ratio in dB per image, data range 1 on [0, 1] images; mean over images."""

    name = "psnr"
    higher_is_better = True

    def per_image(self, x, y):
        return psnr_per_image(x, y, 1.0)

    def protocol(self):
        if self.mode == "llamagen":
            return {self.label: "LlamaGen: reconstruction quantised to uint8, per-image PSNR, data range 1, mean"}
        return {"psnr": "per-image PSNR on float [0, 1], data range 1, mean over images"}


@register_metric("ssim")
class SSIM(_MeanOverImages):
    """Structural similarity per image (mean over pixels and channels); mean over images."""

    name = "ssim"
    higher_is_better = True

    def per_image(self, x, y):
        if self.mode == "llamagen":
            return ssim_uniform_per_image(x, y, data_range=2.0)
        return ssim_per_image(x, y, 1.0)

    def protocol(self):
        if self.mode == "llamagen":
            return {self.label: "LlamaGen: reconstruction quantised to uint8, skimage uniform 7x7 window, "
                    "data_range=2.0 (inflated)"}
        return {"ssim": "SSIM, Gaussian 11x11 sigma 1.5, valid region (as skimage / Wang et al.), data range 1"}


@register_metric("ms-ssim")
class MSSSIM(_MeanOverImages):
    """Multi-scale SSIM (5 scales, Wang et al. 2003 weights); needs images larger than 160 px."""

    name = "ms_ssim"
    higher_is_better = True
    min_side = 161  # 11-px window at the 5th scale (1/16 size)

    def __init__(self, protocol: str = "standard", **kwargs: Any) -> None:
        if protocol != "standard":
            raise TokbenchError("ms-ssim has only the standard protocol")
        super().__init__(protocol, **kwargs)

    def per_image(self, x, y):
        if min(x.shape[-2:]) < self.min_side:
            raise TokbenchError(
                f"ms-ssim needs images of at least {self.min_side} px a side, got {tuple(x.shape[-2:])}"
            )
        return ms_ssim_per_image(x, y, 1.0)

    def protocol(self):
        return {"ms_ssim": "MS-SSIM, 5 scales (Wang 2003 weights), Gaussian 11x11 sigma 1.5, data range 1"}
