"""The report's understanding section: understanding against reconstruction, one point per tokenizer.

x = reconstruction: rFID where the run measured it, else LPIPS, else PSNR (the axis says which; lower-is-better
axes are flipped so that better is always up and to the right); y = k-NN top-1 (k = 20, DINO's default; else
the k-NN top-1 at another k; else the linear probe's top-1), on the tokenizer's default feature stage. Each
point is labelled with its tokens per image and bits per image. A decoupled model, whose understanding
encoder and generation tokenizer are different networks (Janus: SigLIP + VQ), is drawn as a linked pair:
the VQ's own point and, at the VQ's reconstruction, the SigLIP encoder's understanding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .presentation import markdown_table, sweep_label

# (reconstruction key, axis name, lower is better), in order of preference
RECONSTRUCTION = (("rfid", "rFID", True), ("rfid_torch_fidelity", "rFID (ADM)", True),
                  ("rfid_pytorch_fid", "rFID (pytorch-fid)", True), ("lpips", "LPIPS", True),
                  ("psnr", "PSNR (dB)", False))
# (decoupled model, its understanding encoder, the generation tokenizers it pairs with)
DECOUPLED_PAIRS = (
    ("Janus-Pro-1B", "janus-siglip-l-384", ("janus-pro-1b-vq", "janus-pro-1b-vq-hf")),
    ("Janus-1.3B", "janus-1.3b-siglip-l-384", ("janus-1.3b-vq",)),
    ("Janus-Pro-7B", "janus-pro-7b-siglip-l-384", ("janus-pro-7b-vq", "janus-pro-7b-vq-hf")),
)


def understanding_key(results: dict[str, Any]) -> tuple[str, str] | None:
    """(result key, axis name) of the understanding number of one job's results, or None."""
    if "knn_top1_k20" in results:
        return "knn_top1_k20", "k-NN top-1 (k=20, %)"
    knn = sorted((int(k[len("knn_top1_k"):]), k) for k in results
                 if k.startswith("knn_top1_k") and k[len("knn_top1_k"):].isdigit())
    if knn:
        return knn[0][1], f"k-NN top-1 (k={knn[0][0]}, %)"
    if "linear_probe_top1" in results:
        return "linear_probe_top1", "linear probe top-1 (%)"
    return None


def tradeoff_frame(jobs: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per completed job with an understanding number: name, data, tokens and bits per image, the
    probes' top-1, and every reconstruction number it has."""
    rows = []
    for j in jobs:
        if j.get("status") != "ok":
            continue
        res = j.get("results") or {}
        found = understanding_key(res)
        if found is None:
            continue
        spec = j.get("spec") or {}
        tokens, bits = res.get("tokens_per_image"), res.get("bits_per_image")  # measured by `bpp`
        native = j.get("resolution") == spec.get("resolution")
        if tokens is None and native:  # the spec's count holds at the native resolution only
            tokens = spec.get("tokens_per_image")
        if bits is None and tokens is not None and native and spec.get("bits_per_token") is not None:
            bits = float(tokens) * float(spec["bits_per_token"])
        row = {"name": j.get("tokenizer"), "tokenizer": j.get("label", j.get("tokenizer")), "params": sweep_label(j),
               "data": (j.get("data") or {}).get("name"), "tokens": tokens, "bits": bits,
               "continuous": spec.get("codebook_size") is None, "y_key": found[0], "y_name": found[1],
               "y": res[found[0]], "knn_top1_k20": res.get("knn_top1_k20"),
               "linear_probe_top1": res.get("linear_probe_top1"), "linear_probe_C": res.get("linear_probe_C"),
               "zeroshot_top1": res.get("zeroshot_top1")}
        row.update({key: res.get(key) for key, _, _ in RECONSTRUCTION})
        rows.append(row)
    return pd.DataFrame(rows)


def reconstruction_axis(frame: pd.DataFrame) -> tuple[str, str, bool] | None:
    """The reconstruction metric present for the most points (preference order on ties)."""
    best, count = None, 0
    for key, name, lower in RECONSTRUCTION:
        n = int(frame[key].notna().sum()) if key in frame else 0
        if n > count:
            best, count = (key, name, lower), n
    return best


def _rate(row: Any) -> str:
    tokens = f"{row['tokens']:.0f} tok" if pd.notna(row["tokens"]) else "? tok"
    if row["continuous"]:
        return f"{tokens}, continuous"
    bits = row["bits"]
    return f"{tokens}, {bits:,.0f} bits" if pd.notna(bits) else tokens


def _label(row: Any) -> str:
    return row["tokenizer"] + (f" ({row['params']})" if row["params"] else "")


def tradeoff_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The formatted table: tokenizer, data, rate, probes, zero-shot and the reconstruction numbers."""
    axis = reconstruction_axis(frame)
    out = []
    for _, r in frame.iterrows():
        row = {"tokenizer": _label(r), "data": r["data"], "tokens, bits / img": _rate(r)}
        for key, header in (("knn_top1_k20", "k-NN top-1 (%)"), ("linear_probe_top1", "linear probe top-1 (%)"),
                            ("zeroshot_top1", "0-shot top-1 (%)")):
            row[header] = f"{r[key]:.2f}" if pd.notna(r[key]) else ""
        if pd.isna(r["knn_top1_k20"]) and r["y_key"].startswith("knn"):  # k = 20 not measured: say which k
            row["k-NN top-1 (%)"] = f"{r['y']:.2f} (k={r['y_key'][len('knn_top1_k'):]})"
        for key, name, _ in RECONSTRUCTION:
            if key in frame and frame[key].notna().any():
                row[name] = f"{r[key]:.4g}" if pd.notna(r[key]) else ""
        out.append(row)
    table = pd.DataFrame(out)
    if axis is not None and not table.empty:  # the figure's x column first among the reconstruction numbers
        cols = [c for c in table.columns if c != axis[1]]
        cols.insert(cols.index("0-shot top-1 (%)") + 1, axis[1])
        table = table[cols]
    return table


def understanding_section(jobs: list[dict[str, Any]]) -> str:
    """Markdown: the understanding vs reconstruction table (empty string without probe results)."""
    frame = tradeoff_frame(jobs)
    if frame.empty:
        return ""
    return ("\n## Understanding vs reconstruction\n\n" + markdown_table(tradeoff_table(frame))
            + "\nk-NN (k = 20 unless marked): DINO's weighted k-NN on the tokenizer's mean-pooled token features; "
            "linear probe: the CLIP paper's logistic regression (see Protocols); tokens and bits per image as the "
            "`bpp` metric measured them. Figure: tradeoff.png.\n")


def linked_pairs(frame: pd.DataFrame, x_key: str) -> list[tuple[str, Any, Any]]:
    """(model, encoder row, generation tokenizer row) of each decoupled model with both halves in `frame`
    (the first of its generation tokenizers that has a reconstruction number)."""
    names = {n: i for i, n in zip(frame.index, frame["name"])}
    out = []
    for model, encoder, generators in DECOUPLED_PAIRS:
        gen = next((g for g in generators if g in names and pd.notna(frame.loc[names[g], x_key])), None)
        if encoder in names and gen is not None:
            out.append((model, frame.loc[names[encoder]], frame.loc[names[gen]]))
    return out


def tradeoff_plot(jobs: list[dict[str, Any]], path: Path) -> bool:
    """tradeoff.png: understanding (y) against reconstruction (x), one labelled point per tokenizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = tradeoff_frame(jobs)
    axis = reconstruction_axis(frame) if not frame.empty else None
    if axis is None:
        return False
    x_key, x_name, lower = axis
    data = frame["data"].value_counts().index[0]  # the data set with the most points
    frame = frame[frame["data"] == data]
    drawn = frame.dropna(subset=[x_key, "y"])
    if drawn.empty:
        return False
    fig, ax = plt.subplots(figsize=(7.2, 5.0), dpi=120)
    for _, r in drawn.iterrows():
        ax.scatter(r[x_key], r["y"], marker="s" if r["continuous"] else "o", zorder=3)
        ax.annotate(f"{_label(r)}\n{_rate(r)}", (r[x_key], r["y"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=6)
    for model, enc, g in linked_pairs(frame, x_key):
        ax.plot([g[x_key], g[x_key]], [g["y"], enc["y"]], "k--", lw=0.8, zorder=2)
        ax.scatter(g[x_key], enc["y"], marker="D", facecolors="none", edgecolors="k", zorder=3)
        ax.annotate(f"{model}: {enc['tokenizer']} (understanding) + {g['tokenizer']} (generation)",
                    (g[x_key], enc["y"]), textcoords="offset points", xytext=(5, -10), fontsize=6)
    ax.margins(x=0.15, y=0.1)
    if lower:
        ax.invert_xaxis()
    if x_key.startswith("rfid") and drawn[x_key].min() > 0 and drawn[x_key].max() / drawn[x_key].min() > 20:
        ax.set_xscale("log")
    y_names = drawn["y_name"].unique()
    ax.set_xlabel(f"reconstruction: {x_name} ({'lower' if lower else 'higher'} is better; better to the right)")
    ax.set_ylabel(y_names[0] if len(y_names) == 1 else "understanding: " + " / ".join(y_names))
    ax.set_title(f"understanding vs reconstruction on {data}", fontsize=9)
    ax.grid(True, alpha=0.3)
    pad = max(1.0, 0.05 * (drawn["y"].max() - drawn["y"].min()))
    ax.set_ylim(max(0.0, drawn["y"].min() - pad), min(100.0, drawn["y"].max() + pad))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def understanding_html(jobs: list[dict[str, Any]]) -> str:
    """The same table for the HTML page (empty string without probe results)."""
    import html

    frame = tradeoff_frame(jobs)
    if frame.empty:
        return ""
    return ("<h2>Understanding vs reconstruction</h2>"
            + tradeoff_table(frame).to_html(index=False, table_id="understanding", border=0)
            + "<p class='note'>" + html.escape("k-NN (k = 20 unless marked): DINO's weighted k-NN on the tokenizer's "
                                               "mean-pooled token features; linear probe: the CLIP paper's logistic "
                                               "regression (see Protocols). Figure: tradeoff.png.") + "</p>")
