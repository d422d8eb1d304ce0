"""LPIPS (Zhang et al. 2018) with the `lpips` package, per image, averaged over the data set.

The package ships its calibrated linear layers (v0.1); the backbones are torchvision's released
ImageNet weights, found through tokbench's resolver (never downloaded behind the user's back by
torchvision) and loaded strictly into the package's network. Inputs [0, 1] are mapped to [-1, 1],
as `lpips.LPIPS(..., normalize=True)` does. `net: alex` (default: the package authors' recommendation
for an evaluation metric, and torchmetrics' default) or `net: vgg` (what some tokenizer papers report).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..checkpoint import load_strict, read_state_dict
from ..core import TokbenchError
from ..weights import Artifact, register_artifact, resolve
from .base import BenchMetric, EvalBatch, register_metric

# torchvision's IMAGENET1K_V1 weights, the ones `lpips` asks torchvision for (`pretrained=True`).
BACKBONES: dict[str, Artifact] = {
    "alex": register_artifact(
        Artifact(
            name="torchvision-alexnet",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            sha256="7be5be79",
            size=244_408_911,
            licence="BSD-3-Clause (torchvision)",
            used_by="lpips (net alex)",
        )
    ),
    "vgg": register_artifact(
        Artifact(
            name="torchvision-vgg16",
            url="https://download.pytorch.org/models/vgg16-397923af.pth",
            sha256="397923af",
            size=553_433_881,
            licence="BSD-3-Clause (torchvision)",
            used_by="lpips (net vgg)",
        )
    ),
}
_NET_ALIASES = {"alexnet": "alex", "vgg16": "vgg"}
LPIPS_VERSION = "0.1"


def canonical_net(net: str) -> str:
    net = _NET_ALIASES.get(net, net)
    if net not in BACKBONES:
        raise TokbenchError(f"unknown LPIPS net {net!r}; choose 'alex' or 'vgg'")
    return net


def linear_layers_path(net: str, version: str = LPIPS_VERSION) -> Path:
    """The calibrated linear layers that the `lpips` package ships for `net`."""
    import lpips

    return Path(lpips.__file__).parent / "weights" / f"v{version}" / f"{net}.pth"


def lpips_state_dict(model: nn.Module, backbone: dict[str, torch.Tensor], linear: dict[str, torch.Tensor]) -> dict:
    """The full `lpips.LPIPS` state dict from torchvision's backbone keys and the package's linear layers.

    `lpips` slices torchvision's `features` Sequential into `net.slice1..5`, keeping each layer's
    index as its child name: `features.3.weight` lives at `net.slice2.3.weight`.
    """
    to_lpips: dict[str, str] = {}
    for key in model.net.state_dict():
        _, index_and_param = key.split(".", 1)  # "slice2.3.weight" -> "3.weight"
        to_lpips[f"features.{index_and_param}"] = f"net.{key}"
    sd = {to_lpips.get(k, k): v for k, v in backbone.items()}
    for k, v in linear.items():  # the package registers each linear layer twice: lin{i} and lins.{i}
        sd[k] = v
        if k.startswith("lin") and k[3].isdigit():
            sd[f"lins.{k[3:]}"] = v
    from lpips.lpips import ScalingLayer

    for k, v in ScalingLayer().state_dict().items():  # constants defined by the code, not a checkpoint
        sd[f"scaling_layer.{k}"] = v
    return sd


_MODELS: dict[tuple[str, str], nn.Module] = {}


def build_lpips(net: str = "alex", weights: str | os.PathLike | None = None) -> nn.Module:
    """An `lpips.LPIPS` module with torchvision's backbone (via the resolver) and the package's linear layers.

    Raises `WeightsUnavailable` when the backbone is not on this machine and cannot be downloaded, and
    `CheckpointError` (listing keys) when the backbone file does not fit.
    """
    import lpips

    net = canonical_net(net)
    path = resolve(BACKBONES[net], weights)
    key = (net, str(path))
    if key not in _MODELS:
        # pretrained=False / pnet_rand=True: the architecture only, nothing downloaded or unpickled by
        # the package; built on the meta device (no random init of VGG's unused 124M-weight classifier).
        # Every tensor is then filled below by load_strict, which refuses any missing key.
        with torch.device("meta"):
            model = lpips.LPIPS(pretrained=False, net=net, version=LPIPS_VERSION, pnet_rand=True, verbose=False)
        model = model.to_empty(device="cpu")
        backbone = read_state_dict(path)
        linear = read_state_dict(linear_layers_path(net))
        sd = lpips_state_dict(model, backbone, linear)
        load_strict(model, sd, source=f"{path} + lpips v{LPIPS_VERSION} {net} linear layers",
                    ignore_unexpected=lambda k: k.startswith("classifier."))  # fmt: skip
        _MODELS[key] = model.eval().requires_grad_(False)
    return _MODELS[key]


@register_metric("lpips", packages=("lpips",))
class LPIPS(BenchMetric):
    """LPIPS distance of each reconstruction to its original (lower is better); mean and std."""

    name = "lpips"
    needs_decode = True
    higher_is_better = False

    def __init__(
        self,
        net: str = "alex",
        weights: str | os.PathLike | None = None,
        model: nn.Module | None = None,
        label: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.net = canonical_net(net)
        self.label = label or "lpips"
        self.name = self.label
        # Kept out of the module tree so that saved metric states hold sums, not network weights.
        self._model = [model if model is not None else build_lpips(self.net, weights)]
        self.add_moment_states()

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        if batch.reconstructions is None:
            raise TokbenchError("lpips needs reconstructions, and this tokenizer gave none")
        model = self._model[0].to(batch.originals.device)
        x = batch.originals.float() * 2 - 1
        y = batch.reconstructions.float().clamp(0, 1) * 2 - 1
        with torch.no_grad():
            v = model(x, y).flatten().double()
        self.add_moments(v)
        self.last_rows = {self.label: v.cpu()}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        return self.moments(self.label)

    def protocol(self) -> dict[str, Any]:
        art = BACKBONES[self.net]
        return {
            self.label: f"lpips package v{LPIPS_VERSION}, net {self.net}, inputs [0,1] -> [-1,1], per-image mean",
            f"{self.label}_backbone": f"{art.name} ({art.url})",
        }


@register_metric("lpips_vgg", packages=("lpips",))
def lpips_vgg(**options: Any) -> LPIPS:
    """LPIPS with the VGG-16 backbone, reported as `lpips_vgg` (so a suite can list both nets)."""
    options.setdefault("label", "lpips_vgg")
    return LPIPS(net=options.pop("net", "vgg"), **options)
