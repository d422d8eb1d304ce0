"""Weight-table fixes, with a fake Hugging Face hub (never the network): open_clip's `.bin` fallback,
`hf_hub` entries that name a file, the TokenFlow organisation and the Janus licences."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.errors import EntryNotFoundError

from tokbench.weights import Artifact, fetch, resolve


class FakeHub:
    """hf_hub_download over a dict {(repo, file): bytes}; anything else is 'not in this repository'."""

    def __init__(self, root: Path, files: dict[tuple[str, str], bytes]) -> None:
        self.root, self.files, self.calls = root, files, []

    def __call__(self, repo_id, filename, revision=None, local_dir=None, cache_dir=None, **kw):
        self.calls.append((repo_id, filename))
        if (repo_id, filename) not in self.files:
            raise EntryNotFoundError(f"404: {filename} not in {repo_id}")
        dest = Path(local_dir or self.root / "cache" / repo_id) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.files[(repo_id, filename)])
        return str(dest)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    fake = FakeHub(tmp_path, {})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    return fake


@pytest.mark.parametrize("entry, repo, first, then", [
    ("timm/ViT-B-16-SigLIP/", "timm/ViT-B-16-SigLIP", "open_clip_model.safetensors", ("open_clip_pytorch_model.bin",)),
    ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors",
     ("open_clip_pytorch_model.bin",)),
    ("jienengchen/ViTamin-S/pytorch_model.bin", "jienengchen/ViTamin-S", "pytorch_model.safetensors",
     ("pytorch_model.bin",)),
    ("org/model/weights.safetensors", "org/model", "weights.safetensors", ()),
])
def test_hf_hub_entries_split_into_repo_and_file_as_open_clip_reads_them(entry, repo, first, then):
    from tokbench.metrics.encoders import open_clip_hub_files

    assert open_clip_hub_files(entry) == (repo, first, then)


def test_a_named_file_in_hf_hub_is_fetched_from_its_repo(hub):
    from tokbench.metrics.encoders import open_clip_spec

    spec = open_clip_spec("ViTamin-S", "datacomp1b")  # open_clip: hf_hub='jienengchen/ViTamin-S/pytorch_model.bin'
    assert spec.weights.repo_id == "jienengchen/ViTamin-S"
    hub.files[("jienengchen/ViTamin-S", "pytorch_model.bin")] = b"bin weights"
    path = resolve(spec.weights)
    assert path.read_bytes() == b"bin weights"
    assert hub.calls == [("jienengchen/ViTamin-S", "pytorch_model.safetensors"), ("jienengchen/ViTamin-S",
                                                                                   "pytorch_model.bin")]


def test_open_clip_falls_back_to_the_bin_file_when_the_repo_has_no_safetensors(hub, tmp_path, monkeypatch):
    art = Artifact(name="openclip-test", repo_id="org/old-clip", filename="open_clip_model.safetensors",
                   fallbacks=("open_clip_pytorch_model.bin",))
    hub.files[("org/old-clip", "open_clip_pytorch_model.bin")] = b"old"
    (path,) = fetch(art, to=tmp_path / "bundle")
    assert path == tmp_path / "bundle" / "openclip-test" / "open_clip_pytorch_model.bin"
    # once there, it is found without the network (TOKBENCH_WEIGHTS layout), and safetensors still wins
    hub.calls.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "bundle"))
    assert resolve(art) == path and hub.calls == []
    (tmp_path / "bundle" / "openclip-test" / "open_clip_model.safetensors").write_bytes(b"new")
    assert resolve(art).name == "open_clip_model.safetensors"
    # a repo that has the safetensors file never gets asked for the .bin
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TOKBENCH_WEIGHTS")
    hub.files[("org/new-clip", "open_clip_model.safetensors")] = b"new"
    fetch(Artifact(name="n", repo_id="org/new-clip", filename="open_clip_model.safetensors",
                   fallbacks=("open_clip_pytorch_model.bin",)), to=tmp_path / "b2")
    assert hub.calls == [("org/new-clip", "open_clip_model.safetensors")]


def test_tokenflow_organisation_and_licences():
    from tokbench.registry import find

    for name in ("tokenflow-clipb-32k-enhanced", "tokenflow-siglip-32k"):
        w = find(name)[1].weights
        assert w.repo_id == "ByteVisionLab/TokenFlow" and w.licence.startswith("MIT")
    for name in ("janus-1.3b-vq", "janus-pro-1b-vq", "janus-pro-7b-vq", "janus-pro-1b-vq-hf", "janus-pro-7b-vq-hf"):
        assert find(name)[1].weights.licence == "DeepSeek Model License (weights; code MIT)", name


def test_fetch_verify_records_then_catches_a_replaced_or_truncated_file(hub, tmp_path, capsys):
    from tokbench.cli import main as cli

    hub.files[("FoundationVision/LlamaGen", "vq_ds16_c2i.pt")] = b"x" * 1000
    bundle = tmp_path / "bundle"
    assert cli(["fetch", "llamagen-vq16-c2i", "--to", str(bundle), "--verify"]) == 0
    record = __import__("json").loads((bundle / "SHA256SUMS.json").read_text())
    import hashlib

    assert record == {"llamagen-vq16-c2i/vq_ds16_c2i.pt": {"sha256": hashlib.sha256(b"x" * 1000).hexdigest(),
                                                           "size": 1000}}
    assert cli(["fetch", "llamagen-vq16-c2i", "--to", str(bundle), "--verify"]) == 0  # unchanged: verified
    assert capsys.readouterr().out.strip().endswith("1 fetched and verified, 0 failed")
    # the hub now serves a truncated file (an interrupted copy, a replaced upload): caught
    hub.files[("FoundationVision/LlamaGen", "vq_ds16_c2i.pt")] = b"x" * 10
    assert cli(["fetch", "llamagen-vq16-c2i", "--to", str(bundle), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "vq_ds16_c2i.pt changed since it was fetched" in err and "10 bytes, recorded" in err
