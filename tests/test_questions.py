"""Questions about the scene as data: the synthetic world's questions, `data build --qa`, the caption/QA
mix of an epoch, the exact-match score, `clip-vlm eval` on questions and `clip-vlm ask`."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from clip_vlm_core.cli import main
from clip_vlm_core.data.manifest import load_manifest, read_manifest_meta
from clip_vlm_core.data.mixing import CaptionQAMix
from clip_vlm_core.data.scene_questions import LEAD_INS, QUESTION_TYPE_NAMES, QUESTION_TYPES, base_phrasing
from clip_vlm_core.errors import UserError
from clip_vlm_core.evaluation.qa import answers_match, qa_accuracy
from clip_vlm_core.images import load_image

CAMS = ["CAM_FRONT", "CAM_BACK"]
SAMPLES = Path(__file__).resolve().parents[1] / "clip_vlm_core" / "assets" / "samples"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def qa_manifest(manifest_of) -> Path:
    return manifest_of(CAMS, "qa_heldout.jsonl")


# -- the synthetic world's questions -------------------------------------------------------------------
def test_every_type_has_several_training_phrasings_and_distinct_held_out_ones():
    for qtype in QUESTION_TYPES:
        training, held_out = qtype.phrasings(), qtype.phrasings(held_out=True)
        assert len(training) >= 6 and len(held_out) >= 2, qtype.name
        assert not {q for q, _ in training} & {q for q, _ in held_out}, qtype.name
        # A held-out sentence is new, but its slot filler was trained on in other frames.
        assert {f for _, f in held_out} <= {f for _, f in training}, qtype.name


def test_types_asked_alike_share_wording_so_the_words_that_differ_decide_the_type():
    # A tiny model trained on types that never overlap tells them apart by template, and answered the
    # held-out "Tell me the colour of the signal ahead." with the vehicle ahead's colour, and "In which
    # direction is there a car?" with "yes". Training sentences that differ only in those words prevent it.
    train = {t.name: {q.lower() for q, _ in t.phrasings()} for t in QUESTION_TYPES}
    shared = {q.replace("vehicle", noun) for q in train["front.vehicle_colour"] for noun in ("signal", "light")}
    shared &= train["front.light"]
    assert any("ahead" in q for q in shared) and any("in front" in q for q in shared), shared
    assert any(q.startswith("is there a ") for q in train["back.follows"])
    assert any(q.startswith("is there a ") for q in train["both.where"])


def test_a_type_asking_about_its_filler_holds_out_whole_frames_and_trains_every_frame_on_every_filler():
    # "Where is the {x}?": the filler is the vehicle asked about. A held-out question is a sentence never
    # trained on, and every trained sentence frame is trained with each vehicle, so no frame can be fitted
    # by telling two vehicles apart.
    content = [t for t in QUESTION_TYPES if t.held_out_frames]
    assert [t.name for t in content] == ["both.where"]
    for qtype in content:
        trained = Counter(frame for frame in qtype.frames for q, _ in qtype.phrasings()
                          if q in {frame.format(x=f) for f in qtype.fillers})
        assert set(trained.values()) == {len(qtype.fillers)}, trained
        held_frames = {frame for frame in qtype.frames for q, _ in qtype.phrasings(held_out=True)
                       if q in {frame.format(x=f) for f in qtype.fillers}}
        assert held_frames and not held_frames & set(trained)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_keyframes_questions_of_a_type_ask_about_every_filler_before_any_twice(seed):
    from clip_vlm_core.data.scene_facts import VEHICLE_TYPES, SceneFacts
    from clip_vlm_core.data.scene_questions import ask_about

    filler_of = {t.name: {q.lower(): f for q, f in t.phrasings()} for t in QUESTION_TYPES}
    rng = random.Random(seed)
    for _ in range(20):
        facts = SceneFacts.draw(rng)
        for per_type in (1, 2, 3, 4, 6):
            asked = ask_about(facts, rng, per_type=per_type)
            for qtype in QUESTION_TYPES:
                fillers = Counter(filler_of[qtype.name][base_phrasing(q.question)] for q in asked if q.type == qtype.name)
                assert sum(fillers.values()) == per_type
                spread = len(fillers) == min(per_type, len(qtype.fillers)) and max(fillers.values()) - min(fillers.values()) <= 1
                assert spread, (qtype.name, per_type, fillers)
        # Three where-questions about one scene ask about each vehicle once: the vehicle ahead is among them.
        where = {filler_of["both.where"][base_phrasing(q.question)]: q.answer
                 for q in ask_about(facts, rng, per_type=3) if q.type == "both.where"}
        assert set(where) == set(VEHICLE_TYPES)
        assert where[facts.front_type] in ("ahead", "both")


@pytest.mark.parametrize("file", ["qa.jsonl", "qa_heldout.jsonl"])
def test_every_keyframe_gets_questions_of_each_type_answered_from_its_facts(synthetic_nuscenes, file):
    from clip_vlm_core.data.synthetic import TRAINING_QUESTIONS_PER_TYPE

    facts = json.loads((synthetic_nuscenes / "synthetic_facts.json").read_text())
    pairs = read_jsonl(synthetic_nuscenes / file)
    per_type = 1 if file == "qa_heldout.jsonl" else TRAINING_QUESTIONS_PER_TYPE
    assert Counter((p["token"], p["type"]) for p in pairs) == dict.fromkeys(
        [(token, t) for token in facts for t in QUESTION_TYPE_NAMES], per_type)
    # A keyframe's questions of one type are asked in different phrasings.
    assert len({(p["token"], p["question"]) for p in pairs}) == len(pairs)
    held_out = file == "qa_heldout.jsonl"
    phrasings = {t.name: {q for q, _ in t.phrasings(held_out=held_out)} for t in QUESTION_TYPES}
    lowered = {name: {q.lower() for q in qs} for name, qs in phrasings.items()}
    for pair in pairs:
        truth = facts[pair["token"]]
        if held_out:  # held-out questions are asked as written
            assert pair["question"] in phrasings[pair["type"]], pair
        else:  # training questions are varied (a lead-in, lower case) from a training phrasing
            assert base_phrasing(pair["question"]) in lowered[pair["type"]], pair
        expected = {"front.vehicle_colour": truth["front.vehicle_colour"], "front.light": truth["front.light"],
                    "back.vehicle_type": truth["back.vehicle_type"], "both.time": truth["front.time"],
                    "back.follows": "no" if truth["back.vehicle_type"] == "none" else "yes"}
        if pair["type"] in expected:
            assert pair["answer"] == expected[pair["type"]], pair
        if pair["type"] == "both.where":
            vehicle = next(v for v in ("car", "truck", "bus") if re.search(rf"\b{v}\b", pair["question"]))
            ahead, behind = truth["front.vehicle_type"] == vehicle, truth["back.vehicle_type"] == vehicle
            assert pair["answer"] == {(1, 1): "both", (1, 0): "ahead", (0, 1): "behind", (0, 0): "none"}[ahead, behind]


def test_training_questions_are_varied_as_people_type_them_and_held_out_ones_are_not(synthetic_nuscenes):
    training = [p["question"] for p in read_jsonl(synthetic_nuscenes / "qa.jsonl")]
    held_out = [p["question"] for p in read_jsonl(synthetic_nuscenes / "qa_heldout.jsonl")]
    led = [q for q in training if q.lower().startswith(tuple(lead.lower() for lead in LEAD_INS))]
    assert 0.35 < len(led) / len(training) < 0.65
    assert 0.15 < sum(q == q.lower() for q in training) / len(training) < 0.35
    # Every lead-in is used; no held-out question has one or is lowered.
    assert {lead.lower() for lead in LEAD_INS} == {lead.lower() for lead in LEAD_INS for q in led
                                                   if q.lower().startswith(lead.lower())}
    assert not any(q.lower().startswith(tuple(lead.lower() for lead in LEAD_INS)) for q in held_out)
    assert all(q[0].isupper() for q in held_out)
    # Variation never turns a training phrasing into a held-out one.
    held_out_phrasings = {q.lower() for t in QUESTION_TYPES for q, _ in t.phrasings(held_out=True)}
    assert not {base_phrasing(q) for q in training} & held_out_phrasings


def test_nothing_behind_is_answered_none_and_no(tmp_path):
    from clip_vlm_core.data.synthetic import generate_synthetic_nuscenes

    tree = generate_synthetic_nuscenes(tmp_path / "n", scenes=1, samples_per_scene=12, seed=3, show_progress=False)
    empty = [t for t, f in tree.facts.items() if f["back.vehicle_type"] == "none"]
    assert empty, "seed 3 draws at least one keyframe with nothing behind"
    answers = {(p["token"], p["type"]): p["answer"] for p in read_jsonl(tree.root / "qa.jsonl")}
    for token in empty:
        assert answers[token, "back.follows"] == "no"
        assert answers[token, "back.vehicle_colour"] == answers[token, "back.lane"] == "none"


# -- data build --qa -------------------------------------------------------------------------------------
def test_build_with_qa_puts_each_keyframes_pairs_on_its_row(qa_manifest, synthetic_nuscenes):
    rows = load_manifest(qa_manifest)
    assert all(len(r.qa) == len(QUESTION_TYPES) for r in rows)
    assert {p.type for p in rows[0].qa} == set(QUESTION_TYPE_NAMES)
    meta = read_manifest_meta(qa_manifest)
    per_split = 4 * len(QUESTION_TYPES)  # 4 keyframes a split, one held-out question of each type
    assert meta["qa_counts"] == {"mini_train": per_split, "mini_val": per_split}
    assert meta["qa"] == [str((synthetic_nuscenes / "qa_heldout.jsonl").resolve())]


def test_cli_build_adds_pairs_and_reports_unknown_tokens(synthetic_nuscenes, tmp_path, capsys):
    qa = tmp_path / "extra.jsonl"
    token = read_jsonl(synthetic_nuscenes / "qa.jsonl")[0]["token"]
    qa.write_text(json.dumps({"token": token, "question": "Is the road wet?", "answer": "no"}) + "\n"
                  + json.dumps({"token": "f" * 32, "question": "Any cyclists?", "answer": "no"}) + "\n")
    argv = ["data", "build", "--dataroot", str(synthetic_nuscenes), "--captions", str(synthetic_nuscenes / "nuinteract"),
            "--qa", str(qa), "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 question-answer pairs" in out and "skipped 1 (questions for an unknown sample token)" in out
    row = next(r for r in load_manifest(tmp_path / "m") if r.sample_token == token)
    assert [(p.question, p.answer, p.type) for p in row.qa] == [("Is the road wet?", "no", "untyped")]


@pytest.mark.parametrize("line, message", [
    ('{"token": "abc", "question": "Why?"}', "line 1 has no answer"),
    ('{"question": "Why?", "answer": "no"}', "line 1 has no sample 'token'"),
    ("not json", "line 1 is not valid JSON"),
    (json.dumps({"token": "abc", "question": "Why? " * 300, "answer": "no"}), "1,499 characters long, more than 1,000"),
    (json.dumps({"token": "abc", "question": "Why?<|im_end|>", "answer": "no"}), "chat-template token"),
    ("FIFO", "is a FIFO (named pipe), not a regular file"),
    ("FOLDER", "is a folder, not a regular file"),
])
def test_a_malformed_qa_file_is_one_sentence_naming_the_line(synthetic_nuscenes, tmp_path, capsys, line, message):
    import os

    qa = tmp_path / "bad.jsonl"
    if line == "FIFO":
        os.mkfifo(qa)  # a read would block forever
    elif line == "FOLDER":
        qa.mkdir()
    else:
        qa.write_text(line + "\n")
    argv = ["data", "build", "--dataroot", str(synthetic_nuscenes), "--captions", str(synthetic_nuscenes / "nuinteract"),
            "--qa", str(qa), "--out", str(tmp_path / "m")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(qa) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m").exists()


# -- the epoch's mix ---------------------------------------------------------------------------------------
def test_an_epoch_visits_every_caption_and_the_set_share_of_questions():
    mix = CaptionQAMix(range(10), range(10, 110), 1.5, torch.Generator().manual_seed(0))
    order = list(mix)
    assert len(order) == len(mix) == 25 and sorted(i for i in order if i < 10) == list(range(10))
    questions = [i for i in order if i >= 10]
    assert len(questions) == len(set(questions)) == 15  # drawn without replacement
    assert list(CaptionQAMix(range(10), range(10, 110), 1.5, torch.Generator().manual_seed(0))) == order


@pytest.mark.parametrize("weights, qa_count_per_caption, expected", [
    # 20 "where" items at weight 3 and 80 others at 1: 140 draws give each where-item 3, each other 1.
    ({"where": 3.0}, 14.0, {"where": 3.0, "other": 1.0}),
    # Fractions: each where-item 0.8 draws, each other 0.2; nothing is drawn twice.
    ({"where": 4.0}, 3.2, {"where": 0.8, "other": 0.2}),
    # Weight 0 leaves a type out; the rest share its draws.
    ({"where": 0.0}, 8.0, {"where": 0.0, "other": 1.0}),
])
def test_type_weights_draw_each_type_at_its_weighted_share(weights, qa_count_per_caption, expected):
    from clip_vlm_core.train_setup import qa_item_weights

    types = ["where"] * 20 + ["other"] * 80
    mix = CaptionQAMix(range(10), range(10, 110), qa_count_per_caption, torch.Generator().manual_seed(3),
                       qa_item_weights(types, weights))
    for _ in range(3):  # every epoch, not only the first
        order = list(mix)
        assert len(order) == len(mix) and sorted(i for i in order if i < 10) == list(range(10))
        drawn = Counter(i for i in order if i >= 10)
        for kind, per_item in expected.items():
            items = [10 + n for n, k in enumerate(types) if k == kind]
            counts = [drawn[i] for i in items]
            assert sum(counts) == pytest.approx(per_item * len(items), abs=1), kind
            assert max(counts) - min(counts) <= 1, (kind, Counter(counts))  # spread evenly over the type


def test_equal_type_weights_draw_exactly_as_no_weights():
    def order(weights):
        return list(CaptionQAMix(range(10), range(10, 110), 1.5, torch.Generator().manual_seed(0), weights))
    assert order([2.0] * 100) == order(None)


def test_type_weights_warn_of_a_type_no_question_has_and_refuse_all_zero(caplog):
    from clip_vlm_core.train_setup import qa_item_weights

    assert qa_item_weights(["a", "b"], {}) is None
    assert qa_item_weights([], {"a": 2.0}) is None  # captions only: nothing to weigh
    assert qa_item_weights(["a", "b", "a"], {"a": 2.5}) == [2.5, 1.0, 2.5]
    with caplog.at_level("WARNING"):
        assert qa_item_weights(["a", "b"], {"both.wher": 3}) == [1.0, 1.0]
    assert "names question type(s) ['both.wher'] that no training question has; the training questions' types are " \
           "['a', 'b']" in caplog.text
    with pytest.raises(UserError, match="gives every training question weight 0"):
        qa_item_weights(["a", "a"], {"a": 0})


def test_validation_scores_the_training_mix_of_answers_the_same_items_every_time():
    from types import SimpleNamespace

    from clip_vlm_core.train_setup import validation_mix

    val = SimpleNamespace(caption_indices=list(range(10)), qa_indices=list(range(10, 410)))
    val.__len__ = lambda: 410
    first, again = validation_mix(val, 3.0), validation_mix(val, 3.0)
    assert len(first) == 40 and list(first.indices) == list(again.indices)  # 10 captions + 30 of 400 answers
    assert set(range(10)) <= set(first.indices)
    assert len(validation_mix(val, 0.0)) == 10
    assert validation_mix(None, 3.0) is None


def test_without_questions_the_order_is_the_random_samplers():
    from torch.utils.data import RandomSampler

    mix = CaptionQAMix(range(12), [], 1.0, torch.Generator().manual_seed(5))
    assert list(mix) == list(RandomSampler(range(12), generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("override, message", [
    ("data.qa_per_caption=-1", r"data.qa_per_caption must be at least 0 and at most 1,000 \(answers drawn per caption in an epoch\), got -1"),
    ("optim.loss_weighting=word", "optim.loss_weighting must be one of token, sample, got .word."),
    ("data.qa_type_weights=3", r"data.qa_type_weights must map question types to weights, e.g. \{both.where: 3\}, got 3"),
    ("data.qa_type_weights={both.where: -1}", r"data.qa_type_weights\[both.where\] must be at least 0 and at most 1,000 "
                                              r"\(times as often as its share of the questions\), got -1"),
    ("data.qa_type_weights={both.where: .inf}", r"data.qa_type_weights\[both.where\] must be .*got inf"),
    ("data.qa_type_weights={both.where: many}", r"data.qa_type_weights\[both.where\] must be a number, got 'many'"),
])
def test_bad_qa_recipe_values_are_refused(override, message):
    from clip_vlm_core.train_config import load_run_config

    with pytest.raises(UserError, match=message):
        load_run_config(Path(__file__).resolve().parents[1] / "training/configs/synthetic-tiny.yaml", [override])


def test_sample_weighting_gives_a_two_token_answer_the_weight_of_a_long_caption():
    from clip_vlm_core.model.loss import sample_mean_loss

    labels = torch.full((2, 12), -100)
    labels[0, 2:] = 1  # a 10-token caption, predicted perfectly
    labels[1, 10:] = 1  # a 2-token answer, predicted badly
    logits = torch.zeros(2, 11, 4)  # the model's logits from just before the first labelled column (2) on
    logits[0, :, 1] = 30.0
    answer_loss = torch.nn.functional.cross_entropy(torch.zeros(1, 4), torch.tensor([1])).item()
    assert sample_mean_loss(logits, labels).item() == pytest.approx(answer_loss / 2, rel=1e-4)


@pytest.mark.parametrize("loss", ["token_mean_loss", "sample_mean_loss"])
def test_both_losses_read_the_trailing_logits_the_model_computes_as_all_of_them(loss):
    """The model computes logits only from just before the first labelled column (trailing_logits_needed):
    each loss over those equals the loss over every position's logits."""
    from clip_vlm_core.model import loss as losses

    torch.manual_seed(0)
    labels = torch.full((3, 20), losses.IGNORE_INDEX)
    labels[0, 12:] = torch.randint(0, 9, (8,))
    labels[1, 17:] = torch.randint(0, 9, (3,))
    labels[2, 15:] = torch.randint(0, 9, (5,))
    logits = torch.randn(3, 20, 9)
    keep = losses.trailing_logits_needed(labels)
    assert keep == 9  # columns 11 (predicting 12) to 19
    fn = getattr(losses, loss)
    torch.testing.assert_close(fn(logits[:, -keep:], labels), fn(logits, labels))
    with pytest.raises(ValueError, match="21 positions of logits for 20 labels"):
        fn(torch.randn(3, 21, 9), labels)


# -- scoring -----------------------------------------------------------------------------------------------
def test_answers_match_after_case_punctuation_and_articles_are_dropped():
    assert answers_match("left lane", "The Left lane.") and answers_match("no", " No! ")
    assert not answers_match("left lane", "left") and not answers_match("red", "dark red")


def test_accuracy_per_type_stands_beside_the_types_chance():
    result = qa_accuracy(["a", "a", "a", "a", "b"], ["red", "red", "red", "blue", "yes"],
                         ["red", "blue", "red", "blue", "no"])
    assert result["accuracy"] == 3 / 5 and result["questions"] == 5
    assert result["per_type"]["a"] == {"accuracy": 0.75, "chance": 0.75, "questions": 4}
    assert result["per_type"]["b"]["accuracy"] == 0.0
    assert qa_accuracy([], [], []) == {}


@pytest.mark.slow  # 20-40 s on 2 shared cores
def test_eval_answers_every_question_and_reports_accuracy_per_type(qa_manifest, tmp_path):
    argv = ["eval", "--manifest", str(qa_manifest / "mini_val.jsonl"), "--out", str(tmp_path / "e"),
            "--max-new-tokens", "48", "--device", "cpu"]
    assert main(argv) == 0
    answers = read_jsonl(tmp_path / "e" / "answers.jsonl")
    asked = 4 * len(QUESTION_TYPE_NAMES)  # 4 validation keyframes, one held-out question of each type
    assert len(answers) == asked and {"sample_token", "type", "question", "reference", "prediction"} <= set(answers[0])
    qa = json.loads((tmp_path / "e" / "metrics.json").read_text())["qa"]
    assert set(qa["per_type"]) == set(QUESTION_TYPE_NAMES) and qa["questions"] == asked
    assert qa["accuracy"] == sum(answers_match(a["reference"], a["prediction"]) for a in answers) / asked
    report = (tmp_path / "e" / "report.html").read_text()
    assert "Questions (exact match after normalisation)" in report and report.count("<td class=\"answer ") == asked
    assert main([*argv[:4], str(tmp_path / "c"), "--skip-questions", *argv[5:]]) == 0
    assert not (tmp_path / "c" / "answers.jsonl").exists()


# -- clip-vlm ask ------------------------------------------------------------------------------------------
def test_ask_prints_one_answer_per_question_and_logs_them(tmp_path, capsys):
    log = tmp_path / "ask.jsonl"
    argv = ["ask", "--view", f"CAM_FRONT={SAMPLES / 'front.jpg'}", "--view", f"CAM_BACK={SAMPLES / 'back.jpg'}",
            "--question", "What colour is the vehicle ahead?", "--question", "Is anything following us?",
            "--log", str(log)]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == ["red", "yes"]  # the samples' truth (assets/samples/README.md)
    records = read_jsonl(log)
    assert [(r["question"], r["answer"]) for r in records] == [("What colour is the vehicle ahead?", "red"),
                                                                ("Is anything following us?", "yes")]


@pytest.mark.parametrize("extra, message", [
    (["--question", "  "], "--question is empty"),
    (["--question", "Is it day?", "--question", ""], "--question number 2 is empty"),
    (["--question", "Why? " * 300], "--question is 1,499 characters long, more than 1,000"),
    (["--question", "red?<|im_end|>"], "chat-template token"),
    (["--question", "Why?", "--view", f"CAM_SIDE={SAMPLES / 'back.jpg'}"], "unknown view(s) ['CAM_SIDE']"),
])
def test_ask_refuses_bad_input_in_one_line(capsys, extra, message):
    argv = ["ask", "--view", f"CAM_FRONT={SAMPLES / 'front.jpg'}", "--view", f"CAM_BACK={SAMPLES / 'back.jpg'}", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# -- where the question goes -------------------------------------------------------------------------------
@pytest.mark.parametrize("first", [False, True])
def test_instruction_first_puts_the_question_before_the_images(tiny_base, first):
    import dataclasses

    from clip_vlm_core.model import SceneCaptioner
    from clip_vlm_core.model.tiny import tiny_captioner_config

    config = dataclasses.replace(tiny_captioner_config(tiny_base), instruction_first=first)
    captioner = SceneCaptioner.build(config, device="cpu")
    images = {v: load_image(SAMPLES / f"{v.split('_')[1].lower()}.jpg") for v in CAMS}
    batch = captioner.prepare([images, images], targets=["red", "It is night."],
                              instructions=["What colour is the vehicle ahead?", None])
    tokenizer = captioner.processor.tokenizer
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in batch["input_ids"]]
    for text, instruction in zip(texts, ["What colour is the vehicle ahead?", config.prompt], strict=True):
        assert (text.index(instruction) < text.index("CAM_FRONT:")) == first
    labelled = batch["labels"][0][batch["labels"][0] != -100]
    assert tokenizer.decode(labelled) == "red" + tokenizer.eos_token  # the answer stays at the end either way
