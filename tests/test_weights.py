"""The weight resolver (order, offline message, fetch --to, shards) and safe, strict checkpoint loading.

conftest.py makes every test offline with empty HF / torch hub caches and no TOKBENCH_WEIGHTS.
"""

import hashlib
import json
import os
import pickle
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from tokbench import catalogue, weights
from tokbench.checkpoint import CheckpointError, UnsafeCheckpoint, load_strict, read_state_dict
from tokbench.core import TokbenchError
from tokbench.weights import Artifact, WeightsUnavailable, fetch, resolve

HF_ART = Artifact(name="toy-vq", repo_id="someorg/toy-vq", filename="vq/model.safetensors", licence="MIT")
URL_ART = Artifact(name="toy-url", url="https://example.org/models/toy-abcdef12.pth", sha256=None)


def _write(path: Path, value: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.full((2,), value)}, str(path))
    return path


def _fake_hf_cache(repo_id: str, filename: str, value: float, revision: str = "main") -> Path:
    """A file laid out as huggingface_hub caches it, under $HF_HUB_CACHE."""
    root = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)
    return _write(root / "snapshots" / commit / filename, value)


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: serves files from a dict, records calls."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.calls = files, []

    def __call__(self, repo_id, filename, revision=None, local_dir=None, cache_dir=None, **kw):
        self.calls.append(filename)
        if filename not in self.files:
            raise huggingface_hub.errors.EntryNotFoundError(f"404 {filename}")
        base = Path(local_dir) if local_dir else Path(cache_dir or os.environ["HF_HUB_CACHE"]) / "dl"
        dest = base / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.files[filename])
        return str(dest)


def _value(path: Path) -> float:
    return float(read_state_dict(path)["w"][0])


def test_resolution_order(tmp_path, monkeypatch):
    explicit = _write(tmp_path / "mine.safetensors", 1.0)
    root = tmp_path / "weights"
    _write(root / HF_ART.name / "model.safetensors", 2.0)
    _fake_hf_cache(HF_ART.repo_id, HF_ART.filename, 3.0)
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(root))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub = FakeHub({HF_ART.filename: (tmp_path / "mine.safetensors").read_bytes()})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)

    assert resolve(HF_ART, explicit) == explicit  # 1. explicit path
    assert _value(resolve(HF_ART)) == 2.0  # 2. TOKBENCH_WEIGHTS/<name>/<file>
    monkeypatch.delenv("TOKBENCH_WEIGHTS")
    assert _value(resolve(HF_ART)) == 3.0  # 3. the HF cache (HF_HUB_CACHE read at call time)
    assert hub.calls == []
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert _value(resolve(HF_ART)) == 1.0  # 4. a download
    assert hub.calls == [HF_ART.filename]


def test_explicit_folder_and_bad_explicit_path(tmp_path):
    _write(tmp_path / "model.safetensors", 5.0)
    assert resolve(HF_ART, tmp_path) == tmp_path / "model.safetensors"
    with pytest.raises(WeightsUnavailable, match="is not a file"):
        resolve(HF_ART, tmp_path / "nope.safetensors")


def test_torch_hub_cache_for_url_artifacts(tmp_path):
    hit = _write(Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "toy-abcdef12.pth", 4.0)
    assert resolve(URL_ART) == hit


def test_offline_error_names_artifact_source_command_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(WeightsUnavailable) as e:
        resolve(HF_ART)
    msg = str(e.value)
    assert "'toy-vq'" in msg and "HF_HUB_OFFLINE" in msg
    assert "https://huggingface.co/someorg/toy-vq (file vq/model.safetensors)" in msg
    assert "tokbench fetch toy-vq" in msg
    assert str(tmp_path / "w" / "toy-vq" / "model.safetensors") in msg
    monkeypatch.delenv("TOKBENCH_WEIGHTS")
    msg = str(pytest.raises(WeightsUnavailable, resolve, URL_ART).value)
    assert URL_ART.url in msg and "$TOKBENCH_WEIGHTS/toy-url/toy-abcdef12.pth and set TOKBENCH_WEIGHTS" in msg


def test_gated_and_failed_downloads_become_one_clear_error(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")

    class GatedRepoError(Exception):
        pass

    def gated(*a, **k):
        raise GatedRepoError("401 Client Error: access to model someorg/toy-vq is restricted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    art = Artifact(name="toy-gated", repo_id="someorg/toy-vq", filename="m.safetensors", gated=True)
    msg = str(pytest.raises(WeightsUnavailable, resolve, art).value)
    assert "access denied" in msg and "accept its licence" in msg and "hf auth login" in msg

    def broken(*a, **k):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", broken)
    err = pytest.raises(WeightsUnavailable, resolve, HF_ART).value
    assert err.__suppress_context__  # no traceback from inside the library
    msg = str(err)
    assert "download failed (ConnectionError: Name or service not known)" in msg and "tokbench fetch toy-vq" in msg


def test_fetch_to_dir_then_offline_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    payload = (_write(tmp_path / "src.safetensors", 7.0)).read_bytes()
    hub = FakeHub({HF_ART.filename: payload})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    paths = fetch(HF_ART, to=tmp_path / "bundle")
    assert paths == [tmp_path / "bundle" / "toy-vq" / "vq" / "model.safetensors"]
    # the air-gapped machine: offline, TOKBENCH_WEIGHTS pointing at the copied folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "bundle"))
    assert _value(resolve(HF_ART)) == 7.0 and weights.is_available(HF_ART)


def test_fetch_sharded_index_fetches_only_needed_shards(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    save_file({"vision.a": torch.ones(2), "vision.b": torch.full((1,), 2.0)}, str(tmp_path / "s1"))
    save_file({"language.c": torch.zeros(3)}, str(tmp_path / "s2"))
    index = {"weight_map": {"vision.a": "model-00001-of-00002.safetensors",
                            "vision.b": "model-00001-of-00002.safetensors",
                            "language.c": "model-00002-of-00002.safetensors"}}  # fmt: skip
    hub = FakeHub({
        "model.safetensors.index.json": json.dumps(index).encode(),
        "model-00001-of-00002.safetensors": (tmp_path / "s1").read_bytes(),
        "model-00002-of-00002.safetensors": (tmp_path / "s2").read_bytes(),
    })  # fmt: skip
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    art = Artifact(name="toy-vlm", repo_id="o/vlm", filename="model.safetensors.index.json", prefix="vision.")
    paths = fetch(art, to=tmp_path / "bundle")
    assert hub.calls == ["model.safetensors.index.json", "model-00001-of-00002.safetensors"]
    assert [p.name for p in paths] == ["model.safetensors.index.json", "model-00001-of-00002.safetensors"]
    sd = read_state_dict(paths[0], prefix="vision.")  # the unfetched shard is never needed
    assert set(sd) == {"a", "b"} and float(sd["b"]) == 2.0


def test_url_download_checks_sha256_prefix(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    blob = b"not really weights"
    digest = hashlib.sha256(blob).hexdigest()

    def download(url, dst, progress=True):
        Path(dst).write_bytes(blob)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    good = Artifact(name="toy-url", url="https://example.org/toy.pth", sha256=digest[:8])
    assert fetch(good, to=tmp_path)[0].read_bytes() == blob
    bad = Artifact(name="toy-bad", url="https://example.org/toy.pth", sha256="00000000")
    with pytest.raises(WeightsUnavailable, match="expected sha256 00000000"):
        fetch(bad, to=tmp_path)
    assert not any((tmp_path / "toy-bad").iterdir())  # neither the file nor a partial download stays


def test_metric_artifacts_are_registered_with_torchvision_urls():
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    arts = catalogue.artifacts()
    assert {"torchvision-alexnet", "torchvision-vgg16", "inception-cleanfid", "inception-torch-fidelity",
            "clip-vit-l-14-openai"} <= set(arts)  # fmt: skip
    # lpips asks torchvision for IMAGENET1K_V1; the hash prefix is the one in torchvision's file name
    for name, enum in (("torchvision-alexnet", AlexNet_Weights), ("torchvision-vgg16", VGG16_Weights)):
        art = catalogue.get_artifact(name)
        assert art.url == enum.IMAGENET1K_V1.url
        assert art.basename.rsplit("-", 1)[1].split(".")[0] == art.sha256
    with pytest.raises(TokbenchError, match="unknown weights artifact 'nope'.*torchvision-alexnet"):
        catalogue.get_artifact("nope")
    with pytest.raises(TokbenchError, match="two different files are registered under the artifact name"):
        weights.register_artifact(Artifact(name="torchvision-alexnet", url="https://elsewhere"))


def test_registering_the_same_file_twice_merges_its_users(monkeypatch):
    monkeypatch.setattr(weights, "_ARTIFACTS", {})
    a = weights.register_artifact(Artifact(name="toy", url="https://x/toy.pth", used_by="lpips"))
    b = weights.register_artifact(Artifact(name="toy", url="https://x/toy.pth", used_by="lpips, semantic"))
    assert b.used_by == "lpips, semantic" and b.url == a.url
    assert weights._ARTIFACTS["toy"] is b


# ---- checkpoints -------------------------------------------------------------------------------


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["torch-zip", "raw-pickle"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, fmt):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.zeros(2)}, "x": Evil(marker)}
    if fmt == "torch-zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafeCheckpoint) as e:
        read_state_dict(path)
    assert not marker.exists()
    msg = str(e.value)
    assert "refused to load" in msg and "safetensors" in msg and "weights_only=False" not in msg
    if fmt == "torch-zip":
        assert "posix.system" in msg  # names what the pickle wanted to call


def test_torchscript_archive_is_not_taken_for_a_state_dict(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "ts.pt"))
    with pytest.raises(CheckpointError, match="TorchScript archive, not a state dict"):
        read_state_dict(tmp_path / "ts.pt")


def test_read_state_dict_containers_prefix_and_legacy_format(tmp_path):
    torch.save({"epoch": 3, "ema": {"enc.w": torch.ones(1), "dec.w": torch.zeros(1)}}, tmp_path / "a.pt")
    assert set(read_state_dict(tmp_path / "a.pt", prefix="enc.")) == {"w"}
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert read_state_dict(tmp_path / "legacy.pt")["w"].tolist() == [1.0, 1.0]
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")


def test_mismatched_checkpoint_lists_keys():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    sd = dict(model.state_dict())
    del sd["1.bias"]
    sd["0.weight"] = torch.zeros(3, 5)
    sd["2.weight"] = torch.zeros(1)
    before = model[0].weight.clone()
    with pytest.raises(CheckpointError) as e:
        load_strict(model, sd, source="toy.safetensors")
    msg = str(e.value)
    assert "toy.safetensors does not match the model Sequential" in msg
    assert "missing keys: 1.bias" in msg and "unexpected keys: 2.weight" in msg
    assert "0.weight: checkpoint (3, 5) vs model (3, 4)" in msg
    assert torch.equal(model[0].weight, before)  # never a partial load
    load_strict(model, {k: v for k, v in model.state_dict().items()})  # an exact match loads


def test_get_artifact_also_finds_tokenizer_variant_weights(monkeypatch):
    from types import SimpleNamespace

    art = Artifact(name="toy-vq-weights", repo_id="o/toy", filename="vq.safetensors")
    variant = SimpleNamespace(name="toy-vq-256", weights=art)
    monkeypatch.setattr(catalogue, "variants", lambda pattern="*": [variant])
    monkeypatch.setattr(catalogue, "find", lambda name: (None, variant if name == "toy-vq-256" else None))
    assert catalogue.artifacts()["toy-vq-weights"] is art  # listed under its own name
    assert catalogue.get_artifact("toy-vq-weights") is art
    assert catalogue.get_artifact("toy-vq-256") is art  # or asked for by the variant's name


def test_read_under_prefix_finds_the_model_in_any_container(tmp_path):
    from tokbench.checkpoint import read_under_prefix

    tensors = {"gen_vision_model.quantize.embedding.weight": torch.ones(4, 2), "language_model.x": torch.zeros(3)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    torch.save({"state_dict": tensors}, tmp_path / "m.ckpt")
    for name in ("m.safetensors", "m.ckpt"):
        sd, prefix = read_under_prefix(tmp_path / name, ("", "gen_vision_model."), "quantize.embedding.weight",
                                       what="toy VQ")
        assert prefix == "gen_vision_model." and list(sd) == ["quantize.embedding.weight"]
    with pytest.raises(CheckpointError, match=r"holds no toy VQ: no key 'vqmodel.probe'.*language_model.x"):
        read_under_prefix(tmp_path / "m.ckpt", ("vqmodel.",), "probe", what="toy VQ")
