"""Questions about a synthetic scene, asked from the facts it is drawn from, with their true answers.

Ten question types: what the front camera shows, what the back camera shows, the time of day (both show
the sky), and one that needs both views ("where is the bus?": ahead, behind, both or none). Where nothing
is there the answer says so ("none", "no"). Answers are short and closed ("red", "left lane", "none") so
that exact match after normalisation is a fair score and a tiny model spends few tokens on them.

Each type has several phrasings, split into training and held-out ones: the model is trained on the
first and evaluated on the second, so a score measures understanding of the question, not memory of a
sentence. A phrasing is a frame with a slot ("What colour is the vehicle {x}?" with x = "ahead", "in front
of us", ...); each frame keeps one of its fillers out of training, in turn, so a held-out question is a
sentence never trained on whose frame and filler were each seen elsewhere. Types without a slot keep
their last two frames out.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from clip_vlm_core.data.scene_facts import (
    COLOURS,
    LIGHTS,
    NONE,
    TIMES,
    VEHICLE_TYPES,
    SceneFacts,
)

LANE_ANSWERS = {"left": "left lane", "ego": "our lane", "right": "right lane"}
WHERE_ANSWERS = ("ahead", "behind", "both", "none")
AHEAD = ("ahead", "in front", "ahead of us", "in front of us")
BEHIND = ("behind", "behind us", "following us", "at the back")
HELD_OUT_FRAMES = 2  # of a type without a slot


@dataclass(frozen=True)
class QuestionType:
    # "front.*": only CAM_FRONT shows the answer; "back.*": only CAM_BACK; "both.*": both views show it
    # (the sky: day or night) or it takes both (where a vehicle is).
    name: str
    answer: Callable[[SceneFacts, str], str]  # (facts, slot filler) -> the true answer
    frames: tuple[str, ...]  # "{x}" is the slot
    answers: tuple[str, ...]  # every answer this type can have
    fillers: tuple[str, ...] = ("",)  # what the slot takes; one empty filler: no slot

    def phrasings(self, held_out: bool = False) -> list[tuple[str, str]]:
        """(question, filler) of the training phrasings, or of the held-out ones."""
        if len(self.fillers) == 1:
            frames = self.frames[-HELD_OUT_FRAMES:] if held_out else self.frames[:-HELD_OUT_FRAMES]
            return [(frame, self.fillers[0]) for frame in frames]
        return [(frame.format(x=filler), filler) for f, frame in enumerate(self.frames)
                for k, filler in enumerate(self.fillers) if ((f + k) % len(self.fillers) == 0) == held_out]


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
    QuestionType("front.vehicle_type", lambda f, _: f.front_type, _TYPE_FRAMES, VEHICLE_TYPES, AHEAD),
    QuestionType("front.vehicle_colour", lambda f, _: f.front_colour, _COLOUR_FRAMES, COLOURS, AHEAD),
    QuestionType("front.lane", lambda f, _: _lane(f.front_lane), _LANE_FRAMES, tuple(LANE_ANSWERS.values()), AHEAD),
    QuestionType(
        "front.light", lambda f, _: f.light,
        ("What colour is the traffic light?", "Is the traffic light red or green?", "What does the traffic light show?",
         "What is the state of the traffic light?", "Which colour does the traffic light show?",
         "Name the colour of the traffic light.",
         "Tell me the colour of the traffic light.", "Is the traffic light showing red or green?"),
        LIGHTS,
    ),
    QuestionType("back.vehicle_type", lambda f, _: f.back_type, _TYPE_FRAMES, (*VEHICLE_TYPES, NONE), BEHIND),
    QuestionType("back.vehicle_colour", lambda f, _: f.back_colour, _COLOUR_FRAMES, (*COLOURS, NONE), BEHIND),
    QuestionType("back.lane", lambda f, _: _lane(f.back_lane), _LANE_FRAMES, (*LANE_ANSWERS.values(), NONE), BEHIND),
    QuestionType(
        "back.follows", lambda f, _: "no" if f.back_type == NONE else "yes",
        ("Is anything following us?", "Is there a vehicle behind us?", "Does anything follow us?",
         "Is something behind us?", "Is there anything at the back?", "Are we followed by a vehicle?",
         "Is any vehicle driving behind us?", "Tell me whether anything follows us."),
        ("yes", "no"),
    ),
    QuestionType(
        "both.time", lambda f, _: f.time,
        ("Is it day or night?", "Is it daytime or night?", "What time of day is it?", "Day or night?",
         "Is it daytime or night-time?", "Tell me the time of day.",
         "Is it currently day or night?", "Which is it, day or night?"),
        TIMES,
    ),
    QuestionType(
        "both.where", _where,
        ("Where is the {x}?", "Where do you see a {x}?", "Is there a {x} ahead or behind?", "Which camera shows a {x}?",
         "Tell me where the {x} is.", "In which direction is there a {x}?"),
        WHERE_ANSWERS, VEHICLE_TYPES,
    ),
)
TYPES_BY_NAME = {t.name: t for t in QUESTION_TYPES}
QUESTION_TYPE_NAMES = tuple(TYPES_BY_NAME)


@dataclass(frozen=True)
class SceneQuestion:
    type: str
    question: str
    answer: str

    def as_dict(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer, "type": self.type}


def ask_about(facts: SceneFacts, rng: random.Random, held_out: bool = False) -> list[SceneQuestion]:
    """One question of every type about a scene, each in a phrasing drawn from the training set (or the
    held-out set), with its true answer. A question that names a vehicle names any of the three types,
    so "none" is as possible an answer as the vehicles the scene shows."""
    questions = []
    for qtype in QUESTION_TYPES:
        question, filler = rng.choice(qtype.phrasings(held_out))
        questions.append(SceneQuestion(qtype.name, question, qtype.answer(facts, filler)))
    return questions


def question_corpus() -> list[str]:
    """Every training phrasing and every answer (for the tiny tokenizer's merges; held-out phrasings are
    left out, as text the model never trained on)."""
    corpus = [question for t in QUESTION_TYPES for question, _ in t.phrasings()]
    corpus += [a for t in QUESTION_TYPES for a in t.answers]
    return list(dict.fromkeys(corpus))


__all__ = ["QUESTION_TYPES", "QUESTION_TYPE_NAMES", "SceneQuestion", "TYPES_BY_NAME", "ask_about",
           "question_corpus"]
