"""`report.html`: one self-contained page (inline CSS, images as base64 JPEG) to read an evaluation.

The metrics stand side by side (base vs fine-tuned when compared), then every sample with its views as
thumbnails, the reference and each model's caption. All text is escaped: captions are model output.
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


def _sample_html(row: Mapping[str, Any], thumbnails: Mapping[str, str], models: Sequence[str]) -> str:
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
    return (
        f'<div class="sample"><div class="token">{escape(row["sample_token"])}</div>'
        f'<div class="views">{figures}</div>{"".join(lines)}</div>'
    )


def render_report(
    summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], thumbnails: Sequence[Mapping[str, str]]
) -> str:
    """The whole page. `summary` is metrics.json; `rows` are captions.jsonl's; `thumbnails` per row map
    view -> data URI."""
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
    samples = "".join(_sample_html(r, t, models) for r, t in zip(rows, thumbnails, strict=True))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1><ul>{''.join(facts)}</ul>"
        f"<h2>Metrics</h2>{_metrics_table(blocks)}<h2>Samples</h2>{samples}</body></html>\n"
    )
