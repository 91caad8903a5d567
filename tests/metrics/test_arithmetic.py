import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seglm.metrics import ParseError, parse_equation
from seglm.metrics.arithmetic import (
    MAX_NESTING,
    MAX_TOKENS,
    commutative_form,
    operands,
    operators,
    parse_call,
    parse_expression,
    parse_number,
    render,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2+3*4", 14.0),
        ("(2+3)*4", 20.0),
        ("10-4-3", 3.0),
        ("12/2/3", 2.0),
        ("2^3^2", 512.0),
        ("2**3", 8.0),
        ("-2^2", -4.0),
        ("(-2)^2", 4.0),
        ("2*-3", -6.0),
        ("2--3", 5.0),
        ("-(2+3)*2", -10.0),
        ("+4", 4.0),
        (".5*4", 2.0),
        ("3.*2", 6.0),
        ("80,000*1.5", 120000.0),
        ("1,234,567+1", 1234568.0),
        ("50%*80", 40.0),
        ("12.5%*8", 1.0),
        ("$5*2", 10.0),
        ("  7 \t- 2 ", 5.0),
    ],
)
def test_values(text: str, value: float) -> None:
    assert parse_equation(text).value == value


def test_equation_parts() -> None:
    equation = parse_equation("3*(4+5)-2=25")
    assert equation.operators == ("*", "+", "-")
    assert equation.operands == (3.0, 4.0, 5.0, 2.0)
    assert equation.result == 25.0
    assert parse_equation("6-11=-5").result == -5.0
    assert parse_equation("1/2=50%").result == 0.5
    assert parse_equation("48/2").result is None


def test_unary_minus_on_a_group_is_an_operator() -> None:
    equation = parse_equation("-(2+3)")
    assert equation.operators == ("neg", "+")
    assert equation.operands == (2.0, 3.0)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("48 / 2 = 24", "48/2=24"),
        ("(48/2)=24.0", "48/2=24"),
        ("80,000*1.5=120,000", "80000*1.5=120000"),
        ("50%*80=40", "0.5*80=40"),
        ("2-(3-4)", "2-(3-4)"),
        ("(2-3)-4", "2-3-4"),
        ("2-(3+4)*5", "2-(3+4)*5"),
        ("(2^3)^2", "(2^3)^2"),
        ("2^(3^2)", "2^3^2"),
        ("(-2)^2", "(-2)^2"),
        ("-(2+3)", "-(2+3)"),
        ("2**3", "2^3"),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert parse_equation(text).canonical == canonical


def test_commutative_key() -> None:
    def key(text: str) -> str:
        return parse_equation(text).commutative_key

    assert key("2*3=6") == key("3*2=6")
    assert key("1+2+3=6") == key("3+(2+1)=6") == key("2+3+1=6")
    assert key("(2+3)*4=20") == key("4*(3+2)=20")
    assert key("5-3=2") != key("3-5=2")
    assert key("6/2=3") != key("2/6=3")
    assert key("2*3=6") != key("2*3=7")
    assert key("1+2*3=7") != key("2+1*3=7")


def test_undefined_values_are_nan_or_inf_without_raising() -> None:
    assert math.isnan(parse_equation("5/0").value)
    assert math.isnan(parse_equation("(-8)^0.5").value)
    assert parse_equation("9^9^9").value == math.inf


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('ls')",
        "a+b",
        "x*2=6",
        "os.system('ls')",
        "lambda: 1",
        "[1, 2]",
        "2 & 3",
        "5%3",
        "2 3",
        "2(3)",
        "1,00+2",
        "2+",
        "()",
        "(2+3",
        "2+3)",
        "",
        "   ",
        "=5",
        "2=",
        "2=3=4",
        "1e5",
        "3 x 4",
    ],
)
def test_rejects_anything_else(text: str) -> None:
    with pytest.raises(ParseError):
        parse_equation(text)


def test_error_names_the_offending_character() -> None:
    with pytest.raises(ParseError, match=r"unexpected '_' at position 0"):
        parse_equation("__import__('os')")


def test_limits_bound_the_work() -> None:
    nested = "(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1)
    with pytest.raises(ParseError, match="nested deeper"):
        parse_equation(nested)
    assert parse_equation("(" * MAX_NESTING + "1" + ")" * MAX_NESTING).value == 1.0
    with pytest.raises(ParseError, match="more than"):
        parse_equation("+".join(["1"] * MAX_TOKENS))


def test_parse_number() -> None:
    assert parse_number("$1,234.50") == 1234.5
    assert parse_number("-3.") == -3.0
    with pytest.raises(ParseError):
        parse_number("1.2.3")


def test_mathqa_call() -> None:
    node = parse_call("divide( n0 , CONST_100 )")
    assert render(node) == "divide(n0,const_100)"
    assert operators(node) == ("divide",)
    assert operands(node) == ("n0", "const_100")
    nested = parse_call("add(n0,multiply(#1,2))")
    assert operators(nested) == ("add", "multiply")
    assert operands(nested) == ("n0", "#1", 2.0)


def test_mathqa_commutativity() -> None:
    def key(text: str) -> str:
        return commutative_form(parse_call(text))

    assert key("add(n0,n1)") == key("add(n1,n0)")
    assert key("multiply(#0,const_100)") == key("multiply(const_100,#0)")
    assert key("add(n0,add(n2,n1))") == key("add(add(n1,n0),n2)")
    assert key("subtract(n0,n1)") != key("subtract(n1,n0)")
    assert key("divide(n0,n1)") != key("divide(n1,n0)")


@pytest.mark.parametrize("text", ["add(n0", "add(n0,'x')", "add n0", "n0", "add(n0)x", "(n0)"])
def test_mathqa_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse_call(text)


def _expressions() -> st.SearchStrategy[str]:
    numbers = st.integers(min_value=0, max_value=999).map(str) | st.sampled_from(
        ["0.5", "1,000", "12.25", "7%"]
    )

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        # Binary operations, parenthesised or not, make up most of the tree.
        binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "^"]), inner, st.booleans())
        written = binary.map(lambda p: f"({p[0]} {p[1]} {p[2]})" if p[3] else f"{p[0]}{p[1]}{p[2]}")
        negated = inner.map(lambda text: f"-({text})")
        return st.one_of(written, written, written, negated)

    return st.recursive(numbers, extend, max_leaves=10)


@settings(max_examples=200, deadline=None)
@given(_expressions())
def test_canonical_text_reads_back_to_the_same_tree(text: str) -> None:
    tree = parse_expression(text)
    assert parse_expression(render(tree)) == tree
