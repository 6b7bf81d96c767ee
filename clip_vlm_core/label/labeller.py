"""`BagLabeller`: one model replica that labels whole bags, one at a time, into label rows.

Ray Data builds one per worker (`map_batches` with this class): the model is loaded once, in the
constructor, and each call labels the bags of its batch. It works the same without Ray (the benchmark's
single-process loop and the tests call it directly). For each bag it:

1. opens it with the bags reader (every size it declares checked first) and finds each view's topic;
2. computes its identity (keys.bag_identity), then pairs its frames as the node does (pairs.bag_pairs);
3. leaves out the pairs whose key is in LABELS already (`done`: a sorted array of key digests);
4. captions the rest `batch_size` pairs at a time, as the node's worker does under policy `all`: the
   batch's encoded frames decoded in one call on the model's device (a pair with a frame that does not
   decode is reported and left out), then one `caption()` call, then one `ask()` call per question;
5. yields a table of rows per batch, and one report row last (column `report`, JSON; null in label rows).

A batch that fails is split: out of GPU memory into halves, anything else pair by pair, so one bad pair
costs only itself, and the reason is reported. A bag that cannot be read, at any point, ends with a
report naming why; the worker goes on with the next bag.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from clip_vlm_core.bags.reader import open_bag
from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.errors import UserError
from clip_vlm_core.label.keys import KEY_HEX, bag_identity, pair_key, settings_id
from clip_vlm_core.label.pairs import DEFAULT_TOPIC_TEMPLATE, BagPair, PairingReport, bag_pairs, camera_topics
from clip_vlm_core.label.store import SCHEMA
from clip_vlm_core.stream.worker import decode_in_place, is_out_of_memory

log = logging.getLogger(__name__)
OUTPUT_SCHEMA = SCHEMA.append(pa.field("report", pa.string()))


@dataclass(frozen=True)
class LabelSettings:
    """Everything a worker needs to label like every other worker (plain data: it travels to the workers)."""

    checkpoint: str | None = None
    model_name: str = "embedded-default"
    model_sha256: str = ""
    base_models_root: str | None = None
    device: str | None = None  # None: cuda when the worker has a GPU, else cpu
    dtype: str | None = None
    local_files_only: bool = False
    prompt: str | None = None  # None: the checkpoint's own
    decoding: DecodingConfig = dataclasses.field(default_factory=DecodingConfig)
    questions: tuple[str, ...] = ()
    batch_size: int = 4
    every_s: float = 0.0
    max_skew_ms: float = 50.0  # the node's default
    topic_template: str = DEFAULT_TOPIC_TEMPLATE
    transport: str = "auto"
    fast_inference: bool = True  # as the node: the GPU's fast paths, same captions
    threads: int = 0  # torch threads in a CPU worker; 0 leaves torch's default


def done_keys(keys: Sequence[str] | set[str]) -> np.ndarray:
    """Keys as a sorted array of their bytes: cheap to ship to every worker, searched in O(log n)."""
    return np.sort(np.array([bytes.fromhex(k) for k in keys], dtype=f"S{KEY_HEX // 2}"))


class BagLabeller:
    def __init__(self, settings: LabelSettings, done: np.ndarray | None = None) -> None:
        import torch

        from clip_vlm_core.model import SceneCaptioner

        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.done = done if done is not None else done_keys([])
        captioner = SceneCaptioner.from_pretrained(settings.checkpoint, settings.device, settings.dtype,
                                                   settings.local_files_only, base_models_root=settings.base_models_root)
        if settings.prompt:
            captioner = captioner.with_prompt(settings.prompt)
        if settings.fast_inference:
            captioner.optimize_for_inference()
        self.captioner = captioner
        self.decoding = captioner.decoding_in_effect(settings.decoding)
        self.decoding_json = json.dumps(self.decoding.record(), sort_keys=True)
        self.settings_id = settings_id(settings.model_sha256, captioner.config.prompt, self.decoding.record(),
                                       settings.questions)
        self.where = _where(captioner.device)

    def __call__(self, batch: dict[str, Any]) -> Iterator[pa.Table]:
        """Ray Data's entry: a batch of bags (columns path, shown), each labelled in turn."""
        for path, shown in zip(batch["path"], batch["shown"], strict=True):
            yield from self.label(str(path), str(shown))

    # -- one bag ------------------------------------------------------------------------------------------
    def label(self, path: str, shown: str) -> Iterator[pa.Table]:
        """Tables of new label rows for the bag, then its report (see the module's docstring)."""
        started = time.monotonic()
        report: dict[str, Any] = {"bag": shown, "path": path, "labelled": 0, "already": 0, "failed": 0,
                                  "failed_reason": "", "error": "", "worker": self.where,
                                  "settings_id": self.settings_id}
        pairing = PairingReport()
        try:
            with open_bag(path) as bag:
                cameras = camera_topics(bag, self.captioner.views, self.settings.topic_template,
                                        self.settings.transport)
                bag_id = bag_identity([f.path for f in bag.files], shown)
                report.update(bag_id=bag_id, start_ns=bag.start_ns, topics=list(cameras.topics))
                context = _BagContext(shown, path, bag_id, bag.start_ns, cameras.views)
                pending: list[tuple[BagPair, str]] = []
                for pair in bag_pairs(bag, cameras, self.settings.max_skew_ms, self.settings.every_s, pairing):
                    key = pair_key(bag_id, cameras.views, pair.stamps_ns, self.settings_id)
                    if self._is_done(key):
                        report["already"] += 1
                        continue
                    pending.append((pair, key))
                    if len(pending) == self.settings.batch_size:
                        yield self._rows(context, pending, report)
                        pending = []
                if pending:
                    yield self._rows(context, pending, report)
        except UserError as exc:
            report["error"] = str(exc)
        except Exception as exc:  # a damaged bag makes the reader raise almost anything; never the end of the run
            log.debug("labelling %s failed", shown, exc_info=True)
            report["error"] = f"bag {shown} cannot be labelled ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})"
        report.update(pairs=pairing.pairs, selected=pairing.selected, frames=pairing.frames,
                      bad_frames=sum(pairing.bad_frames.values()), bad_reason=pairing.bad_reason,
                      unpaired=pairing.unpaired, resets=pairing.resets, seconds=round(time.monotonic() - started, 3))
        yield pa.Table.from_pylist([{"report": json.dumps(report)}], schema=OUTPUT_SCHEMA)

    def _is_done(self, key: str) -> bool:
        if not len(self.done):
            return False
        digest = np.array([bytes.fromhex(key)], dtype=self.done.dtype)
        i = int(np.searchsorted(self.done, digest)[0])
        return i < len(self.done) and self.done[i] == digest[0]

    def _rows(self, context: _BagContext, pending: list[tuple[BagPair, str]], report: dict) -> pa.Table:
        results = self._caption(context.views, [pair for pair, _ in pending])
        now = datetime.now(timezone.utc).replace(microsecond=0)
        rows = []
        for (pair, key), result in zip(pending, results, strict=True):
            if isinstance(result, str):  # why it failed
                report["failed"] += 1
                report["failed_reason"] = result
                continue
            caption, answers = result
            rows.append({
                "key": key, "bag": context.shown, "bag_path": context.path, "bag_id": context.bag_id,
                "bag_start_ns": context.start_ns, "offset_s": pair.offset_ns / 1e9, "stamp_ns": pair.stamp_ns,
                "log_time_ns": pair.log_ns, "frame_id": pair.frame_id, "views": list(context.views),
                "view_stamps_ns": list(pair.stamps_ns), "caption": caption, "questions": list(self.settings.questions),
                "answers": answers, "model": self.settings.model_name, "model_sha256": self.settings.model_sha256,
                "prompt": self.captioner.config.prompt, "decoding": self.decoding_json, "settings_id": self.settings_id,
                "worker": self.where, "labelled_at": now, "report": None,
            })
        report["labelled"] += len(rows)
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)

    # -- the model --------------------------------------------------------------------------------------
    def _caption(self, views: Sequence[str], pairs: list[BagPair]) -> list[tuple[str, list[str]] | str]:
        """Per pair, (caption, answers) or why it failed."""
        samples: list[dict[str, Any]] = [dict(zip(views, pair.images, strict=True)) for pair in pairs]
        results: list[Any] = [None] * len(pairs)
        # As the node's worker: the batch's frames decoded in one call on the model's device.
        for i, errors in decode_in_place(self.captioner, samples).items():
            v, error = errors[-1]
            results[i] = f"{v} frame stamped {pairs[i].stamps_ns[views.index(v)]} ns: {error}"
        good = [i for i in range(len(pairs)) if results[i] is None]
        for i, result in zip(good, self._generate([samples[i] for i in good]), strict=True):
            results[i] = result
        return results

    def _generate(self, samples: list[dict[str, Any]]) -> list[tuple[str, list[str]] | str]:
        if not samples:
            return []
        try:
            captions = self.captioner.caption(samples, decoding=self.decoding)
            answers = [self.captioner.ask(samples, [q] * len(samples), decoding=self.decoding)
                       for q in self.settings.questions]
            return [(caption, [a[i] for a in answers]) for i, caption in enumerate(captions)]
        except Exception as exc:  # split the batch: one bad pair must not cost the others
            if len(samples) == 1:
                return [f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"]
            if is_out_of_memory(exc):
                half = len(samples) // 2
                return self._generate(samples[:half]) + self._generate(samples[half:])
            return [result for sample in samples for result in self._generate([sample])]


@dataclass(frozen=True)
class _BagContext:
    shown: str
    path: str
    bag_id: str
    start_ns: int
    views: tuple[str, ...]


def _where(device: Any) -> str:
    """The device, and the Ray node when in a Ray worker: where a caption was made."""
    node = ""
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001 - outside Ray, or a Ray without a runtime context
        node = ""
    return f"{device} on node {node} pid {os.getpid()}" if node else f"{device} pid {os.getpid()}"
