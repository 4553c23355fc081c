"""The bundle's tokenizer: a thin wrapper over `tokenizers.Tokenizer`.

Encoding never adds special tokens (the prompt layout in the manifest places them); decoding
skips them, so a reply's end-of-turn token never shows up in a caption.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from vrex_edge.errors import BundleError


class Tokenizer:
    def __init__(self, path: str | os.PathLike[str]):
        from tokenizers import Tokenizer as _HFTokenizer

        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise BundleError(f"cannot read tokenizer {path}: {e}") from None

    def encode(self, text: str) -> list[int]:
        """text -> token ids, without BOS/EOS or any other special token added."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """token ids -> text, special tokens skipped."""
        return str(self._tok.decode([int(i) for i in ids], skip_special_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))
