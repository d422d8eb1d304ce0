"""The objects every tokenizer adapter speaks: `Tokens`, `TokenizerSpec` and `Tokenizer`.

Images cross module boundaries as float tensors in [0, 1], shape (B, 3, H, W). Each adapter turns
them into whatever its model expects (e.g. [-1, 1]) inside `encode` and back inside `decode`.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch


class TokbenchError(Exception):
    """A user-facing error: the message says what was wrong and what to do next."""


class MetricUnavailable(TokbenchError):
    """A metric's program or package is not on this machine (e.g. the tesseract binary): the job runs
    without that metric and lists it as skipped with this message, as for a metric network's missing weights."""


def is_options_mismatch(error: TypeError, options: Any) -> bool:
    """Whether `error` says a call refused one of the user's option names (`options`), as opposed to a
    TypeError from a bug inside the called code, which must surface as one."""
    m = re.search(r"unexpected keyword argument '([^']+)'", str(error))
    return m is not None and m.group(1) in set(options)


def check_images(images: torch.Tensor, *, what: str = "images") -> torch.Tensor:
    """Validate the (B, 3, H, W) float [0, 1] image convention and return the tensor unchanged."""
    if not isinstance(images, torch.Tensor):
        raise TokbenchError(f"{what} must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise TokbenchError(f"{what} must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TokbenchError(
            f"{what} must be a float tensor in [0, 1], got dtype {images.dtype}; divide uint8 images by 255"
        )
    return images


@dataclass
class Tokens:
    """What `Tokenizer.encode` returns.

    Exactly one of `ids` (LongTensor (B, N), or (B, N, C) for C parallel codebooks) and
    `features` (float (B, N, D), continuous tokenizers) is set. `lengths` (B,) is given when images
    carry different numbers of tokens (codecs: bytes per image; the rest of a row is padding, -1).
    `bits` (B,) overrides the default size estimate N * sum(log2 K) when the real size is known.
    """

    ids: torch.Tensor | None = None
    features: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    codebook_size: int | tuple[int, ...] | None = None
    lengths: torch.Tensor | None = None
    bits: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.ids is None) == (self.features is None):
            raise TokbenchError("Tokens needs exactly one of `ids` (discrete) or `features` (continuous)")

    @property
    def batch_size(self) -> int:
        return int((self.ids if self.ids is not None else self.features).shape[0])

    @property
    def tokens_per_image(self) -> torch.Tensor:
        """Number of token positions per image, (B,) float."""
        if self.lengths is not None:
            return self.lengths.to(torch.float64)
        x = self.ids if self.ids is not None else self.features
        return torch.full((x.shape[0],), float(x.shape[1]), dtype=torch.float64)

    @property
    def bits_per_token(self) -> float | None:
        """log2 of the codebook size(s), summed over parallel codebooks; None for continuous tokens."""
        if self.codebook_size is None:
            return None
        sizes = self.codebook_size if isinstance(self.codebook_size, tuple) else (self.codebook_size,)
        if self.ids is not None and self.ids.ndim == 3 and len(sizes) == 1:
            sizes = sizes * self.ids.shape[2]
        return float(sum(math.log2(k) for k in sizes))

    @property
    def bits_per_image(self) -> torch.Tensor | None:
        """Bits needed to store each image's tokens at a fixed-length code, (B,) float64."""
        if self.bits is not None:
            return self.bits.to(torch.float64).cpu()
        bpt = self.bits_per_token
        if bpt is None:
            return None
        return self.tokens_per_image * bpt

    def to(self, device: torch.device | str) -> Tokens:
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return replace(self, ids=move(self.ids), features=move(self.features), lengths=move(self.lengths))


@dataclass(frozen=True)
class TokenizerSpec:
    """What a tokenizer is, as recorded next to every number it produces.

    `resolution` is the native input side in pixels (H = W); `tokens_per_image` the count at that
    resolution (the maximum K for variable-length tokenizers); `normalisation` describes the value range
    the model sees internally (inputs to `encode` are always [0, 1]).
    """

    name: str
    family: str
    resolution: int | None
    tokens_per_image: int | None
    codebook_size: int | tuple[int, ...] | None
    bits_per_token: float | None
    supports_decode: bool = True
    variable_length: bool = False
    normalisation: str = "[0, 1]"
    preprocessing: str = "resize-crop"
    dtype: str = "float32"
    source: dict[str, str] = field(default_factory=dict)
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["codebook_size"], tuple):
            d["codebook_size"] = list(d["codebook_size"])
        return d


def bits_for(codebook_size: int | tuple[int, ...] | None) -> float | None:
    if codebook_size is None:
        return None
    sizes = codebook_size if isinstance(codebook_size, tuple) else (codebook_size,)
    return float(sum(math.log2(k) for k in sizes))


class Tokenizer:
    """Base class of every adapter.

    Subclasses set `self.spec` and implement `encode`; those with a decoder implement `decode`.
    `encode_options` names the keyword arguments that `encode` takes (for instance `n_tokens`): the
    family's declaration (`Family.encode_options`), set by `load_tokenizer`. Every subclass's `encode`
    is wrapped once, here, to refuse any other keyword with one message.
    """

    spec: TokenizerSpec
    encode_options: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "encode" in cls.__dict__ and not getattr(cls.__dict__["encode"], "_checks_options", False):
            cls.encode = _refusing_unknown_options(cls.__dict__["encode"])  # type: ignore[method-assign]

    def __init__(self) -> None:
        self.device = torch.device("cpu")

    def encode(self, images: torch.Tensor, **options: Any) -> Tokens:
        raise NotImplementedError

    def decode(self, tokens: Tokens) -> torch.Tensor:
        raise TokbenchError(
            f"{self.spec.name} has no decoder (spec.supports_decode is False): it cannot reconstruct images"
        )

    @torch.inference_mode()
    def reconstruct(self, images: torch.Tensor, **options: Any) -> tuple[Tokens, torch.Tensor]:
        tokens = self.encode(images, **options)
        return tokens, self.decode(tokens)

    def to(self, device: torch.device | str) -> Tokenizer:
        """Move the model to `device`; adapters with modules override `_move`."""
        self.device = torch.device(device)
        self._move(self.device)
        return self

    def _move(self, device: torch.device) -> None:  # pragma: no cover - trivial default
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r})"


def _refusing_unknown_options(encode: Any) -> Any:
    @functools.wraps(encode)
    def checked(self: Tokenizer, images: torch.Tensor, **options: Any) -> Tokens:
        if unknown := sorted(set(options) - set(self.encode_options)):
            takes = ", ".join(self.encode_options) or "no options"
            raise TokbenchError(f"{self.spec.name}.encode takes {takes}; got {unknown}")
        return encode(self, images, **options)

    checked._checks_options = True  # type: ignore[attr-defined]
    return checked


class ModuleTokenizer(Tokenizer):
    """A tokenizer backed by an `nn.Module` held in `self.model` (kept in eval mode, no gradients)."""

    model: torch.nn.Module

    def _move(self, device: torch.device) -> None:
        self.model.to(device)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `dtype` option ("float32", "bfloat16", "float16"), or a clear error."""
    if name not in DTYPES:
        raise TokbenchError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


class GridVQTokenizer(ModuleTokenizer):
    """A VQ tokenizer over a 2D grid whose model works on [-1, 1] images: ids (B, h*w), row-major (y, x).

    `downsample`, `codebook_size`, `encode_grid(x) -> ids (B, h, w)` and `decode_grid(ids (B, h, w)) ->
    images in [-1, 1]` default to the model's `config.downsample`, `config.n_embed`, `encode_ids` and
    `decode_ids` (the taming-style models share that contract); subclasses override what differs. This
    class checks inputs, maps [0, 1] to the model's range (x * 2 - 1, i.e. Normalize(0.5, 0.5)) and back
    ((x + 1) / 2, clamped to [0, 1]).
    """

    def __init__(self, model: torch.nn.Module, spec: TokenizerSpec, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False).to(dtype)
        self.dtype = dtype
        self.spec = spec

    @property
    def downsample(self) -> int:
        return self.model.config.downsample

    @property
    def codebook_size(self) -> int:
        return self.model.config.n_embed

    def encode_grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_ids(x)

    def decode_grid(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.decode_ids(ids)

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """Checked images (B, 3, H, W) in [0, 1], sides divisible by the downsample factor, as the model sees
        them: x * 2 - 1 in the model's dtype."""
        check_images(images)
        h, w = images.shape[-2:]
        f = self.downsample
        if h % f or w % f:
            raise TokbenchError(
                f"{self.spec.name} needs image sides divisible by {f} (its downsample factor), got {h}x{w}; "
                f"preprocess to {self.spec.resolution}x{self.spec.resolution} (protocol '{self.spec.preprocessing}')"
            )
        return (images.to(self.device, torch.float32) * 2 - 1).to(self.dtype)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Tokens:
        x = self.model_input(images)  # checked first: a wrong input is a clear error, not an AttributeError
        h, w = images.shape[-2:]
        ids = self.encode_grid(x)
        return Tokens(
            ids=ids.reshape(ids.shape[0], -1),
            grid=(int(ids.shape[1]), int(ids.shape[2])),
            codebook_size=self.codebook_size,
            meta={"dtype": str(self.dtype).replace("torch.", ""), "size": (int(h), int(w))},
        )

    def grid_ids(self, tokens: Tokens) -> torch.Tensor:
        """Validated ids as (B, h, w); a missing grid is taken as square (as Janus and Chameleon generate)."""
        if tokens.ids is None:
            raise TokbenchError(f"{self.spec.name} decodes discrete ids; got continuous Tokens.features")
        ids = tokens.ids.to(self.device).long()
        grid = tokens.grid
        if grid is None:
            side = math.isqrt(ids.shape[1])
            if side * side != ids.shape[1]:
                raise TokbenchError(f"Tokens.grid is unset and {ids.shape[1]} ids do not form a square grid")
            grid = (side, side)
        if grid[0] * grid[1] != ids[0].numel():
            raise TokbenchError(f"Tokens.grid {grid} does not match {ids[0].numel()} ids per image")
        k = self.codebook_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= k):
            raise TokbenchError(f"token ids must lie in [0, {k}), got [{int(ids.min())}, {int(ids.max())}]")
        return ids.view(ids.shape[0], grid[0], grid[1])

    @torch.inference_mode()
    def decode(self, tokens: Tokens) -> torch.Tensor:
        x = self.decode_grid(self.grid_ids(tokens)).float()
        return ((x + 1) / 2).clamp(0, 1)
