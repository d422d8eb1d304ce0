"""A probe run on a labelled folder with two families' tiny fixtures: rows that say split and label, the
summary keys, the same numbers from the features recomputed here, from 2 gloo processes, and after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tokbench
from tokbench.data import iterate_batches, open_dataset, with_train_split
from tokbench.runfolder import read_rows
from tokbench.runner import run_suite
from tokbench.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "data"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
VQ = {"name": "llamagen-vq", "label": "vq16", "resolution": 32, "weights": str(FIXTURES / "llamagen_vq16" / "vq_ds16_c2i.pt"),
      "config": str(FIXTURES / "llamagen_vq16" / "config.json")}
TITOK = {"name": "titok", "label": "titok", "weights": str(FIXTURES / "titok_alt" / "model.safetensors"),
         "config": str(FIXTURES / "titok_alt" / "config.json")}
TIMING = ("encode_", "decode_", "peak_memory")


def labelled_folder(root: Path, per_class: int = 5) -> Path:
    """Three classes of noisy 32 px images, each class around its own colour."""
    rng = np.random.default_rng(0)
    for name, colour in {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def suite_file(tmp: Path, folder: Path, tokenizers: list) -> Path:
    path = tmp / "suite.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: understanding-test
        data: [{{source: "folder:{folder}", split: {{train: 0.5, seed: 0}}}}]
        resolution: 32
        batch_size: 4
        num_workers: 0
        checkpoint_seconds: 0
        metrics: [psnr, {{knn: {{k: [1, 3, 20]}}}}, linear_probe, speed]
        """) + "tokenizers: " + json.dumps(tokenizers) + "\n")
    return path


def results(run: Path) -> dict[str, tuple[list, dict]]:
    out = {}
    for job in sorted((run / "jobs").iterdir()):
        summary = json.loads((job / "summary.json").read_text())
        out[summary["label"]] = (read_rows(job / "rows.jsonl"), summary)
    return out


def numbers(summary: dict) -> dict[str, float]:
    return {k: v for k, v in summary["results"].items() if not k.startswith(TIMING)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("understanding")
    folder = labelled_folder(tmp / "imgs")
    suite = suite_file(tmp, folder, ["jpeg-q40", VQ, TITOK])
    run_suite(load_suite(suite), tmp / "one", progress=False, log=lambda s: None)
    return tmp, folder, results(tmp / "one")


def test_rows_name_split_and_label_and_the_summary_has_the_probe_keys(reference):
    _, folder, res = reference
    assert set(res) == {"jpeg-q40", "vq16", "titok"}
    for rows, summary in res.values():
        assert summary["status"] == "ok"
        assert [r["index"] for r in rows] == list(range(15))
        assert {r["split"] for r in rows} == {"train", "eval"} and all(r["label"] in (0, 1, 2) for r in rows)
        assert [r["id"].split("/")[0] for r in rows] == [("cat", "dog", "fox")[r["label"]] for r in rows]
        # the reconstruction metrics count the evaluation images only
        assert all((r["psnr"] is None) == (r["split"] == "train") for r in rows)
        assert summary["data"]["split_counts"] == {"train": 9, "eval": 6, "classes": 3}
    assert set(res["jpeg-q40"][1]["metric_skips"]) == {"knn[k=[1, 3, 20]]", "linear_probe"}
    for label in ("vq16", "titok"):
        out = res[label][1]["results"]
        for key in ("knn_top1_k1", "knn_top5_k1", "knn_top1_k3", "knn_top5_k20", "linear_probe_top1",
                    "linear_probe_top5", "linear_probe_C", "linear_probe_iterations"):
            assert key in out, (label, key)
        assert out["knn_k20_effective"] == 9 and out["knn_eval_images"] == 6
        assert "C chosen on a stratified" in res[label][1]["metric_protocols"]["linear_probe"]


def test_the_split_in_the_rows_and_the_features_give_the_same_knn(reference):
    """Independent of the run: the split re-made from the rows, the features recomputed with the tokenizer
    on the same preprocessed images, DINO's formula written out (tests/test_probes.py)."""
    from tests.test_probes import dino_knn_reference

    _, folder, res = reference
    rows, summary = res["vq16"]
    ds = with_train_split(open_dataset(f"folder:{folder}"), fraction=0.5, seed=0)
    assert [(r.split, r.label) for r in ds.records] == [(r["split"], r["label"]) for r in rows]
    tok = tokbench.load_tokenizer(VQ["name"], weights=VQ["weights"], config=VQ["config"])
    feats = []
    for batch in iterate_batches(ds, summary["protocol"], 32, 4, num_workers=0):
        feats.append(tok.features(batch.images, "post_quant").double().mean(1))
    feats = torch.cat(feats)
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    test = [i for i, r in enumerate(rows) if r["split"] == "eval"]
    labels = [r["label"] for r in rows]
    top1, _ = dino_knn_reference(feats[train].tolist(), [labels[i] for i in train], feats[test].tolist(), 3, 0.07, 3)
    want = 100 * np.mean([p == labels[i] for p, i in zip(top1, test)])
    assert summary["results"]["knn_top1_k3"] == pytest.approx(want, abs=1e-9)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


# runs a suite without the report (as `tokbench run` does before writing it); the killer family, where asked for,
# is the LlamaGen fixture whose process dies in its KILL_AT-th encode call (the 1st is the warm-up)
RUNNER = textwrap.dedent("""\
    import os, sys
    import tokbench
    from tokbench.registry import Family, register_family
    from tokbench.runner import run_suite
    from tokbench.suite import load_suite

    calls = 0

    def build(b):
        tok = tokbench.load_tokenizer("llamagen-vq", weights=os.environ["VQ_WEIGHTS"], config=os.environ["VQ_CONFIG"])
        encode = tok.encode

        def dying(images, **kw):
            global calls
            calls += 1
            if calls == int(os.environ.get("KILL_AT", "0")):
                os._exit(137)  # as abrupt as SIGKILL
            return encode(images, **kw)

        tok.encode = dying
        return tok

    register_family(Family("killer-vq", build=build))
    run_suite(load_suite(sys.argv[1]), sys.argv[2], progress=False, log=lambda s: None)
    """)


def _run(tmp: Path, suite: Path, out: Path, world: int = 1, **env: str) -> subprocess.CompletedProcess:
    script = tmp / "runner.py"
    script.write_text(RUNNER)
    cmd = [*TORCHRUN, str(world), str(script)] if world > 1 else [sys.executable, str(script)]
    return subprocess.run([*cmd, str(suite), str(out)], env=_env(VQ_WEIGHTS=VQ["weights"], VQ_CONFIG=VQ["config"], **env),
                          capture_output=True, text=True, timeout=600)


def test_a_run_killed_in_one_process_finishes_on_two_with_the_numbers_of_one(reference):
    """The LlamaGen job dies mid-way in a 1-process run and finishes on 2 gloo processes (its remaining images
    split over the ranks, merged with the saved part); the TiTok job then runs entirely on 2 processes. Both
    give the rows and numbers of the 1-process reference run."""
    tmp, folder, ref = reference
    (tmp / "kill").mkdir()
    suite = suite_file(tmp / "kill", folder, [{"name": "killer-vq", "label": "vq16", "resolution": 32}, TITOK])
    out = tmp / "kill" / "run"
    killed = _run(tmp / "kill", suite, out, KILL_AT="4")  # two batches of 4 are saved, then it dies
    assert killed.returncode != 0
    job = next(p for p in (out / "jobs").iterdir() if p.name.startswith("vq16"))
    assert not (job / "summary.json").exists() and (job / "state.pt").exists()
    assert len(read_rows(job / "rows.jsonl")) == 8
    done = _run(tmp / "kill", suite, out, world=2)
    assert done.returncode == 0, done.stderr[-3000:]
    got = results(out)
    for label in ("vq16", "titok"):
        (rows, summary), (g_rows, g_summary) = ref[label], got[label]
        assert g_summary["world_size"] == 2
        assert [(r["index"], r["split"], r["label"]) for r in g_rows] == [(r["index"], r["split"], r["label"])
                                                                         for r in rows]
        assert numbers(g_summary) == pytest.approx(numbers(summary), rel=1e-6, abs=1e-9)


def test_the_report_has_the_tradeoff_table_and_figure(reference):
    from tokbench.report import write_report

    tmp, _, _ = reference
    out = write_report(tmp / "one")
    md = (out / "report.md").read_text()
    section = md.split("## Understanding vs reconstruction")[1].split("\n## ")[0]
    assert "| vq16 |" in section and "| titok |" in section and "jpeg" not in section  # codecs have no features
    assert "PSNR (dB)" in section and (out / "tradeoff.png").stat().st_size > 1000
    assert "id=\"understanding\"" in (out / "index.html").read_text()


def _job(name, data="imagenet-val", **results):
    spec = {"codebook_size": None if "siglip" in name else 16384, "tokens_per_image": 576, "bits_per_token": 14.0,
            "resolution": 384}
    return {"status": "ok", "tokenizer": name, "label": name, "params": {}, "data": {"name": data}, "spec": spec,
            "resolution": 384, "results": results}


def test_tradeoff_axes_and_the_decoupled_janus_pair(tmp_path):
    from tokbench.understanding_report import linked_pairs, reconstruction_axis, tradeoff_frame, tradeoff_plot

    jobs = [_job("janus-pro-1b-vq", knn_top1_k20=12.0, rfid=2.1, psnr=24.0, lpips=0.2),
            _job("janus-siglip-l-384", knn_top1_k20=70.0),
            _job("unitok", knn_top1_k10=40.0, linear_probe_top1=55.0, psnr=25.0, lpips=0.15),
            _job("jpeg-q40", psnr=30.0)]
    frame = tradeoff_frame(jobs)
    assert list(frame["name"]) == ["janus-pro-1b-vq", "janus-siglip-l-384", "unitok"]  # no probe: no point
    assert list(frame["y_key"]) == ["knn_top1_k20", "knn_top1_k20", "knn_top1_k10"]
    assert frame.loc[0, "bits"] == 576 * 14.0 and frame.loc[1, "continuous"]
    # rFID where the run has it for more points than LPIPS or PSNR; else the next by preference
    assert reconstruction_axis(frame) == ("lpips", "LPIPS", True)
    assert reconstruction_axis(frame[frame["name"] != "unitok"])[0] == "rfid"
    ((model, enc, gen),) = linked_pairs(frame, "lpips")
    assert model == "Janus-Pro-1B" and enc["y"] == 70.0 and gen["lpips"] == 0.2
    assert tradeoff_plot(jobs, tmp_path / "tradeoff.png") and (tmp_path / "tradeoff.png").is_file()
    assert not tradeoff_plot([jobs[-1]], tmp_path / "none.png")


def test_data_named_on_the_command_line_takes_the_suites_split(reference, tmp_path):
    from tokbench.cli import main

    _, folder, _ = reference
    suite = suite_file(tmp_path, tmp_path / "elsewhere", ["jpeg-q40"])
    assert main(["run", str(suite), "--data", f"folder:{folder}", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    (rows, summary), = results(tmp_path / "run").values()
    assert summary["data"]["split"] == {"fraction": 0.5, "seed": 0}
    assert [(r["split"], r["label"]) for r in rows] == [(r.split, r.label) for r in
                                                        with_train_split(open_dataset(f"folder:{folder}"), 0.5).records]
