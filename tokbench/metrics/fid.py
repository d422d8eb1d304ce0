"""Fréchet Inception Distance, streamed: rFID (originals vs reconstructions) and FID vs a reference .npz.

Inception pool-3 features (2048-D) are accumulated as running float64 sums (sum, sum of outer products,
count), never as a list of images or features, so a run can be split over ranks and resumed. The
distance is clean-fid's `frechet_distance` on the resulting mean and (unbiased, as `np.cov`) covariance.

Two protocols (`mode`), because the resize and the network port change the number:
- `clean` (default, clean-fid's "clean" mode): images quantised to uint8, each channel resized to
  299x299 with PIL's bicubic filter in float (clean-fid's own resizer), then clean-fid's Inception: the
  TorchScript port of TensorFlow's inception-2015-12-05 distributed with StyleGAN2-ADA.
- `torch-fidelity` (= ADM's evaluator / torch-fidelity / torchmetrics): images quantised to uint8,
  resized to 299x299 with TensorFlow 1.x bilinear sampling (no half-pixel offset), then the PyTorch
  port of the same TensorFlow Inception (torch-fidelity's weights). Use it to compare with numbers
  computed by ADM's evaluator against its reference batches (LlamaGen, ADM, DiT report those).
- `pytorch-fid` (mseitzer/pytorch-fid between image folders, as TokenFlow reports): uint8 images as
  [0, 1] floats, torch bilinear resize with half-pixel centres, scaled to [-1, 1], the same network.

Result keys name the protocol: `rfid` (clean), `rfid_torch_fidelity`, `rfid_pytorch_fid`; `fid_*` alike.

Both quantise with round-half-up of 255 x, as saving the images as PNG would.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_strict, read_state_dict
from ..core import TokbenchError
from ..weights import Artifact, register_artifact, resolve
from .base import BenchMetric, EvalBatch, register_metric

INCEPTION_CLEANFID = register_artifact(
    Artifact(
        name="inception-cleanfid",
        url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
        size=95_000_000,
        licence="Apache-2.0 (TensorFlow inception-2015-12-05 weights; TorchScript port by NVIDIA)",
        used_by="rfid, fid (mode clean)",
    )
)
INCEPTION_TORCH_FIDELITY = register_artifact(
    Artifact(
        name="inception-torch-fidelity",
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
        sha256="6726825d",
        size=95_600_000,
        licence="Apache-2.0 (TensorFlow inception-2015-12-05 weights, converted by torch-fidelity)",
        used_by="rfid, fid (mode torch-fidelity)",
    )
)

INCEPTION_PYTORCH_FID = register_artifact(
    Artifact(
        name="inception-pytorch-fid",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",
        sha256="6726825d",
        size=95_600_000,
        licence="Apache-2.0 (TensorFlow inception-2015-12-05 weights, converted by pytorch-fid)",
        used_by="rfid, fid (mode pytorch-fid)",
    )
)

MODES: dict[str, dict[str, str]] = {
    "clean": {
        "artifact": INCEPTION_CLEANFID.name,
        "resize": "uint8, then PIL bicubic per channel in float to 299x299 (clean-fid 'clean')",
        "network": "clean-fid / StyleGAN2-ADA TorchScript Inception-v3 (TF inception-2015-12-05), pool3 2048-D",
    },
    "torch-fidelity": {
        "artifact": INCEPTION_TORCH_FIDELITY.name,
        "resize": "uint8, then TensorFlow-1.x bilinear (align_corners=False, no half-pixel) to 299x299",
        "network": "torch-fidelity Inception-v3 port (TF inception-2015-12-05), pool3 2048-D",
    },
    "pytorch-fid": {
        "artifact": INCEPTION_PYTORCH_FID.name,
        "resize": "uint8 / 255, then torch bilinear (align_corners=False, no antialias) to 299x299, 2x - 1",
        "network": "pytorch-fid Inception-v3 port (TF inception-2015-12-05), pool3 2048-D",
    },
}
_MODE_ALIASES = {"adm": "torch-fidelity", "torchmetrics": "torch-fidelity", "clean-fid": "clean", "cleanfid": "clean",
                 "pytorch_fid": "pytorch-fid"}
FEATURE_DIM = 2048


def canonical_mode(mode: str) -> str:
    mode = _MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise TokbenchError(f"unknown FID mode {mode!r}; choose one of {', '.join(MODES)} (or 'adm')")
    return mode


def quantise_255(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> float values 0..255 of the uint8 image (round half up, as PNG export does)."""
    return torch.floor(images.clamp(0, 1) * 255 + 0.5)


def resize_tf1_bilinear(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """TensorFlow 1.x `resize_bilinear(align_corners=False)`: source = dest * in/out, no half-pixel
    offset (PyTorch's `interpolate` samples at pixel centres and gives other values)."""

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = torch.arange(size, dtype=torch.float32, device=x.device) * (n_in / size)
        lo = pos.floor().long().clamp_max(n_in - 1)
        hi = (lo + 1).clamp_max(n_in - 1)
        return lo, hi, (pos - lo.float()).to(x.dtype)

    y_lo, y_hi, dy = axis(x.shape[-2])
    x_lo, x_hi, dx = axis(x.shape[-1])
    top = x[..., y_lo, :]
    bottom = x[..., y_hi, :]
    rows = top + (bottom - top) * dy.view(-1, 1)
    left, right = rows[..., x_lo], rows[..., x_hi]
    return left + (right - left) * dx


def resize_clean(x255: torch.Tensor, size: int = 299) -> torch.Tensor:
    """clean-fid's "clean" resize of (B, 3, H, W) float 0..255: PIL bicubic per channel in mode F."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (size, size))
    arrays = x255.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)
    out = np.stack([resize(a) for a in arrays])  # (B, size, size, 3), clipped to [0, 255]
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x255.device)


class CleanFIDInception(nn.Module):
    """clean-fid's feature extractor: [0, 1] images -> (B, 2048) pool-3 features.

    The network is NVIDIA's TorchScript file, loaded with `torch.jit.load` as clean-fid does:
    TorchScript deserialisation builds TorchScript modules only and runs no Python from the file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        try:
            self.base = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:  # noqa: BLE001 - a corrupt or wrong file
            raise TokbenchError(
                f"could not load clean-fid's Inception TorchScript file {path}: {type(e).__name__}: {e}. "
                f"Delete it and run `tokbench fetch {INCEPTION_CLEANFID.name}`."
            ) from None
        for param in self.base.parameters():
            param.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_clean(quantise_255(images))
        # clean-fid resizes outside the network, then calls its `layers` on (x - 128) / 128.
        return self.base.layers((x - 128) / 128).reshape(x.shape[0], FEATURE_DIM)


def build_fid_inception() -> nn.Module:
    """The FID Inception-v3 (TF inception-2015-12-05 layout, 1008 classes) with random weights.

    torchvision's Inception3 with the blocks that differ in TensorFlow's graph (average pools that
    exclude padding, a max pool in the last block) replaced by clean-fid's (= pytorch-fid's) FID blocks.
    """
    from cleanfid.inception_pytorch import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net.eval()


_TRUNK = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
)  # fmt: skip


def result_key(base: str, mode: str, custom: bool = False) -> str:
    """`rfid` for the default clean-fid protocol, `rfid_torch_fidelity` / `rfid_pytorch_fid` otherwise."""
    return base if custom or mode == "clean" else f"{base}_{mode.replace('-', '_')}"


class TorchFidelityInception(nn.Module):
    """torch-fidelity's / ADM's feature extractor: [0, 1] images -> (B, 2048) pool-3 features."""

    input_size = 299  # the network's input side, as TensorFlow's graph resizes to

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None, source: str = "checkpoint") -> None:
        super().__init__()
        self.net = build_fid_inception()
        if state_dict is not None:
            # Converted TF weights carry no BatchNorm step counters (unused in eval).
            load_strict(self.net, state_dict, source=source, ignore_missing=lambda k: k.endswith("num_batches_tracked"))
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_tf1_bilinear(quantise_255(images).float(), self.input_size)
        x = (x - 128) / 128
        for name in _TRUNK:
            x = getattr(self.net, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class PytorchFIDInception(TorchFidelityInception):
    """pytorch-fid's feature extractor: its resize (torch bilinear, pixel centres) and [-1, 1] scaling."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = quantise_255(images).float() / 255  # the PNG files pytorch-fid reads
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in _TRUNK:
            x = getattr(self.net, name)(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


_EXTRACTORS: dict[tuple[str, str], nn.Module] = {}
_ARTIFACTS = {"clean": INCEPTION_CLEANFID, "torch-fidelity": INCEPTION_TORCH_FIDELITY,
              "pytorch-fid": INCEPTION_PYTORCH_FID}


def inception_extractor(mode: str = "clean", weights: str | os.PathLike | None = None) -> nn.Module:
    """The (cached) Inception feature extractor of a FID protocol, its weights found by the resolver.

    Raises `WeightsUnavailable` (with the fetch command) when the weights are not on this machine
    and cannot be downloaded.
    """
    mode = canonical_mode(mode)
    path = resolve(_ARTIFACTS[mode], weights)
    key = (mode, str(path))
    if key not in _EXTRACTORS:
        if mode == "clean":
            _EXTRACTORS[key] = CleanFIDInception(path).eval()
        else:
            cls = PytorchFIDInception if mode == "pytorch-fid" else TorchFidelityInception
            _EXTRACTORS[key] = cls(read_state_dict(path), source=str(path)).eval()
    return _EXTRACTORS[key]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """clean-fid's Fréchet distance between two Gaussians (float64 numpy)."""
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    return float(cleanfid_frechet(np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64),
                                  np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)))  # fmt: skip


def moments(total: torch.Tensor, outer: torch.Tensor, count: torch.Tensor | float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (as `np.cov(rowvar=False)`) from running sums of x and x x^T."""
    n = float(count)
    if n < 2:
        raise TokbenchError(f"FID needs at least 2 images per set to estimate a covariance, got {int(n)}")
    s = total.detach().double().cpu().numpy()
    ss = outer.detach().double().cpu().numpy()
    mu = s / n
    sigma = (ss - n * np.outer(mu, mu)) / (n - 1)
    return mu, (sigma + sigma.T) / 2  # exact symmetry; rounding in the sums can break it slightly


def load_reference_npz(path: str | os.PathLike) -> dict[str, Any]:
    """mu and sigma (and, for files tokbench wrote, the image count and FID mode) of a reference .npz."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TokbenchError(f"reference statistics {str(path)!r} do not exist")
    with np.load(path, allow_pickle=False) as z:
        if "mu" not in z or "sigma" not in z:
            raise TokbenchError(f"{path} has no 'mu' and 'sigma' arrays (it has {', '.join(z.files)})")
        out: dict[str, Any] = {"mu": z["mu"].astype(np.float64), "sigma": z["sigma"].astype(np.float64)}
        out["n"] = int(z["n"]) if "n" in z else None
        out["mode"] = str(z["mode"]) if "mode" in z else None
    if out["mu"].shape != (out["sigma"].shape[0],) or out["sigma"].ndim != 2:
        raise TokbenchError(f"{path}: mu {out['mu'].shape} and sigma {out['sigma'].shape} do not fit together")
    return out


def save_reference_npz(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, n: int, mode: str) -> None:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, n=np.int64(n), mode=np.str_(mode))
    os.replace(tmp, path)


class _FeatureMoments:
    """Declares the running-sum states of one feature set on a metric."""

    @staticmethod
    def add(metric: BenchMetric, prefix: str, dim: int) -> None:
        metric.add_state(f"{prefix}_sum", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        metric.add_state(f"{prefix}_outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        metric.add_state(f"{prefix}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    @staticmethod
    def update(metric: BenchMetric, prefix: str, feats: torch.Tensor) -> None:
        f = feats.detach().double()
        setattr(metric, f"{prefix}_sum", getattr(metric, f"{prefix}_sum") + f.sum(0))
        setattr(metric, f"{prefix}_outer", getattr(metric, f"{prefix}_outer") + f.T @ f)
        setattr(metric, f"{prefix}_n", getattr(metric, f"{prefix}_n") + f.shape[0])


class _InceptionMetric(BenchMetric):
    needs_decode = True
    higher_is_better = False

    def __init__(
        self,
        mode: str = "clean",
        weights: str | os.PathLike | None = None,
        feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        feature_dim: int = FEATURE_DIM,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.mode = canonical_mode(mode)
        self.custom_extractor = feature_extractor is not None
        # Kept out of the module tree, so saved metric states hold statistics, not 95 MB of weights.
        extractor = feature_extractor if feature_extractor is not None else inception_extractor(self.mode, weights)
        self._extractor = [extractor]
        self.feature_dim = int(feature_dim)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        extractor = self._extractor[0]
        if isinstance(extractor, nn.Module):
            extractor.to(images.device)
        with torch.no_grad():
            feats = extractor(images.float())
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim:
            raise TokbenchError(f"feature extractor gave shape {tuple(feats.shape)}, expected (B, {self.feature_dim})")
        return feats

    key_base = "fid"

    def protocol_parts(self) -> dict[str, Any]:
        if self.custom_extractor:
            return {"mode": "custom feature extractor", "feature_dim": self.feature_dim}
        spec = MODES[self.mode]
        art = _ARTIFACTS[self.mode]
        return {"mode": self.mode, "resize": spec["resize"], "network": spec["network"], "weights": art.name,
                "weights_source": art.source, "distance": "clean-fid frechet_distance (float64)"}  # fmt: skip

    def protocol(self) -> dict[str, Any]:
        """{result key: description}, as every metric reports its protocol."""
        parts = self.protocol_parts()
        key = result_key(self.key_base, self.mode, self.custom_extractor)
        return {key: "; ".join(f"{k}: {v}" for k, v in parts.items())}


@register_metric("rfid", packages=("clean-fid", "scipy"))
class ReconstructionFID(_InceptionMetric):
    """FID between the originals and their reconstructions (lower is better).

    `reference_stats`: a .npz holding the originals' statistics under this protocol. If it exists,
    it is used instead of the originals (which then need no Inception pass); if not, it is written at
    `compute` from the originals seen. Its image count must equal the reconstructions'.
    """

    name = "rfid"
    key_base = "rfid"

    def __init__(self, reference_stats: str | os.PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reference_stats = Path(reference_stats).expanduser() if reference_stats else None
        self._reference = None
        if self.reference_stats is not None and self.reference_stats.is_file():
            self._reference = load_reference_npz(self.reference_stats)
            self._check_mode(self._reference)
        _FeatureMoments.add(self, "real", self.feature_dim)
        _FeatureMoments.add(self, "fake", self.feature_dim)

    def _check_mode(self, ref: dict[str, Any]) -> None:
        mode = "custom" if self.custom_extractor else self.mode
        if ref["mode"] is not None and ref["mode"] != mode:
            raise TokbenchError(
                f"reference statistics {self.reference_stats} were computed with FID mode {ref['mode']!r}, "
                f"this metric uses {mode!r}; delete the file or point reference_stats elsewhere"
            )

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        if batch.reconstructions is None:
            raise TokbenchError("rfid needs reconstructions, and this tokenizer gave none")
        if self._reference is None:
            _FeatureMoments.update(self, "real", self.features(batch.originals))
        _FeatureMoments.update(self, "fake", self.features(batch.reconstructions))

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        mu2, sigma2 = moments(self.fake_sum, self.fake_outer, self.fake_n)
        if self._reference is not None:
            mu1, sigma1, n1 = self._reference["mu"], self._reference["sigma"], self._reference["n"]
            if n1 is not None and n1 != int(self.fake_n):
                raise TokbenchError(
                    f"reference statistics {self.reference_stats} describe {n1} originals but "
                    f"{int(self.fake_n)} reconstructions were scored; rFID compares the same images. "
                    "Delete the file (it is rewritten) or use another reference_stats path"
                )
        else:
            mu1, sigma1 = moments(self.real_sum, self.real_outer, self.real_n)
            n1 = int(self.real_n)
            if self.reference_stats is not None:
                save_reference_npz(self.reference_stats, mu1, sigma1, n1, "custom" if self.custom_extractor else self.mode)
        key = result_key("rfid", self.mode, self.custom_extractor)
        return {key: frechet_distance(mu1, sigma1, mu2, sigma2), f"{key}_images": float(self.fake_n)}

    def protocol_parts(self) -> dict[str, Any]:
        out = super().protocol_parts()
        if self.reference_stats is not None:
            out["reference_stats"] = str(self.reference_stats)
        return out


@register_metric("fid", packages=("clean-fid", "scipy"))
class ReferenceFID(_InceptionMetric):
    """FID of the reconstructions (or generated images) against a precomputed reference .npz.

    `reference_npz` holds `mu` (2048,) and `sigma` (2048, 2048), as ADM's reference batches
    (VIRTUAL_imagenet256_labeled.npz) and LlamaGen publish them. Those come from ADM's TensorFlow
    evaluator, so the default mode here is `torch-fidelity`, the protocol that matches them.
    """

    name = "fid"

    def __init__(self, reference_npz: str | os.PathLike | None = None, mode: str = "torch-fidelity", **kwargs: Any):
        if not reference_npz:
            raise TokbenchError("fid needs `reference_npz: PATH` (an .npz with mu and sigma); for rFID use `rfid`")
        super().__init__(mode=mode, **kwargs)
        self.reference_npz = Path(reference_npz).expanduser()
        self._reference = load_reference_npz(self.reference_npz)
        if self._reference["mu"].shape[0] != self.feature_dim:
            raise TokbenchError(
                f"{self.reference_npz} holds {self._reference['mu'].shape[0]}-D statistics, "
                f"the features are {self.feature_dim}-D"
            )
        _FeatureMoments.add(self, "fake", self.feature_dim)

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        images = batch.reconstructions if batch.reconstructions is not None else batch.extra.get("generated")
        if images is None:
            raise TokbenchError("fid needs reconstructions (or generated images), and this batch has none")
        _FeatureMoments.update(self, "fake", self.features(images))

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        mu, sigma = moments(self.fake_sum, self.fake_outer, self.fake_n)
        value = frechet_distance(mu, sigma, self._reference["mu"], self._reference["sigma"])
        key = result_key("fid", self.mode, self.custom_extractor)
        return {key: value, f"{key}_images": float(self.fake_n)}

    def protocol_parts(self) -> dict[str, Any]:
        out = super().protocol_parts()
        out["reference_npz"] = str(self.reference_npz)
        if self._reference.get("n"):
            out["reference_images"] = self._reference["n"]
        return out


__all__ = [
    "INCEPTION_CLEANFID", "INCEPTION_PYTORCH_FID", "INCEPTION_TORCH_FIDELITY", "MODES", "CleanFIDInception",
    "PytorchFIDInception", "ReconstructionFID",
    "ReferenceFID", "TorchFidelityInception", "frechet_distance", "inception_extractor", "moments",
    "resize_clean", "resize_tf1_bilinear",
]  # fmt: skip

