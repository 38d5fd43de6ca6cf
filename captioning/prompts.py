"""Caption prompts, caption cleanup and the per-clip caption status.

Prompts are templates with two placeholders, `{num_frames}` and `{duration_s}`, filled per clip.
A pipeline names a built-in template or writes its own. Cleanup removes what VLMs prepend out of
habit ("The video shows ...") so the caption starts with its subject, which is what a text
encoder for video generation should see; the status tells a usable caption from an empty,
cut-off or failed one without a second pass over the text.
"""

from __future__ import annotations

import re
from typing import Literal

Status = Literal["ok", "empty", "truncated", "error"]

# Dense, visual-only descriptions for generative training, in the style of the Open-Sora and
# Cosmos-Curate captioners: subjects, actions, setting, camera, light; no speculation.
DETAILED = (
    "These are {num_frames} frames sampled in order from a {duration_s:.1f}-second video clip. "
    "Describe the clip in detail as one paragraph: the main subjects and their appearance, what "
    "they do and how they move, the setting and background, the camera's viewpoint and motion, "
    "the lighting, colours and visual style. Describe only what is visible; do not guess at "
    "sounds, names or intentions, and do not mention frames or that this is a video."
)
SHORT = (
    "These are {num_frames} frames from a {duration_s:.1f}-second video clip. Describe in one "
    "sentence what is visible and what happens."
)
PROMPTS: dict[str, str] = {"detailed": DETAILED, "short": SHORT}


def template_for(prompt: str) -> str:
    """A built-in template by name, or the text itself; refuses unknown placeholders up front."""
    template = PROMPTS.get(prompt, prompt)
    try:
        template.format(num_frames=1, duration_s=1.0)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"prompt template is invalid ({e!r}); use only {{num_frames}} and {{duration_s}}, and {{{{ }}}} for braces"
        ) from None
    return template


def render(template: str, num_frames: int, duration_s: float | None) -> str:
    return template.format(num_frames=num_frames, duration_s=float(duration_s or 0.0))


# Openings that carry no content: "The video shows", "In this clip,", "The frames depict", ...
_SUBJECT = r"(?:the|this|these|a|an)\s+(?:short\s+|given\s+|provided\s+)?(?:video|clip|footage|scene|frames?|images?|sequence)"
_VERB = (
    r"(?:shows|show|showcases|depicts|depict|features|captures|presents|displays|illustrates|"
    r"is\s+showing|begins\s+with|opens\s+with|starts\s+with)"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_OPENING = re.compile(
    rf"^\s*(?:(?:in|throughout)\s+{_SUBJECT}\s*,?\s*(?:we\s+see\s+|we\s+can\s+see\s+|there\s+is\s+|there\s+are\s+)?"
    rf"|{_SUBJECT}\s+{_VERB}\s*:?\s*)",
    re.IGNORECASE,
)


def clean(text: str | None) -> str:
    """Drop control characters, collapse whitespace, drop quotes and a content-free opening,
    capitalise the first letter."""
    if not text:
        return ""
    text = _CONTROL.sub("", " ".join(text.split())).strip().strip('"“”').strip()
    stripped = _OPENING.sub("", text, count=1)
    if stripped != text and stripped:
        text = stripped[0].upper() + stripped[1:]
    return text


def status(caption: str, finished: bool) -> Status:
    """`finished` is False when generation stopped at the token limit instead of at its end token."""
    if not caption:
        return "empty"
    return "ok" if finished else "truncated"
