"""The run contract: exit status 0 / 1 / 2 for every subcommand, a suite checked before anything runs."""

from __future__ import annotations

import textwrap

import pytest

from tests.test_runner import make_folder
from tokbench.cli import main as cli


def _suite(tmp_path, body: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(body))
    return str(path)


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_exit_0_when_jobs_complete_or_lack_weights_and_1_under_strict(tmp_path, capsys):
    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    suite = _suite(tmp_path, f"""\
        data: ["folder:{folder}"]
        resolution: 32
        download: false
        metrics: [psnr]
        tokenizers: [jpeg-q50, llamagen-vq16-c2i, {{name: one-d-piece-l-256, sweep: {{n_tokens: [16, 64]}}}}]
        """)
    # a sweep over an encode option of a model that is not here is skipped point by point, as the quick
    # suite's One-D-Piece entry is on a fresh machine (it once failed: n_tokens taken for a load option)
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert _last_line(capsys) == "tokbench: 1 completed, 3 skipped, 0 failed"
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet", "--strict"]) == 1
    assert _last_line(capsys) == "tokbench: 1 completed, 3 skipped, 0 failed (--strict: skips fail)"


def test_exit_1_when_a_job_fails(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    good = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    suite = _suite(tmp_path, f"""\
        data: ["folder:{folder}", "folder:{good}"]
        resolution: 32
        metrics: [psnr]
        tokenizers: [jpeg-q50]
        """)
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet"]) == 1
    assert _last_line(capsys) == "tokbench: 1 completed, 0 skipped, 1 failed"


def test_a_suite_with_five_mistakes_reports_all_five_and_writes_nothing(tmp_path, capsys):
    suite = _suite(tmp_path, """\
        batch_size: abc
        metrics: [psnr, {ssim: {protocol: llamagen2}}]
        protocol: resize-crpo
        data: ["folder:/nonexistent/photos"]
        tokenizers:
          - name: jpeg
            sweep: {quality: [10, 500]}
          - titok-l33
        """)
    out = tmp_path / "run"
    assert cli(["run", suite, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has 6 problems; nothing was run" in err
    for line in ("batch_size: Input should be a valid integer, unable to parse string as an integer (got 'abc')",
                 "metrics[1].ssim: ssim: unknown protocol 'llamagen2'",
                 "protocol: unknown preprocessing protocol; known: ",
                 "data[0]: image folder '/nonexistent/photos' does not exist (got 'folder:/nonexistent/photos')",
                 "tokenizers[0].sweep.quality[1]: Input should be less than or equal to 100 (got 500)",
                 "tokenizers[1].name: unknown tokenizer 'titok-l33'"):
        assert line in err, line
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--data", "folder:/nonexistent"], "data[0]: image folder '/nonexistent' does not exist"),
    (["--batch-size", "0"], "batch_size: Input should be greater than or equal to 1 (got 0)"),
    (["--tokenizers", "jpeg-q50", "no-such-tok"], "--tokenizers[1].name: unknown tokenizer 'no-such-tok'"),
    (["--device", "gpu"], "device: String should match pattern"),
])
def test_command_line_settings_are_checked_with_the_suite(tmp_path, capsys, args, message):
    suite = _suite(tmp_path, """\
        tokenizers: [jpeg-q50]
        metrics: [psnr]
        """)
    assert cli(["run", suite, "--out", str(tmp_path / "run"), "--quiet", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_family_options_and_metric_options_are_checked(tmp_path):
    from tokbench.suite import parse_suite
    from tokbench.suite_check import SuiteInvalid

    with pytest.raises(SuiteInvalid) as e:
        parse_suite({"tokenizers": [{"name": "titok-l32", "sweep": {"quality": [1]}, "options": {"dtype": "int8"}},
                                    {"name": "one-d-piece-l-256", "sweep": {"n_tokens": [0, 32]}},
                                    {"name": "janus9*"}, {"name": "jpeg", "weights": "/no/such.pt"}],
                     "metrics": [{"lpips": {"net": "squeeze"}}, {"psnr": {"prtocol": "llamagen"}}, "no-such-metric"]})
    where = [p[0] for p in e.value.problems]
    assert where == ["tokenizers[0].options.dtype", "tokenizers[0].sweep.quality", "tokenizers[1].sweep.n_tokens[0]",
                     "tokenizers[2].name", "tokenizers[3].weights", "metrics[0].lpips.net", "metrics[1].psnr",
                     "metrics[2]"]


def test_every_subcommand_follows_the_same_exit_contract(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    assert cli(["report", str(tmp_path)]) == 2
    assert "is not a tokbench run folder" in capsys.readouterr().err
    assert cli(["list", "jpeg-*"]) == 0 and cli(["info", "jpeg-q75"]) == 0
    assert cli(["info", "nope"]) == 2 and cli(["fetch", "nope"]) == 2

    def refused(*a, **k):
        raise OSError("connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refused)
    capsys.readouterr()
    assert cli(["fetch", "llamagen-vq16-c2i"]) == 1  # ran, and the download failed
    assert _last_line(capsys) == "tokbench: 0 fetched, 1 failed (llamagen-vq16-c2i)"


FIXTURE = __import__("pathlib").Path(__file__).parent / "data" / "llamagen_vq16"


def _first_run_suite(tmp_path, folder) -> str:
    return _suite(tmp_path, f"""\
        data: ["folder:{folder}"]
        resolution: 32
        download: false
        metrics: [psnr]
        prefetch: [llamagen-vq16-c2i]
        tokenizers:
          - jpeg-q50
          - name: llamagen-vq16-c2i
            resolution: 96
            config: {FIXTURE / "config.json"}
        """)


def test_first_run_online_says_what_it_downloads_then_benchmarks_it(tmp_path, monkeypatch, capsys):
    import shutil
    from types import SimpleNamespace

    import huggingface_hub

    calls = []

    def fake_download(repo_id, filename, revision=None, cache_dir=None, **kw):
        calls.append((repo_id, filename))
        dest = tmp_path / "hub" / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURE / "vq_ds16_c2i.pt", dest)
        monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path / "w"))  # where a real download lands: found after
        (tmp_path / "w" / "llamagen-vq16-c2i").mkdir(parents=True, exist_ok=True)
        shutil.copy(dest, tmp_path / "w" / "llamagen-vq16-c2i" / filename)
        return str(dest)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **kw: SimpleNamespace(size=302 * 2**20))
    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    assert cli(["run", _first_run_suite(tmp_path, folder), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ("first run: downloading the weights of 1 neural tokenizer so that the report compares them with the "
            "codecs: llamagen-vq16-c2i (FoundationVision/LlamaGen/vq_ds16_c2i.pt, 302 MiB); 0.29 GiB in all") in out
    assert "Skip this with --no-download (or HF_HUB_OFFLINE=1)" in out
    assert calls == [("FoundationVision/LlamaGen", "vq_ds16_c2i.pt")]
    assert out.strip().splitlines()[-1] == "tokbench: 2 completed, 0 skipped, 0 failed"


@pytest.mark.parametrize("how", ["offline", "unreachable", "--no-download"])
def test_first_run_offline_skips_with_the_fetch_command_as_before(tmp_path, monkeypatch, capsys, how):
    import huggingface_hub

    def no_network(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", no_network)
    if how != "offline":
        monkeypatch.delenv("HF_HUB_OFFLINE")
    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    args = ["--no-download"] if how == "--no-download" else []
    assert cli(["run", _first_run_suite(tmp_path, folder), "--out", str(tmp_path / "run"), "--quiet", *args]) == 0
    out = capsys.readouterr().out
    assert "first run" not in out and "tokbench fetch llamagen-vq16-c2i" in out
    assert out.strip().splitlines()[-1] == "tokbench: 1 completed, 1 skipped, 0 failed"


def test_an_option_value_a_metric_refuses_is_a_clear_error():
    """torchmetrics checks its own keywords with ValueError; build_metric names the metric and options."""
    from tokbench.core import TokbenchError
    from tokbench.metrics.base import _METRICS, BenchMetric, build_metric

    with pytest.raises(TokbenchError, match=r"bad options for metric 'psnr' \{'compute_on_cpu': 'yes'\}: Expected"):
        build_metric("psnr", compute_on_cpu="yes")
    with pytest.raises(TokbenchError, match=r"bad options for metric 'psnr' .*Unexpected keyword .*compute_on_cpus"):
        build_metric("psnr", compute_on_cpus=True)

    class Broken(BenchMetric):  # a ValueError with no option given is a bug, not bad options
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            raise ValueError("a bug")

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(_METRICS, "broken", Broken)
        with pytest.raises(ValueError, match="a bug"):
            build_metric("broken")


def test_a_metric_option_value_its_constructor_refuses_is_a_suite_problem(monkeypatch):
    from tokbench.metrics.base import _METRICS, BenchMetric
    from tokbench.suite import parse_suite
    from tokbench.suite_check import SuiteInvalid

    def __init__(self, window: int = 3, **kwargs):
        BenchMetric.__init__(self, **kwargs)
        if window % 2 == 0:  # refused with ValueError, as torchmetrics refuses its own keywords' values
            raise ValueError(f"window must be odd, got {window}")

    # the suite check takes the options of tokbench's own metric classes, and builds the cheap ones
    module = "tokbench.metrics.odd_window"
    monkeypatch.setitem(_METRICS, "odd-window", type("OddWindow", (BenchMetric,),
                                                     {"__init__": __init__, "__module__": module}))
    monkeypatch.setattr("tokbench.suite_check._CHEAP_METRIC_MODULES", (module,))
    parse_suite({"tokenizers": ["jpeg-q50"], "metrics": [{"odd-window": {"window": 5}}]})
    with pytest.raises(SuiteInvalid) as e:
        parse_suite({"tokenizers": ["jpeg-q50"], "metrics": ["psnr", {"odd-window": {"window": 4}}]})
    ((where, value, message),) = e.value.problems
    assert (where, value) == ("metrics[1].odd-window", {"window": 4})
    assert message == "bad options for metric 'odd-window' {'window': 4}: window must be odd, got 4"


def test_every_family_declares_its_options_so_its_sweeps_are_checked():
    """A family added without `Family.options` would get no option check at all."""
    from tokbench.registry import families
    from tokbench.suite import parse_suite
    from tokbench.suite_check import SuiteInvalid

    shipped = [f for f in families() if f.build.__module__.startswith("tokbench.tokenizers.")]
    assert len(shipped) >= 15  # test modules register their own families, without options
    assert [f.name for f in shipped if f.options is None] == []
    parse_suite({"tokenizers": [{"name": "var-vqvae-256", "sweep": {"n_scales": [1, 10]}},
                                {"name": "sd-vae-ft-mse", "options": {"sample": True, "storage_bits": 16}}]})
    with pytest.raises(SuiteInvalid) as e:
        parse_suite({"tokenizers": [{"name": "var-vqvae-256", "sweep": {"n_scales": [0]}},
                                    {"name": "ibq-1024", "options": {"ema": "yes please"}}]})
    assert [p[0] for p in e.value.problems] == ["tokenizers[0].sweep.n_scales[0]", "tokenizers[1].options.ema"]


def test_every_data_source_kind_parses_in_a_suite_and_typos_are_named():
    """The suite check and `open_dataset` share one list of source kinds (text-synth was once refused)."""
    from tokbench.data import SOURCE_KINDS
    from tokbench.suite import parse_suite
    from tokbench.suite_check import SuiteInvalid

    parse_suite({"tokenizers": ["jpeg-q75"], "data": ["samples", "text-synth", "text-synth:count=2", "folder:/x",
                                                          "imagenet-val:/y", "tokbench-text:/z", "imagenet-train:/t",
                                                          "karpathy:/k.json"]})
    assert set(SOURCE_KINDS) >= {"samples", "folder", "imagenet-val", "text-synth", "tokbench-text", "imagenet-train",
                                 "karpathy"}
    with pytest.raises(SuiteInvalid) as e:
        parse_suite({"tokenizers": ["jpeg-q75"], "data": ["sample", "folder:", "samples:3"]})
    assert [(p[0], p[1]) for p in e.value.problems] == [("data[0]", "sample"), ("data[1]", "folder:"),
                                                         ("data[2]", "samples:3")]
    assert "text-synth[:OPTIONS]" in e.value.problems[0][2] and "needs a path" in e.value.problems[1][2]


def test_prefetch_under_torchrun_once_per_node_and_said_once(monkeypatch):
    # the first process of each node fetches (its own cache), only rank 0 speaks; the rest wait at a barrier
    import tokbench.first_run as first_run
    from tokbench.distributed import Context

    calls, said, barriers = [], [], []
    monkeypatch.setattr(first_run, "prefetch", lambda names, log: (calls.append(names), log("downloading")))
    monkeypatch.setattr(Context, "barrier", lambda self: barriers.append(self.rank))
    for rank, local_rank in ((0, 0), (1, 1), (2, 0), (3, 1)):
        first_run.prefetch_on_each_node(Context(rank=rank, world=4, local_rank=local_rank), ["titok-l32"], said.append)
    assert calls == [["titok-l32"], ["titok-l32"]]  # ranks 0 and 2: local rank 0 of nodes 0 and 1
    assert said == ["downloading"] and barriers == [0, 1, 2, 3]
