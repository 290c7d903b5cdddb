"""Tests for nanochat.calculator: accepted arithmetic and .count, rejections, bounds, threads."""

from __future__ import annotations

import ast
import operator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat import calculator
from nanochat.calculator import MAX_INT_DIGITS, evaluate


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2", "3"),
        ("  42  ", "42"),
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("12 - 3 - 4", "5"),
        ("2 * (3 + (4 - 1)) - 5", "7"),
        ("-5 + 2", "-3"),
        ("--5", "5"),
        ("+7", "7"),
        ("3 * -2", "-6"),
        ("8 / 2", "4.0"),
        ("7 / 2", "3.5"),
        ("10 / 4 * 2", "5.0"),
        ("0.1 + 0.2", "0.30000000000000004"),
        ("2 * 1.5", "3.0"),
        ("1e3", "1000.0"),
        ("1e22", "1e+22"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7.5 // 2", "3.0"),
        ("7 % 3", "1"),
        ("-7 % 3", "2"),
        ("5.5 % 2", "1.5"),
        ("1,234 + 1", "1235"),
        ("1,000,000 * 3", "3000000"),
        ("(1,500 - 500) / 4", "250.0"),
        ("1" + "0" * (MAX_INT_DIGITS - 1), "1" + "0" * (MAX_INT_DIGITS - 1)),
        ("+".join(["1"] * 10), "10"),
    ],
)
def test_arithmetic(expression: str, expected: str) -> None:
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('"strawberry".count("r")', "3"),
        ("'banana'.count('an')", "2"),
        ('"hello".count("z")', "0"),
        ('"aaa".count("")', "4"),
        ('"a,b,c".count(",")', "2"),
        ('"1,000".count("0")', "3"),
        ('"strawberry".count("r") + 1', "4"),
        ('"strawberry".count("r") * "banana".count("a")', "9"),
    ],
)
def test_count(expression: str, expected: str) -> None:
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    "expression",
    [
        # code and attribute tricks
        "__import__('os')",
        "__import__('os').system('ls')",
        "open('x')",
        "().__class__",
        "().__class__.__bases__[0].__subclasses__()",
        '"abc".__class__',
        '"a".upper()',
        '"abc".count',
        '"abc".count("a", 1)',
        '"abc".count(sub="a")',
        '"abc".count(x)',
        'x.count("a")',
        'b"abc".count(b"a")',
        '"abc".count(1)',
        '"abc"[0]',
        "import os",
        "x = 1",
        "1; 2",
        # names and non-arithmetic syntax
        "a + 1",
        "None",
        "...",
        "True + 1",
        "1j",
        "~1",
        "not 1",
        "1 < 2",
        "1 if 1 else 2",
        "2 ** 10",
        "[1]",
        "[1, 2]",
        "{1: 2}",
        "lambda: 1",
        "(lambda x: x)(1)",
        "[x for x in range(3)]",
        'f"{1 + 1}"',
        '"abc"',
        '"a" * 3',
        '"a" + "b"',
        # division by zero
        "1 / 0",
        "1 // 0",
        "1 % 0",
        "1.0 / 0.0",
        # syntax errors and odd text
        "",
        "   ",
        "1 +",
        "1 +\n2",
        "\x00",
        "\ud800",
        # bounds: magnitude, nesting, length, node count
        "9" * 999,
        "1" + "0" * MAX_INT_DIGITS,
        "1" + "0" * 60 + " * 1" + "0" * 60,
        "1e308 * 10",
        "1e999",
        "(" * 400 + "1" + ")" * 400,
        "-" * 990 + "1",
        "1+" * 499 + "1",
        "9" * 10_000,
        "(" * 10_000 + "1" + ")" * 10_000,
        "1" + "+1" * 10_000,
    ],
)
def test_rejected(expression: str) -> None:
    assert evaluate(expression) is None


@pytest.mark.parametrize("value", [None, 123, 1.5, b"1 + 1", ["1 + 1"]])
def test_non_str_input_is_rejected(value: object) -> None:
    assert evaluate(value) is None  # type: ignore[arg-type]


def test_module_never_evaluates_or_uses_signals() -> None:
    tree = ast.parse(Path(calculator.__file__).read_text())
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not names & {"eval", "exec", "compile", "__import__"}
    assert "signal" not in imported


@settings(max_examples=300, deadline=None)
@given(st.text() | st.text(alphabet="0123456789+-*/%().,eEj_ '\"abcount", max_size=60))
def test_never_raises(text: str) -> None:
    result = evaluate(text)
    assert result is None or isinstance(result, str)


_OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _bounded(value: int | None) -> int | None:
    """Python's value, or None where the calculator's magnitude bound rejects it."""
    return None if value is None or abs(value) >= 10**MAX_INT_DIGITS else value


def _literal(n: int, with_commas: bool) -> tuple[str, int | None]:
    return (f"{n:,}" if with_commas else str(n)), n


def _binary(left: tuple[str, int | None], op: str, right: tuple[str, int | None]) -> tuple[str, int | None]:
    (left_text, left_value), (right_text, right_value) = left, right
    if left_value is None or right_value is None:
        value = None
    else:
        value = _bounded(_OPERATORS[op](left_value, right_value))
    return f"({left_text} {op} {right_text})", value


# (source text, the value Python's own arithmetic gives it, or None past the magnitude bound)
_integer_expressions = st.recursive(
    st.builds(_literal, st.integers(-1000, 1000) | st.integers(-(10**30), 10**30), st.booleans()),
    lambda children: st.builds(_binary, children, st.sampled_from(sorted(_OPERATORS)), children),
    max_leaves=16,  # keeps the text well under MAX_EXPRESSION_CHARS
)


@settings(max_examples=300, deadline=None)
@given(_integer_expressions)
def test_integer_expressions_match_python(case: tuple[str, int | None]) -> None:
    text, value = case
    assert evaluate(text) == (None if value is None else str(value))


def test_concurrent_threads() -> None:
    expressions = [f"({i} + 1) * 3 - {i} // 2" for i in range(400)] + ['"strawberry".count("r")'] * 100
    expected = [evaluate(expression) for expression in expressions]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(evaluate, expressions)) == expected
    assert expected[10] == str((10 + 1) * 3 - 10 // 2)
