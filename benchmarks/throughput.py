"""Encode / decode throughput of tokenizers across batch sizes and dtypes: section 4 of
`benchmarks/perf.py`, kept under its old command line.

    python benchmarks/throughput.py --tokenizers janus-pro-1b-vq llamagen-vq16-c2i jpeg-q75 \
        --batch-sizes 1 8 32 --dtypes float32 bfloat16 --device cuda --out results/throughput

Each (tokenizer, dtype, resolution, batch size) is timed on the sample photographs: `--warmup`
untimed iterations, then `--iters` timed ones with the device synchronised around each call.
`--random-weights` builds each neural tokenizer at its released size with random weights (speed does
not depend on weight values). Writes throughput.csv and throughput.md to `--out`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("tokbench_perf_script", Path(__file__).resolve().parent / "perf.py")
_perf = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _perf  # dataclasses look their module up there
_spec.loader.exec_module(_perf)
main = _perf.throughput_main

if __name__ == "__main__":
    sys.exit(main())
