"""Janus text-to-image (`tokbench generate`): sampling equal to the official loop and to transformers'
`generate(top_k=0)`, the original checkpoint layout, decode check, GenEval layout, resume after kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tokbench.core import TokbenchError
from tokbench.generation import janus as J
from tokbench.generation.generate import run_generate
from tokbench.generation.prompts import CATEGORIES, load_prompts
from tokbench.weights import WeightsUnavailable

sys.path.insert(0, str(Path(__file__).parent))
import janus_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TORCH_THREADS = 1  # tiny models: threads only add overhead on a shared machine
PROMPTS = ["a red cat", "two dogs on the left of a green car", "a sign says hello", "the house"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("janus_tiny") / "ckpt"
    janus_tiny.save_transformers(folder)
    return folder


@pytest.fixture(scope="module")
def gen(ckpt):
    return J.load_janus(str(ckpt), dtype="float32")


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": t, "category": "test"}) + "\n" for t in PROMPTS))
    return p


def _hf_generate(gen, ids, seed, **kw):
    cfg = gen.model.generation_config
    cfg.generation_kwargs = {"boi_token_id": gen.boi_id}
    torch.manual_seed(seed)
    return gen.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              generation_mode="image", do_sample=True, guidance_scale=5, temperature=1.0,
                              generation_config=cfg, **kw)  # fmt: skip


def test_loop_equals_transformers_generate_with_top_k_0(gen):
    """Same seed, same ids; and transformers' default top_k=50 (the trap) draws other ids."""
    ids = gen.prompt_ids(PROMPTS[1])
    assert ids[0] == gen.bos_id and ids[-1] == gen.boi_id
    differs = 0
    for seed in range(2):
        ours = J.sample_image_tokens(gen, [ids], J.row_generators(gen.device, [seed]))
        assert torch.equal(ours, _hf_generate(gen, ids, seed, top_k=0))
        differs += not torch.equal(ours, _hf_generate(gen, ids, seed))
    assert differs > 0  # the tiny codebook has 64 codes: top-50 filtering changes draws


def test_prompt_template_and_unconditional_rows(gen):
    tok = gen.tokenizer
    ids = gen.prompt_ids("a red cat")
    expected = ["<｜begin▁of▁sentence｜>", "<|User|>", ":", "a", "red", "cat", "<|Assistant|>", ":", "<begin_of_image>"]
    assert tok.convert_ids_to_tokens(ids) == expected


def test_rows_do_not_depend_on_batch_composition(gen):
    """Left padding + per-row generators: a row's ids are the same alone or among other prompts."""
    pids = [gen.prompt_ids(p) for p in PROMPTS[:3]]
    seeds = [J.sample_seed(0, i, k) for i in range(3) for k in range(2)]
    rows = [pids[i] for i in range(3) for _ in range(2)]
    together = J.sample_image_tokens(gen, rows, J.row_generators(gen.device, seeds))
    for r, (ids, s) in enumerate(zip(rows, seeds)):
        alone = J.sample_image_tokens(gen, [ids], J.row_generators(gen.device, [s]))
        assert torch.equal(together[r], alone[0])


def test_original_layout_loads_into_the_same_model(tmp_path, gen):
    """DeepSeek's key layout (inverted here from the converter's renames) loads to identical parameters."""
    janus_tiny.save_original(tmp_path / "orig")
    orig = J.load_janus(str(tmp_path / "orig"), dtype="float32")
    assert orig.info["layout"].startswith("janus")
    ref = gen.model.state_dict()
    got = orig.model.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    ids = gen.prompt_ids(PROMPTS[0])
    assert orig.prompt_ids(PROMPTS[0]) == ids
    a = J.sample_image_tokens(gen, [ids], J.row_generators(gen.device, [5]))
    assert torch.equal(a, J.sample_image_tokens(orig, [ids], J.row_generators(orig.device, [5])))


def test_generate_command_exits_1_when_the_decode_check_fails(tmp_path, ckpt, prompts_file, capsys, monkeypatch):
    """`tokbench generate` in this process: exit 0 with the summary line when tokbench's VQ decode agrees with
    the model's, exit 1 with the warning when it does not (a tolerance below any difference stands in for a
    checkpoint read wrongly). (Mutation testing: the exit status was only seen through a subprocess.)"""
    from tokbench.cli import main
    from tokbench.generation import generate as G

    args = ["generate", "--model", str(ckpt), "--prompts", str(prompts_file), "--per-prompt", "1", "--limit", "2",
            "--batch-size", "2", "--dtype", "float32", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert f"2 prompts x 1 images in {tmp_path / 'ok'} (complete); decode check max |diff| " in out
    assert "over 2 images" in out and "gen-eval --images" in out
    monkeypatch.setitem(G.DECODE_TOLERANCE, "float32", -1.0)
    assert main([*args, "--out", str(tmp_path / "bad")]) == 1
    assert "WARNING: decode check failed" in capsys.readouterr().err


def test_generate_passes_temperature_and_cfg_weight_to_the_sampler(tmp_path, ckpt, gen, prompts_file):
    """Non-default sampling options reach every image and the manifest (mutation testing: the default
    temperature was the only one generated)."""
    m = run_generate(str(ckpt), tmp_path / "run", prompts=str(prompts_file), per_prompt=1, seed=2, batch_size=2,
                     dtype="float32", device="cpu", progress=False, temperature=0.5, cfg_weight=2.0, limit=2)  # fmt: skip
    assert m["sampling"]["temperature"] == 0.5 and m["sampling"]["cfg_weight"] == 2.0
    for i in range(2):
        codes = torch.from_numpy(np.load(tmp_path / "run" / f"{i:05d}" / "codes.npy")).long()
        alone = J.sample_image_tokens(gen, [gen.prompt_ids(PROMPTS[i])], J.row_generators(gen.device, [J.sample_seed(2, i, 0)]),
                                      cfg_weight=2.0, temperature=0.5)  # fmt: skip
        assert torch.equal(alone[0], codes[0])


def test_sharded_original_checkpoint_loads_every_shard(tmp_path, gen):
    """DeepSeek's 7B releases are sharded (`pytorch_model.bin.index.json` + shards): every shard is read.
    (Mutation testing: no test had a sharded checkpoint.)"""
    folder = tmp_path / "sharded"
    janus_tiny.save_original(folder)
    whole = torch.load(folder / "pytorch_model.bin", weights_only=True)
    keys = sorted(whole)
    shards = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, part in shards.items():
        torch.save({k: whole[k] for k in part}, folder / name)
    (folder / "pytorch_model.bin").unlink()
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}))
    sharded = J.load_janus(str(folder), dtype="float32")
    ref = gen.model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in sharded.model.state_dict().items())


def test_sample_seed_is_the_stated_rule():
    """Each image's seed is SEED_RULE (recorded in the manifest), to the bit: 63 bits of a SHA-256."""
    import hashlib
    import struct

    seeds = [J.sample_seed(3, i, k) for i in range(4) for k in range(4)]
    for (i, k), got in zip([(i, k) for i in range(4) for k in range(4)], seeds):
        digest = hashlib.sha256(f"tokbench-generate:3:{i}:{k}".encode()).digest()
        assert got == struct.unpack("<Q", digest[:8])[0] % 2**63
    assert len(set(seeds)) == 16 and max(seeds) < 2**63 and "2^63" in J.SEED_RULE


def test_generate_writes_geneval_layout_with_official_pngs_and_decode_check(tmp_path, ckpt, gen, prompts_file):
    out = tmp_path / "run"
    m = run_generate(str(ckpt), out, prompts=str(prompts_file), per_prompt=2, seed=7, batch_size=3,
                     dtype="float32", device="cpu", progress=False)  # fmt: skip
    assert m["complete"] and m["sampling"]["cfg_weight"] == 5.0 and m["sampling"]["top_k"] is None
    # float32: tokbench's llamagen-vq decode and transformers' decode_image_tokens run the same operations
    assert m["decode_check"]["images"] == 8 and m["decode_check"]["max_abs_diff"] == 0.0
    assert m["decode_check"]["passed"] and m["decode_check"]["tolerance"] == 1e-4
    assert "transformers" in m["packages"] and m["model"]["layout"] == "transformers"
    for i, prompt in enumerate(PROMPTS):
        d = out / f"{i:05d}"
        meta = json.loads((d / "metadata.jsonl").read_text())
        assert meta["prompt"] == prompt and meta["category"] == "test" and "tag" not in meta  # no GenEval fields
        codes = np.load(d / "codes.npy")
        assert codes.shape == (2, 16) and not (d / ".codes").exists()
        assert sorted(p.name for p in (d / "samples").iterdir()) == ["0000.png", "0001.png"]
        ids = torch.from_numpy(codes).long()
        # the official conversion, written out independently: clip((x+1)/2*255) then truncate
        dec = gen.model.decode_image_tokens(ids).detach().float().numpy()
        official = np.clip((dec + 1) / 2 * 255, 0, 255).astype(np.uint8)
        for k in range(2):
            png = np.asarray(Image.open(d / "samples" / f"{k:04d}.png"))
            assert png.shape == (16, 16, 3) and np.array_equal(png, official[k])
            # each image is the one its own seed gives
            alone = J.sample_image_tokens(gen, [gen.prompt_ids(prompt)], J.row_generators(gen.device, [J.sample_seed(7, i, k)]))
            assert torch.equal(alone[0], ids[k])
    # GenEval's evaluate_images.py: digit-named folders, metadata.jsonl read with json.load, samples/\d+.png
    geneval = {}
    for d in out.iterdir():
        if d.is_dir() and d.name.isdigit():
            with open(d / "metadata.jsonl") as fp:
                geneval[d.name] = (json.load(fp)["prompt"], [f for f in os.listdir(d / "samples") if re.match(r"\d+\.png", f)])
    assert len(geneval) == 4 and all(len(files) == 2 for _, files in geneval.values())
    # a re-run with the same settings does nothing; with other settings it is refused
    again = run_generate(str(ckpt), out, prompts=str(prompts_file), per_prompt=2, seed=7, batch_size=2,
                         dtype="float32", device="cpu", progress=False)  # fmt: skip
    assert len(again["runs"]) == 1
    with pytest.raises(TokbenchError, match="other settings"):
        run_generate(str(ckpt), out, prompts=str(prompts_file), per_prompt=2, seed=8, dtype="float32",
                     device="cpu", progress=False)  # fmt: skip


def test_decode_check_in_bfloat16(gen):
    """bf16: tokbench's decode and the model's agree within the stated tolerance."""
    from tokbench.generation.generate import DECODE_TOLERANCE

    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    bf = J.JanusGenerator(gen.model.to(torch.bfloat16), gen.tokenizer, gen.info, "bfloat16", gen.bos_id,
                          gen.pad_id, gen.boi_id, gen.grid)  # fmt: skip
    try:
        diff = J.decode_difference(bf, J.vq_tokenizer(bf), ids, J.decode_pixels(bf, ids))
    finally:
        gen.model.to(torch.float32)
    assert diff < DECODE_TOLERANCE["bfloat16"]


def _cli(ckpt, out, prompts_file):
    return [sys.executable, "-m", "tokbench.cli", "generate", "--model", str(ckpt), "--prompts", str(prompts_file),
            "--per-prompt", "6", "--seed", "3", "--out", str(out), "--batch-size", "1", "--dtype", "float32",
            "--device", "cpu", "--quiet"]  # fmt: skip


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}  # fmt: skip


def test_resume_after_kill_gives_the_same_files(tmp_path, ckpt, prompts_file):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"  # the same command, uninterrupted (in this process)
    run_generate(str(ckpt), full, prompts=str(prompts_file), per_prompt=6, seed=3, batch_size=1, dtype="float32",
                 device="cpu", progress=False)  # fmt: skip
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(ckpt, out, prompts_file), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*/samples/*.png"))) < 3 and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p: p.stat().st_mtime_ns for p in out.glob("*/samples/*.png")}
    assert 3 <= len(done_before) < 24, "the kill should land mid-run"
    codes_before = {p.parent.parent.name + "/" + p.stem for p in out.glob("*/.codes/*.npy")}
    codes_before |= {f"{p.parent.name}/{k:04d}" for p in out.glob("*/codes.npy") for k in range(6)}
    subprocess.run(_cli(ckpt, out, prompts_file), env=env, check=True, capture_output=True, timeout=300)
    assert _files(out) == _files(full)  # same files, none missing, none extra
    for p, mtime in done_before.items():  # complete samples were not generated again
        if f"{p.parent.parent.name}/{p.stem}" in codes_before:
            assert p.stat().st_mtime_ns == mtime, p
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and sum(r["images"] for r in m["runs"]) <= 24


def test_transformers_version_gate():
    with pytest.raises(TokbenchError, match=r"transformers>=5\.5\.0"):
        J.check_transformers("5.4.0")
    with pytest.raises(TokbenchError, match="44792"):
        J.check_transformers("4.52.1")
    assert J.check_transformers("5.5.0") == "5.5.0"


def test_released_model_offline_says_how_to_fetch():
    with pytest.raises(WeightsUnavailable) as e:
        J.resolve_model_dir("janus-pro-1b")
    assert "hf download deepseek-community/Janus-Pro-1B" in str(e.value)
    with pytest.raises(TokbenchError, match="unknown model"):
        J.resolve_model_dir("janus-pro-3b")


def test_builtin_prompt_set():
    prompts = load_prompts("builtin")
    assert len(prompts) >= 200
    assert {p.category for p in prompts} == set(CATEGORIES)
    assert len({p.prompt for p in prompts}) == len(prompts) == len({p.id for p in prompts})
    assert all(p.category == "text" for p in load_prompts("builtin:text"))
    with pytest.raises(TokbenchError, match="unknown built-in category"):
        load_prompts("builtin:poems")
