"""Cutting a text's characters before it is tokenized, so the work done for a text is bounded by what is kept.

A tokenizer asked for 512 tokens of a 7 MB text still tokenizes all 7 MB (the Rust tokenizer builds every token and
its offsets, then truncates): seconds of work and hundreds of MB that glibc keeps after they are freed. Cutting the
text to `tokens × CHARS_PER_TOKEN` characters first bounds that work by the limit, not by the input.

The cut falls on whitespace, so every word kept is whole: the tokenizers we load (WordPiece, byte-level BPE,
SentencePiece) split on whitespace before anything else, so the tokens of the kept words are exactly the tokens they
get inside the full text, and the result is unchanged whenever the kept tokens span fewer than `CHARS_PER_TOKEN`
characters each. Natural text averages about 4 characters a token, so 64 leaves a sixteen-fold margin; only a text
built to be dense (runs of 100-character words, or whitespace runs between single letters) keeps fewer tokens
than its limit — it is still cut, never refused. A text with no whitespace near the cut is cut at the bound.
"""

from __future__ import annotations

CHARS_PER_TOKEN = 64
_LOOK_BACK = 256  # how far before the bound a whitespace is looked for; beyond it the cut falls mid-word


def bound(tokens: int) -> int:
    """The most characters kept of a text that is to yield `tokens` tokens."""
    return max(1, tokens) * CHARS_PER_TOKEN


def keep_head(text: str, tokens: int) -> str:
    """The start of `text`, enough for its first `tokens` tokens (the text itself when it is short)."""
    limit = bound(tokens)
    if len(text) <= limit:
        return text
    cut = max(text.rfind(" ", limit - _LOOK_BACK, limit), text.rfind("\n", limit - _LOOK_BACK, limit))
    return text[: cut if cut > 0 else limit]


def keep_tail(text: str, tokens: int) -> str:
    """The end of `text`, enough for its last `tokens` tokens (a causal LM's prompt keeps its end)."""
    limit = bound(tokens)
    if len(text) <= limit:
        return text
    start = len(text) - limit
    found = [i for i in (text.find(" ", start, start + _LOOK_BACK), text.find("\n", start, start + _LOOK_BACK)) if i >= 0]
    return text[min(found) if found else start :]
