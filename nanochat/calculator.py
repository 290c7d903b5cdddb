"""Safe evaluator for the calculator tool that chat models call while generating.

The model writes <|python_start|> EXPR <|python_end|>; the engine calls `evaluate(EXPR)` and, when it gets
text back, forces <|output_start|> TEXT <|output_end|> into the stream. When it gets None, it forces nothing.

Accepted, matching what nanochat's tool accepted:
- arithmetic on int and float literals with `+ - * / // %`, unary `+ -` and parentheses (`**` is not
  accepted: nanochat rejected it, and it is the easy way to build a huge number);
- `"haystack".count("needle")` on two string literals, which nanochat's SFT data uses to count letters;
  it yields an int and may stand wherever a number may (`"ab".count("a") + 1`).

Commas are thousands separators, as in nanochat: when the expression holds no quote character, every
comma is removed before parsing ("1,234 + 1" is 1235). An expression with a string literal is parsed as
written, so `"a,b".count(",")` counts commas.

Results print as Python's `str()` of the value, as nanochat did: ints as "84", floats as Python writes
them ("4.0" for 8 / 2, "0.30000000000000004", "1e+22").

Everything else gives None: names, other calls or attributes, subscripts, containers, comprehensions,
lambdas, f-strings, bools, complex numbers, comparisons, syntax errors, non-str input, division by zero.

It never raises, and it does not use `eval`, `exec`, `compile` or signals: the text is parsed with
`ast.parse` and the tree is walked against a whitelist, so it is safe to call from any thread. Work is
bounded: the text is at most MAX_EXPRESSION_CHARS long, the tree at most MAX_AST_NODES nodes, every
intermediate int below 10**MAX_INT_DIGITS in magnitude and every intermediate float finite; an
expression past any bound gives None.
"""

from __future__ import annotations

import ast
import math

MAX_EXPRESSION_CHARS = 1000
MAX_AST_NODES = 200
MAX_INT_DIGITS = 100

_INT_LIMIT = 10**MAX_INT_DIGITS


class _Rejected(Exception):
    """The expression is outside what the calculator accepts."""


def evaluate(expression: str) -> str | None:
    """The result text for `expression`, or None when the calculator does not accept it."""
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    if "'" not in expression and '"' not in expression:
        expression = expression.replace(",", "")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        if sum(1 for _ in ast.walk(tree)) > MAX_AST_NODES:
            return None
        return str(_value(tree.body))
    # SyntaxError and ValueError (null bytes, unencodable text) come from parsing, ArithmeticError from
    # division by zero; RecursionError and MemoryError are caught so that no input can escape as a crash.
    except (_Rejected, SyntaxError, ValueError, ArithmeticError, RecursionError, MemoryError):
        return None


# `float` in these annotations means int or float (PEP 484); ints stay exact ints throughout.
def _value(node: ast.expr) -> float:
    match node:
        # type() rather than isinstance(): bool is an int subclass, and True + 1 is not arithmetic here.
        case ast.Constant(value=value) if type(value) in (int, float):
            return _bounded(value)
        case ast.UnaryOp(op=ast.UAdd(), operand=operand):
            return _value(operand)
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_value(operand)
        case ast.BinOp(left=left, op=op, right=right):
            return _bounded(_binary(op, _value(left), _value(right)))
        case ast.Call(
            func=ast.Attribute(value=ast.Constant(value=str() as haystack), attr="count"),
            args=[ast.Constant(value=str() as needle)],
            keywords=[],
        ):
            return haystack.count(needle)
    raise _Rejected(type(node).__name__)


def _binary(op: ast.operator, left: float, right: float) -> float:
    match op:
        case ast.Add():
            return left + right
        case ast.Sub():
            return left - right
        case ast.Mult():
            return left * right
        case ast.Div():
            return left / right
        case ast.FloorDiv():
            return left // right
        case ast.Mod():
            return left % right
    raise _Rejected(type(op).__name__)


def _bounded(value: float) -> float:
    if isinstance(value, float) and not math.isfinite(value):
        raise _Rejected(f"non-finite float {value}")
    if isinstance(value, int) and abs(value) >= _INT_LIMIT:
        raise _Rejected(f"int with more than {MAX_INT_DIGITS} digits")
    return value
