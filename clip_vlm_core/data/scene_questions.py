"""Questions about a synthetic scene, asked from the facts it is drawn from, with their true answers.

Ten question types: what the front camera shows, what the back camera shows, the time of day (both show
the sky), and one that needs both views ("where is the bus?": ahead, behind, both or none). Where nothing
is there the answer says so ("none", "no"). Answers are short and closed ("red", "left lane", "none") so
that exact match after normalisation is a fair score and a tiny model spends few tokens on them.

Each type has several phrasings, split into training and held-out ones: the model is trained on the
first and evaluated on the second, so a score measures understanding of the question, not memory of a
sentence. A phrasing is a frame with a slot ("What colour is the vehicle {x}?" with x = "ahead", "in front
of us", ...); each frame keeps one of its fillers out of training, in turn, so a held-out question is a
sentence never trained on whose frame and filler were each trained on in other sentences. A type whose
filler is what it asks about ("Where is the {x}?", x a vehicle) keeps whole frames out instead, and trains
each of its other frames with every filler (`QuestionType.held_out_frames`). Training
questions are also varied the way people type them (a lead-in such as "Quick question: ", or all in lower
case), so that a model learns the words that carry the question, not the shape of a dozen sentences.

Types share wording the way people's questions do: the light is "the signal ahead" as the vehicle is "the
vehicle ahead", and "Is there a bus ahead or behind us?" asks where as "Is there a vehicle behind?" asks
whether anything follows. A model trained on types that never overlap learns to tell them apart by a
template ("Tell me the colour of ... ahead" meant the vehicle; "is there" meant yes or no) and answers a
new sentence as the type whose template it resembles; overlapping wording leaves it only the words that
differ ("signal", "vehicle", "bus") to decide by.

The drive world (data.drive, `data synth --cameras all`) adds types of its own (DRIVE_QUESTION_TYPES): the
motion of the vehicle ahead and behind ("front.motion", "back.motion") and what each side camera shows
("front_left.vehicle_type", "back_right.vehicle_colour", ...), phrased and held out the same way. They are
asked only about drive keyframes; QUESTION_TYPES stays the two-camera world's set.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from clip_vlm_core.data.scene_facts import (
    COLOURS,
    LIGHTS,
    MOTIONS,
    NONE,
    SIDE_VIEWS,
    TIMES,
    VEHICLE_TYPES,
    SceneFacts,
)

LANE_ANSWERS = {"left": "left lane", "ego": "our lane", "right": "right lane"}
WHERE_ANSWERS = ("ahead", "behind", "both", "none")
AHEAD = ("ahead", "in front", "ahead of us", "in front of us")
BEHIND = ("behind", "behind us", "following us", "at the back")
# Said of the light as of the vehicles ahead ("the signal ahead", "the light in front"), so that its noun
# marks a light question, not the absence of "ahead": with only "the light ahead" of these four, the tiny
# model answered "Tell me the colour of the signal ahead." (held out) with the colour of the vehicle ahead.
LIGHTS_SAID = ("the traffic light", "the light ahead", "the traffic signal", "the signal ahead", "the light in front",
               "the signal in front")
NOW = ("", " now", " right now", " at the moment")
LEAD_INS = ("Quick question: ", "Please tell me: ", "From the cameras: ", "Can you answer this? ", "One question: ")


@dataclass(frozen=True)
class QuestionType:
    # "front.*": only CAM_FRONT shows the answer; "back.*": only CAM_BACK; "both.*": both views show it
    # (the sky: day or night) or it takes both (where a vehicle is).
    name: str
    answer: Callable[[SceneFacts, str], str]  # (facts, slot filler) -> the true answer
    frames: tuple[str, ...]  # "{x}" is the slot
    fillers: tuple[str, ...]  # what the slot takes
    answers: tuple[str, ...]  # every answer this type can have
    # Frames held out whole, for a type whose filler is what is asked about ("Where is the {x}?" with x a
    # vehicle), not another way of saying the same thing. Holding out one filler per frame would leave each
    # such frame trained on two of the three vehicles, which a model can fit with a one-bit shortcut ("is it
    # the truck?") that says nothing about the vehicle it never saw in that sentence.
    held_out_frames: tuple[int, ...] = ()

    def phrasings(self, held_out: bool = False) -> list[tuple[str, str]]:
        """(question, filler) of the training phrasings, or of the held-out ones."""
        def held(f: int, k: int) -> bool:
            if self.held_out_frames:
                return f in self.held_out_frames
            return (f + k) % len(self.fillers) == 0
        return [(frame.format(x=filler), filler) for f, frame in enumerate(self.frames)
                for k, filler in enumerate(self.fillers) if held(f, k) == held_out]


def _lane(lane: str) -> str:
    return NONE if lane == NONE else LANE_ANSWERS[lane]


def _where(facts: SceneFacts, vehicle: str) -> str:
    ahead, behind = facts.front_type == vehicle, facts.back_type == vehicle
    return "both" if ahead and behind else "ahead" if ahead else "behind" if behind else "none"


_TYPE_FRAMES = ("What kind of vehicle is {x}?", "What type of vehicle is {x}?", "Which vehicle is {x}?",
                "What is the vehicle {x}?", "Tell me the type of the vehicle {x}.", "What sort of vehicle is {x}?")
_COLOUR_FRAMES = ("What colour is the vehicle {x}?", "Which colour is the vehicle {x}?",
                  "What is the colour of the vehicle {x}?", "Tell me the colour of the vehicle {x}.",
                  "Name the colour of the vehicle {x}.", "What colour does the vehicle {x} have?")
_LANE_FRAMES = ("Which lane is the vehicle {x} in?", "In which lane is the vehicle {x}?", "What lane is the vehicle {x} in?",
                "Tell me the lane of the vehicle {x}.", "Name the lane of the vehicle {x}.",
                "Which lane does the vehicle {x} use?")

QUESTION_TYPES: tuple[QuestionType, ...] = (
    QuestionType("front.vehicle_type", lambda f, _: f.front_type, _TYPE_FRAMES, AHEAD, VEHICLE_TYPES),
    QuestionType("front.vehicle_colour", lambda f, _: f.front_colour, _COLOUR_FRAMES, AHEAD, COLOURS),
    QuestionType("front.lane", lambda f, _: _lane(f.front_lane), _LANE_FRAMES, AHEAD, tuple(LANE_ANSWERS.values())),
    QuestionType(
        "front.light", lambda f, _: f.light,
        ("What colour is {x}?", "Is {x} red or green?", "What does {x} show?", "What is the state of {x}?",
         "Which colour does {x} show?", "Tell me the colour of {x}."),
        LIGHTS_SAID, LIGHTS,
    ),
    QuestionType("back.vehicle_type", lambda f, _: f.back_type, _TYPE_FRAMES, BEHIND, (*VEHICLE_TYPES, NONE)),
    QuestionType("back.vehicle_colour", lambda f, _: f.back_colour, _COLOUR_FRAMES, BEHIND, (*COLOURS, NONE)),
    QuestionType("back.lane", lambda f, _: _lane(f.back_lane), _LANE_FRAMES, BEHIND, (*LANE_ANSWERS.values(), NONE)),
    QuestionType(
        "back.follows", lambda f, _: "no" if f.back_type == NONE else "yes",
        ("Is anything {x}?", "Is there a vehicle {x}?", "Is something {x}?", "Is there anything {x}?",
         "Is any vehicle {x}?", "Tell me whether anything is {x}."),
        BEHIND, ("yes", "no"),
    ),
    QuestionType(
        "both.time", lambda f, _: f.time,
        ("Is it day or night{x}?", "Is it daytime or night{x}?", "What time of day is it{x}?", "Day or night{x}?",
         "Is it dark or light{x}?", "Tell me whether it is day or night{x}."),
        NOW, TIMES,
    ),
    QuestionType(
        "both.where", _where,
        ("Where is the {x}?", "Where do you see a {x}?", "Which camera shows a {x}?", "Is the {x} ahead or behind?",
         "Where can I see a {x}?", "On which side of us is the {x}?",
         "Tell me where the {x} is.", "In which direction is there a {x}?", "Is there a {x} ahead or behind us?"),
        VEHICLE_TYPES, WHERE_ANSWERS, held_out_frames=(6, 7),
    ),
)
QUESTION_TYPE_NAMES = tuple(t.name for t in QUESTION_TYPES)

# Said of a side camera as "ahead"/"behind" are of the front and back ones.
SIDE_SAID = {side: (f"at the {a} {b}", f"{'ahead' if a == 'front' else 'behind'} on our {b}", f"to the {a} {b} of us",
                    f"beside us at the {a} {b}")
             for side in SIDE_VIEWS.values() for a, b in [side.split("_")]}
_MOTION_FRAMES = ("Is the vehicle {x} approaching or pulling away?", "How is the vehicle {x} moving?",
                  "Is the vehicle {x} getting closer or further away?", "What is the vehicle {x} doing?",
                  "Tell me how the vehicle {x} moves.", "Describe the motion of the vehicle {x}.")


def _side_fact(side: str, index: int) -> Callable[[SceneFacts, str], str]:
    return lambda f, _: f.side(side)[index]


DRIVE_QUESTION_TYPES: tuple[QuestionType, ...] = (
    QuestionType("front.motion", lambda f, _: f.front_motion, _MOTION_FRAMES, AHEAD, MOTIONS),
    QuestionType("back.motion", lambda f, _: f.back_motion, _MOTION_FRAMES, BEHIND, MOTIONS),
    *(QuestionType(f"{side}.vehicle_type", _side_fact(side, 0), _TYPE_FRAMES, SIDE_SAID[side], (*VEHICLE_TYPES, NONE))
      for side in SIDE_VIEWS.values()),
    *(QuestionType(f"{side}.vehicle_colour", _side_fact(side, 1), _COLOUR_FRAMES, SIDE_SAID[side], (*COLOURS, NONE))
      for side in SIDE_VIEWS.values()),
)
TYPES_BY_NAME = {t.name: t for t in QUESTION_TYPES + DRIVE_QUESTION_TYPES}
DRIVE_QUESTION_TYPE_NAMES = tuple(t.name for t in DRIVE_QUESTION_TYPES)


@dataclass(frozen=True)
class SceneQuestion:
    type: str
    question: str
    answer: str

    def as_dict(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer, "type": self.type}


def vary(question: str, rng: random.Random) -> str:
    """A training question as people might type it: half the time after a lead-in, a quarter of the time
    all in lower case."""
    if rng.random() < 0.5:
        question = rng.choice(LEAD_INS) + question
    return question.lower() if rng.random() < 0.25 else question


def base_phrasing(question: str) -> str:
    """The phrasing a varied question was made from, in lower case (see `vary`)."""
    lowered = question.lower()
    for lead_in in LEAD_INS:
        if lowered.startswith(lead_in.lower()):
            return lowered[len(lead_in):]
    return lowered


def ask_about(facts: SceneFacts, rng: random.Random, held_out: bool = False, per_type: int = 1) -> list[SceneQuestion]:
    """`per_type` questions of every type about a scene, each in a different phrasing drawn from the
    training set (varied, see `vary`) or the held-out set (as written), with its true answer. A question
    that names a vehicle names any of the three types, so "none" is as possible an answer as the vehicles
    the scene shows."""
    questions = []
    for qtype in QUESTION_TYPES + (DRIVE_QUESTION_TYPES if facts.is_drive else ()):
        for question, filler in _spread_over_fillers(qtype.phrasings(held_out), per_type, rng):
            asked = question if held_out else vary(question, rng)
            questions.append(SceneQuestion(qtype.name, asked, qtype.answer(facts, filler)))
    return questions


def _spread_over_fillers(phrasings: list[tuple[str, str]], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """`n` distinct phrasings drawn in turn from each filler (in a random order), so that the questions
    about one scene ask about every vehicle before any twice: the model then sees the same frames asked
    "Where is the bus?" and "Where is the car?" with different answers, the contrast that teaches it to
    read the vehicle from the question rather than answer the commonest "none"."""
    by_filler: dict[str, list[tuple[str, str]]] = {}
    for phrasing in phrasings:
        by_filler.setdefault(phrasing[1], []).append(phrasing)
    groups = [rng.sample(group, len(group)) for group in by_filler.values()]
    rng.shuffle(groups)
    drawn = [group[i] for i in range(max(map(len, groups), default=0)) for group in groups if i < len(group)]
    return drawn[:n]


def question_corpus(types: tuple[QuestionType, ...] = QUESTION_TYPES) -> list[str]:
    """Every training phrasing and every answer (for the tiny tokenizer's merges; held-out phrasings are
    left out, as text the model never trained on). The two-camera types by default: the tokenizer of every
    tiny base built stays as it was."""
    corpus = [question for t in types for question, _ in t.phrasings()]
    corpus += [question.lower() for question in corpus] + list(LEAD_INS)
    corpus += [a for t in types for a in t.answers]
    return list(dict.fromkeys(corpus))


__all__ = ["DRIVE_QUESTION_TYPES", "DRIVE_QUESTION_TYPE_NAMES", "LEAD_INS", "QUESTION_TYPES", "QUESTION_TYPE_NAMES", "SceneQuestion", "TYPES_BY_NAME", "ask_about",
           "base_phrasing", "question_corpus", "vary"]
