"""One check for a setting that takes one of a few names (pure Python: every layer may use it)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def check_choice(
    name: str, value: object, choices: Sequence[str], error: type[Exception] = ValueError
) -> None:
    """Refuse ``value`` unless it is one of ``choices``: the message names the setting, lists
    the choices and suggests the closest one."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise error(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}{hint}")
