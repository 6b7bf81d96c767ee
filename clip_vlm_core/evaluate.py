"""Evaluate a captioner on a manifest split: caption every sample, score, and write the evaluation folder.

    out/
      captions.jsonl   one row per sample: sample_token, reference, prediction
                       (prediction_base and prediction_finetuned when compared)
      answers.jsonl    one row per question (manifest rows' qa pairs): sample_token, type, question,
                       reference, prediction (or prediction_base / prediction_finetuned)
      metrics.json     BLEU-1..4, METEOR, ROUGE-L, CIDEr (+ per-fact accuracy on synthetic captions),
                       qa (exact-match accuracy overall and per question type, with chance), samples,
                       caption_seconds, answer_seconds and seconds (the model's time, both together);
                       {"base": {...}, "finetuned": {...}} when compared; run_seconds (the whole run)
      report.html      the same, readable, with every sample's views as thumbnails

`compare=True` captions each batch twice with the same loaded model: once as the base model (fusion gate
bypassed, LoRA adapters off) and once as the fine-tuned one, so both see exactly the same inputs.

Ablations: `blank_views` replaces those views' frames (full or context views, their past frames too) with
black ones of the same size; `blank_history` every past frame of every view, so facts that need motion
should fall to chance while facts of the present stay.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from clip_vlm_core.atomic import staged_dir
from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.data.manifest import manifest_dataroot
from clip_vlm_core.errors import UserError
from clip_vlm_core.evaluation import CaptionScorer, caption_metrics, fact_accuracy
from clip_vlm_core.evaluation.checkpoint_info import describe_checkpoint
from clip_vlm_core.evaluation.qa import DEFAULT_MAX_ANSWER_TOKENS, check_answer_tokens, qa_accuracy
from clip_vlm_core.evaluation.report import THUMBNAIL_WIDTH, render_report
from clip_vlm_core.images import load_image, thumbnail_data_uri
from clip_vlm_core.jsonout import dumps
from clip_vlm_core.limits import check_batch
from clip_vlm_core.output_guard import guard_output
from clip_vlm_core.progress import progress_bar

__all__ = ["evaluate_manifest", "caption_metrics", "fact_accuracy"]

log = logging.getLogger(__name__)

MODELS = ("base", "finetuned")
WRITER = "clip-vlm eval"


@dataclasses.dataclass
class _Sample:
    token: str
    reference: str
    images: dict[str, Path]
    qa: tuple = ()  # the row's QAPairs
    history: dict[str, list[Path | None]] = dataclasses.field(default_factory=dict)  # per view, oldest first


def evaluate_manifest(
    manifest_path: str | Path,
    captioner: Any,
    out_dir: str | Path,
    compare: bool = False,
    batch_size: int = 8,
    limit: int | None = None,
    blank_views: Sequence[str] = (),
    decoding: DecodingConfig | None = None,
    blank_history: bool = False,
    overwrite: bool = False,
    scorer: CaptionScorer | None = None,
    dataroot: str | Path | None = None,
    questions: bool = True,
    max_answer_tokens: int = DEFAULT_MAX_ANSWER_TOKENS,
    checkpoint: str | Path | None = None,
) -> dict[str, Any]:
    """Caption the manifest's samples with `captioner` (a SceneCaptioner), answer their questions (rows'
    `qa` pairs; `questions=False` skips them), write `out_dir`, return the metrics (what metrics.json
    holds). Every input is checked before the model runs.

    `scorer`: reuse one CaptionScorer (and its METEOR process) across evaluations, or pass
    `CaptionScorer(java=None)` to score without Java; by default a scorer is made and closed here.
    `dataroot`: where the manifest's images are now, when they moved since `data build`.
    `max_answer_tokens`: the longest answer to a question (captions keep `decoding.max_new_tokens`).
    `checkpoint`: the folder (or hub id) `captioner` was loaded from, so that metrics.json and the report
    name its path and training step (clip_vlm_core.evaluation.checkpoint_info).
    Progress shows as a bar on a terminal and as lines in a log (clip_vlm_core.progress).
    `out_dir` is replaced when an earlier eval wrote it, or with `overwrite`; never when it is or holds
    an input.
    """
    manifest_path, out_dir = Path(manifest_path), Path(out_dir)
    check_batch(batch_size, (decoding or captioner.decoding).num_beams, "eval batch size")
    check_answer_tokens(max_answer_tokens)
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1, got {limit}")
    guard_output(out_dir, WRITER, eval_inputs(manifest_path, dataroot), overwrite)
    views = tuple(captioner.views)
    context, history_frames = tuple(captioner.config.context_views), captioner.config.history_frames
    unknown = sorted(set(blank_views) - set(views) - set(context))
    if unknown:
        raise UserError(f"cannot blank view(s) {unknown}: this model reads {list(views + context)}")
    if blank_history and not history_frames:
        raise UserError("cannot blank the history: this model takes no past frames (captioner.history_frames is 0)")
    if history_frames:
        from clip_vlm_core.data.history import check_manifest_history
        from clip_vlm_core.data.manifest import read_manifest_meta

        check_manifest_history(read_manifest_meta(manifest_path), manifest_path, history_frames,
                               captioner.config.history_stride_s)
    samples = _load_samples(manifest_path, views + context, limit, manifest_dataroot(manifest_path, dataroot),
                            history_frames)
    if not questions:
        samples = [dataclasses.replace(s, qa=()) for s in samples]
    # Every setting resolved (the base model's EOS ids and repetition penalty included): metrics.json
    # then says exactly how the captions were decoded.
    settings = captioner.decoding_in_effect(decoding)

    # Answers are a word or a few: their own limit, so a model that rambles (an untrained base model does)
    # stops at it instead of running to the caption's length on every question.
    answer_settings = settings.with_overrides(max_new_tokens=max_answer_tokens,
                                              min_new_tokens=min(settings.min_new_tokens, max_answer_tokens))

    started = time.perf_counter()
    predictions: dict[str, list[str]] = {m: [] for m in (MODELS if compare else ("finetuned",))}
    answers: dict[str, list[str]] = {m: [] for m in predictions}
    seconds = dict.fromkeys(predictions, 0.0)
    answer_seconds = dict.fromkeys(predictions, 0.0)
    thumbnails: list[dict[str, str]] = []
    questions_asked = sum(len(s.qa) for s in samples)
    # One count over all the work (every model's captions and answers), so the time left is honest.
    progress = progress_bar(total=len(predictions) * (len(samples) + questions_asked), desc="eval", unit="outputs")
    for n, batch in enumerate(_batches(samples, batch_size)):
        images = [_images_for(s, blank_views, blank_history) for s in batch]
        if n == 0:  # first-call set-up would otherwise be billed to whichever model runs first
            captioner.caption(images[:1], decoding=settings.with_overrides(max_new_tokens=1))
        thumbnails += [{v: thumbnail_data_uri(img[v], THUMBNAIL_WIDTH) for v in views} for img in images]
        asked = [(image, pair.question) for image, s in zip(images, batch, strict=True) for pair in s.qa]
        for model in predictions:
            with captioner.model.base_model_mode() if model == "base" else contextlib.nullcontext():
                progress.set_phase(f"{model}: captions" if compare else "captions")
                tick = time.perf_counter()
                predictions[model] += captioner.caption(images, decoding=settings)
                seconds[model] += time.perf_counter() - tick
                progress.update(len(images))
                progress.set_phase(f"{model}: questions" if compare else "questions")
                for start in range(0, len(asked), batch_size):
                    chunk = asked[start : start + batch_size]
                    tick = time.perf_counter()
                    answers[model] += captioner.ask([i for i, _ in chunk], [q for _, q in chunk],
                                                    decoding=answer_settings)
                    answer_seconds[model] += time.perf_counter() - tick
                    progress.update(len(chunk))
    progress.close()

    references = [s.reference for s in samples]
    own_scorer = scorer is None
    scorer = CaptionScorer() if own_scorer else scorer
    try:
        blocks = {m: _model_metrics(scorer, references, p, seconds[m], answer_seconds[m] if questions_asked else None)
                  for m, p in predictions.items()}
    finally:
        if own_scorer:
            scorer.close()
    pairs = [pair for s in samples for pair in s.qa]
    for model, block in blocks.items():
        if pairs:
            block["qa"] = qa_accuracy([p.type for p in pairs], [p.answer for p in pairs], answers[model])
            block["qa"]["seconds"] = round(answer_seconds[model], 3)
    run_info = {
        "manifest": str(manifest_path),
        "model": captioner.model_name,
        "checkpoint": _checkpoint(checkpoint, captioner.model_name),
        "views": list(views),
        "blank_views": list(blank_views),
        **({"blank_history": blank_history} if history_frames else {}),
        "decoding": dataclasses.asdict(settings),
        "max_answer_tokens": max_answer_tokens,
        "samples": len(samples),
        "questions": len(pairs),
        "run_seconds": round(time.perf_counter() - started, 3),  # images, every model, scoring
    }
    metrics = {**blocks, **run_info} if compare else {**blocks["finetuned"], **run_info}
    rows = _caption_rows(samples, predictions, compare)
    answer_rows = _answer_rows(samples, answers, compare)
    _write_atomically(out_dir, metrics, rows, answer_rows, render_report(metrics, rows, thumbnails, answer_rows))
    log.info("wrote %s (%d samples, %d questions, %.1f s)", out_dir, len(samples), len(pairs), run_info["run_seconds"])
    return metrics


def _checkpoint(checkpoint: str | Path | None, model_name: str) -> dict[str, Any] | None:
    if checkpoint is None and not model_name.startswith("embedded-"):
        return None  # a captioner built in code: only its name is known
    return describe_checkpoint(checkpoint, model_name)


def eval_inputs(manifest_path: str | Path, dataroot: str | Path | None = None) -> dict[str, Path | None]:
    """What an evaluation reads: the manifest (file and folder) and its dataroot (re-rooted if given);
    the dataroot is None when the manifest cannot say (loading the manifest then tells why)."""
    from clip_vlm_core.data.manifest import META_FILE, manifest_dataroot, manifest_dir

    manifest_path = Path(manifest_path)
    try:
        root = manifest_dataroot(manifest_path, dataroot)
    except UserError:
        root = None
    folder = manifest_dir(manifest_path)  # a manifest folder, not just any folder a split file sits in
    return {"manifest": manifest_path, "manifest folder": folder if (folder / META_FILE).is_file() else None,
            "nuScenes dataroot": root}


def _load_samples(manifest_path: Path, views: tuple[str, ...], limit: int | None, dataroot: Path,
                  history_frames: int = 0) -> list[_Sample]:
    """Manifest rows as samples, after checking the model's views (full and context), its past frames and every
    image file (inside the dataroot)."""
    from clip_vlm_core.data.manifest import load_manifest

    rows = load_manifest(manifest_path)  # a split file, or a manifest folder for all its splits
    if not rows:
        raise UserError(f"manifest {manifest_path} has no samples")
    rows = rows[:limit] if limit else rows
    samples = []
    for row in rows:
        missing = [v for v in views if v not in row.views]
        if missing:
            raise UserError(
                f"the model reads view(s) {list(views)} but manifest {manifest_path} has {sorted(row.views)} "
                f"(no {missing}); evaluate with a checkpoint trained on these views"
            )
        images = {v: row.image_path(v, dataroot) for v in views}  # each a regular file inside the dataroot
        history = {}
        if history_frames:
            held = min(len(row.history.get(v, ())) for v in views)
            if held < history_frames:
                raise UserError(f"the model takes {history_frames} past frame(s) per view but manifest {manifest_path} "
                                f"rows hold {held}; build it with --history {history_frames}")
            history = {v: [None if row.history[v][i] is None else row.past_image_path(v, i, dataroot)
                           for i in range(len(row.history[v]) - history_frames, len(row.history[v]))] for v in views}
        samples.append(_Sample(row.sample_token, row.caption, images, row.qa, history))
    return samples


def _batches(samples: list[_Sample], size: int) -> Iterator[list[_Sample]]:
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


def _images_for(sample: _Sample, blank_views: Sequence[str], blank_history: bool = False) -> dict[str, Any]:
    """The sample as the captioner takes it (model/inputs.py), the ablations applied. They keep each frame's
    size, so only the content changes, not the number of visual tokens; a missing past frame stays missing."""
    def blank(image: Image.Image) -> Image.Image:
        return Image.new("RGB", image.size)

    images = {view: load_image(path) for view, path in sample.images.items()}
    out: dict[str, Any] = {v: blank(img) if v in blank_views else img for v, img in images.items()}
    if sample.history:
        from clip_vlm_core.model.inputs import HISTORY

        out[HISTORY] = {v: [None if path is None else blank(load_image(path)) if blank_history or v in blank_views
                            else load_image(path) for path in paths] for v, paths in sample.history.items()}
    return out


def _model_metrics(scorer: CaptionScorer, references: list[str], predictions: list[str], caption_seconds: float,
                   answer_seconds: float | None) -> dict:
    """Scores, and the model's time: `seconds` is captions and questions together, each part named too."""
    metrics = scorer.score(references, predictions)
    metrics.update(fact_accuracy(references, predictions))
    metrics["samples"] = len(predictions)
    metrics["caption_seconds"] = round(caption_seconds, 3)
    if answer_seconds is not None:
        metrics["answer_seconds"] = round(answer_seconds, 3)
    metrics["seconds"] = round(caption_seconds + (answer_seconds or 0.0), 3)
    metrics["samples_per_second"] = round(len(predictions) / caption_seconds, 3) if caption_seconds > 0 else None
    return metrics


def _predictions(outputs: dict[str, list[str]], n: int, compare: bool) -> dict[str, str]:
    """Output `n` of each model, under the keys captions.jsonl and answers.jsonl use."""
    if compare:
        return {f"prediction_{m}": outputs[m][n] for m in MODELS}
    return {"prediction": outputs["finetuned"][n]}


def _caption_rows(samples: list[_Sample], predictions: dict[str, list[str]], compare: bool) -> list[dict]:
    return [{"sample_token": sample.token, "reference": sample.reference, **_predictions(predictions, i, compare)}
            for i, sample in enumerate(samples)]


def _answer_rows(samples: list[_Sample], answers: dict[str, list[str]], compare: bool) -> list[dict]:
    asked = [(sample, pair) for sample in samples for pair in sample.qa]
    return [{"sample_token": sample.token, "type": pair.type, "question": pair.question, "reference": pair.answer,
             **_predictions(answers, n, compare)} for n, (sample, pair) in enumerate(asked)]


def _write_atomically(out_dir: Path, metrics: dict, rows: list[dict], answer_rows: list[dict], report: str) -> None:
    """Everything goes into a temporary folder beside `out_dir`, renamed into place when complete."""
    with staged_dir(out_dir, WRITER) as tmp:
        with (tmp / "captions.jsonl").open("w") as f:
            f.writelines(dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if answer_rows:
            with (tmp / "answers.jsonl").open("w") as f:
                f.writelines(dumps(row, ensure_ascii=False) + "\n" for row in answer_rows)
        (tmp / "metrics.json").write_text(dumps(metrics, indent=2) + "\n")
        (tmp / "report.html").write_text(report, encoding="utf-8")
