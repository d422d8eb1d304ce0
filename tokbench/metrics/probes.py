"""Understanding metrics: probes on a tokenizer's own token features (weighted k-NN, a linear classifier)
and image-text retrieval (`retrieval`, at the end of this module).

Both read `tokenizer.features(images, stage)` (`tokbench.features`), mean-pooled over tokens, for every
labelled image of the job: the training split and the evaluation split of the data entry (`split:
{train: 0.5, seed: 0}` or `train: SOURCE`, see `tokbench.data.with_train_split`). The pooled features,
labels, data-set positions and split flags are streamed into `cat` states, so they are saved with the
job's state (a killed run resumes), gathered from every rank and put back in data-set order before the
probe runs, once, on rank 0 in `compute` (a torchrun run equals a one-process run).

- `knn`: DINO's weighted k-NN (facebookresearch/dino `eval_knn.py`): L2-normalised features, cosine
  similarity of each evaluation image to every training image, the k most similar vote for their class
  with weight exp(sim / T), T = 0.07; top-1 and top-5 accuracy in %, for k in {10, 20, 100, 200}. k above
  the number of training images is clamped to it (`knn_k{K}_effective`). Ties are broken the same way every
  time: among equally similar training images the earlier data-set position is nearer; among classes with
  equal votes the lower class id ranks first (classes without a vote after every voted one). Top-5 counts
  the first min(5, k) ranked classes (as DINO).
- `linear_probe`: the CLIP paper's recipe: features standardised (training-split mean and std), a
  multinomial logistic regression fitted by L-BFGS (scikit-learn `LogisticRegression`, max_iter 1000), the
  L2 strength chosen on a stratified hold-out of the training split (default 20%) by CLIP's parametric
  search: C = 1e-6, 1e-4, ..., 1e6, then the interval around the best halved (in log scale) 4 times, to
  8 steps per decade (ties: the C nearest 1, then the smaller); then refitted on the whole training split
  with that C. `linear_probe_C` (scikit-learn's inverse strength, lambda = 1 / C), the iterations and
  whether L-BFGS converged are reported with the accuracy.

Option `features`: the stage (`post_quant`, `pre_quant`, `semantic`; default `post_quant` where the
tokenizer has it, else its only stage); a stage given other than `post_quant` suffixes every key
(`knn_top1_k20_pre_quant`). A tokenizer without features (codecs), or without the stage asked for, is a
recorded skip of the metric, not a failure.

Memory: each probe keeps N x D float32 pooled features (N = training + evaluation images) in host memory
and in the job's state file; past `max_memory_gb` (default 8) the job stops at its first batch with a
message naming the size, before anything is computed. k-NN then works in chunks of evaluation images
(similarities of at most 2^28 floats at a time) on the run's device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core import TokbenchError, Tokenizer
from ..features import POOLING, STAGES, default_stage, pooled_features, stage_problem
from .base import BenchMetric, EvalBatch, register_metric

KNN_KS = (10, 20, 100, 200)
KNN_TEMPERATURE = 0.07
_SIM_CHUNK = 2**28  # floats of similarities held at once


class FeatureProbe(BenchMetric):
    """Collects pooled token features of labelled images with their split; subclasses probe them."""

    needs_decode = False
    reads_train_images = True  # the runner gives this metric the training split's images too
    higher_is_better = True

    def __init__(self, features: str | None = None, max_memory_gb: float = 8.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if features is not None and features not in STAGES:
            raise TokbenchError(f"{self.name} features must be one of {', '.join(STAGES)}, got {features!r}")
        if not max_memory_gb > 0:
            raise TokbenchError(f"{self.name} max_memory_gb must be > 0, got {max_memory_gb!r}")
        self.features = features
        self.max_memory_gb = float(max_memory_gb)
        self.suffix = "" if features in (None, "post_quant") else f"_{features}"
        self.add_state("feats", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("positions", default=[], dist_reduce_fx="cat")
        self.add_state("is_train", default=[], dist_reduce_fx="cat")
        self.add_state("unlabelled", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # index into STAGES + 1 of the stage read (0: none yet); max-reduced, so it survives resume and ranks
        self.add_state("stage_code", torch.tensor(0, dtype=torch.long), dist_reduce_fx="max")
        self.tokenizer_name = ""

    def unavailable_for(self, tokenizer: Tokenizer) -> str | None:
        """Why this probe cannot run on `tokenizer` (a codec, a missing stage), or None."""
        return stage_problem(tokenizer, self.features)

    @property
    def stage(self) -> str | None:
        code = int(self.stage_code)
        return STAGES[code - 1] if code else self.features

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        tok = batch.tokenizer
        if (why := self.unavailable_for(tok)) is not None:
            raise TokbenchError(why)
        split = batch.extra.get("split")
        if split is None:
            raise TokbenchError(
                f"{self.name} needs a training split: give the suite's data entry `split: {{train: 0.5, seed: 0}}` "
                "(a stratified split of the labelled set) or `train: SOURCE` (a separate labelled set)"
            )
        stage = self.features or default_stage(tok)
        self.stage_code = torch.tensor(STAGES.index(stage) + 1, device=self.stage_code.device)
        self.tokenizer_name = tok.spec.name
        n = batch.originals.shape[0]
        labels = batch.labels if batch.labels is not None else torch.full((n,), -1, dtype=torch.long)
        labels = labels.cpu().long()
        keep = labels >= 0
        self.unlabelled += int((~keep).sum())
        self.last_rows = {}
        if not bool(keep.any()):
            return
        images = batch.extra.get("inputs", batch.originals)
        pooled = pooled_features(tok, images, stage, batch)
        self._check_memory(pooled.shape[1], batch.extra.get("dataset_size"))
        train = torch.tensor([s == "train" for s in split], dtype=torch.bool)
        self.feats.append(pooled[keep])
        self.labels.append(labels[keep])
        self.positions.append(batch.index.cpu().long()[keep])
        self.is_train.append(train[keep])

    def _check_memory(self, dim: int, dataset_size: int | None) -> None:
        held = sum(int(f.shape[0]) for f in self.feats)
        n = max(int(dataset_size or 0), held)
        need = n * dim * 4 / 2**30
        if need > self.max_memory_gb:
            raise TokbenchError(
                f"{self.name} would hold {n:,} pooled features of {dim} floats ({need:.1f} GiB), over its limit "
                f"max_memory_gb={self.max_memory_gb:g}: lower the data entry's `limit` or `train_per_class`, or "
                "raise max_memory_gb"
            )

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features (N, D) float32, labels (N,), is_train (N,)) of every labelled image, in data-set order."""
        if not self.feats:
            raise TokbenchError(f"{self.name} saw no labelled image: it needs class labels (class sub-folders)")
        pos = torch.cat([p.cpu() for p in self.positions])
        order = torch.argsort(pos, stable=True)
        if pos.unique().numel() != pos.numel():
            raise TokbenchError(f"{self.name}: an image was counted twice (positions repeat); re-run with --fresh")
        feats = torch.cat([f.cpu() for f in self.feats])[order]
        labels = torch.cat([x.cpu() for x in self.labels])[order]
        train = torch.cat([x.cpu() for x in self.is_train])[order]
        if not bool(train.any()):
            raise TokbenchError(f"{self.name}: no labelled image is in the training split")
        if bool(train.all()):
            raise TokbenchError(f"{self.name}: every labelled image is in the training split; none to evaluate")
        return feats, labels, train

    def directions(self, results: dict[str, Any]) -> dict[str, str]:
        """Accuracies are better higher; image counts, the chosen C, iterations and clamped k are no score."""
        return {k: "higher" for k in results if "_top1" in k or "_top5" in k}

    def _counts(self, train: torch.Tensor) -> dict[str, float]:
        p = self.name
        return {f"{p}_train_images{self.suffix}": float(train.sum()),
                f"{p}_eval_images{self.suffix}": float((~train).sum())}

    def _features_protocol(self) -> str:
        return (f"features: {self.tokenizer_name or 'the tokenizer'}.features(images, {self.stage!r}), "
                f"{POOLING}; images without a label are left out ({int(self.unlabelled)})")


# ----------------------------------------------------------------------------------------------- k-NN


def knn_classify(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, ks: tuple[int, ...],
                 temperature: float = KNN_TEMPERATURE, num_classes: int | None = None
                 ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """DINO's weighted k-NN. For each k: (top-1 hit, top-5 hit) per test row, bool (M,).

    `train` (N, D) and `test` (M, D) are L2-normalised here; each k is clamped to N by the caller.
    """
    train = F.normalize(train.float(), dim=1)
    test = F.normalize(test.float(), dim=1)
    n = train.shape[0]
    c = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    kmax = max(ks)
    out = {k: ([], []) for k in ks}
    rows = max(1, _SIM_CHUNK // max(n, 1))
    for start in range(0, test.shape[0], rows):
        sim = test[start:start + rows] @ train.T
        # stable: among equal similarities the earlier training position comes first
        values, order = torch.sort(sim, dim=1, descending=True, stable=True)
        values, order = values[:, :kmax], order[:, :kmax]
        neighbours = train_labels[order]
        weights = (values / temperature).exp()
        for k in ks:
            votes = torch.zeros(sim.shape[0], c, dtype=torch.float32, device=sim.device)
            votes.scatter_add_(1, neighbours[:, :k], weights[:, :k])
            ranked = torch.sort(votes, dim=1, descending=True, stable=True).indices  # ties: lower class first
            out[k][0].append(ranked[:, 0])
            out[k][1].append(ranked[:, : min(5, k, c)])
    return {k: (torch.cat(top1), torch.cat(top5)) for k, (top1, top5) in out.items()}


@register_metric("knn")
class KNNProbe(FeatureProbe):
    """Weighted k-NN top-1 / top-5 accuracy (%) of the evaluation images against the training images.

    Options: `features` (stage), `k` (a list; default 10, 20, 100, 200), `temperature` (0.07), `max_memory_gb`.
    """

    name = "knn"

    def __init__(self, features: str | None = None, k: list[int] | tuple[int, ...] = KNN_KS,
                 temperature: float = KNN_TEMPERATURE, max_memory_gb: float = 8.0, **kwargs: Any) -> None:
        super().__init__(features, max_memory_gb, **kwargs)
        ks = (k,) if isinstance(k, int) else tuple(k)
        if not ks or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in ks):
            raise TokbenchError(f"knn k must be positive integers, got {k!r}")
        if not temperature > 0:
            raise TokbenchError(f"knn temperature must be > 0, got {temperature!r}")
        self.ks = tuple(sorted(set(ks)))
        self.temperature = float(temperature)
        self.clamped: dict[int, int] = {}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        feats, labels, train = self.gathered()
        n_train = int(train.sum())
        used = {k: min(k, n_train) for k in self.ks}
        self.clamped = {k: u for k, u in used.items() if u != k}
        device = self.stage_code.device
        hits = knn_classify(feats[train].to(device), labels[train].to(device), feats[~train].to(device),
                            tuple(sorted(set(used.values()))), self.temperature, int(labels.max()) + 1)
        target = labels[~train].to(device)
        out: dict[str, float] = {}
        for k in self.ks:
            top1, top5 = hits[used[k]]
            out[f"knn_top1_k{k}{self.suffix}"] = 100.0 * float((top1 == target).double().mean())
            out[f"knn_top5_k{k}{self.suffix}"] = 100.0 * float((top5 == target[:, None]).any(1).double().mean())
            if k in self.clamped:
                out[f"knn_k{k}_effective{self.suffix}"] = float(used[k])
        return {**out, **self._counts(train)}

    def protocol(self) -> dict[str, Any]:
        clamped = "; ".join(f"k={k} clamped to {u} (the training images)" for k, u in self.clamped.items())
        return {f"knn{self.suffix}": (
            f"weighted k-NN (DINO eval_knn.py): L2-normalised features, cosine similarity to every training "
            f"image, the k nearest vote with weight exp(sim / {self.temperature:g}); k in {list(self.ks)}"
            f"{'; ' + clamped if clamped else ''}; ties: earlier training position nearer, lower class id first; "
            f"top-5 = first min(5, k) classes; accuracy in % of the evaluation split; {self._features_protocol()}"
        )}


# ------------------------------------------------------------------------------------------ linear probe


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A bool mask of held-out rows: per class, fraction * n (rounded half up) of its n rows (at least 1 when n >= 2,
    never all of them), drawn with `seed`. Classes with one row stay in the fitting part."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < 2:
            continue
        m = min(max(1, int(np.floor(fraction * len(rows) + 0.5))), len(rows) - 1)
        held[rng.permutation(rows)[:m]] = True
    return held


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, max_iter: int) -> Any:
    """scikit-learn's multinomial L-BFGS logistic regression with inverse L2 strength `c`, on features
    standardised with their own mean and std; returns (scaler, model)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported as `linear_probe_converged`
        model.fit(scaler.transform(x), y)
    return scaler, model


def _topk_hits(scaler: Any, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    proba = model.predict_proba(scaler.transform(x))
    k = min(5, proba.shape[1])
    # stable descending order: among equal probabilities the lower class id ranks first
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    ranked = model.classes_[order]
    return ranked[:, 0] == y, (ranked == y[:, None]).any(axis=1)


@register_metric("linear_probe", packages=("scikit-learn",))  # L-BFGS and its tolerances
class LinearProbe(FeatureProbe):
    """Linear probe top-1 / top-5 accuracy (%) on the frozen pooled features (the CLIP paper's recipe).

    Options: `features`, `C` (a fixed inverse L2 strength: no sweep), `holdout` (0.2 of the training split
    for the sweep), `max_iter` (1000), `refine` (halvings of the interval around the best C, 4), `seed` (0),
    `max_memory_gb`.
    """

    name = "linear_probe"
    GRID = tuple(10.0**e for e in range(-6, 7, 2))  # CLIP's starting points, x100 apart

    def __init__(self, features: str | None = None, C: float | None = None, holdout: float = 0.2,  # noqa: N803
                 max_iter: int = 1000, refine: int = 4, seed: int = 0, max_memory_gb: float = 8.0,
                 **kwargs: Any) -> None:
        super().__init__(features, max_memory_gb, **kwargs)
        if C is not None and not C > 0:
            raise TokbenchError(f"linear_probe C must be > 0, got {C!r}")
        if not 0 < holdout < 1:
            raise TokbenchError(f"linear_probe holdout must be in (0, 1), got {holdout!r}")
        if not isinstance(max_iter, int) or max_iter < 1 or not isinstance(refine, int) or refine < 0:
            raise TokbenchError(f"linear_probe max_iter must be >= 1 and refine >= 0, got {max_iter!r}, {refine!r}")
        self.fixed_c, self.holdout, self.max_iter, self.refine, self.seed = C, holdout, max_iter, refine, seed
        self.sweep: dict[float, float] = {}
        self.chosen: float | None = None

    def select_c(self, x: np.ndarray, y: np.ndarray) -> float:
        """The C with the best hold-out top-1; on ties the one nearest (in log scale) to scikit-learn's
        default C = 1, then the smaller (a tie says nothing, e.g. on a tiny hold-out)."""
        held = stratified_holdout(y, self.holdout, self.seed)
        if not held.any() or len(np.unique(y[~held])) < 2:
            raise TokbenchError("linear_probe: the training split is too small to hold out a validation part "
                                "(each class needs 2 images); give a fixed `C`")
        self.sweep = {}

        def score(c: float) -> float:
            if c not in self.sweep:
                scaler, model = fit_logistic(x[~held], y[~held], c, self.max_iter)
                self.sweep[c] = float(_topk_hits(scaler, model, x[held], y[held])[0].mean())
            return self.sweep[c]

        def rank(c: float) -> tuple[float, float, float]:
            return score(c), -abs(math.log10(c)), -c

        best = max(self.GRID, key=rank)
        step = 100.0
        for _ in range(self.refine):
            step = math.sqrt(step)
            best = max((best / step, best, best * step), key=rank)
        return best

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        feats, labels, train = self.gathered()
        x, y = feats.double().numpy(), labels.numpy()
        xt, yt, xe, ye = x[train.numpy()], y[train.numpy()], x[~train.numpy()], y[~train.numpy()]
        if len(np.unique(yt)) < 2:
            raise TokbenchError("linear_probe needs at least 2 classes in the training split")
        self.chosen = float(self.fixed_c) if self.fixed_c is not None else self.select_c(xt, yt)
        scaler, model = fit_logistic(xt, yt, self.chosen, self.max_iter)
        top1, top5 = _topk_hits(scaler, model, xe, ye)
        iters = int(np.max(model.n_iter_))
        s = self.suffix
        return {f"linear_probe_top1{s}": 100.0 * float(top1.mean()), f"linear_probe_top5{s}": 100.0 * float(top5.mean()),
                f"linear_probe_C{s}": self.chosen, f"linear_probe_iterations{s}": float(iters),
                f"linear_probe_converged{s}": float(iters < self.max_iter), **self._counts(train)}

    def protocol(self) -> dict[str, Any]:
        how = (f"C fixed at {self.fixed_c:g}" if self.fixed_c is not None else
               f"C chosen on a stratified {self.holdout:g} hold-out of the training split (seed {self.seed}) from "
               f"1e-6..1e6 (x100), the interval around the best halved {self.refine}x (CLIP's search); hold-out "
               "top-1 per C: "
               + ", ".join(f"{c:.3g}: {100 * a:.1f}%" for c, a in sorted(self.sweep.items())))
        return {f"linear_probe{self.suffix}": (
            "CLIP-paper linear probe: features standardised (training mean/std), multinomial logistic regression "
            f"by L-BFGS (scikit-learn LogisticRegression, max_iter {self.max_iter}), {how}; refitted on the whole "
            f"training split with C = {self.chosen if self.chosen is not None else '?'} (lambda = 1 / C); "
            f"accuracy in % of the evaluation split; {self._features_protocol()}"
        )}


# ------------------------------------------------------------------------------------------- retrieval


def recall_at(img: torch.Tensor, txt: torch.Tensor, txt_owner: torch.Tensor, ks: tuple[int, ...]
              ) -> dict[str, float]:
    """Image-to-text and text-to-image Recall@K in %, from L2-normalised image (N, E) and caption (M, E)
    embeddings; caption j belongs to image txt_owner[j] (0..N-1). An image is retrieved correctly at K when any
    of its captions is among the K captions most similar to it; a caption when its image is among its K."""
    n, m = img.shape[0], txt.shape[0]
    kmax_t, kmax_i = min(max(ks), m), min(max(ks), n)
    i2t = torch.empty(n, kmax_t, dtype=torch.bool, device=img.device)
    rows = max(1, _SIM_CHUNK // max(m, 1))
    for s in range(0, n, rows):
        top = (img[s:s + rows] @ txt.T).topk(kmax_t, dim=1).indices
        i2t[s:s + rows] = txt_owner[top] == torch.arange(s, min(s + rows, n), device=img.device)[:, None]
    t2i = torch.empty(m, kmax_i, dtype=torch.bool, device=img.device)
    rows = max(1, _SIM_CHUNK // max(n, 1))
    for s in range(0, m, rows):
        top = (txt[s:s + rows] @ img.T).topk(kmax_i, dim=1).indices
        t2i[s:s + rows] = top == txt_owner[s:s + rows, None]
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float(i2t[:, :k].any(1).double().mean())
        out[f"t2i_r{k}"] = 100.0 * float(t2i[:, :k].any(1).double().mean())
    return out


@register_metric("retrieval", packages=("open_clip_torch", "transformers"))
class Retrieval(BenchMetric):
    """Image-text retrieval Recall@1/5/10 (%) on a captioned set (`folder:` with `.txt` captions, one per line,
    or `karpathy:` COCO / Flickr30k JSON: its test split, 5 captions per image).

    `encoder` None (default): the tokenizer's own image and text towers (`clip_encoder()`: UniTok, QLIP,
    VILA-U; the image embedding from its tokens), keys `retrieval_i2t_r{K}`, `retrieval_t2i_r{K}`; a tokenizer
    without a text tower is a recorded skip. `encoder` NAME (an open_clip encoder of `ENCODERS`, e.g. the
    SigLIP with its text model, or any object with `encode_image` / `encode_text`): that encoder on the
    originals and on the tokenizer's reconstructions, keys `retrieval_<encoder>_i2t_r{K}` and `..._recon`.
    Images without a caption are left out (counted).
    """

    name = "retrieval"
    needs_decode = False
    higher_is_better = True

    def __init__(self, encoder: str | Any | None = None, weights: str | None = None,
                 k: list[int] | tuple[int, ...] = (1, 5, 10), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        import re

        from .encoders import load_encoder

        self.ks = tuple(sorted(set((k,) if isinstance(k, int) else k)))
        if not self.ks or any(not isinstance(x, int) or x < 1 for x in self.ks):
            raise TokbenchError(f"retrieval k must be positive integers, got {k!r}")
        self.encoder_name = None
        self._encoders: list[Any] = []  # a list: nn.Module must not adopt the encoder's parameters
        if encoder is not None:
            enc = load_encoder(encoder, weights) if isinstance(encoder, str) else encoder
            self.encoder_name = encoder if isinstance(encoder, str) else getattr(encoder, "name", type(encoder).__name__)
            self._encoders.append(enc)
            self.needs_decode = True  # a named encoder scores the reconstructions
        self.prefix = "retrieval" + ("" if encoder is None else "_" + re.sub(r"\W+", "_", self.encoder_name))
        for s in ("img", "img_pos", "recon", "txt", "txt_pos"):
            self.add_state(s, default=[], dist_reduce_fx="cat")
        self.add_state("uncaptioned", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.tower = ""

    def unavailable_for(self, tokenizer: Tokenizer) -> str | None:
        if self.encoder_name is None and not callable(getattr(tokenizer, "clip_encoder", None)):
            return (f"{tokenizer.spec.name} has no text tower (no clip_encoder()); give retrieval an `encoder:` to "
                    "measure an image-text encoder on its reconstructions")
        return None

    def _encoder(self, tokenizer: Tokenizer) -> Any:
        if self.encoder_name is not None:
            return self._encoders[0]
        if not self._encoders or self._encoders[0][0] is not tokenizer:
            self._encoders[:] = [(tokenizer, tokenizer.clip_encoder())]
        return self._encoders[0][1]

    def update(self, batch: EvalBatch) -> None:  # type: ignore[override]
        from .encoders import move_encoder

        self.last_rows = {}
        captions = batch.captions or [None] * batch.originals.shape[0]
        lines = [[c.strip() for c in (text or "").splitlines() if c.strip()] for text in captions]
        keep = [j for j, c in enumerate(lines) if c]
        self.uncaptioned += len(lines) - len(keep)
        if not keep:
            return
        enc = self._encoder(batch.tokenizer)
        move_encoder(enc, batch.originals.device)
        self.tower = getattr(enc, "name", type(enc).__name__)
        rows = torch.tensor(keep, device=batch.originals.device)

        def embed(images: torch.Tensor) -> torch.Tensor:
            return F.normalize(enc.encode_image(images[rows]).float(), dim=-1).cpu()

        self.img.append(embed(batch.originals))
        if self.encoder_name is not None:
            if batch.reconstructions is None:
                raise TokbenchError(f"{self.prefix} needs reconstructions; {batch.tokenizer!r} has no decoder")
            self.recon.append(embed(batch.reconstructions))
        positions = batch.index.cpu().long()[keep]
        self.img_pos.append(positions)
        texts = [t for j in keep for t in lines[j]]
        self.txt.append(F.normalize(enc.encode_text(texts).float(), dim=-1).cpu())
        self.txt_pos.append(torch.cat([positions[i].repeat(len(lines[j])) for i, j in enumerate(keep)]))

    def directions(self, results: dict[str, Any]) -> dict[str, str]:
        """Recalls are better higher; image and caption counts are no score."""
        return {k: "higher" for k in results if "_i2t_r" in k or "_t2i_r" in k}

    def compute(self) -> dict[str, float]:  # type: ignore[override]
        if not self.img:
            raise TokbenchError(f"{self.prefix} saw no captioned image: use a folder with .txt captions or a "
                                "karpathy: COCO / Flickr30k JSON")
        pos = torch.cat([p.cpu() for p in self.img_pos])
        order = torch.argsort(pos, stable=True)
        tpos = torch.cat([p.cpu() for p in self.txt_pos])
        torder = torch.argsort(tpos, stable=True)  # within an image its captions keep their order
        owner = torch.searchsorted(pos[order].contiguous(), tpos[torder].contiguous())
        txt = torch.cat([t.cpu() for t in self.txt])[torder]
        out = {f"{self.prefix}_{k}": v for k, v in
               recall_at(torch.cat([x.cpu() for x in self.img])[order], txt, owner, self.ks).items()}
        if self.recon:
            out.update({f"{self.prefix}_{k}_recon": v for k, v in
                        recall_at(torch.cat([x.cpu() for x in self.recon])[order], txt, owner, self.ks).items()})
        out[f"{self.prefix}_images"] = float(len(pos))
        out[f"{self.prefix}_captions"] = float(len(tpos))
        return out

    def protocol(self) -> dict[str, Any]:
        who = (f"the tokenizer's own image and text towers ({self.tower or 'clip_encoder()'})"
               if self.encoder_name is None else f"{self.tower or self.encoder_name} on the originals and, _recon, "
               "on the reconstructions")
        return {self.prefix: (
            f"image-to-text (i2t) and text-to-image (t2i) Recall@K in % for K in {list(self.ks)}: cosine of "
            f"L2-normalised embeddings, all images against all captions (one caption per line; an image counts as "
            f"found when any of its captions is in its top K); {who}; images without a caption left out "
            f"({int(self.uncaptioned)})"
        )}
