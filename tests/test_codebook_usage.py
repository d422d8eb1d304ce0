"""Codebook statistics where mutation testing found them unchecked: three codebooks of different sizes,
merged (distributed) states, byte streams, and no ids at all. References are numpy histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tokbench
from tokbench.metrics import EvalBatch, build_metric


def _batch(tokens):
    return EvalBatch(originals=torch.zeros(tokens.batch_size, 3, 8, 8), tokens=tokens,
                     tokenizer=tokbench.load_tokenizer("jpeg-q50"), index=torch.arange(tokens.batch_size))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def test_three_codebooks_of_different_sizes_merged_across_ranks_equal_numpy():
    rng = np.random.default_rng(1)
    sizes = (4, 16, 8)
    ids = np.stack([rng.integers(0, k - 1, size=(6, 5)) for k in sizes], -1)  # (B, N, C); last code unused
    a, b = build_metric("codebook"), build_metric("codebook")
    a.update(_batch(tokbench.Tokens(ids=torch.from_numpy(ids[:2]), codebook_size=sizes)))
    b.update(_batch(tokbench.Tokens(ids=torch.from_numpy(ids[2:]), codebook_size=sizes)))
    a.merge_state(b)  # what the distributed reduction of the states does
    out = a.compute()
    for j, k in enumerate(sizes):
        counts = np.bincount(ids[..., j].ravel(), minlength=k)
        assert out[f"codebook_usage_{j}"] == pytest.approx((counts > 0).sum() / k)
        assert out[f"code_entropy_{j}"] == pytest.approx(_entropy(counts), rel=1e-12)
        assert out[f"code_perplexity_{j}"] == pytest.approx(2 ** _entropy(counts), rel=1e-12)
        assert out[f"code_entropy_max_{j}"] == pytest.approx(np.log2(k))


def test_byte_streams_and_continuous_features_have_no_codebook_statistics():
    m = build_metric("codebook")
    codec = tokbench.load_tokenizer("jpeg-q50").encode(torch.rand(2, 3, 16, 16))
    m.update(_batch(codec))  # codec bytes carry lengths: not codebook ids
    m.update(_batch(tokbench.Tokens(features=torch.rand(2, 4, 3))))
    assert m.compute() == {}
    m.update(_batch(tokbench.Tokens(ids=torch.tensor([[0, 1]]), codebook_size=2)))
    assert m.compute()["codebook_usage"] == 1.0


def test_distributed_sync_sums_the_histograms_of_the_ranks():
    """As under torchrun: each rank's histogram is all-gathered and reduced with the state's reduce fx."""
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 12, size=(8, 7))
    ranks = [build_metric("codebook") for _ in range(2)]
    for r, m in enumerate(ranks):  # rank 1 sees codes the other does not, so a non-sum reduction shows
        m.update(_batch(tokbench.Tokens(ids=torch.from_numpy(ids[4 * r:4 * r + 4] + 4 * r), codebook_size=32)))
    a, b = ranks

    def all_gather(tensor, group=None):
        other = b.counts if tensor.shape == a.counts.shape and tensor.dtype == a.counts.dtype else b.sizes
        return [tensor, other]

    a.sync(dist_sync_fn=all_gather, distributed_available=lambda: True)
    counts = np.bincount(np.concatenate([ids[:4].ravel(), ids[4:].ravel() + 4]), minlength=32)
    np.testing.assert_array_equal(a.counts.numpy(), counts)
    assert a.sizes.tolist() == [32]
