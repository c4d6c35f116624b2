"""The recipe's ``tokenizer:`` block: mergekit 0.1.5's ``TokenizerConfig``, field for field.

``tokenizer_source: X`` is shorthand for ``tokenizer: {source: X}``. ``tokens`` says where the
embedding row of a named token comes from (and adds the token when the output vocabulary lacks
it); ``pad_to_multiple_of`` pads the vocabulary with rows that are the mean of the real ones.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ZeroEmbedding(_Frozen):
    """The token's row is all zeros."""

    kind: Literal["zero"]


class ModelTokenEmbedding(_Frozen):
    """The row of another token (by id or by text) of one model."""

    kind: Literal["model_token"]
    model: str
    token_id: int | None = Field(None, ge=0)
    token: str | None = None

    @model_validator(mode="after")
    def _one_token(self) -> ModelTokenEmbedding:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("give exactly one of token_id or token")
        return self


class TokenEmbedding(_Frozen):
    """Where one token's row comes from: a model (its own row of that token), another token's
    row, zeros, or None (mergekit's default rule). ``force``: every model's row is replaced by
    that one, even in models that have the token."""

    source: ZeroEmbedding | ModelTokenEmbedding | str | None = None
    force: bool = False


class TokenizerConfig(_Frozen):
    source: str = "union"  # "base", "union" or a model reference
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: int | None = Field(None, ge=1)

    @property
    def token_configs(self) -> dict[str, TokenEmbedding]:
        return dict(self.tokens or {})
