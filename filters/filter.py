"""The decision stage: applies threshold rules to the scores already on each clip.

Scoring stages only record; this stage alone sets `kept` and `filter_reasons`, so a score-only
run costs nothing extra and changing a threshold never needs a re-score. Every rule a clip fails
is named in `filter_reasons` (the rule text itself), not just the first.
"""

from __future__ import annotations

import math
import operator
import re
from typing import ClassVar

from pydantic import field_validator

from curate.stage import Stage

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
    column, op, value = parse_rule(rule)
    return f"{column} {op} {value:g}" if isinstance(value, float) else f"{column} {op} {value}"


class FilterStage(Stage):
    name: ClassVar[str] = "filter"
    order: ClassVar[int] = 60

    mode: str = "filter"
    rules: list[str] = []
    batch_size: int = 256

    @field_validator("rules")
    @classmethod
    def _parse(cls, rules: list[str]) -> list[str]:
        return [normalise_rule(r) for r in rules]

    def process_batch(self, clips: list[dict]) -> list[dict]:
        parsed = [(r, *parse_rule(r)) for r in self.rules]
        for clip in clips:
            reasons = list(clip.get("filter_reasons") or [])
            for text, column, op, value in parsed:
                score = clip.get(column)
                # A missing or NaN score fails its rule: a clip is kept only on evidence.
                if score is None or (isinstance(score, float) and math.isnan(score)):
                    reasons.append(f"{text} (missing)")
                elif not _OPS[op](score, value):
                    reasons.append(text)
            clip["filter_reasons"] = reasons
            clip["kept"] = not reasons
        return clips
