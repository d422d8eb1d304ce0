"""LPIPS through the resolver equals the `lpips` package fed the same torchvision backbone weights."""

from types import SimpleNamespace

import lpips
import lpips.pretrained_networks as lpips_nets
import pytest
import torch
import torchvision

from tokbench.checkpoint import CheckpointError
from tokbench.core import Tokens
from tokbench.metrics import EvalBatch, build_metric
from tokbench.metrics.perceptual import BACKBONES, LPIPS, build_lpips
from tokbench.weights import WeightsUnavailable

TV_BUILDERS = {"alex": "alexnet", "vgg": "vgg16"}


def _torchvision_net(net: str, seed: int) -> SimpleNamespace:
    """torchvision's `features` of the net with random weights (its huge classifier never built)."""
    with torch.device("meta"):
        full = getattr(torchvision.models, TV_BUILDERS[net])(weights=None)
    features = full.features.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # He-scaled weights and non-zero biases, so a misplaced layer cannot hide
        for m in features:
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return SimpleNamespace(features=features)


def _place_backbone(tmp_path, monkeypatch, net: str, model: torch.nn.Module) -> None:
    """A torchvision-layout weight file (features.* plus one classifier key) where the resolver looks."""
    art = BACKBONES[net]
    sd = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    sd["classifier.6.bias"] = torch.zeros(1000)  # the release carries the classifier: ignored
    (tmp_path / "w" / art.name).mkdir(parents=True, exist_ok=True)
    torch.save(sd, tmp_path / "w" / art.name / art.basename)
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "w"))


def _reference(net: str, model: torch.nn.Module, monkeypatch) -> torch.nn.Module:
    """The package's own construction path: it asks torchvision for the pretrained net, here ours."""
    monkeypatch.setattr(lpips_nets.tv, TV_BUILDERS[net], lambda pretrained=True, **kw: model)
    return lpips.LPIPS(net=net, verbose=False).eval()


def _batch(x, y):
    return EvalBatch(originals=x, reconstructions=y, tokens=Tokens(ids=torch.zeros(len(x), 1, dtype=torch.long)),
                     tokenizer=None, index=torch.arange(len(x)))  # fmt: skip


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_lpips_package(tmp_path, monkeypatch, net):
    tv_model = _torchvision_net(net, seed=3)
    _place_backbone(tmp_path, monkeypatch, net, tv_model)
    metric = build_metric("lpips", net=net)
    ref = _reference(net, tv_model, monkeypatch)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 48, 48, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    x2, y2 = torch.rand(2, 3, 48, 48, generator=g), torch.rand(2, 3, 48, 48, generator=g)
    with torch.no_grad():
        expected = torch.cat([ref(x, y, normalize=True).flatten(), ref(x2, y2, normalize=True).flatten()]).double()
    metric.update(_batch(x, y))
    rows = metric.last_rows["lpips"]
    metric.update(_batch(x2, y2))
    rows = torch.cat([rows, metric.last_rows["lpips"]])
    assert torch.allclose(rows, expected, rtol=1e-5, atol=1e-7) and expected.min() > 0
    out = metric.compute()
    assert out["lpips"] == pytest.approx(float(expected.mean()), rel=1e-5)
    assert out["lpips_std"] == pytest.approx(float(expected.std(unbiased=False)), rel=1e-4)
    proto = metric.protocol()
    assert f"net {net}" in proto["lpips"] and BACKBONES[net].url in proto["lpips_backbone"]


def test_lpips_vgg_metric_name_reports_its_own_key(tmp_path, monkeypatch):
    tv_model = _torchvision_net("vgg", seed=1)
    _place_backbone(tmp_path, monkeypatch, "vgg", tv_model)
    metric = build_metric("lpips_vgg")
    x = torch.rand(2, 3, 32, 32)
    metric.update(_batch(x, x.flip(-1)))
    assert set(metric.compute()) == {"lpips_vgg", "lpips_vgg_std"} and metric.net == "vgg"


def test_missing_backbone_offline_says_how_to_fetch():
    with pytest.raises(WeightsUnavailable) as e:
        LPIPS(net="alex")
    msg = str(e.value)
    assert "tokbench fetch torchvision-alexnet" in msg and "alexnet-owt-7be5be79.pth" in msg


def test_wrong_backbone_file_lists_the_keys(tmp_path, monkeypatch):
    # a VGG file where the AlexNet weights should be: refused, with the keys named
    vgg = _torchvision_net("vgg", seed=0)
    art = BACKBONES["alex"]
    (tmp_path / "w" / art.name).mkdir(parents=True)
    torch.save({f"features.{k}": v for k, v in vgg.features.state_dict().items()},
               tmp_path / "w" / art.name / art.basename)  # fmt: skip
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(CheckpointError) as e:
        build_lpips("alex")
    msg = str(e.value)
    assert "does not match the model LPIPS" in msg and "wrong shapes: net.slice1.0.weight" in msg
