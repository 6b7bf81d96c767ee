"""`report.html`: one self-contained page (inline CSS, images as base64 JPEG) to read an evaluation.

The metrics stand side by side (base vs fine-tuned when compared), question-answering accuracy per type
beside its chance level, then every sample with its views as thumbnails, the reference and each model's
caption, and its questions with each model's answer. All text is escaped: captions are model output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from clip_vlm_core.evaluation.metrics import METRIC_KEYS

THUMBNAIL_WIDTH = 240

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.sample { border-top: 1px solid #ccc; padding: 0.8em 0; }
.views { display: flex; gap: 8px; }
.views figure { margin: 0; } .views figcaption { font-size: 0.8em; color: #666; }
.token { font-family: monospace; color: #666; }
.label { font-weight: 600; display: inline-block; min-width: 7em; }
"""


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else escape(str(value))


def _metrics_table(blocks: Mapping[str, Mapping[str, Any]]) -> str:
    names = list(blocks)
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = [f"<tr><th>metric</th>{head}</tr>"]
    for key in METRIC_KEYS:
        cells = "".join(f'<td class="num">{_number(blocks[n].get(key))}</td>' for n in names)
        rows.append(f"<tr><td>{escape(key)}</td>{cells}</tr>")
    facts = sorted({f for n in names for f in blocks[n].get("facts", {})})
    for fact in facts:
        cells = "".join(f'<td class="num">{_number(blocks[n].get("facts", {}).get(fact))}</td>' for n in names)
        rows.append(f"<tr><td>fact: {escape(fact)}</td>{cells}</tr>")
    if any("exact_match" in blocks[n] for n in names):
        cells = "".join(f'<td class="num">{_number(blocks[n].get("exact_match"))}</td>' for n in names)
        rows.append(f"<tr><td>all facts right</td>{cells}</tr>")
    for key in ("samples", "seconds"):
        cells = "".join(f'<td class="num">{_number(blocks[n].get(key))}</td>' for n in names)
        rows.append(f"<tr><td>{key}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _qa_table(blocks: Mapping[str, Mapping[str, Any]]) -> str:
    """Accuracy per question type for each model, with the type's chance level (its commonest answer)."""
    names = [n for n in blocks if blocks[n].get("qa")]
    if not names:
        return ""
    per_type = blocks[names[0]]["qa"]["per_type"]
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = [f"<tr><th>question type</th>{head}<th>chance</th><th>questions</th></tr>"]
    for kind, figures in per_type.items():
        cells = "".join(f'<td class="num">{_number(blocks[n]["qa"]["per_type"][kind]["accuracy"])}</td>' for n in names)
        rows.append(f'<tr><td>{escape(kind)}</td>{cells}<td class="num">{_number(figures["chance"])}</td>'
                    f'<td class="num">{figures["questions"]}</td></tr>')
    cells = "".join(f'<td class="num">{_number(blocks[n]["qa"]["accuracy"])}</td>' for n in names)
    rows.append(f'<tr><td>all questions</td>{cells}<td></td><td class="num">{blocks[names[0]]["qa"]["questions"]}</td></tr>')
    return "<h2>Questions (exact match after normalisation)</h2><table>" + "".join(rows) + "</table>"


def _sample_html(
    row: Mapping[str, Any], thumbnails: Mapping[str, str], models: Sequence[str], answers: Sequence[Mapping[str, Any]]
) -> str:
    figures = "".join(
        f'<figure><img src="{uri}" width="{THUMBNAIL_WIDTH}" alt="{escape(view)}">'
        f"<figcaption>{escape(view)}</figcaption></figure>"
        for view, uri in thumbnails.items()
    )
    lines = [f'<div><span class="label">reference</span>{escape(row["reference"])}</div>']
    for model in models:
        key = "prediction" if model == "prediction" else f"prediction_{model}"
        label = "prediction" if model == "prediction" else model
        lines.append(f'<div><span class="label">{escape(label)}</span>{escape(row[key])}</div>')
    for answer in answers:
        said = " · ".join(
            f"{'' if m == 'prediction' else escape(m) + ': '}{escape(answer['prediction' if m == 'prediction' else f'prediction_{m}'])}"
            for m in models
        )
        lines.append(f'<div><span class="label">Q</span>{escape(answer["question"])} '
                     f'<b>truth</b> {escape(answer["reference"])} <b>said</b> {said}</div>')
    return (
        f'<div class="sample"><div class="token">{escape(row["sample_token"])}</div>'
        f'<div class="views">{figures}</div>{"".join(lines)}</div>'
    )


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
    blank = summary.get("blank_views") or []
    facts = [
        f"<li>manifest: {escape(str(summary.get('manifest', '')))}</li>",
        f"<li>model: {escape(str(summary.get('model', '')))}</li>",
        f"<li>samples: {len(rows)}</li>",
    ]
    if blank:
        facts.append(f"<li>views blanked to black (ablation): {escape(', '.join(blank))}</li>")
    title = "clip-vlm evaluation: base vs fine-tuned" if compared else "clip-vlm evaluation"
    by_sample: dict[str, list[Mapping[str, Any]]] = {}
    for answer in answers:
        by_sample.setdefault(answer["sample_token"], []).append(answer)
    samples = "".join(_sample_html(r, t, models, by_sample.get(r["sample_token"], []))
                      for r, t in zip(rows, thumbnails, strict=True))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1><ul>{''.join(facts)}</ul>"
        f"<h2>Metrics</h2>{_metrics_table(blocks)}{_qa_table(blocks)}<h2>Samples</h2>{samples}</body></html>\n"
    )
