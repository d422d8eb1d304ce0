"""Streaming rFID / FID against clean-fid and torchmetrics, and both Inception protocols' pipelines.

The Inception weights are random stand-ins placed where the resolver looks; the references are
clean-fid's own code (resizer, TorchScript wrapper, pytorch-fid Inception, frechet_distance) and
torchmetrics' FrechetInceptionDistance.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
from cleanfid.fid import fid_from_feats
from cleanfid.fid import frechet_distance as cleanfid_frechet

from tokbench.core import TokbenchError, Tokens
from tokbench.metrics import EvalBatch, build_metric
from tokbench.metrics.fid import (
    INCEPTION_CLEANFID,
    INCEPTION_TORCH_FIDELITY,
    ReconstructionFID,
    ReferenceFID,
    build_fid_inception,
    inception_extractor,
    quantise_255,
    resize_clean,
    resize_tf1_bilinear,
)
from tokbench.weights import WeightsUnavailable

DIM = 24


class RandomFeatures(nn.Module):
    """A small random 'Inception': (B, 3, H, W) [0, 1] -> (B, DIM) float64 features."""

    num_features = DIM

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Parameter(torch.randn(3 * 16, DIM, generator=g, dtype=torch.float64), requires_grad=False)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(x.double(), 4).flatten(1)
        return torch.relu(x @ self.proj) + 0.1 * x[:, :DIM].sin()


def _batches(n_batches=6, b=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    for i in range(n_batches):
        orig = torch.rand(b, 3, 16, 16, generator=g)
        recon = (orig + 0.15 * torch.randn(orig.shape, generator=g)).clamp(0, 1)
        yield EvalBatch(originals=orig, reconstructions=recon, tokens=Tokens(ids=torch.zeros(b, 1, dtype=torch.long)),
                        tokenizer=None, index=torch.arange(i * b, (i + 1) * b))  # fmt: skip


def test_streaming_rfid_equals_cleanfid_and_torchmetrics(tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid

    ext = RandomFeatures()
    metric = ReconstructionFID(feature_extractor=ext, feature_dim=DIM)
    tm = FrechetInceptionDistance(feature=RandomFeatures(), normalize=True)
    real, fake = [], []
    for batch in _batches():
        metric.update(batch)
        tm.update(batch.originals, real=True)
        tm.update(batch.reconstructions, real=False)
        real.append(ext(batch.originals).numpy())
        fake.append(ext(batch.reconstructions).numpy())
    ours = metric.compute()["rfid"]
    real, fake = np.concatenate(real), np.concatenate(fake)
    ref = fid_from_feats(real, fake)  # clean-fid: np.mean / np.cov, then frechet_distance
    assert ours == pytest.approx(ref, rel=1e-6) and ref > 1e-3
    assert ours == pytest.approx(float(tm.compute()), rel=1e-6)
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    tm_direct = _compute_fid(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2)))
    assert ours == pytest.approx(float(tm_direct), rel=1e-6)
    assert metric.compute()["rfid_images"] == len(fake)
    # the state is sums (a 24x24 matrix per set), not the 240 images
    assert metric.real_outer.shape == (DIM, DIM) and metric.real_outer.dtype == torch.float64


def test_reference_stats_are_written_then_reused(tmp_path):
    stats = tmp_path / "stats" / "val.npz"
    first = ReconstructionFID(feature_extractor=RandomFeatures(), feature_dim=DIM, reference_stats=stats)
    for batch in _batches():
        first.update(batch)
    value = first.compute()["rfid"]
    z = np.load(stats)
    assert z["mu"].shape == (DIM,) and z["sigma"].shape == (DIM, DIM) and int(z["n"]) == 240
    assert str(z["mode"]) == "custom"

    seen = []

    class Counting(RandomFeatures):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    second = ReconstructionFID(feature_extractor=Counting(), feature_dim=DIM, reference_stats=stats)
    for batch in _batches():
        second.update(batch)
    assert second.compute()["rfid"] == pytest.approx(value, rel=1e-9)
    assert sum(seen) == 240  # only the reconstructions went through the network
    assert second.protocol_parts()["reference_stats"] == str(stats)

    fewer = ReconstructionFID(feature_extractor=RandomFeatures(), feature_dim=DIM, reference_stats=stats)
    for batch in list(_batches())[:3]:
        fewer.update(batch)
    with pytest.raises(TokbenchError, match="describe 240 originals but 120 reconstructions"):
        fewer.compute()


def test_reference_stats_from_another_protocol_are_refused(tmp_path, monkeypatch):
    stats = tmp_path / "val.npz"
    np.savez(stats, mu=np.zeros(DIM), sigma=np.eye(DIM), n=np.int64(10), mode=np.str_("torch-fidelity"))
    with pytest.raises(TokbenchError, match="computed with FID mode 'torch-fidelity', this metric uses 'custom'"):
        ReconstructionFID(feature_extractor=RandomFeatures(), feature_dim=DIM, reference_stats=stats)


def test_fid_against_a_published_reference_npz(tmp_path):
    ref_feats = np.random.default_rng(0).normal(size=(500, DIM)) + 0.3
    mu, sigma = ref_feats.mean(0), np.cov(ref_feats, rowvar=False)
    np.savez(tmp_path / "VIRTUAL_ref.npz", mu=mu, sigma=sigma, arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    ext = RandomFeatures()
    metric = build_metric("fid", reference_npz=str(tmp_path / "VIRTUAL_ref.npz"), feature_extractor=ext,
                          feature_dim=DIM)  # fmt: skip
    fake = []
    for batch in _batches():
        metric.update(batch)
        fake.append(ext(batch.reconstructions).numpy())
    fake = np.concatenate(fake)
    expected = cleanfid_frechet(fake.mean(0), np.cov(fake, rowvar=False), mu, sigma)
    assert metric.compute()["fid"] == pytest.approx(expected, rel=1e-6)
    assert metric.protocol_parts()["reference_npz"].endswith("VIRTUAL_ref.npz")
    with pytest.raises(TokbenchError, match="needs `reference_npz"):
        ReferenceFID(feature_extractor=ext, feature_dim=DIM)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(TokbenchError, match="no 'mu' and 'sigma'"):
        ReferenceFID(reference_npz=tmp_path / "bad.npz", feature_extractor=ext, feature_dim=DIM)


def test_tf1_bilinear_resize_matches_the_tensorflow_rule():
    """TF 1.x resize_bilinear(align_corners=False): source = dest * in/out, clamped, no half-pixel."""
    x = torch.rand(1, 2, 7, 10, dtype=torch.float64)
    out = resize_tf1_bilinear(x, size=13)
    expected = np.zeros((1, 2, 13, 13))
    a = x.numpy()
    for i in range(13):
        sy = i * 7 / 13
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, 6), sy - y0
        for j in range(13):
            sx = j * 10 / 13
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, 9), sx - x0
            top = a[..., y0, x0] * (1 - fx) + a[..., y0, x1] * fx
            bottom = a[..., y1, x0] * (1 - fx) + a[..., y1, x1] * fx
            expected[..., i, j] = top * (1 - fy) + bottom * fy
    assert np.allclose(out.numpy(), expected, atol=1e-12)
    # halving picks every other sample exactly, unlike PyTorch's half-pixel interpolate
    y = torch.rand(1, 3, 26, 26, dtype=torch.float64)
    assert torch.equal(resize_tf1_bilinear(y, 13), y[..., ::2, ::2])
    assert not torch.allclose(nn.functional.interpolate(y, size=13, mode="bilinear"), y[..., ::2, ::2])


def test_clean_resize_is_cleanfids_resizer_on_the_uint8_image():
    from cleanfid.resize import build_resizer

    u8 = np.random.default_rng(1).integers(0, 256, size=(2, 37, 53, 3), dtype=np.uint8)
    images = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    x255 = quantise_255(images)
    assert torch.equal(x255, torch.from_numpy(u8).permute(0, 3, 1, 2).float())  # k/255 -> k exactly
    ours = resize_clean(x255).numpy()
    resize = build_resizer("clean")
    for k in range(2):
        assert np.array_equal(ours[k], resize(u8[k]).transpose(2, 0, 1))


class FakeInceptionTS(nn.Module):
    """The shape of NVIDIA's TorchScript Inception: a `layers` trunk giving 2048 values per image."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 2048))

    def forward(self, x, return_features: bool = False):
        return self.layers((x - 128) / 128)


def test_clean_mode_pipeline_equals_cleanfid(tmp_path, monkeypatch):
    from cleanfid.inception_torchscript import InceptionV3W
    from cleanfid.resize import build_resizer

    torch.manual_seed(0)
    folder = tmp_path / "w" / INCEPTION_CLEANFID.name
    folder.mkdir(parents=True)
    torch.jit.script(FakeInceptionTS()).save(str(folder / "inception-2015-12-05.pt"))
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "w"))
    ours = inception_extractor("clean")

    u8 = np.random.default_rng(2).integers(0, 256, size=(3, 40, 32, 3), dtype=np.uint8)
    images = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    # clean-fid: uint8 image -> its "clean" resizer -> its TorchScript wrapper
    resize = build_resizer("clean")
    batch = torch.stack([torch.from_numpy(resize(im).transpose(2, 0, 1)) for im in u8])
    ref = InceptionV3W(str(folder), download=False)(batch)
    assert torch.allclose(ours(images), ref, rtol=1e-6, atol=1e-6)


def test_torch_fidelity_inception_loads_the_converted_layout_and_matches_pytorch_fid(tmp_path, monkeypatch):
    import cleanfid.inception_pytorch as pf

    torch.manual_seed(0)
    net = build_fid_inception()
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue  # converted TensorFlow weights have none
        if k.endswith("running_var"):
            v = torch.rand_like(v) + 0.5
        elif k.endswith("running_mean"):
            v = 0.1 * torch.randn_like(v)
        sd[k] = v.clone()
    folder = tmp_path / "w" / INCEPTION_TORCH_FIDELITY.name
    folder.mkdir(parents=True)
    torch.save(sd, folder / INCEPTION_TORCH_FIDELITY.basename)
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "w"))
    ours = inception_extractor("adm")  # alias of torch-fidelity
    monkeypatch.setattr(ours, "input_size", 75)  # the smallest side Inception takes: keeps the test fast

    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: dict(sd))
    ref_net = pf.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=False).eval()
    images = torch.rand(2, 3, 48, 64)
    x = (resize_tf1_bilinear(quantise_255(images), 75) - 128) / 128
    with torch.no_grad():
        ref = ref_net(x)[0].flatten(1)
        got = ours(images)
    assert got.shape == (2, 2048) and ref.abs().max() > 1e-3
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max())


def test_missing_inception_weights_explain_how_to_fetch():
    with pytest.raises(WeightsUnavailable) as e:
        build_metric("rfid")
    msg = str(e.value)
    assert "inception-cleanfid" in msg and "tokbench fetch inception-cleanfid" in msg
    assert INCEPTION_CLEANFID.url in msg
    with pytest.raises(TokbenchError, match="unknown FID mode 'legacy'"):
        ReconstructionFID(mode="legacy")


def test_protocol_names_mode_and_weights():
    m = ReconstructionFID(feature_extractor=RandomFeatures(), feature_dim=DIM)
    assert m.protocol_parts()["mode"] == "custom feature extractor"
    m.custom_extractor = False  # what a default build would say
    p = m.protocol_parts()
    assert p["mode"] == "clean" and p["weights"] == "inception-cleanfid" and "bicubic" in p["resize"]


def test_saved_state_holds_statistics_only_and_resumes(tmp_path):
    """What the runner does: persistent states saved mid-run, loaded into a fresh metric, continued."""
    batches = list(_batches())
    full = ReconstructionFID(feature_extractor=RandomFeatures(), feature_dim=DIM)
    first = ReconstructionFID(feature_extractor=RandomFeatures(), feature_dim=DIM)
    first.persistent(True)
    with torch.inference_mode():
        for b in batches:
            full.update(b)
        for b in batches[:3]:
            first.update(b)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    sd = torch.load(tmp_path / "state.pt", weights_only=True)
    assert set(sd) == {f"{p}_{s}" for p in ("real", "fake") for s in ("sum", "outer", "n")}
    resumed = ReconstructionFID(feature_extractor=RandomFeatures(), feature_dim=DIM)
    resumed.persistent(True)
    resumed.load_state_dict(sd)
    with torch.inference_mode():
        for b in batches[3:]:
            resumed.update(b)
    assert resumed.compute()["rfid"] == pytest.approx(full.compute()["rfid"], rel=1e-9)


def test_pytorch_fid_mode_is_pytorch_fid_pipeline(tmp_path, monkeypatch):
    """TokenFlow's protocol: PNG uint8 -> [0, 1] -> torch bilinear 299 -> 2x - 1 -> pytorch-fid net."""
    import cleanfid.inception_pytorch as pf

    from tokbench.metrics.fid import INCEPTION_PYTORCH_FID

    torch.manual_seed(0)
    sd = {k: (torch.rand_like(v) + 0.5 if k.endswith("running_var") else v.clone())
          for k, v in build_fid_inception().state_dict().items() if not k.endswith("num_batches_tracked")}
    folder = tmp_path / "w" / INCEPTION_PYTORCH_FID.name
    folder.mkdir(parents=True)
    torch.save(sd, folder / INCEPTION_PYTORCH_FID.basename)
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "w"))
    ours = inception_extractor("pytorch-fid")
    monkeypatch.setattr(ours, "input_size", 75)
    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: dict(sd))
    ref_net = pf.InceptionV3(output_blocks=[3], resize_input=False, normalize_input=True).eval()
    u8 = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    images = u8.float() / 255
    with torch.no_grad():
        ref = ref_net(nn.functional.interpolate(images, size=(75, 75), mode="bilinear", align_corners=False))[0]
        got = ours(images)
    assert torch.allclose(got, ref.flatten(1), rtol=1e-4, atol=1e-5 * ref.abs().max())
    tf = inception_extractor("torch-fidelity", weights=folder / INCEPTION_PYTORCH_FID.basename)
    monkeypatch.setattr(tf, "input_size", 75)
    with torch.no_grad():
        assert not torch.allclose(tf(images), got, rtol=1e-2, atol=0)  # the resize and scaling change features


def test_result_keys_name_the_protocol():
    from tokbench.metrics.fid import result_key

    assert result_key("rfid", "clean") == "rfid"
    assert result_key("rfid", "torch-fidelity") == "rfid_torch_fidelity"
    assert result_key("fid", "pytorch-fid") == "fid_pytorch_fid"
    m = ReconstructionFID(feature_extractor=RandomFeatures(), feature_dim=DIM)
    (key, text), = m.protocol().items()
    assert key == "rfid" and "custom feature extractor" in text
