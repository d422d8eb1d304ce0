"""Types of the options tokenizer families take, as pydantic checks them in a suite.

Each family declares `Family.options` (option name -> one of these, or any annotation pydantic can
validate); `suite_check` validates suite options and sweep values against it before anything runs.
Kept apart from `registry` and `suite_check` so family modules and the suite check can both import it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .core import DTYPES

PositiveInt = Annotated[int, Field(ge=1)]
Quality = Annotated[int, Field(ge=0, le=100)]  # codec quality, as Pillow takes it
DType = Literal[tuple(DTYPES)]  # type: ignore[valid-type]
