"""Encode / decode throughput of tokenizers across batch sizes and dtypes.

    python benchmarks/throughput.py --tokenizers janus-pro-1b-vq llamagen-vq16-c2i jpeg-q75 \
        --batch-sizes 1 8 32 --dtypes float32 bfloat16 --device cuda --out results/throughput

Each (tokenizer, dtype, batch size) is timed on the sample photographs at the tokenizer's native resolution:
`--warmup` untimed iterations, then `--iters` timed ones with the device synchronised around each
call. Reported: images/s and tokens/s for encode and decode, p50/p95 latency per batch, and peak
memory (CUDA max allocated, or the process's peak RSS on the CPU). `--random-weights` builds each
neural tokenizer at its released size with random weights (speed does not depend on weight values),
so no download is needed; such rows say so. Writes throughput.csv and throughput.md to `--out`.
Throughput is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

import tokbench
from tokbench.core import TokbenchError
from tokbench.metrics.speed import peak_memory_mb, reset_peak_memory, synchronize
from tokbench.report import markdown_table
from tokbench.runner import device_description, package_versions, resolve_device


def _time(fn, device: torch.device) -> tuple[float, object]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def sample_batch(batch: int, size: int) -> torch.Tensor:
    """The built-in sample photographs at `size` (resize-crop), repeated to fill the batch: codecs'
    speed depends on image content, so real photographs rather than noise."""
    from tokbench.data import open_dataset, open_image, pil_to_tensor
    from tokbench.protocols import get_protocol

    records = open_dataset("samples").records
    fn = get_protocol("resize-crop").fn
    return torch.stack([pil_to_tensor(fn(open_image(records[i % len(records)].path), size)) for i in range(batch)])


def measure(tok: tokbench.Tokenizer, batch: int, size: int, device: torch.device, warmup: int, iters: int,
            options: dict) -> dict:
    images = sample_batch(batch, size).to(device)
    reset_peak_memory(device)
    enc, dec = [], []
    with torch.inference_mode():
        for i in range(warmup + iters):
            t_enc, tokens = _time(lambda: tok.encode(images, **options), device)
            t_dec = None
            if tok.spec.supports_decode:
                t_dec, _ = _time(lambda t=tokens: tok.decode(t), device)
            if i >= warmup:
                enc.append(t_enc)
                if t_dec is not None:
                    dec.append(t_dec)
    n_tokens = float(tokens.tokens_per_image.mean())
    row = {
        "encode_images_per_s": batch * iters / sum(enc),
        "encode_tokens_per_s": batch * n_tokens * iters / sum(enc),
        "encode_p50_ms": 1000 * statistics.median(enc),
        "encode_p95_ms": 1000 * sorted(enc)[min(len(enc) - 1, int(0.95 * len(enc)))],
        "tokens_per_image": n_tokens,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if dec:
        row.update(decode_images_per_s=batch * iters / sum(dec), decode_p50_ms=1000 * statistics.median(dec),
                   decode_p95_ms=1000 * sorted(dec)[min(len(dec) - 1, int(0.95 * len(dec)))])
    return row


def _cell(v: object) -> object:
    """Table text: no exponents; small rates (a CPU's images/s) keep three significant digits."""
    if v is None or v is pd.NA or (isinstance(v, float) and v != v):
        return ""
    if not isinstance(v, float):
        return v
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 1 else f"{v:.3g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizers", nargs="+", default=["jpeg-q75", "webp-q75", "avif-q75"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--device", default="auto")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--resolution", type=int, default=256, help="for tokenizers without a native one (codecs)")
    p.add_argument("--random-weights", action="store_true", help="random weights at the released size")
    p.add_argument("--out", default="results/throughput")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    rows = []
    for name in args.tokenizers:
        for dtype in args.dtypes:
            family, _ = tokbench.registry.find(name)
            is_codec = family.name in ("jpeg", "webp", "avif")
            if is_codec and dtype != args.dtypes[0]:
                continue  # codecs have no dtype
            opts = {} if is_codec or dtype == "float32" else {"dtype": dtype}
            weights = "random" if args.random_weights and not is_codec else None
            try:
                tok = tokbench.load_tokenizer(name, weights=weights, device=device, **opts)
            except TokbenchError as e:
                print(f"{name} ({dtype}): skipped: {str(e).splitlines()[0]}", file=sys.stderr)
                rows.append({"tokenizer": name, "dtype": dtype, "status": f"skipped: {str(e).splitlines()[0]}"})
                continue
            size = tok.spec.resolution or args.resolution
            for batch in args.batch_sizes:
                try:
                    row = measure(tok, batch, size, device, args.warmup, args.iters, {})
                except (RuntimeError, TokbenchError) as e:  # e.g. out of memory at a large batch
                    row = {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0]}"}
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append({"tokenizer": name, "dtype": dtype if not is_codec else "uint8", "batch": batch,
                             "resolution": size, "weights": "random" if weights else "released", "status": "ok",
                             **row})
                print(f"{name} {dtype} b={batch}: " + ", ".join(
                    f"{k}={v:.1f}" for k, v in row.items() if isinstance(v, float)))
            del tok

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    for c in ("batch", "resolution"):
        if c in df.columns:
            df[c] = df[c].astype("Int64")
    df.to_csv(out / "throughput.csv", index=False)
    env = device_description(device)
    versions = package_versions()
    header = (f"# tokbench throughput\n\n- device: {env.get('device')} {env.get('gpu', env.get('cpu', ''))}, "
              f"{env.get('cpu_count')} CPUs, torch {versions['torch']} ({env.get('torch_threads')} threads)\n"
              f"- {args.warmup} warm-up + {args.iters} timed iterations per row, sample photographs at each "
              "tokenizer's native resolution, device synchronised around each call\n"
              f"- command: `python benchmarks/throughput.py {' '.join(argv or sys.argv[1:])}`\n\n")
    cols = [c for c in ("tokenizer", "dtype", "batch", "resolution", "weights", "tokens_per_image",
                        "encode_images_per_s", "decode_images_per_s", "encode_tokens_per_s", "encode_p50_ms",
                        "encode_p95_ms", "decode_p50_ms", "decode_p95_ms", "peak_memory_mb", "status")
            if c in df.columns]
    shown = df[cols].astype(object).map(_cell)
    (out / "throughput.md").write_text(header + markdown_table(shown))
    print(f"\nwrote {out / 'throughput.csv'} and {out / 'throughput.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
