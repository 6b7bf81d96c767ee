"""`report.html`: one self-contained page to read an evaluation: inline CSS, inline SVG charts, images as
base64 JPEG; nothing is fetched from a network, so it opens the same offline, attached to a ticket or in CI.

From the top: what was evaluated (manifest, the checkpoint's path and training step, decoding limits, time);
a chart per fact and one per question type, each with a bar per model (base vs fine-tuned when compared)
and the chance level marked; the metric and question tables; then every sample, those with failures first,
with its views as thumbnails, the reference and each caption (marked right or wrong by its facts on
synthetic captions) and its questions, wrong answers first, each answer coloured right or wrong.

The page is the template clip_vlm_core/templates/eval_report.html rendered with autoescape
(clip_vlm_core.pages): captions and answers are model output, and every one of them is escaped. The chart
geometry is computed here, so the template only places numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clip_vlm_core.evaluation.checkpoint_info import checkpoint_line
from clip_vlm_core.evaluation.metrics import METRIC_KEYS
from clip_vlm_core.evaluation.qa import answers_match
from clip_vlm_core.pages import render_page

THUMBNAIL_WIDTH = 240

# Chart geometry (SVG user units = CSS pixels): a bar per model, scaled 0..1 over BAR_WIDTH.
LABEL_WIDTH, BAR_WIDTH, BAR_HEIGHT, BAR_GAP, TOP, BOTTOM = 72, 200, 18, 6, 8, 22
MODEL_CLASSES = {"base": "base", "fine-tuned": "tuned"}


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _metric_rows(blocks: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """(label, one cell per model) for every metric, fact and count the blocks hold."""
    names = list(blocks)

    def row(label: str, get) -> tuple[str, list[str]]:
        return label, [_number(get(blocks[n])) for n in names]

    rows = [row(key, lambda b, key=key: b.get(key)) for key in METRIC_KEYS]
    facts = sorted({f for n in names for f in blocks[n].get("facts", {})})
    rows += [row(f"fact: {fact}", lambda b, fact=fact: b.get("facts", {}).get(fact)) for fact in facts]
    if any("exact_match" in blocks[n] for n in names):
        rows.append(row("all facts right", lambda b: b.get("exact_match")))
    rows.append(row("samples", lambda b: b.get("samples")))
    # The model's time: captions, questions, both (what an old metrics.json without the parts calls seconds).
    if any("caption_seconds" in blocks[n] for n in names):
        rows.append(row("seconds: captions", lambda b: b.get("caption_seconds")))
    if any("answer_seconds" in blocks[n] for n in names):
        rows.append(row("seconds: questions", lambda b: b.get("answer_seconds")))
    rows.append(row("seconds: captions + questions", lambda b: b.get("seconds")))
    return rows


def _qa_table(blocks: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
    """Accuracy per question type for each model, with the type's chance level (its commonest answer)."""
    names = [n for n in blocks if blocks[n].get("qa")]
    if not names:
        return None
    first = blocks[names[0]]["qa"]
    rows = [(kind, [_number(blocks[n]["qa"]["per_type"][kind]["accuracy"]) for n in names],
             _number(figures["chance"]), figures["questions"]) for kind, figures in first["per_type"].items()]
    rows.append(("all questions", [_number(blocks[n]["qa"]["accuracy"]) for n in names], "", first["questions"]))
    return {"columns": names, "rows": rows}


# -- charts -----------------------------------------------------------------------------------------------
def _chart(title: str, values: Mapping[str, float | None], chance: float | None, note: str = "") -> dict[str, Any]:
    """One small SVG chart: a bar per model (share right, 0..1), the chance level as a dashed line."""
    bars = []
    for i, (model, value) in enumerate(values.items()):
        share = min(max(float(value), 0.0), 1.0) if value is not None else None
        bars.append({
            "label": model, "css": MODEL_CLASSES.get(model, "tuned"), "y": TOP + i * (BAR_HEIGHT + BAR_GAP),
            "width": round(BAR_WIDTH * share, 1) if share is not None else 0,
            "text": f"{100 * share:.0f}%" if share is not None else "n/a",
        })
    height = TOP + len(bars) * (BAR_HEIGHT + BAR_GAP) - BAR_GAP + BOTTOM
    marker = None
    if chance is not None:
        marker = {"x": round(LABEL_WIDTH + BAR_WIDTH * min(max(chance, 0.0), 1.0), 1),
                  "text": f"chance {100 * chance:.0f}%", "bottom": height - BOTTOM + 4}
    summary = "; ".join(f"{b['label']} {b['text']}" for b in bars) + (f"; chance {100 * chance:.0f}%" if chance
                                                                        is not None else "")
    return {"title": title, "note": note, "bars": bars, "chance": marker, "height": height,
            "width": LABEL_WIDTH + BAR_WIDTH + 48, "bar_x": LABEL_WIDTH, "bar_width": BAR_WIDTH,
            "bar_height": BAR_HEIGHT, "summary": summary}


def _fact_charts(blocks: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    names = [n for n in blocks if blocks[n].get("facts")]
    if not names:
        return []
    facts = sorted({f for n in names for f in blocks[n]["facts"]})
    chance = blocks[names[0]].get("fact_chance", {})
    charts = [_chart(fact, {n: blocks[n]["facts"].get(fact) for n in names}, chance.get(fact)) for fact in facts]
    charts.append(_chart("all facts right", {n: blocks[n].get("exact_match") for n in names}, None,
                         "every fact of the caption right"))
    return charts


def _question_charts(blocks: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    names = [n for n in blocks if blocks[n].get("qa")]
    if not names:
        return []
    per_type = blocks[names[0]]["qa"]["per_type"]
    charts = [_chart(kind, {n: blocks[n]["qa"]["per_type"].get(kind, {}).get("accuracy") for n in names},
                     figures.get("chance"), f"{figures['questions']} questions") for kind, figures in per_type.items()]
    charts.append(_chart("all questions", {n: blocks[n]["qa"]["accuracy"] for n in names}, None,
                         f"{blocks[names[0]]['qa']['questions']} questions"))
    return charts


# -- samples ----------------------------------------------------------------------------------------------
def _caption_verdict(reference: str, prediction: str) -> tuple[str, str]:
    """("right" | "wrong" | "", what is wrong) by the synthetic facts; "" where the reference states none."""
    from clip_vlm_core.data.scene_facts import parse_facts

    truth = parse_facts(reference)
    if not truth:
        return "", ""
    guess = parse_facts(prediction)
    wrong = [fact for fact, value in truth.items() if guess.get(fact) != value]
    return ("wrong", "wrong: " + ", ".join(wrong)) if wrong else ("right", "every fact right")


def _sample(row: Mapping[str, Any], thumbnails: Mapping[str, str], models: Sequence[tuple[str, str]],
            answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A sample's card: captions and answers each with a verdict; its questions wrong-first."""
    predictions = []
    for label, key in models:
        verdict, why = _caption_verdict(row["reference"], row[key])
        predictions.append({"label": label, "text": row[key], "verdict": verdict, "why": why})
    questions = []
    for order, answer in enumerate(answers):
        said = [{"label": label, "text": answer[key],
                 "verdict": "right" if answers_match(answer["reference"], answer[key]) else "wrong"}
                for label, key in models]
        questions.append({"question": answer["question"], "type": answer.get("type", ""), "reference": answer["reference"],
                          "said": said, "order": order})
    # Failures first: wrong for the last model (the fine-tuned one), then wrong for any, then right.
    questions.sort(key=lambda q: (q["said"][-1]["verdict"] != "wrong", all(s["verdict"] == "right" for s in q["said"]),
                                  q["order"]))
    failures = [sum(p["verdict"] == "wrong" for p in predictions[i:i + 1]) +
                sum(q["said"][i]["verdict"] == "wrong" for q in questions) for i in range(len(models))]
    return {"token": row["sample_token"], "thumbnails": thumbnails, "reference": row["reference"],
            "predictions": predictions, "questions": questions, "failures": failures,
            "wrong_answers": [sum(q["said"][i]["verdict"] == "wrong" for q in questions) for i in range(len(models))]}


def render_report(
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    thumbnails: Sequence[Mapping[str, str]],
    answers: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The whole page. `summary` is metrics.json; `rows` are captions.jsonl's; `thumbnails` per row map
    view -> data URI; `answers` are answers.jsonl's."""
    compared = "base" in summary and "finetuned" in summary
    blocks = {"base": summary["base"], "fine-tuned": summary["finetuned"]} if compared else {
        summary.get("model", "model"): summary
    }
    models = [("base", "prediction_base"), ("fine-tuned", "prediction_finetuned")] if compared else [
        ("prediction", "prediction")]
    facts = [f"manifest: {summary.get('manifest', '')}", checkpoint_line(summary.get("checkpoint"), summary.get("model", "")),
             f"samples: {len(rows)}, questions: {len(answers)}"]
    decoding = summary.get("decoding") or {}
    if decoding.get("max_new_tokens") is not None:
        limits = f"captions up to {decoding['max_new_tokens']} tokens"
        if summary.get("max_answer_tokens") is not None and answers:
            limits += f", answers up to {summary['max_answer_tokens']}"
        facts.append(limits)
    if summary.get("run_seconds") is not None:
        facts.append(f"run: {summary['run_seconds']:.1f} s in all (images, every model's captions and answers, scoring)")
    if summary.get("blank_views"):
        facts.append(f"views blanked to black (ablation): {', '.join(summary['blank_views'])}")
    if summary.get("blank_history"):
        facts.append("past frames blanked to black (ablation)")
    by_sample: dict[str, list[Mapping[str, Any]]] = {}
    for answer in answers:
        by_sample.setdefault(answer["sample_token"], []).append(answer)
    samples = [_sample(r, t, models, by_sample.get(r["sample_token"], [])) for r, t in zip(rows, thumbnails, strict=True)]
    order = {id(s): i for i, s in enumerate(samples)}
    samples.sort(key=lambda s: (*(-f for f in reversed(s["failures"])), order[id(s)]))  # failures first
    return render_page(
        "eval_report.html",
        title="clip-vlm evaluation: base vs fine-tuned" if compared else "clip-vlm evaluation",
        facts=facts, columns=list(blocks), metrics=_metric_rows(blocks), qa=_qa_table(blocks),
        fact_charts=_fact_charts(blocks), question_charts=_question_charts(blocks),
        legend=[(label, MODEL_CLASSES.get(label, "tuned")) for label in blocks],
        model_labels=[label for label, _ in models], thumbnail_width=THUMBNAIL_WIDTH, samples=samples,
    )
