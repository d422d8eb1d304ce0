"""Streaming metrics. Each module registers its metrics with `register_metric`; see `base`."""

from .base import BenchMetric, EvalBatch, build_metric, metric_names, register_metric

__all__ = ["BenchMetric", "EvalBatch", "build_metric", "metric_names", "register_metric"]
