"""tokbench: benchmark image tokenizers on reconstruction, semantics, rate and speed."""

from .core import TokbenchError, Tokenizer, TokenizerSpec, Tokens
from .registry import Family, Variant, families, list_tokenizers, load_tokenizer, variants

__version__ = "0.1.0"

__all__ = [
    "Family",
    "Tokenizer",
    "TokenizerSpec",
    "Tokens",
    "TokbenchError",
    "Variant",
    "families",
    "list_tokenizers",
    "load_tokenizer",
    "variants",
]
