"""Arithmetic for the model, without eval.

The expression is parsed with :mod:`ast` and walked by hand; any node that is not a
number, a parenthesised group, unary +/- or one of + - * / // % ** is refused, so no
name, call, attribute or subscript can ever run. Sizes are bounded so a model cannot
spend a worker's CPU or memory on ``9**9**9``: every intermediate value stays below
``MAX_MAGNITUDE`` and a power is refused before it is computed if it would not.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from celeriac.errors import ToolError
from celeriac.tools.base import ToolContext, ToolSpec

Number = int | float

MAX_EXPRESSION_CHARS = 500
# Roughly the float range; a bound on every intermediate keeps int arithmetic cheap.
MAX_MAGNITUDE = 10**300
MAX_DIGITS = 300
# "-----1" parses fine but nests one node per sign; ast.unparse and our own walk recurse.
MAX_DEPTH = 100

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_ALLOWED = "numbers, parentheses and + - * / // % ** only"


class Calculator:
    spec = ToolSpec(
        name="calculator",
        description=(
            "Evaluate an arithmetic expression exactly. Supports numbers, parentheses and "
            "+ - * / // % ** (power). Use it for any arithmetic instead of computing in "
            "your head. Example: {'expression': '17 * 23'}."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "expression": {
                    "type": "string",
                    "description": "The expression, e.g. '(2 + 3) * 4 / 7'.",
                    "minLength": 1,
                    "maxLength": MAX_EXPRESSION_CHARS,
                }
            },
            "required": ["expression"],
            "additionalProperties": False,
        },
    )

    def run(self, arguments: dict[str, Any], context: ToolContext) -> str:
        expression = str(arguments["expression"])
        tree = _parse(expression)
        value = _evaluate(tree.body, depth=0)
        return f"{ast.unparse(tree)} = {format_number(value)}"


def format_number(value: Number) -> str:
    """Integers without '.0', floats to 12 significant digits (hides 0.1 + 0.2 noise)."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.12g}"


def _parse(expression: str) -> ast.Expression:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        return ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        hint = " (use ** for powers)" if "^" in expression else ""
        raise ToolError(f"could not parse {expression!r}: allowed are {_ALLOWED}{hint}") from exc


def _evaluate(node: ast.expr, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise ToolError(f"the expression is nested more than {MAX_DEPTH} levels deep")
    if isinstance(node, ast.Constant):
        # bool is an int subclass and complex is a number: neither belongs here.
        if type(node.value) not in (int, float):
            raise ToolError(f"{node.value!r} is not a number; allowed are {_ALLOWED}")
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand, depth + 1)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
        return _checked(result)
    raise ToolError(f"{_describe(node)} is not allowed; allowed are {_ALLOWED}")


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse a power whose result would exceed MAX_DIGITS, before computing it."""
    # exponent * log10|base| is the number of digits of the result.
    if base != 0 and exponent * math.log10(abs(base)) > MAX_DIGITS:
        power = f"{format_number(base)} ** {format_number(exponent)}"
        raise ToolError(f"the result of {power} is too large (more than {MAX_DIGITS} digits)")


def _checked(value: object) -> Number:
    if isinstance(value, complex):
        raise ToolError("the result is not a real number")
    if not isinstance(value, int | float):  # pragma: no cover - operators return numbers
        raise ToolError("the result is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolError(f"the result is too large (more than {MAX_DIGITS} digits)")
    return value


def _describe(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.Attribute):
        return "attribute access"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        return "'^' (bitwise xor; use ** for powers)"
    if isinstance(node, ast.BinOp | ast.UnaryOp):
        return f"the operator {type(node.op).__name__}"
    return type(node).__name__
