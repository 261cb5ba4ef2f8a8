"""Token arithmetic of the fake provider: a documented heuristic, so estimates can be checked.

Prompt tokens are ``ceil(characters / 4)`` over all the text in the request, at least 1. The
text is every string a model would read: chat and Anthropic message contents (plain strings or
the ``text`` of content parts, recursing into tool results), Anthropic ``system``, Responses
``instructions`` and ``input``, legacy ``prompt`` and embedding ``input``. Inputs already given
as token ids (lists of integers) count one token per id.

Completion text is ``output_tokens`` words, ``"tok0 tok1 tok2 ..."``: one word per token, so
each streamed chunk carries exactly one token.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

_CHARS_PER_TOKEN = 4
_TEXT_FIELDS = ("system", "instructions", "messages", "input", "prompt")


def count_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a request body, by the heuristic above."""
    counter = _PromptCounter()
    for field in _TEXT_FIELDS:
        if field in body:
            counter.add(body[field])
    return max(1, counter.token_ids + math.ceil(counter.characters / _CHARS_PER_TOKEN))


class _PromptCounter:
    def __init__(self) -> None:
        self.characters = 0
        self.token_ids = 0

    def add(self, value: object) -> None:
        if isinstance(value, str):
            self.characters += len(value)
        elif isinstance(value, list):
            if value and all(isinstance(item, int) for item in value):
                self.token_ids += len(value)
                return
            for item in value:
                self.add(item)
        elif isinstance(value, dict):
            # A message or content part: its words are under "content" or "text".
            self.add(value.get("content"))
            self.add(value.get("text"))


def completion_text(token_count: int) -> str:
    """The completion ``token_count`` tokens long: ``"tok0 tok1 ..."``."""
    return "".join(token_piece(i) for i in range(token_count))


def token_piece(index: int) -> str:
    """The text of token ``index``: ``"tok0"``, then ``" tok1"``, ``" tok2"``, ..."""
    return f"tok{index}" if index == 0 else f" tok{index}"


_piece_json: list[bytes] = []


def token_piece_json(index: int) -> bytes:
    """``token_piece(index)`` as a JSON string, cached because streams repeat them all day."""
    while len(_piece_json) <= index:
        _piece_json.append(msgspec.json.encode(token_piece(len(_piece_json))))
    return _piece_json[index]
