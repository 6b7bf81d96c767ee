"""What a synthetic scene shows, and the templated captions that state it (and parse back).

Two worlds. The two-camera one (`SceneFacts.draw`): every fact is drawn independently per keyframe, front
and back apart, so a model can only get the back-view facts right by reading the back camera. The
six-camera drive (data.drive): the facts of a moment of one continuous drive, which add how the vehicles
ahead and behind move (`front.motion`, `back.motion`) and what each side camera shows
(`front_left.vehicle_type`, ...). Their sentences are new ones, so a caption of the two-camera world
parses to exactly the facts it did.
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
# How the vehicle ahead or behind moves relative to us (the drive world only): its gap shrinks, grows, or
# stays; "none" when nothing is there.
MOTIONS = ("approaching", "pulling away", "steady", NONE)
# The four side cameras by the name their facts and questions use, in the order captions state them.
SIDE_VIEWS = {"CAM_FRONT_LEFT": "front_left", "CAM_FRONT_RIGHT": "front_right",
              "CAM_BACK_LEFT": "back_left", "CAM_BACK_RIGHT": "back_right"}

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
MOTION_FACT_KEYS = ("front.motion", "back.motion")
SIDE_FACT_KEYS = tuple(f"{side}.{fact}" for side in SIDE_VIEWS.values() for fact in ("vehicle_type", "vehicle_colour"))
DRIVE_FACT_KEYS = FACT_KEYS + MOTION_FACT_KEYS + SIDE_FACT_KEYS  # every fact of a drive world keyframe

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
    # The drive world only ("" / () in the two-camera world, whose facts, captions and questions stay as
    # they were): the motion of the vehicle ahead and behind (MOTIONS), and (type, colour) per side camera
    # in SIDE_VIEWS order, (NONE, NONE) for an empty one.
    front_motion: str = ""
    back_motion: str = ""
    sides: tuple[tuple[str, str], ...] = ()

    @property
    def is_drive(self) -> bool:
        return bool(self.front_motion)

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
        facts = dict(zip(FACT_KEYS, (self.time, self.front_type, self.front_colour, self.front_lane, self.light,
                                     self.back_type, self.back_colour, self.back_lane), strict=True))
        if self.is_drive:
            facts.update({"front.motion": self.front_motion, "back.motion": self.back_motion})
            facts.update(zip(SIDE_FACT_KEYS, (value for side in self.sides for value in side), strict=True))
        return facts

    def side(self, view: str) -> tuple[str, str]:
        """(type, colour) of what side view `view` ("front_left", ...) shows; (NONE, NONE) when empty."""
        return self.sides[list(SIDE_VIEWS.values()).index(view)]


_MOTION_TEXT = {"approaching": "is approaching", "pulling away": "is pulling away", "steady": "keeps its distance"}
_MOTION_FROM_TEXT = {v: k for k, v in _MOTION_TEXT.items()}
_SIDE_TEXT = {side: side.replace("_", " ") for side in SIDE_VIEWS.values()}  # "front left"


def describe_front(facts: SceneFacts) -> str:
    time = "It is daytime." if facts.time == "day" else "It is night."
    vehicle = f"A {facts.front_colour} {facts.front_type} is ahead in {_LANE_TEXT[facts.front_lane]}."
    if facts.is_drive:
        vehicle += f" The vehicle ahead {_MOTION_TEXT[facts.front_motion]}."
    light = "There is no traffic light." if facts.light == NONE else f"The traffic light is {facts.light}."
    return f"{time} {vehicle} {light}"


def describe_back(facts: SceneFacts) -> str:
    if facts.back_type == NONE:
        return "Nothing is behind us." if facts.is_drive else "Nothing is behind."
    follows = f"Behind, a {facts.back_colour} {facts.back_type} follows in {_LANE_TEXT[facts.back_lane]}."
    return f"{follows} The vehicle behind {_MOTION_TEXT[facts.back_motion]}." if facts.is_drive else follows


def describe_side(facts: SceneFacts, view: str) -> str:
    """What side view `view` ("front_left", ...) shows, in one sentence that names the view."""
    vtype, colour = facts.side(view)
    if vtype == NONE:
        return f"Nothing is at the {_SIDE_TEXT[view]}."
    return f"At the {_SIDE_TEXT[view]}, a {colour} {vtype} drives beside us."


def describe(facts: SceneFacts) -> str:
    """The joint caption, FRONT then BACK, as NuInteract's joint target is built (then the side views, in the
    drive world)."""
    sides = [describe_side(facts, view) for view in SIDE_VIEWS.values()] if facts.is_drive else []
    return " ".join([describe_front(facts), describe_back(facts), *sides])


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
    # The drive world's sentences (none of them matches a two-camera caption).
    (re.compile(r"The vehicle ahead (is approaching|is pulling away|keeps its distance)\."),
     lambda m: {"front.motion": _MOTION_FROM_TEXT[m[1]]}),
    (re.compile(r"The vehicle behind (is approaching|is pulling away|keeps its distance)\."),
     lambda m: {"back.motion": _MOTION_FROM_TEXT[m[1]]}),
    (re.compile(r"Nothing is behind us\."), lambda m: {"back.vehicle_type": NONE, "back.vehicle_colour": NONE,
                                                       "back.lane": NONE, "back.motion": NONE}),
    *((re.compile(rf"At the {text}, a {_WORD} {_WORD} drives beside us\."),
       lambda m, side=side: {f"{side}.vehicle_colour": m[1], f"{side}.vehicle_type": m[2]})
      for side, text in _SIDE_TEXT.items()),
    *((re.compile(rf"Nothing is at the {text}\."),
       lambda m, side=side: {f"{side}.vehicle_type": NONE, f"{side}.vehicle_colour": NONE})
      for side, text in _SIDE_TEXT.items()),
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


def drive_caption_corpus() -> list[str]:
    """The drive world's captions, every motion and side sentence included. Kept apart from
    `caption_corpus`, which the tiny tokenizer's merges are learnt from: adding to it would change the
    tokenizer of every tiny base built from now on (a surround model's base would learn these)."""
    corpus = []
    for i, (vtype, colour) in enumerate((t, c) for t in VEHICLE_TYPES for c in COLOURS):
        motion = MOTIONS[i % 3]
        sides = tuple((vtype, colour) if (i + k) % 2 else (NONE, NONE) for k in range(len(SIDE_VIEWS)))
        corpus.append(describe(SceneFacts(TIMES[i % 2], vtype, colour, LANES[i % 3], LIGHTS[i % 3], vtype, colour,
                                          LANES[(i + 1) % 3], motion, MOTIONS[(i + 1) % 3], sides)))
    return corpus
