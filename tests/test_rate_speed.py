"""Bits per pixel, codebook statistics and throughput bookkeeping against hand computations."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy

import tokbench
from tokbench.metrics import EvalBatch, build_metric


def _batch(tokens, h=32, w=48, recon=True, enc=0.5, dec=0.25):
    x = torch.zeros(tokens.batch_size, 3, h, w)
    tok = tokbench.load_tokenizer("jpeg", quality=50)
    return EvalBatch(originals=x, reconstructions=x if recon else None, tokens=tokens, tokenizer=tok,
                     index=torch.arange(tokens.batch_size), encode_seconds=enc, decode_seconds=dec)


def test_bpp_fixed_length_code():
    t = tokbench.Tokens(ids=torch.zeros(2, 6, dtype=torch.long), codebook_size=1024, grid=(2, 3))
    m = build_metric("bpp")
    m.update(_batch(t))
    out = m.compute()
    assert out["bits_per_image"] == 60.0
    assert out["bpp"] == pytest.approx(60.0 / (32 * 48))
    assert out["tokens_per_image"] == 6.0
    assert m.last_rows["bpp"].tolist() == [60.0 / (32 * 48)] * 2


def test_bpp_of_real_codec_sizes():
    t = tokbench.Tokens(ids=torch.zeros(2, 9, dtype=torch.long), codebook_size=256,
                        lengths=torch.tensor([4, 9]), bits=torch.tensor([32.0, 72.0]))
    m = build_metric("bpp")
    m.update(_batch(t))
    assert m.compute()["bpp"] == pytest.approx(104.0 / (2 * 32 * 48))
    assert m.compute()["tokens_per_image"] == 6.5


def test_continuous_tokens_have_no_bits():
    t = tokbench.Tokens(features=torch.zeros(2, 4, 8))
    m = build_metric("bpp")
    m.update(_batch(t))
    assert m.compute() == {"tokens_per_image": 4.0}


def test_codebook_usage_entropy_perplexity():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(4, 30))  # codebook 64: codes 50..63 unused
    m = build_metric("codebook")
    for chunk in np.split(ids, 2):
        m.update(_batch(tokbench.Tokens(ids=torch.from_numpy(chunk), codebook_size=64)))
    out = m.compute()
    counts = np.bincount(ids.ravel(), minlength=64)
    h = entropy(counts / counts.sum(), base=2)
    assert out["codebook_usage"] == pytest.approx((counts > 0).sum() / 64)
    assert out["code_entropy"] == pytest.approx(h, rel=1e-9)
    assert out["code_perplexity"] == pytest.approx(2**h, rel=1e-9)
    assert out["code_entropy_max"] == 6.0


def test_codebook_several_codebooks_and_state_round_trip():
    ids = torch.tensor([[[0, 1], [0, 3], [2, 3]]])  # (B=1, N=3, C=2)
    m = build_metric("codebook")
    m.update(_batch(tokbench.Tokens(ids=ids, codebook_size=(4, 8))))
    m.persistent(True)
    fresh = build_metric("codebook")
    fresh.load_state_dict(m.state_dict())  # the runner's resume path
    out = fresh.compute()
    assert out["codebook_usage_0"] == 2 / 4 and out["codebook_usage_1"] == 2 / 8
    assert out["code_entropy_0"] == pytest.approx(-(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3)))


def test_speed_bookkeeping():
    m = build_metric("speed")
    for enc, dec in ((0.5, 0.25), (1.5, 0.75), (1.0, 0.5)):
        m.update(_batch(tokbench.Tokens(ids=torch.zeros(4, 10, dtype=torch.long), codebook_size=2), enc=enc,
                        dec=dec))
    out = m.compute()
    assert out["encode_images_per_s"] == pytest.approx(12 / 3.0)
    assert out["encode_tokens_per_s"] == pytest.approx(120 / 3.0)
    assert out["decode_images_per_s"] == pytest.approx(12 / 1.5)
    # percentiles come from 1%-wide bins: within half a bin of numpy's
    assert out["encode_p50_ms"] == pytest.approx(1000.0, rel=0.005)
    assert out["encode_p95_ms"] == pytest.approx(float(np.percentile([500, 1500, 1000], 95)), rel=0.005)


def test_latency_percentiles_match_numpy_and_ranks_merge_by_adding_counts():
    from tokbench.distributed import metric_states, reduce_states
    from tokbench.metrics.speed import LATENCY_BINS

    rng = np.random.default_rng(0)
    enc = rng.lognormal(mean=-3, sigma=1.2, size=301)  # 301 batches from ~1 ms to ~1 s
    dec = rng.uniform(0.002, 0.004, size=301)
    parts = [build_metric("speed") for _ in range(3)]
    whole = build_metric("speed")
    for i, (e, d) in enumerate(zip(enc, dec)):
        for m in (parts[i % 3], whole):
            m.update(_batch(tokbench.Tokens(ids=torch.zeros(2, 4, dtype=torch.long), codebook_size=2),
                            enc=float(e), dec=float(d)))
    merged = build_metric("speed")
    for name, value in reduce_states(merged, [metric_states(m) for m in parts]).items():
        setattr(merged, name, value)
    out, ref = merged.compute(), whole.compute()
    assert out.keys() == ref.keys() and all(out[k] == pytest.approx(ref[k], rel=1e-12) for k in ref)
    for key, values, q in (("encode_p50_ms", enc, 50), ("encode_p95_ms", enc, 95), ("decode_p95_ms", dec, 95)):
        assert out[key] == pytest.approx(1000 * float(np.percentile(values, q)), rel=0.005), key
    # the state does not grow with the number of batches
    assert whole.encode_latency_hist.shape == (LATENCY_BINS,)


def test_latency_histogram_edges():
    from tokbench.metrics.speed import LATENCY_BINS, histogram_percentile, latency_bin

    assert latency_bin(0.0) == 0 and latency_bin(-1.0) == 0 and latency_bin(float("nan")) == 0
    assert latency_bin(1e9) == LATENCY_BINS - 1
    counts = torch.zeros(LATENCY_BINS, dtype=torch.float64)
    assert histogram_percentile(counts, 0.5) != histogram_percentile(counts, 0.5)  # NaN when empty
    counts[latency_bin(0.25)] = 1
    assert histogram_percentile(counts, 0.95) == pytest.approx(0.25, rel=0.005)
