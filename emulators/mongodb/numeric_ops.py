"""`$abs`, `$mod` and `$toLong` with mongod's number types (int, long, double, decimal) and errors.

mongomock computes these on Python numbers: a long (Int64) comes back an int or a double, `$mod` takes
the divisor's sign (Python's `%`), `$abs` of the minimum long does not fail. A hash-partition filter
(`{$eq: [{$abs: {$mod: [{$toHashedIndexKey: ...}, n]}}, k]}`) depends on each of those, so they are
evaluated here as mongod evaluates them (src/mongo/db/pipeline/expression.cpp: ExpressionAbs,
evaluateMod, ExpressionConvert). Arguments arrive evaluated; a missing value arrives as None.
"""

from __future__ import annotations

import datetime
import decimal
import math
import re
from typing import Any

from bson import Decimal128, Int64
from bson.datetime_ms import DatetimeMS, _datetime_to_millis

from .bsonvalues import Undefined
from .errors import CommandError

__all__ = ["INTEGERS", "add_integers", "integer_sum", "mod_integers", "op_abs", "op_mod", "op_to_long"]

CONVERSION_FAILURE = 241
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
#: Decimal128 arithmetic: 34 significant digits, ties to even (IEEE 754-2008 decimal128).
_DECIMAL128 = decimal.Context(prec=34, rounding=decimal.ROUND_HALF_EVEN, Emin=-6143, Emax=6144)
#: Exact types of ints and longs (bool is an int subclass and not a number here).
INTEGERS = (int, Int64)
_DIGITS = re.compile(r"[+-]?[0-9]+")


def _nullish(value: Any) -> bool:
    return value is None or isinstance(value, Undefined)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal128) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    """int, long, double or decimal (a Python int outside the int32 range is a long)."""
    if isinstance(value, Decimal128):
        return "decimal"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Int64) or not _INT_MIN <= value <= _INT_MAX:
        return "long"
    return "int"


def _int_or_long(value: int) -> int:
    """Value::createIntOrLong: an int when it fits in 32 bits, else a long."""
    return value if _INT_MIN <= value <= _INT_MAX else Int64(value)


def _to_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return _DECIMAL128.create_decimal(value)


def _c_remainder(left: int, right: int) -> int:
    """C++ `%`: truncated division, so the remainder takes the dividend's sign (-5 % 3 == -2)."""
    remainder = abs(left) % abs(right)
    return -remainder if left < 0 else remainder


def integer_sum(numbers: list[int]) -> Any:
    """A sum of ints and longs typed as mongod's `$add` types it: an int while every operand is an int
    and the sum fits, else a long, and a double once it overflows the long range."""
    total = sum(int(n) for n in numbers)
    if not _LONG_MIN <= total <= _LONG_MAX:
        return float(total)
    if any(_kind(n) == "long" for n in numbers):
        return Int64(total)
    return _int_or_long(total)


def op_abs(args: list[Any], type_name: Any) -> Any:
    if len(args) != 1:
        raise CommandError(16020, f"Expression $abs takes exactly 1 arguments. {len(args)} were passed in.")
    (value,) = args
    if _nullish(value):
        return None
    if not _is_number(value):
        raise CommandError(28765, f"$abs only supports numeric types, not {type_name(value)}")
    kind = _kind(value)
    if kind == "double":
        return abs(value)
    if kind == "decimal":
        return Decimal128(abs(value.to_decimal()))
    if value == _LONG_MIN:
        raise CommandError(28680, "can't take $abs of long long min")
    return Int64(abs(value)) if kind == "long" else _int_or_long(abs(value))


def op_mod(args: list[Any], type_name: Any) -> Any:
    if len(args) != 2:
        raise CommandError(16020, f"Expression $mod takes exactly 2 arguments. {len(args)} were passed in.")
    left, right = args
    if type(left) in INTEGERS and type(right) in INTEGERS and right:
        return mod_integers(left, right)
    if not (_is_number(left) and _is_number(right)):
        if _nullish(left) or _nullish(right):
            return None
        raise CommandError(
            16611, f"$mod only supports numeric types, not {type_name(left)} and {type_name(right)}"
        )
    kinds = {_kind(left), _kind(right)}
    if "decimal" in kinds:
        divisor = _to_decimal(right)
        if divisor.is_zero():
            raise CommandError(5733415, "can't $mod by zero")
        return Decimal128(_DECIMAL128.remainder(_to_decimal(left), divisor))
    if float(right) == 0:
        raise CommandError(16610, "can't $mod by zero")
    if "double" in kinds:
        return math.fmod(float(left), float(right))
    remainder = _c_remainder(int(left), int(right))
    return Int64(remainder) if "long" in kinds else remainder


def mod_integers(left: int, right: int) -> Any:
    """`$mod` of two ints or longs (exact types, a non-zero divisor), as `op_mod` decides it without its
    type walk: the hash-partition filter's case."""
    remainder = _c_remainder(left, right)
    if type(left) is Int64 or type(right) is Int64 or not (_INT_MIN <= left <= _INT_MAX):
        return Int64(remainder)
    return remainder if _INT_MIN <= right <= _INT_MAX else Int64(remainder)


def add_integers(left: int, right: int) -> Any:
    """`integer_sum([left, right])` of two ints or longs (exact types) without building a list."""
    total = left + right
    if not _LONG_MIN <= total <= _LONG_MAX:
        return float(total)
    if type(left) is Int64 or type(right) is Int64:
        return Int64(total)
    if not (_INT_MIN <= left <= _INT_MAX and _INT_MIN <= right <= _INT_MAX):
        return Int64(total)
    return _int_or_long(total)


def op_to_long(args: list[Any], type_name: Any) -> Any:
    """`$toLong` ($convert to long with no onError)."""
    if len(args) != 1:
        raise CommandError(50723, f"$toLong requires a single argument, got {len(args)}")
    (value,) = args
    if _nullish(value):
        return None
    if isinstance(value, bool):
        return Int64(int(value))
    if isinstance(value, int):
        return Int64(value)
    if isinstance(value, float):
        return Int64(_double_to_long(value))
    if isinstance(value, Decimal128):
        return Int64(_decimal_to_long(value.to_decimal()))
    if isinstance(value, datetime.datetime):
        return Int64(_datetime_to_millis(value))
    if isinstance(value, DatetimeMS):
        return Int64(int(value))
    if isinstance(value, str):
        return Int64(_parse_long(value))
    raise CommandError(
        CONVERSION_FAILURE,
        f"Unsupported conversion from {type_name(value)} to long in $convert with no onError value",
    )


def _non_finite(value: float | decimal.Decimal) -> CommandError:
    kind = "NaN" if value != value else "infinity"
    return CommandError(
        CONVERSION_FAILURE,
        f"Attempt to convert {kind} value to integer type in $convert with no onError value",
    )


def _overflow(shown: str) -> CommandError:
    return CommandError(
        CONVERSION_FAILURE,
        f"Conversion would overflow target type in $convert with no onError value: {shown}",
    )


def _double_to_long(value: float) -> int:
    if not math.isfinite(value):
        raise _non_finite(value)
    if not -(2.0**63) <= value < 2.0**63:
        raise _overflow(f"{value:g}")
    return int(value)  # toward zero


def _decimal_to_long(value: decimal.Decimal) -> int:
    if value.is_nan() or value.is_infinite():
        raise _non_finite(value)
    truncated = int(value.to_integral_value(rounding=decimal.ROUND_DOWN))
    if not _LONG_MIN <= truncated <= _LONG_MAX:
        raise _overflow(str(Decimal128(value)))
    return truncated


def _parse_long(text: str) -> int:
    """NumberParser in base 10, as $convert uses it: the whole string, no surrounding space."""
    if text.startswith(("0x", "0X")):
        raise CommandError(
            CONVERSION_FAILURE, f"Illegal hexadecimal input in $convert with no onError value: {text}"
        )
    reason = None
    match = _DIGITS.match(text)
    if not text:
        reason = "Empty string"
    elif text[0].isspace():
        reason = "Leading whitespace"
    elif match is None:
        reason = "Did not consume any digits"
    elif match.end() != len(text):
        reason = "Did not consume whole string."
    elif not _LONG_MIN <= int(match.group()) <= _LONG_MAX:
        reason = "Out of range"
    if reason is not None:
        raise CommandError(
            CONVERSION_FAILURE, f"Failed to parse number '{text}' in $convert with no onError value: {reason}"
        )
    return int(text)
