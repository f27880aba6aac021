"""S-expressions (the syntax of VNN-LIB and SMT-LIB files): ``parse_sexprs`` turns a text into nested lists of
atoms, with limits on depth and one-line errors naming the line."""
from __future__ import annotations

import re
from dataclasses import dataclass

from verifier.errors import LipverifyError

#: deeper nesting than any benchmark uses; refused so that no walk can exhaust Python's stack
MAX_DEPTH = 64


@dataclass
class SList:
    """A parenthesized s-expression: its items (nested ``SList``s and atoms, plain strings) and the line of its
    '('."""

    items: list["SList | str"]
    line: int


#: one token: a comment, a newline (to count lines), a parenthesis, a quote (refused) or an atom
_TOKEN = re.compile(r';[^\n]*|\n|[()"]|[^\s();"]+')


def parse_sexprs(text: str, where: str) -> list[SList]:
    """The top-level s-expressions of ``text`` (comments start with ';'). Unbalanced parentheses, atoms outside
    parentheses, nesting deeper than ``MAX_DEPTH`` and string literals are refused with one line naming the
    line."""
    stack: list[SList] = []
    top: list[SList] = []
    number = 1
    for match in _TOKEN.finditer(text):
        token = match.group()
        first = token[0]
        if first == "\n":
            number += 1
        elif first == ";":
            continue
        elif first == "(":
            if len(stack) >= MAX_DEPTH:
                raise LipverifyError(f"{where}: line {number}: expressions nested deeper than {MAX_DEPTH}")
            stack.append(SList([], number))
        elif first == ")":
            if not stack:
                raise LipverifyError(f"{where}: line {number}: unexpected ')' with no '(' open")
            done = stack.pop()
            (stack[-1].items if stack else top).append(done)
        elif first == '"':
            raise LipverifyError(f"{where}: line {number}: unexpected '\"' (VNN-LIB has no strings)")
        elif stack:
            stack[-1].items.append(token)
        else:
            raise LipverifyError(f"{where}: line {number}: expected (declare-const ...) or (assert ...), got "
                                 f"'{token}'")
    if stack:
        raise LipverifyError(f"{where}: line {stack[-1].line}: '(' opened here is never closed")
    return top


def show(e: SList | str) -> str:
    if isinstance(e, str):
        return f"'{e}'"
    head = e.items[0] if e.items and isinstance(e.items[0], str) else "..."
    return f"'({head} ...)'" if e.items else "'()'"
