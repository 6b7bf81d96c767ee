"""Proof that the pipeline learns: the embedded model (tiny architecture trained by
training/configs/synthetic-tiny.yaml on seed-0 scenes, captions and questions together) reads both views
of scenes it never saw, and answers questions about them in phrasings it never trained on."""

from __future__ import annotations

from collections import Counter

import pytest

from clip_vlm_core.data.manifest import load_manifest
from clip_vlm_core.data.scene_facts import FACT_KEYS, parse_facts
from clip_vlm_core.data.scene_questions import QUESTION_TYPE_NAMES, QUESTION_TYPES
from clip_vlm_core.data.synthetic import QA_HELD_OUT_FILE, generate_synthetic_nuscenes
from clip_vlm_core.evaluation import fact_accuracy
from clip_vlm_core.evaluation.qa import answers_match, qa_accuracy
from clip_vlm_core.images import load_image

HELD_OUT_SEED = 20261123  # the training recipe draws its scenes from seed 0
# Hundreds of captions and answers on 2 CPU cores: 40 s to over a minute each, marked slow.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """40 keyframes of unseen scenes: (view images, reference caption, held-out question pairs) per sample."""
    from clip_vlm_core.data.manifest import build_manifest

    root = tmp_path_factory.mktemp("held_out")
    tree = generate_synthetic_nuscenes(root / "nuscenes", scenes=2, samples_per_scene=20, seed=HELD_OUT_SEED,
                                       show_progress=False).root
    build_manifest(tree, "v1.0-mini", tree / "nuinteract", ["CAM_FRONT", "CAM_BACK"], root / "manifest",
                   show_progress=False, qa=[tree / QA_HELD_OUT_FILE])
    rows = load_manifest(root / "manifest")
    return [({v: load_image(r.image_path(v, tree)) for v in r.views}, r.caption, r.qa) for r in rows]


@pytest.fixture(scope="module")
def captioner(_embedded_session):
    return _embedded_session  # loaded once for the session (conftest.py); only captions and answers here


def views_of(samples, blank: str | None = None) -> list[dict]:
    from PIL import Image

    return [{v: (Image.new("RGB", im.size) if v == blank else im) for v, im in views.items()} for views, *_ in samples]


def caption_all(captioner, samples, blank: str | None = None) -> list[str]:
    batch = views_of(samples, blank)
    return [c for i in range(0, len(batch), 8) for c in captioner.caption(batch[i : i + 8], max_new_tokens=48)]


def ask_all(captioner, samples, blank: str | None = None) -> dict:
    asked = [(views, pair) for views, (_, _, pairs) in zip(views_of(samples, blank), samples, strict=True)
             for pair in pairs]
    answers = [a for i in range(0, len(asked), 16)
               for a in captioner.ask([v for v, _ in asked[i : i + 16]], [p.question for _, p in asked[i : i + 16]],
                                      max_new_tokens=8)]
    return qa_accuracy([p.type for _, p in asked], [p.answer for _, p in asked], answers)


def test_embedded_model_states_every_fact_of_both_views(captioner, held_out):
    references = [ref for _, ref, _ in held_out]
    result = fact_accuracy(references, caption_all(captioner, held_out))
    print("per-fact accuracy on held-out scenes:", result)
    assert set(result["facts"]) == set(FACT_KEYS)
    assert min(result["facts"].values()) >= 0.95, result["facts"]
    assert result["exact_match"] >= 0.90


def test_blanking_the_back_view_drops_back_facts_to_chance(captioner, held_out):
    references = [ref for _, ref, _ in held_out]
    result = fact_accuracy(references, caption_all(captioner, held_out, blank="CAM_BACK"))
    print("with CAM_BACK blanked:", result)
    for key in ("back.vehicle_type", "back.vehicle_colour", "back.lane"):
        # Chance: the best one could do without looking, always answering the most common value.
        majority = Counter(parse_facts(ref)[key] for ref in references).most_common(1)[0][1] / len(references)
        assert result["facts"][key] <= majority + 0.1, (key, result["facts"][key], majority)
    # What only the front camera shows is still read. (Time of day is not in this list: both views show
    # the sky, and a black back frame argues for night.)
    assert min(result["facts"][k] for k in FACT_KEYS if k.startswith("front.") and k != "front.time") >= 0.9


QA_GOAL = 0.9  # each question type at least this right, in held-out phrasings, on unseen scenes


@pytest.fixture(scope="module")
def answers(captioner, held_out):
    result = ask_all(captioner, held_out)
    print("QA accuracy per type on held-out scenes and phrasings:", result)
    return result


def test_embedded_model_answers_question_types_in_held_out_phrasings(answers):
    assert set(answers["per_type"]) == set(QUESTION_TYPE_NAMES)
    low = {t: f["accuracy"] for t, f in answers["per_type"].items() if f["accuracy"] < QA_GOAL}
    assert not low, low


# Light questions in sentences that no phrasing list holds, most worded as the vehicle-colour questions are
# ("Name the colour of the signal ahead." beside "Name the colour of the vehicle ahead."). A model that tells
# types apart by the trained sentence a question resembles answers these with the vehicle's colour; the
# model before the light shared that wording got 38-45 % on the "signal ahead/in front" ones.
UNSEEN_LIGHT_QUESTIONS = (
    "Name the colour of the signal ahead.",
    "What colour does the signal ahead have?",
    "What colour is the signal in front of us?",
    "Which colour is the light ahead?",
    "Tell me the colour of the traffic light ahead.",
    "What is the colour of the traffic light?",
)


def test_light_questions_in_unseen_sentences_worded_like_vehicle_ones_get_the_light(captioner, held_out):
    known = {q.lower() for t in QUESTION_TYPES for held in (False, True) for q, _ in t.phrasings(held)}
    assert not known & {q.lower() for q in UNSEEN_LIGHT_QUESTIONS}
    views = views_of(held_out)
    truth = [parse_facts(caption)["front.light"] for _, caption, _ in held_out]
    right = {}
    for question in UNSEEN_LIGHT_QUESTIONS:
        answers = [a for i in range(0, len(views), 20)
                   for a in captioner.ask(views[i : i + 20], [question] * len(views[i : i + 20]), max_new_tokens=8)]
        right[question] = sum(map(answers_match, truth, answers)) / len(truth)
    print("light questions in unseen sentences:", right)
    assert min(right.values()) >= QA_GOAL, right


def test_blanking_the_back_view_drops_back_questions_to_chance_but_not_front_ones(captioner, held_out):
    result = ask_all(captioner, held_out, blank="CAM_BACK")
    print("QA with CAM_BACK blanked:", result)
    for kind, figures in result["per_type"].items():
        if kind.startswith("back."):
            assert figures["accuracy"] <= figures["chance"] + 0.1, (kind, figures)
        elif kind.startswith("front."):  # the front view still shows what it showed
            assert figures["accuracy"] >= QA_GOAL, (kind, figures)
