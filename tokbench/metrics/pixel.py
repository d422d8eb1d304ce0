"""Pixel-fidelity metrics: PSNR, SSIM, MS-SSIM, per image, averaged over the data set.

Two named protocols:
- `standard` (default): float images in [0, 1] with data range 1; SSIM/MS-SSIM with torchmetrics'
  Gaussian window (11, sigma 1.5), as in Wang et al.
- `llamagen`: what LlamaGen's tokenizer evaluation (tokenizer/validation/val_ddp.py) computes, and
  TokenFlow and others reuse to report: both images quantised to uint8 as clamp(127.5 x + 128) for x
  in [-1, 1] (= round(255 v) for v in [0, 1]), then scikit-image's PSNR (data range 1) and
  `structural_similarity(..., data_range=2.0, channel_axis=-1)`: a 7x7 uniform window with sample
  covariance, and a data range twice the true one, which inflates SSIM. Use it only to compare with
  numbers published that way; reports show it next to the standard value.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

from ..core import TokbenchError
from .base import BenchMetric, EvalBatch, register_metric

PROTOCOLS = ("standard", "llamagen")


def quantise_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> the float values of its uint8 rounding (k / 255)."""
    return (x.clamp(0, 1) * 255).round() / 255


def psnr_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB of each pair, (B,) float64; identical images give +inf."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim_uniform_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float, win_size: int = 7) -> torch.Tensor:
    """scikit-image's default `structural_similarity` (uniform window, sample covariance, K1 .01,
    K2 .03, borders of (win_size-1)/2 cropped, mean over channels), batched in torch. (B,) float64."""
    x, y = x.double(), y.double()
    c = x.shape[1]
    pad = (win_size - 1) // 2

    # scipy.ndimage.uniform_filter(mode="reflect") repeats the edge sample (d c b a | a b c d);
    # torch's "reflect" padding does not, so mirror by hand with the edge included.
    def filt_sym(t: torch.Tensor) -> torch.Tensor:
        left = t[..., :, :pad].flip(-1)
        right = t[..., :, -pad:].flip(-1)
        t = torch.cat([left, t, right], dim=-1)
        top = t[..., :pad, :].flip(-2)
        bottom = t[..., -pad:, :].flip(-2)
        t = torch.cat([top, t, bottom], dim=-2)
        return F.avg_pool2d(t, win_size, stride=1)

    np_ = win_size**2
    cov_norm = np_ / (np_ - 1)
    ux, uy = filt_sym(x), filt_sym(y)
    uxx, uyy, uxy = filt_sym(x * x), filt_sym(y * y), filt_sym(x * y)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    s = s[..., pad : s.shape[-2] - pad, pad : s.shape[-1] - pad]
    return s.reshape(s.shape[0], c, -1).mean(-1).mean(-1)


class _MeanOverImages(BenchMetric):
    """Shared state for metrics reported as a per-image mean (and standard deviation)."""

    key = "value"

    def __init__(self, protocol: str = "standard", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if protocol not in PROTOCOLS:
            raise TokbenchError(f"{self.name}: unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
        self.mode = protocol
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("infinite", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def label(self) -> str:
        return self.name if self.mode == "standard" else f"{self.name}_{self.mode}"

    def per_image(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        x, y = batch.originals, batch.reconstructions
        if self.mode == "llamagen":
            x, y = quantise_uint8(x), quantise_uint8(y)
        v = self.per_image(x, y).double()
        finite = torch.isfinite(v)
        self.total += v[finite].sum().to(self.total.device)
        self.total_sq += v[finite].pow(2).sum().to(self.total.device)
        self.count += int(finite.sum())
        self.infinite += int((~finite).sum())
        self.last_rows = {self.label: v.cpu()}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        n = int(self.count)
        if n == 0:
            return {self.label: float("inf") if int(self.infinite) else float("nan")}
        mean = float(self.total) / n
        var = max(float(self.total_sq) / n - mean**2, 0.0)
        out = {self.label: mean, f"{self.label}_std": var**0.5}
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
            return {self.label: "LlamaGen: uint8-quantised images, per-image PSNR, data range 1, mean"}
        return {"psnr": "per-image PSNR on float [0, 1], data range 1, mean over images"}


@register_metric("ssim")
class SSIM(_MeanOverImages):
    """Structural similarity per image (mean over pixels and channels); mean over images."""

    name = "ssim"
    higher_is_better = True

    def per_image(self, x, y):
        if self.mode == "llamagen":
            return ssim_uniform_per_image(x, y, data_range=2.0)
        return structural_similarity_index_measure(
            y.float(), x.float(), data_range=1.0, reduction="none", gaussian_kernel=True, sigma=1.5, kernel_size=11
        )

    def protocol(self):
        if self.mode == "llamagen":
            return {self.label: "LlamaGen: uint8-quantised, skimage uniform 7x7 window, data_range=2.0 (inflated)"}
        return {"ssim": "torchmetrics SSIM, Gaussian 11x11 sigma 1.5, data range 1, mean over images"}


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
        return multiscale_structural_similarity_index_measure(
            y.float(), x.float(), data_range=1.0, reduction="none", gaussian_kernel=True, sigma=1.5, kernel_size=11
        )

    def protocol(self):
        return {"ms_ssim": "torchmetrics MS-SSIM, 5 scales, Gaussian 11x11 sigma 1.5, data range 1"}
