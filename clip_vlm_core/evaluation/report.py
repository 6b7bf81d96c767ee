"""`report.html`: one self-contained page (inline CSS, images as base64 JPEG) to read an evaluation.

The metrics stand side by side (base vs fine-tuned when compared), question-answering accuracy per type
beside its chance level, then every sample with its views as thumbnails, the reference and each model's
caption, and its questions with each model's answer. The page is the template
clip_vlm_core/templates/eval_report.html, rendered with autoescape (clip_vlm_core.pages): captions are
model output, and every one of them is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clip_vlm_core.evaluation.metrics import METRIC_KEYS
from clip_vlm_core.pages import render_page

THUMBNAIL_WIDTH = 240


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


def _sample(row: Mapping[str, Any], thumbnails: Mapping[str, str], models: Sequence[str],
            answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def key(model: str) -> str:
        return "prediction" if model == "prediction" else f"prediction_{model}"

    def label(model: str) -> str:
        return "" if model == "prediction" else model

    return {
        "token": row["sample_token"], "thumbnails": thumbnails, "reference": row["reference"],
        "predictions": [(label(m) or "prediction", row[key(m)]) for m in models],
        "questions": [{"question": a["question"], "reference": a["reference"],
                       "said": [(label(m), a[key(m)]) for m in models]} for a in answers],
    }


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
    models = ("base", "finetuned") if compared else ("prediction",)
    facts = [f"manifest: {summary.get('manifest', '')}", f"model: {summary.get('model', '')}", f"samples: {len(rows)}"]
    if summary.get("blank_views"):
        facts.append(f"views blanked to black (ablation): {', '.join(summary['blank_views'])}")
    by_sample: dict[str, list[Mapping[str, Any]]] = {}
    for answer in answers:
        by_sample.setdefault(answer["sample_token"], []).append(answer)
    return render_page(
        "eval_report.html",
        title="clip-vlm evaluation: base vs fine-tuned" if compared else "clip-vlm evaluation",
        facts=facts, columns=list(blocks), metrics=_metric_rows(blocks), qa=_qa_table(blocks),
        thumbnail_width=THUMBNAIL_WIDTH,
        samples=[_sample(r, t, models, by_sample.get(r["sample_token"], [])) for r, t in zip(rows, thumbnails, strict=True)],
    )
