"""Ludwig's rule-based tokenizers, and the vocabulary a text or set input learns from its training split.

The rules are Ludwig's (ludwig/utils/tokenizers.py): `space` splits on whitespace, `space_punct` keeps runs of word
characters and single punctuation marks (`\\w+|[^\\w\\s]`), `characters` is every character; `comma`, `pipe` and
`semicolon` split a set cell on that mark, members stripped. The vocabulary holds the `most_common` tokens, ordered
by count, ties by the token, so it never depends on row order.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tunefork.errors import ConfigError

WORDS = re.compile(r"\w+|[^\w\s]")


def _marked(mark: str):
    return lambda text: [part.strip() for part in text.split(mark) if part.strip()]


RULES = {"space": str.split, "space_punct": WORDS.findall, "characters": list,
         "comma": _marked(","), "pipe": _marked("|"), "semicolon": _marked(";")}


class Splitter:
    """A rule-based tokenizer: `split(text)` → tokens. It has no files: the config's name is all of it."""

    def __init__(self, name: str):
        self.name = name

    def split(self, text: str) -> list[str]:
        return RULES[self.name](text)

    def identity(self) -> str:
        return hashlib.blake2b(f"splitter:{self.name}".encode(), digest_size=16).hexdigest()


def most_common(rows: Iterable[list[str]], limit: int) -> list[tuple[str, int]]:
    """(token, count) of the `limit` most frequent tokens, ties broken by the token."""
    counts = Counter(token for row in rows for token in row)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def read_vocab_file(path: str, where: str) -> list[str]:
    """A vocabulary file: one token per line (Ludwig's `vocab_file`), blank lines and repeats skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{where}: cannot read {path} ({exc})"]) from None
    words = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not words:
        raise ConfigError([f"{where}: {path} holds no token"])
    return words
