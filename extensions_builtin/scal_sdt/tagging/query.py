r"""The dataset editor's filter language.

    long hair and not (smile or grin*)        tags, with * wildcards; and / or / not / parentheses
    red_star, white background                a comma is "and" too (underscores and spaces are the same)
    tokens>60                                 caption length in CLIP tokens (>, >=, <, <=, =)
    untagged                                  no caption (or an empty one)
    blue \(sky\)                               a tag with brackets: escape them as in the caption

``not`` binds tighter than ``and``, which binds tighter than ``or``. Matching ignores case and escapes.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable

from .tags import norm

_TOKEN = re.compile(r"(?<!\\)\(|(?<!\\)\)|,|\band\b|\bor\b|\bnot\b", re.IGNORECASE)  # \( is a tag's bracket
_COUNT = re.compile(r"^tokens\s*(>=|<=|>|<|=)\s*(\d+)$", re.IGNORECASE)


@dataclass
class Caption:
    """What a query is evaluated on: the caption's tags (normalised) and its CLIP token count."""
    tags: set[str]
    tokens: int


Predicate = Callable[[Caption], bool]


def _lex(text: str) -> list[str]:
    out, pos = [], 0
    for m in _TOKEN.finditer(text):
        term = text[pos:m.start()].strip()
        if term:
            out.append(term)
        out.append("and" if m.group(0) == "," else m.group(0).lower())
        pos = m.end()
    if text[pos:].strip():
        out.append(text[pos:].strip())
    return out


def _term(word: str) -> Predicate:
    m = _COUNT.match(word)
    if m:
        op, n = m.group(1), int(m.group(2))
        compare = {">": int.__gt__, ">=": int.__ge__, "<": int.__lt__, "<=": int.__le__, "=": int.__eq__}[op]
        return lambda c: compare(c.tokens, n)
    if word.lower() == "untagged":
        return lambda c: not c.tags
    pattern = norm(word)
    if any(ch in pattern for ch in "*?["):
        return lambda c: any(fnmatch.fnmatchcase(t, pattern) for t in c.tags)
    return lambda c: pattern in c.tags


def parse(text: str) -> Predicate:
    """The predicate of a filter; an empty filter matches everything. A malformed one raises ValueError."""
    tokens = _lex(text)
    if not tokens:
        return lambda c: True
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def expr_or():
        left = expr_and()
        while peek() == "or":
            take()
            right = expr_and()
            left = (lambda a, b: lambda c: a(c) or b(c))(left, right)
        return left

    def expr_and():
        left = expr_not()
        while peek() not in (None, "or", ")"):
            if peek() == "and":
                take()
            right = expr_not()
            left = (lambda a, b: lambda c: a(c) and b(c))(left, right)
        return left

    def expr_not():
        if peek() == "not":
            take()
            inner = expr_not()
            return lambda c: not inner(c)
        if peek() == "(":
            take()
            inner = expr_or()
            if peek() != ")":
                raise ValueError(f"filter {text!r}: a '(' is not closed")
            take()
            return inner
        word = peek()
        if word is None or word in ("and", "or", ")"):
            raise ValueError(f"filter {text!r}: expected a tag after {' '.join(tokens[:pos]) or 'the start'}")
        take()
        return _term(word)

    result = expr_or()
    if pos != len(tokens):
        raise ValueError(f"filter {text!r}: unexpected {tokens[pos]!r}")
    return result
