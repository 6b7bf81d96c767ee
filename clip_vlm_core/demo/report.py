"""What the demo (clip_vlm_core.demo) learns about each keyframe and question, how it scores them, and its
HTML report (clip_vlm_core/templates/demo_report.html, every text escaped by clip_vlm_core.pages)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clip_vlm_core.latency import percentile


@dataclass
class Keyframe:
    stamp_ns: int
    images: dict[str, Path]
    truth: str
    token: str = ""
    caption: str | None = None
    latency_ms: float | None = None

    def facts_right(self) -> tuple[int, int]:
        """How many of the truth's facts the caption states, of how many."""
        from clip_vlm_core.data.scene_facts import parse_facts

        truth, said = parse_facts(self.truth), parse_facts(self.caption or "")
        return sum(said.get(k) == v for k, v in truth.items()), len(truth)


@dataclass
class Asked:
    question: str
    truth: str
    answer: str | None = None
    latency_ms: float | None = None

    def right(self) -> bool:
        from clip_vlm_core.evaluation.qa import answers_match

        return self.answer is not None and answers_match(self.truth, self.answer)


def latency_line(values: Iterable[float | None], *quantiles: int) -> str:
    """'p50 205 ms, p95 248 ms' over the values given (None: not measured), by clip_vlm_core.latency."""
    measured = [v for v in values if v is not None]
    if not measured:
        return "not measured"
    return ", ".join(f"p{q} {percentile(measured, q):.0f} ms" for q in quantiles)


def render_report(scene: str, model: str, keyframes: Iterable[Keyframe], asked: Iterable[Asked],
                  diagnostics: Mapping[str, str]) -> str:
    """The report page: each keyframe's views, truth, caption and latency; the questions asked; the node's
    last /diagnostics figures."""
    from clip_vlm_core.data.gallery import thumbnail_uri
    from clip_vlm_core.pages import render_page

    rows = []
    for k in sorted(keyframes, key=lambda k: k.stamp_ns):
        right, total = k.facts_right()
        rows.append({"thumbnails": {view: thumbnail_uri(path, 320) for view, path in k.images.items()},
                     "truth": k.truth, "caption": k.caption or "", "right": right, "total": total,
                     "latency": f"{k.latency_ms:.0f} ms" if k.latency_ms is not None else "n/a",
                     "stamp_ns": k.stamp_ns})
    questions = [{"question": a.question, "answer": a.answer or "", "truth": a.truth,
                  "verdict": "right" if a.right() else "WRONG", "latency": f"{a.latency_ms or 0:.0f} ms"} for a in asked]
    return render_page("demo_report.html", scene=scene, model=model or "embedded default", keyframes=rows,
                       asked=questions, figures=sorted(diagnostics.items()))
