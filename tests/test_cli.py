"""The command line: list, info, fetch --to for an air-gapped machine, and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub
import torch

import tokbench
from tokbench.cli import main as cli

LLAMAGEN_FIXTURE = Path(__file__).parent / "data" / "llamagen_vq16"


def test_list_and_info(capsys):
    assert cli(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("jpeg-q75", "llamagen-vq16-c2i", "janus-pro-1b-vq", "chameleon-vqgan-anole",
                 "tokenflow-clipb-32k-enhanced", "one-d-piece-l-256", "siglip-large-patch16-384"):
        assert name in out
    assert "not downloaded" in out and "inception-cleanfid" in out and "psnr" in out
    assert cli(["list", "titok-*"]) == 0
    out = capsys.readouterr().out
    assert "titok-l32" in out and "jpeg-q75" not in out
    assert cli(["info", "llamagen-vq16-c2i"]) == 0
    out = capsys.readouterr().out
    assert "FoundationVision/LlamaGen" in out and "vq_ds16_c2i.pt" in out
    assert "build options: dtype, resolution; encode options: none" in out
    assert cli(["info", "qlip-b-16-256"]) == 0  # a non-commercial licence is said where a user looks
    out = capsys.readouterr().out
    assert '"licence": "CC-BY-NC-4.0' in out and "NON-COMMERCIAL" in out
    for name in ("showo-magvitv2", "emu35-vq", "qlip-b-16-256", "infinity-bsq-d32", "vila-u-7b-256", "mingtok-vision"):
        assert cli(["info", name]) == 0, name
    assert "encode options: n_scales" in capsys.readouterr().out


def test_fetch_to_dir_then_list_and_load_offline(tmp_path, monkeypatch, capsys):
    """fetch on a connected machine (a fake hub here), copy the folder, run offline against it."""
    calls = []

    def fake_download(repo_id, filename, revision=None, local_dir=None, **kw):
        calls.append((repo_id, filename))
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LLAMAGEN_FIXTURE / "vq_ds16_c2i.pt", dest)
        return str(dest)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    bundle = tmp_path / "bundle"
    assert cli(["fetch", "llamagen-vq16-c2i", "--to", str(bundle)]) == 0
    assert calls == [("FoundationVision/LlamaGen", "vq_ds16_c2i.pt")]
    assert "export TOKBENCH_WEIGHTS=" in capsys.readouterr().out

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(bundle))
    assert cli(["list", "llamagen-vq16-c2i"]) == 0
    assert "present" in capsys.readouterr().out
    # the fixture's sizes are not the release's: the variant's config must be overridden to load it
    tok = tokbench.load_tokenizer("llamagen-vq16-c2i", config=LLAMAGEN_FIXTURE / "config.json")
    ids = tok.encode(torch.rand(1, 3, 96, 96)).ids
    assert ids.shape == (1, 36)


def test_errors_are_one_line_not_tracebacks(capsys):
    assert cli(["fetch", "no-such-thing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokbench: error: unknown weights artifact 'no-such-thing'")
    assert cli(["run", "/nonexistent/suite.yaml"]) == 2
    assert "suite file '/nonexistent/suite.yaml' does not exist" in capsys.readouterr().err
    assert cli(["info", "nope-tokenizer"]) == 2
    assert "tokbench list" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    """`python -m tokbench` (what `torchrun -m tokbench` calls) is the console script: same output and exit codes."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tokbench", "list", "jpeg-*"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "jpeg-q75" in done.stdout and "titok-l32" not in done.stdout
    bad = subprocess.run([sys.executable, "-m", "tokbench", "info", "no-such-tokenizer"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "unknown tokenizer" in bad.stderr and "Traceback" not in bad.stderr
