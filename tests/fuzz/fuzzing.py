"""What the fuzz properties share: a memory bound on one call, and TOML written from data.

The property each target must hold: any input ends in a value or in one of
the target's own typed errors; never another exception, a hang or memory
out of proportion to the input. ``measured`` runs one call and reports
which of those it was, with the peak of what Python allocated during it
(tracemalloc: the interpreter's and msgspec's allocations alike).
"""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st

# Memory a call may take: a fixed allowance plus a multiple of its input. What
# matters is the shape: a header that claims 4 GiB, or a count of 2**32
# elements, must cost what its bytes are, not what they claim.
SLACK_BYTES = 4 << 20
PER_INPUT_BYTE = 64


class Measured:
    def __init__(self, value: Any, error: BaseException | None, peak: int) -> None:
        self.value, self.error, self.peak = value, error, peak


def measured(call: Callable[[], Any]) -> Measured:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        value, error = call(), None
    except Exception as exc:  # noqa: BLE001 - the caller judges which errors are typed
        value, error = None, exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return Measured(value, error, peak)


def assert_bounded(result: Measured, input_size: int) -> None:
    limit = SLACK_BYTES + PER_INPUT_BYTE * input_size
    assert result.peak <= limit, f"peak {result.peak} bytes for {input_size} input bytes (limit {limit})"


def assert_typed(result: Measured, *allowed: type[BaseException]) -> None:
    if result.error is not None and not isinstance(result.error, allowed):
        raise AssertionError(f"an untyped error: {result.error!r}") from result.error


# --- TOML from data (tomli_w is not a dependency) ------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_string(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def _toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes but for DEL, which TOML wants escaped too, and
    characters beyond ASCII as they are (JSON would write a surrogate pair, which TOML refuses)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_document(sections: dict[str, Any]) -> str:
    """Top-level keys first, then one [table] per dict value (nested tables inline)."""
    lines = [f"{_toml_string(k)} = {toml_value(v)}" for k, v in sections.items() if not isinstance(v, dict)]
    for name, table in sections.items():
        if isinstance(table, dict):
            lines.append(f"[{_toml_string(name)}]")
            lines += [f"{_toml_string(str(k))} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# --- what a well-behaved peer (or operator) writes ------------------------------------------------


def valid(
    info: mi.Type, anything: st.SearchStrategy[Any], toml: bool = False, strings: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[Any]:
    """Builtins that decode as ``info`` (string patterns aside): a message a peer sends, a
    config an operator writes. With ``toml``, optional fields that could only be None are left
    out (TOML has no null). ``anything`` stands in for types this does not know; ``strings``,
    if given, for the text of string fields (paths, names a config holds)."""

    def of(t: mi.Type) -> st.SearchStrategy[Any]:
        return valid(t, anything, toml, strings)

    match info:
        case mi.StructType():
            fields = {f.encode_name: of(f.type) for f in info.fields if f.required}
            optional = {f.encode_name: of(f.type) for f in info.fields if not f.required}
            tag = {info.tag_field: st.just(info.tag)} if info.tag_field else {}
            return st.fixed_dictionaries({**fields, **tag}, optional=optional)
        case mi.UnionType():
            types = [t for t in info.types if not (toml and isinstance(t, mi.NoneType))]
            return st.one_of([of(t) for t in types])
        case mi.StrType():
            low, high = info.min_length or 0, min(info.max_length or 24, 24)
            text = st.text(min_size=low, max_size=high)
            if info.pattern:
                text = st.from_regex(info.pattern, fullmatch=True).filter(lambda v: low <= len(v) <= high)
            if strings is None:
                return text
            return st.one_of(text, strings.filter(lambda v: low <= len(v) <= (info.max_length or len(v))))
        case mi.IntType():
            low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else -(1 << 63))
            high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else (1 << 63) - 1)
            return st.integers(low, high)
        case mi.FloatType():
            low = info.ge if info.ge is not None else info.gt
            high = info.le if info.le is not None else info.lt
            return st.floats(
                allow_nan=False, min_value=low, max_value=high, exclude_min=info.gt is not None,
                exclude_max=info.lt is not None,
            )
        case mi.ListType():
            return st.lists(of(info.item_type), max_size=3)
        case mi.DictType():
            return st.dictionaries(of(info.key_type), of(info.value_type), max_size=3)
        case mi.LiteralType():
            return st.sampled_from(info.values)
        case mi.EnumType():
            return st.sampled_from([e.value for e in info.cls])
        case mi.BoolType():
            return st.booleans()
        case mi.NoneType():
            return st.none()
        case mi.BytesType():
            return st.binary(max_size=24)
    return anything
