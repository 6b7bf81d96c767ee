"""Every HTML page clip-vlm writes (the demo's report, eval's report.html, the data gallery) comes from a
template with autoescape: text a model, a dataset or a node wrote is shown, never run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import clip_vlm_core
from clip_vlm_core.data.manifest import load_manifest, read_manifest_meta

SAMPLES = Path(clip_vlm_core.__file__).parent / "assets" / "samples"
SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def demo_report_page() -> str:
    from clip_vlm_core.demo.report import Asked, Keyframe, render_report

    images = {"CAM_FRONT": SAMPLES / "front.jpg", "CAM_BACK": SAMPLES / "back.jpg"}
    keyframes = [Keyframe(1, images, truth=f"truth {SCRIPT}", token="t1", caption=f"caption {SCRIPT}", latency_ms=5.0)]
    asked = [Asked(question=f"question {SCRIPT}", truth="yes", answer=f"answer {SCRIPT}", latency_ms=3.0)]
    return render_report(f"scene {SCRIPT}", f"model {SCRIPT}", keyframes, asked, {f"key {SCRIPT}": f"value {SCRIPT}"})


def eval_report_page() -> str:
    from clip_vlm_core.evaluation.report import render_report

    block = {"samples": 1, "seconds": 0.5, "facts": {f"fact {SCRIPT}": 0.5}}
    summary = {"base": block, "finetuned": block, "manifest": f"m {SCRIPT}", "model": f"model {SCRIPT}",
               "blank_views": [SCRIPT]}
    rows = [{"sample_token": f"token {SCRIPT}", "reference": f"reference {SCRIPT}", "prediction_base": SCRIPT,
             "prediction_finetuned": f"caption {SCRIPT}"}]
    answers = [{"sample_token": rows[0]["sample_token"], "question": f"question {SCRIPT}", "reference": SCRIPT,
                "prediction_base": f"answer {SCRIPT}", "prediction_finetuned": SCRIPT}]
    return render_report(summary, rows, [{f"VIEW {SCRIPT}": "data:image/jpeg;base64,AAAA"}], answers)


def gallery_page(manifest: Path) -> str:
    from clip_vlm_core.data.gallery import render_gallery

    row = load_manifest(manifest / "mini_train.jsonl")[0]
    row = dataclasses.replace(row, caption=f"caption {SCRIPT}", scene=f"scene {SCRIPT}")
    return render_gallery([row], Path(read_manifest_meta(manifest)["dataroot"]), f"title {SCRIPT}")


@pytest.mark.parametrize("page", ["demo report", "eval report", "gallery"])
def test_a_caption_holding_a_script_tag_is_escaped_on_every_page(page, synthetic_manifest):
    html = {"demo report": demo_report_page, "eval report": eval_report_page,
            "gallery": lambda: gallery_page(synthetic_manifest)}[page]()
    assert "<script" not in html.lower(), page
    assert f"caption {ESCAPED}" in html
    assert html.lstrip().lower().startswith("<!doctype html>") and html.rstrip().endswith("</html>")


def test_every_text_of_the_demo_report_is_escaped_where_the_old_page_missed_one():
    """The scene name went into the title and heading unescaped; now nothing does."""
    html = demo_report_page()
    for text in ("scene", "model", "truth", "question", "answer", "key", "value"):
        assert f"{text} {ESCAPED}" in html, text


def test_the_gallery_still_names_its_writer_on_its_first_line(synthetic_manifest, tmp_path):
    from clip_vlm_core.output_guard import written_by

    path = tmp_path / "gallery.html"
    path.write_text(gallery_page(synthetic_manifest))
    assert written_by(path) == "clip-vlm data gallery"
