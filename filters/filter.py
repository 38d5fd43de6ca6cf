"""The decision stage: applies threshold rules to the scores already on each clip.

Scoring stages only record; this stage alone sets `kept` and `filter_reasons`, so a score-only
run costs nothing extra and changing a threshold never needs a re-score. Every rule a clip fails
is named in `filter_reasons` (the rule text itself), not just the first.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
from typing import ClassVar

from pydantic import Field, field_validator

from curate.stage import Mode, Stage

_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
_RULE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|!=|>|<)\s*(\S.*?)\s*$")


def parse_rule(rule: str) -> tuple[str, str, object]:
    m = _RULE.match(rule)
    if not m:
        raise ValueError(f"rule '{rule}' is not of the form `column op value` (op: >= <= > < == !=)")
    column, op, value = m.groups()
    try:
        parsed: object = float(value)
    except ValueError:
        low = value.lower()
        parsed = {"true": True, "false": False}.get(low, value.strip("'\""))
    return column, op, parsed


def normalise_rule(rule: str) -> str:
    """One spelling per rule (`a>=4.50` -> `a >= 4.5`); numbers keep every digit that matters."""
    column, op, value = parse_rule(rule)
    if isinstance(value, float):
        value = repr(value).removesuffix(".0")
    return f"{column} {op} {value}"


def apply_rules(clips: list[dict], rules: list[str]) -> list[dict]:
    """Append every rule a clip fails to its `filter_reasons` (the rule text, `(missing)` added when
    the column is absent or NaN: a clip is kept only on evidence) and set `kept` accordingly."""
    parsed = [(r, *parse_rule(r)) for r in dict.fromkeys(normalise_rule(r) for r in rules)]
    for clip in clips:
        reasons = list(clip.get("filter_reasons") or [])
        for text, column, op, value in parsed:
            score = clip.get(column)
            if score is None or (isinstance(score, numbers.Real) and math.isnan(score)):
                reasons.append(f"{text} (missing)")
            else:
                try:
                    passed = _OPS[op](score, value)
                except TypeError:  # e.g. a number compared with a text column
                    passed = False
                if not passed:
                    reasons.append(text)
        clip["filter_reasons"] = reasons
        clip["kept"] = not reasons
    return clips


class FilterStage(Stage):
    name: ClassVar[str] = "filter"
    order: ClassVar[int] = 60
    reads: ClassVar[frozenset[str]] = frozenset()
    light: ClassVar[bool] = True

    mode: Mode = "filter"
    rules: list[str] = []
    # Small batches: the filter is cheap, and a large one would hold clips back from the writer.
    batch_size: int = Field(16, ge=1)

    @field_validator("rules")
    @classmethod
    def _parse(cls, rules: list[str]) -> list[str]:
        return [normalise_rule(r) for r in rules]

    def process_batch(self, clips: list[dict]) -> list[dict]:
        return apply_rules(clips, self.rules)
