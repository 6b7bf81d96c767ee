"""What a synthetic scene shows, and the templated captions that state it (and parse back).

Every fact is drawn independently per keyframe, front and back apart, so a model can only get the
back-view facts right by reading the back camera.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TIMES = ("day", "night")
VEHICLE_TYPES = ("car", "truck", "bus")
COLOURS = ("red", "blue", "green", "yellow", "white", "black")
LANES = ("left", "ego", "right")
LIGHTS = ("red", "green", "none")
NONE = "none"

FACT_KEYS = (
    "front.time",
    "front.vehicle_type",
    "front.vehicle_colour",
    "front.lane",
    "front.light",
    "back.vehicle_type",
    "back.vehicle_colour",
    "back.lane",
)

_LANE_TEXT = {"left": "the left lane", "ego": "our lane", "right": "the right lane"}
_LANE_FROM_TEXT = {v: k for k, v in _LANE_TEXT.items()}


@dataclass(frozen=True)
class SceneFacts:
    time: str
    front_type: str
    front_colour: str
    front_lane: str
    light: str
    back_type: str  # "none" when nothing is behind
    back_colour: str
    back_lane: str

    @classmethod
    def draw(cls, rng: random.Random) -> SceneFacts:
        behind = rng.random() < 0.75
        return cls(
            time=rng.choice(TIMES),
            front_type=rng.choice(VEHICLE_TYPES),
            front_colour=rng.choice(COLOURS),
            front_lane=rng.choice(LANES),
            light=rng.choice(LIGHTS),
            back_type=rng.choice(VEHICLE_TYPES) if behind else NONE,
            back_colour=rng.choice(COLOURS) if behind else NONE,
            back_lane=rng.choice(LANES) if behind else NONE,
        )

    def as_dict(self) -> dict[str, str]:
        return dict(zip(FACT_KEYS, (self.time, self.front_type, self.front_colour, self.front_lane, self.light,
                                    self.back_type, self.back_colour, self.back_lane), strict=True))


def describe_front(facts: SceneFacts) -> str:
    time = "It is daytime." if facts.time == "day" else "It is night."
    vehicle = f"A {facts.front_colour} {facts.front_type} is ahead in {_LANE_TEXT[facts.front_lane]}."
    light = "There is no traffic light." if facts.light == NONE else f"The traffic light is {facts.light}."
    return f"{time} {vehicle} {light}"


def describe_back(facts: SceneFacts) -> str:
    if facts.back_type == NONE:
        return "Nothing is behind."
    return f"Behind, a {facts.back_colour} {facts.back_type} follows in {_LANE_TEXT[facts.back_lane]}."


def describe(facts: SceneFacts) -> str:
    """The joint caption, FRONT then BACK, as NuInteract's joint target is built."""
    return f"{describe_front(facts)} {describe_back(facts)}"


_WORD = r"([a-z]+)"
_LANE = r"(the left lane|our lane|the right lane)"
_PATTERNS = (
    (re.compile(r"It is (daytime|night)\."), lambda m: {"front.time": "day" if m[1] == "daytime" else "night"}),
    (re.compile(rf"A {_WORD} {_WORD} is ahead in {_LANE}\."),
     lambda m: {"front.vehicle_colour": m[1], "front.vehicle_type": m[2], "front.lane": _LANE_FROM_TEXT[m[3]]}),
    (re.compile(r"The traffic light is (red|green)\."), lambda m: {"front.light": m[1]}),
    (re.compile(r"There is no traffic light\."), lambda m: {"front.light": NONE}),
    (re.compile(rf"Behind, a {_WORD} {_WORD} follows in {_LANE}\."),
     lambda m: {"back.vehicle_colour": m[1], "back.vehicle_type": m[2], "back.lane": _LANE_FROM_TEXT[m[3]]}),
    (re.compile(r"Nothing is behind\."), lambda m: {"back.vehicle_type": NONE, "back.vehicle_colour": NONE,
                                                    "back.lane": NONE}),
)


def parse_facts(caption: str) -> dict[str, str]:
    """The facts a caption states; facts it does not state (or garbles) are absent."""
    facts: dict[str, str] = {}
    for pattern, extract in _PATTERNS:
        match = pattern.search(caption)
        if match:
            for key, value in extract(match).items():
                facts.setdefault(key, value)
    return facts


def caption_corpus() -> list[str]:
    """Captions that use every word the templates can produce (for the tiny tokenizer's merges)."""
    corpus = []
    for i, (vtype, colour, lane) in enumerate(
        (t, c, lane) for t in VEHICLE_TYPES for c in COLOURS for lane in LANES
    ):
        facts = SceneFacts(TIMES[i % 2], vtype, colour, lane, LIGHTS[i % 3], vtype, colour, lane)
        corpus.append(describe(facts))
    corpus.append(describe(SceneFacts("day", "car", "red", "ego", "none", NONE, NONE, NONE)))
    return corpus
