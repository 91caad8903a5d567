"""A small safe parser for the formulas that models write: nothing here executes model output.

Two notations are understood:

* calculator annotations (GSM8K, the synthetic task): ``48 / 2 = 24``, i.e. an infix left side
  with ``+ - * / ^`` (``**`` is read as ``^``), unary minus, parentheses, decimals, thousands
  commas (``80,000``), a ``$`` before a number and percent (``50%`` is 0.5), then an optional
  ``=`` and the stated result;
* MathQA program steps: ``divide(n0,const_100)``, i.e. an operation name applied to arguments
  (names such as ``n0``, ``#1``, ``const_100``, numbers, or nested operations).

Both become the same small tree of :class:`Number`, :class:`Name` and :class:`Operation` nodes,
from which the operands, the operators, a canonical text and a text that is the same for formulas
equal up to commutativity of addition and multiplication are read. Anything else is rejected with
:class:`ParseError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from operator import add, mul, sub

# Limits that no calculator step comes near; they bound the parser's work and recursion depth.
MAX_TOKENS = 256
MAX_NESTING = 50

# Digits with optional thousands commas (``1,000`` but not ``1,00``) and an optional fraction.
NUMBER_PATTERN = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"

INFIX_OPERATORS = ("+", "-", "*", "/", "^")
NEGATE = "neg"
COMMUTATIVE_OPERATORS = frozenset({"+", "*", "add", "multiply"})
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, NEGATE: 3, "^": 4}
_ATOM_PRECEDENCE = 5

_SPACES = re.compile(r"\s+")
_INFIX_TOKEN = re.compile(rf"(?:(?P<number>\$?(?:{NUMBER_PATTERN}))|(?P<symbol>\*\*|[-+*/^()%]))")
_CALL_TOKEN = re.compile(
    rf"(?:(?P<name>#\d+|[A-Za-z_][A-Za-z0-9_.]*)|(?P<number>{NUMBER_PATTERN})"
    r"|(?P<symbol>[(),]))"
)


class ParseError(ValueError):
    """The text is not a formula this parser accepts."""


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Operation:
    operator: str
    arguments: tuple[Node, ...]


Node = Number | Name | Operation


def parse_number(text: str) -> float:
    """Read a number as written in answers: ``$1,234.50`` -> 1234.5, ``-3.`` -> -3.0."""
    return float(_to_decimal(text))


def _to_decimal(text: str) -> Decimal:
    cleaned = text.replace(",", "").replace("$", "").strip()
    if not re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)", cleaned):
        raise ParseError(f"not a number: {text!r}")
    return Decimal(cleaned)


def format_number(value: float) -> str:
    """Shortest text for a number: integers without ``.0`` (so ``24.0`` and ``24`` agree)."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True)
class _Token:
    kind: str  # "number", "name" or "symbol"
    text: str
    position: int


def _tokenize(text: str, pattern: re.Pattern[str]) -> list[_Token]:
    tokens: list[_Token] = []
    position = _skip_spaces(text, 0)
    while position < len(text):
        match = pattern.match(text, position)
        if match is None:
            raise ParseError(f"unexpected {text[position]!r} at position {position} in {text!r}")
        if len(tokens) == MAX_TOKENS:
            raise ParseError(f"formula has more than {MAX_TOKENS} tokens: {text[:80]!r}...")
        kind = match.lastgroup or ""
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        position = _skip_spaces(text, match.end())
    return tokens


def _skip_spaces(text: str, position: int) -> int:
    match = _SPACES.match(text, position)
    return match.end() if match else position


class _Parser:
    """Recursive descent over a token list, one method per grammar rule."""

    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.index = 0
        self.nesting = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise ParseError(f"formula ends too early: {self.text!r}")
        self.index += 1
        return token

    def at_symbol(self, *symbols: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "symbol" and token.text in symbols

    def expect(self, symbol: str) -> None:
        token = self.take()
        if token.kind != "symbol" or token.text != symbol:
            raise self.unexpected(token, f"expected {symbol!r}")

    def unexpected(self, token: _Token, expected: str) -> ParseError:
        return ParseError(
            f"unexpected {token.text!r} at position {token.position} in {self.text!r}: {expected}"
        )

    def finish(self, node: Node) -> Node:
        token = self.peek()
        if token is not None:
            raise self.unexpected(token, "expected the end of the formula")
        return node

    # Infix grammar: sum := product (('+'|'-') product)*; product := unary (('*'|'/') unary)*;
    # unary := ('-'|'+') unary | power; power := atom [('^'|'**') unary]; atom := number | (sum).
    # As in mathematics, -2^2 is -(2^2) and 2^3^2 is 2^(3^2).

    def sum(self) -> Node:
        node = self.product()
        while self.at_symbol("+", "-"):
            operator = self.take().text
            node = Operation(operator, (node, self.product()))
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.at_symbol("*", "/"):
            operator = self.take().text
            node = Operation(operator, (node, self.unary()))
        return node

    def unary(self) -> Node:
        if self.at_symbol("+", "-"):
            sign = self.take().text
            operand = self.unary()
            if sign == "+":
                return operand
            if isinstance(operand, Number):
                return Number(-operand.value)
            return Operation(NEGATE, (operand,))
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.at_symbol("^", "**"):
            self.take()
            return Operation("^", (base, self.unary()))
        return base

    def atom(self) -> Node:
        token = self.take()
        if token.kind == "number":
            value = _to_decimal(token.text)
            if self.at_symbol("%"):
                self.take()
                value /= 100
            return Number(float(value))
        if token.kind == "symbol" and token.text == "(":
            self.nesting += 1
            if self.nesting > MAX_NESTING:
                raise ParseError(f"parentheses nested deeper than {MAX_NESTING} in {self.text!r}")
            node = self.sum()
            self.expect(")")
            self.nesting -= 1
            return node
        raise self.unexpected(token, "expected a number or '('")

    # Call grammar: call := name '(' argument (',' argument)* ')';
    # argument := call | name | number.

    def call(self) -> Node:
        token = self.take()
        if token.kind != "name":
            raise self.unexpected(token, "expected an operation name")
        self.expect("(")
        arguments = [self.argument()]
        while self.at_symbol(","):
            self.take()
            arguments.append(self.argument())
        self.expect(")")
        return Operation(token.text.lower(), tuple(arguments))

    def argument(self) -> Node:
        token = self.peek()
        if token is not None and token.kind == "name":
            following = self.tokens[self.index + 1] if self.index + 1 < len(self.tokens) else None
            if following is not None and following.text == "(":
                return self.call()
            self.take()
            return Name(token.text.lower())
        token = self.take()
        if token.kind == "number":
            return Number(parse_number(token.text))
        raise self.unexpected(token, "expected an argument")


def parse_expression(text: str) -> Node:
    """Parse an infix arithmetic expression (no ``=``)."""
    parser = _Parser(text, _tokenize(text, _INFIX_TOKEN))
    if parser.peek() is None:
        raise ParseError(f"empty expression: {text!r}")
    return parser.finish(parser.sum())


def parse_call(text: str) -> Node:
    """Parse a MathQA program step such as ``divide(n0,const_100)``."""
    parser = _Parser(text, _tokenize(text, _CALL_TOKEN))
    return parser.finish(parser.call())


@dataclass(frozen=True)
class Equation:
    """A calculator annotation: the left side and, when one is stated, its result."""

    left: Node
    result: float | None

    @property
    def operands(self) -> tuple[float | str, ...]:
        return operands(self.left)

    @property
    def operators(self) -> tuple[str, ...]:
        return operators(self.left)

    @property
    def value(self) -> float:
        """The left side's value, computed by the parser (nan where undefined)."""
        return evaluate(self.left)

    @property
    def canonical(self) -> str:
        """Spacing, number spelling and redundant parentheses removed: ``48/2=24``."""
        return _with_result(render(self.left), self.result)

    @property
    def commutative_key(self) -> str:
        """The same text for equations equal up to commutativity of ``+`` and ``*``."""
        return _with_result(commutative_form(self.left), self.result)


def parse_equation(text: str) -> Equation:
    """Parse ``left = result`` (or a bare left side) without executing anything."""
    sides = text.split("=")
    if len(sides) > 2:
        raise ParseError(f"more than one '=' in {text!r}")
    left = parse_expression(sides[0])
    result = evaluate(parse_expression(sides[1])) if len(sides) == 2 else None
    return Equation(left, result)


def _with_result(left: str, result: float | None) -> str:
    return left if result is None else f"{left}={format_number(result)}"


def operands(node: Node) -> tuple[float | str, ...]:
    """The leaves in the order they are written: numbers as floats, names as text."""
    if isinstance(node, Number):
        return (node.value,)
    if isinstance(node, Name):
        return (node.name,)
    return tuple(leaf for argument in node.arguments for leaf in operands(argument))


def operators(node: Node) -> tuple[str, ...]:
    """The operators in the order they are written (infix ones between their operands)."""
    if not isinstance(node, Operation):
        return ()
    if _is_binary_infix(node):
        left, right = node.arguments
        return (*operators(left), node.operator, *operators(right))
    return (node.operator, *(op for argument in node.arguments for op in operators(argument)))


def evaluate(node: Node) -> float:
    """The value of an infix tree; nan for undefined results (``x/0``, ``(-8)^0.5``)."""
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Name) or node.operator not in (*INFIX_OPERATORS, NEGATE):
        raise ParseError(f"cannot compute a value for {render(node)!r}")
    values = [evaluate(argument) for argument in node.arguments]
    if node.operator == NEGATE:
        return -values[0]
    left, right = values
    return BINARY_OPERATIONS[node.operator](left, right)


def _divide(left: float, right: float) -> float:
    return left / right if right != 0 else math.nan


def _power(left: float, right: float) -> float:
    try:
        return math.pow(left, right)
    except OverflowError:
        return math.inf
    except ValueError:  # a negative number to a fractional power
        return math.nan


# What each infix operator computes: the one table the parser and the arith task share.
BINARY_OPERATIONS: dict[str, Callable[[float, float], float]] = {
    "+": add,
    "-": sub,
    "*": mul,
    "/": _divide,
    "^": _power,
}


def render(node: Node) -> str:
    """Canonical text: infix with only the parentheses precedence needs; calls as ``f(a,b)``."""
    if isinstance(node, Number):
        return format_number(node.value)
    if isinstance(node, Name):
        return node.name
    if node.operator == NEGATE:
        return "-" + _render_child(node.arguments[0], _PRECEDENCE[NEGATE], allow_equal=False)
    if _is_binary_infix(node):
        left, right = node.arguments
        precedence = _PRECEDENCE[node.operator]
        right_associative = node.operator == "^"
        left_text = _render_child(left, precedence, allow_equal=not right_associative)
        right_text = _render_child(right, precedence, allow_equal=right_associative)
        return f"{left_text}{node.operator}{right_text}"
    return f"{node.operator}({','.join(render(argument) for argument in node.arguments)})"


def _render_child(child: Node, parent_precedence: int, allow_equal: bool) -> str:
    precedence = _precedence(child)
    needs_parentheses = precedence < parent_precedence or (
        precedence == parent_precedence and not allow_equal
    )
    text = render(child)
    return f"({text})" if needs_parentheses else text


def _precedence(node: Node) -> int:
    if isinstance(node, Number) and node.value < 0:
        return _PRECEDENCE[NEGATE]
    if isinstance(node, Operation) and node.operator in _PRECEDENCE:
        return _PRECEDENCE[node.operator]
    return _ATOM_PRECEDENCE


def commutative_form(node: Node) -> str:
    """Prefix text in which the operands of chained ``+``/``*`` (``add``/``multiply``) are sorted.

    ``3*2``, ``2*3`` and ``(2)*3`` agree, and so do ``a+b+c`` and ``c+(a+b)``; ``5-3`` and
    ``3-5`` do not.
    """
    if not isinstance(node, Operation):
        return render(node)
    if node.operator in COMMUTATIVE_OPERATORS:
        terms = sorted(commutative_form(term) for term in _chain(node, node.operator))
    else:
        terms = [commutative_form(argument) for argument in node.arguments]
    return f"{node.operator}({','.join(terms)})"


def _chain(node: Node, operator: str) -> list[Node]:
    if isinstance(node, Operation) and node.operator == operator:
        return [term for argument in node.arguments for term in _chain(argument, operator)]
    return [node]


def _is_binary_infix(node: Operation) -> bool:
    return node.operator in INFIX_OPERATORS and len(node.arguments) == 2
