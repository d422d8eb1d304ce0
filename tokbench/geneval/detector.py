"""The `geneval_hf` detector path: transformers Mask2Former (COCO instance segmentation) and the open_clip
colour classifier, producing what GenEval's rules consume.

- `Mask2FormerDetector`: PIL image -> {GenEval class: [Instance(box, score, mask)]}. Post-processing follows
  mmdet 2.x's Mask2Former instance head (the official evaluator's): softmax over classes without "no object",
  top-`max_per_image` (query, class) pairs, mask logits upsampled bilinearly to the padded input, cropped to the
  image, upsampled to the original size, binarised at logit 0; score = class prob * mean sigmoid inside the mask;
  box = the mask's pixel extent [x0, y0, x1 + 1, y1 + 1] (mmdet's `mask2bbox`). transformers'
  `post_process_instance_segmentation` is not used because it resamples masks on a fixed 384 px grid with
  nearest upsampling and rounds scores to 6 decimals, which moves boxes and threshold decisions.
- `map_labels(id2label)`: the checkpoint's label ids -> GenEval's 80 names (COCO names, GenEval's three renames,
  common spellings); labels outside COCO's 80 things (panoptic stuff) are ignored.
- `color_crop`: upstream's `ImageCrops` item: the image composited on a #999 background through the mask, then
  cropped to the box (PIL rounds the box).
- `ClipColorClassifier`: upstream's zero-shot colour classifier (clip_benchmark's `zero_shot_classifier` and
  `run_classification`: per colour the mean of the normalised template embeddings, renormalised; logits
  100 * cos; argmax), over `COLOR_TEMPLATES` and `COLORS`, built once per class name.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core import TokbenchError
from ..weights import Artifact, register_artifact, resolve
from .rules import COLOR_TEMPLATES, COLORS, GENEVAL_CLASSES, GENEVAL_RENAMED, Instance

MASK2FORMER_SWIN_S_COCO = register_artifact(
    Artifact(
        name="mask2former-swin-small-coco-instance",
        repo_id="facebook/mask2former-swin-small-coco-instance",
        filename="model.safetensors",
        companions=("config.json", "preprocessor_config.json"),
        size=276_000_000,
        licence="see the model card (Mask2Former: MIT)",
        used_by="tokbench geneval --images (geneval_hf detector)",
    )
)
MAX_PER_IMAGE = 100  # mmdet Mask2Former test_cfg.max_per_image: (query, class) pairs kept per image
MASK_LOGIT_THRESHOLD = 0.0  # mmdet binarises mask logits at 0 (sigmoid 0.5)
MASK_SCORE_EPS = 1e-6  # mmdet's guard in the mean mask probability
BACKGROUND = "#999"  # upstream's `bgcolor` option default
CLIP_BATCH = 16  # upstream's DataLoader batch size
CLIP_LOGIT_SCALE = 100.0  # clip_benchmark's fixed scale

# Alternative spellings of COCO's thing classes (VOC-style, Detectron2 "-merged" names) -> GenEval names.
_ALIASES = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
            "diningtable": "dining table", "tvmonitor": "tv", "tv monitor": "tv", "hair dryer": "hair drier",
            "cellphone": "cell phone", "donuts": "donut"}  # fmt: skip


def _normalise(name: str) -> str:
    name = re.sub(r"[_\-]+", " ", str(name).strip().lower())
    return re.sub(r"\s+", " ", name)


def map_labels(id2label: dict[int | str, str]) -> dict[int, str]:
    """Label id -> GenEval class name for every label that is one of COCO's 80 thing classes.

    Raises when a GenEval class has no label or two labels claim one class (not a COCO instance checkpoint).
    """
    lookup = {n: n for n in GENEVAL_CLASSES}
    lookup.update({coco: geneval for geneval, coco in GENEVAL_RENAMED.items()})
    lookup.update(_ALIASES)
    mapping: dict[int, str] = {}
    for key, label in id2label.items():
        name = lookup.get(_normalise(label))
        if name is None:
            continue  # a stuff class of a panoptic checkpoint: GenEval never asks for it
        if name in mapping.values():
            other = next(k for k, v in mapping.items() if v == name)
            raise TokbenchError(f"detector labels {other} and {key} ({label!r}) both map to GenEval's {name!r}; "
                                "use a COCO instance-segmentation checkpoint")  # fmt: skip
        mapping[int(key)] = name
    missing = [n for n in GENEVAL_CLASSES if n not in mapping.values()]
    if missing:
        raise TokbenchError(f"the detector's labels do not cover GenEval's classes {missing[:6]}"
                            f"{' ...' if len(missing) > 6 else ''}; use a COCO instance-segmentation checkpoint "
                            "(e.g. facebook/mask2former-swin-small-coco-instance)")  # fmt: skip
    return mapping


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float [x0, y0, x1 + 1, y1 + 1] of each mask's pixels; zeros for an empty mask."""
    n = masks.shape[0]
    boxes = torch.zeros(n, 4, dtype=torch.float32)
    for i in range(n):
        xs = torch.nonzero(masks[i].any(dim=0)).flatten()
        ys = torch.nonzero(masks[i].any(dim=1)).flatten()
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def instance_postprocess(class_logits: torch.Tensor, mask_logits: torch.Tensor, valid: tuple[int, int],
                         padded: tuple[int, int], size: tuple[int, int],
                         max_per_image: int = MAX_PER_IMAGE) -> list[tuple[int, float, np.ndarray, np.ndarray]]:  # fmt: skip
    """One image's (label, score, box, mask) list, mmdet's Mask2Former instance post-processing.

    `class_logits` (Q, C + 1) with the last column "no object"; `mask_logits` (Q, h, w) at the model's mask
    stride over the padded input; `padded` (Hp, Wp) the padded input size, `valid` (Hv, Wv) its image part,
    `size` (H, W) the original image. Masks are (H, W) bool; boxes float32 pixels, x1/y1 exclusive.
    """
    n_classes = class_logits.shape[1] - 1
    scores = F.softmax(class_logits.float(), dim=-1)[:, :-1]
    k = min(max_per_image, scores.numel())
    top_scores, top = scores.flatten().topk(k, sorted=False)
    labels, queries = top % n_classes, torch.div(top, n_classes, rounding_mode="floor")
    # Only the chosen queries' masks are resized (the same per-query result as resizing all first).
    m = F.interpolate(mask_logits[queries][None].float(), size=padded, mode="bilinear", align_corners=False)
    m = m[:, :, : valid[0], : valid[1]]
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0]
    binary = m > MASK_LOGIT_THRESHOLD
    mask_scores = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + MASK_SCORE_EPS)
    det_scores = (top_scores * mask_scores).cpu()
    boxes = mask_to_box(binary.cpu())
    binary = binary.cpu().numpy()
    return [(int(labels[i]), float(det_scores[i]), boxes[i].numpy(), binary[i]) for i in range(k)]


class Mask2FormerDetector:
    """transformers Mask2Former as GenEval's detector: `detector(image) -> {class: [Instance]}` (with masks)."""

    def __init__(self, model: Any, processor: Any, *, source: str = "", device: str | torch.device = "cpu",
                 max_per_image: int = MAX_PER_IMAGE) -> None:  # fmt: skip
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = torch.device(device)
        self.labels = map_labels(model.config.id2label)
        self.source = source
        self.max_per_image = max_per_image

    @torch.inference_mode()
    def __call__(self, image: Any) -> dict[str, list[Instance]]:
        """PIL RGB image -> per GenEval class, instances in the detector's (unsorted) order."""
        batch = self.processor(images=image, return_tensors="pt")
        pixels = batch["pixel_values"].to(self.device)
        pixel_mask = batch.get("pixel_mask")
        if pixel_mask is None:
            valid = tuple(pixels.shape[-2:])
        else:
            pm = pixel_mask[0].bool()
            valid = (int(pm.any(dim=1).sum()), int(pm.any(dim=0).sum()))
        out = self.model(pixel_values=pixels, pixel_mask=None if pixel_mask is None else pixel_mask.to(self.device))
        found = instance_postprocess(out.class_queries_logits[0], out.masks_queries_logits[0], valid,
                                     tuple(pixels.shape[-2:]), (image.height, image.width), self.max_per_image)  # fmt: skip
        dets: dict[str, list[Instance]] = {}
        for label, score, box, mask in found:
            name = self.labels.get(label)
            if name is not None:
                dets.setdefault(name, []).append(Instance(box, np.float32(score), mask=mask))
        return dets

    def describe(self) -> dict[str, Any]:
        p = self.processor
        return {
            "backend": f"transformers {type(self.model).__name__}",
            "weights": self.source,
            "preprocessing": f"the checkpoint's {type(p).__name__} (size {_set_fields(getattr(p, 'size', None))}, "
            f"size_divisor {getattr(p, 'size_divisor', None)})",
            "postprocessing": f"mmdet 2.x Mask2Former instance head (top {self.max_per_image}, mask logits > 0, "
            "score = class prob * mean mask prob, box = mask extent)",
        }


def _set_fields(size: Any) -> Any:
    """A processor's size (a dict or transformers' SizeDict) without its unset fields."""
    items = size.items() if isinstance(size, dict) else vars(size).items() if hasattr(size, "__dict__") else None
    return size if items is None else {k: v for k, v in items if v is not None}


def load_detector(weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                  artifact: Artifact = MASK2FORMER_SWIN_S_COCO) -> Mask2FormerDetector:  # fmt: skip
    """Mask2Former from `weights` (a folder with config.json, preprocessor_config.json and model.safetensors)
    or the resolver (`$TOKBENCH_WEIGHTS/<artifact>/`, the HF cache, a download; offline: the fetch command)."""
    from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

    folder = Path(weights).expanduser() if weights is not None else None
    if folder is not None and not folder.is_dir():
        raise TokbenchError(f"--detector-weights {str(weights)!r} must be a folder holding config.json, "
                            f"preprocessor_config.json and {artifact.basename}")  # fmt: skip
    paths = [resolve(artifact, explicit=folder, filename=f) for f in (artifact.filename, *artifact.companions)]
    with tempfile.TemporaryDirectory(prefix="tokbench-mask2former-") as tmp:  # gather what from_pretrained reads
        for p in paths:
            (Path(tmp) / p.name).symlink_to(p.resolve())
        try:
            model = Mask2FormerForUniversalSegmentation.from_pretrained(tmp)
            processor = AutoImageProcessor.from_pretrained(tmp)
        except (OSError, ValueError) as e:
            raise TokbenchError(f"cannot load Mask2Former from {paths[0].parent}: {e}") from None
    source = str(folder) if folder is not None else f"{artifact.source} -> {paths[0].parent}"
    return Mask2FormerDetector(model, processor, source=source, device=device)


def color_crop(image: Any, box: np.ndarray, mask: np.ndarray | None, bgcolor: str = BACKGROUND,
               crop: bool = True) -> Any:  # fmt: skip
    """Upstream's `ImageCrops` item before the CLIP transform: RGB image, pixels outside `mask` (H, W) bool set to
    `bgcolor` ("original" keeps them), then cropped to `box` rounded half-to-even as PIL does."""
    from PIL import Image

    rgb = image.convert("RGB")
    if mask is not None:
        if tuple(mask.shape) != (rgb.height, rgb.width):
            raise TokbenchError(f"mask shape {tuple(mask.shape)} does not match the image ({rgb.height}, {rgb.width})")
        blank = rgb.copy() if bgcolor == "original" else Image.new("RGB", rgb.size, color=bgcolor)
        rgb = Image.composite(rgb, blank, Image.fromarray(np.asarray(mask, dtype=bool)))
    if crop:
        # Pillow 9.4 (upstream's pin) maps the float box with round(); newer Pillow rejects the array itself.
        rgb = rgb.crop(tuple(int(round(float(v))) for v in np.asarray(box)[:4]))
    return rgb


class ClipColorClassifier:
    """Zero-shot colour of each instance's crop, as upstream's `color_classification`.

    `model`: an open_clip model (`encode_image`, `encode_text`); `transform`: PIL -> (3, S, S) tensor (the
    model's eval preprocessing); `tokenizer`: list[str] -> token ids. `amp`: autocast float16 on CUDA as
    clip_benchmark's `run_classification` does by default (no effect on the CPU).
    """

    def __init__(self, model: Any, transform: Any, tokenizer: Any, *, name: str = "", device: str | torch.device = "cpu",
                 bgcolor: str = BACKGROUND, crop: bool = True, amp: bool = True) -> None:  # fmt: skip
        self.model = model.eval().to(device)
        self.transform = transform
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.bgcolor = bgcolor
        self.crop = crop
        self.amp = amp
        self._weights: dict[str, torch.Tensor] = {}

    def _autocast(self):
        on = self.amp and self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.float16) if on else nullcontext()

    @torch.no_grad()
    def class_weights(self, classname: str) -> torch.Tensor:
        """(D, 10) zero-shot weights for `classname`'s colours: per colour the renormalised mean of the
        normalised template embeddings."""
        if classname not in self._weights:
            columns = []
            with self._autocast():  # clip_benchmark 1.4 (upstream's pin) builds the classifier under autocast too
                for color in COLORS:
                    texts = [t.format(c=color, cls=classname) for t in COLOR_TEMPLATES]
                    emb = F.normalize(self.model.encode_text(self.tokenizer(texts).to(self.device)), dim=-1)
                    mean = emb.mean(dim=0)
                    columns.append(mean / mean.norm())
            self._weights[classname] = torch.stack(columns, dim=1)
        return self._weights[classname]

    @torch.no_grad()
    def logits(self, image: Any, classname: str, instances: list[Instance]) -> torch.Tensor:
        """(N, 10) colour logits of the instances' crops."""
        weights = self.class_weights(classname)
        crops = [self.transform(color_crop(image, inst.box, inst.mask, self.bgcolor, self.crop)) for inst in instances]
        out = []
        for start in range(0, len(crops), CLIP_BATCH):
            x = torch.stack(crops[start : start + CLIP_BATCH]).to(self.device)
            with self._autocast():
                feats = F.normalize(self.model.encode_image(x), dim=-1)
                out.append((CLIP_LOGIT_SCALE * feats @ weights).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(COLORS))

    def classify(self, image: Any, classname: str, instances: list[Instance]) -> list[str]:
        """One colour name per instance."""
        if not instances:
            return []
        return [COLORS[i] for i in self.logits(image, classname, instances).argmax(dim=1).tolist()]

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "crops": f"mask composited on {self.bgcolor}, {'cropped to the box' if self.crop else 'full image'}",
            "templates": " | ".join(COLOR_TEMPLATES),
            "amp": "float16 autocast on CUDA" if self.amp else "off",
        }


def load_color_classifier(model: str = "ViT-L-14", pretrained: str = "openai", weights: str | os.PathLike | None = None,
                          device: str | torch.device = "cpu", **options: Any) -> ClipColorClassifier:  # fmt: skip
    """open_clip `model`/`pretrained` (upstream: ViT-L-14, openai) with weights from the resolver."""
    from ..metrics.encoders import load_encoder, open_clip_spec

    encoder = load_encoder(open_clip_spec(model, pretrained), weights)
    return ClipColorClassifier(encoder.model, encoder.transform, encoder.tokenizer,
                               name=f"{encoder.name}; weights {encoder.weights}", device=device, **options)  # fmt: skip
