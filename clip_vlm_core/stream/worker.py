"""`CaptionWorker`: the thread that turns queued frame pairs into captions, at most `rate_hz` captions a second.

It never runs in a subscription callback: callbacks only check, pair and queue. Each tick it takes
up to one batch (one pair under policy `latest`) and runs it through the one batch routine captions
and answers share (`_run_batch`): the batch's still-encoded frames decoded in one call on the
captioner's device, the captioner called ONCE for the whole batch, each result handed to `publish`
(or `answer`). What goes wrong is counted by the kind of work it hit (`_CaptionLedger`,
`_QuestionLedger`): a frame whose body does not decode is counted as bad and its pair (or question) as
lost to it; an exception in inference counts an inference error, one in publishing a publish error, and
the pairs as dropped on error (questions as failed, never as caption errors); the worker goes on either
way. Out of GPU memory also halves the caption batch for the ticks that follow. `in_flight` is how many
pairs were taken and are neither published nor dropped yet: queued, in-flight, captioned and dropped
pairs add up to the pairs made.

`rate_hz` is captions a second under either policy: a tick that takes n pairs (a batch under `all`) is
followed by none for n/rate_hz seconds, so a backlog is captioned in batches yet never faster than
rate_hz on average. A pair that arrives while the worker is idle is captioned at once rather than at the
next tick: waiting for a fixed tick added half a tick to every caption's latency.

Questions (optional, `ask`) share the worker and its one model: a question wakes the worker at once,
and waiting questions are answered a batch at a time, unpaced, whenever no caption is due. Neither can
starve the other, and captions keep at least half of the worker: once a caption is due, one question
turn goes before it and then the caption (the tick), and while a caption waits, a question turn is cut
to the questions that fit in the time the last caption batch took (from the measured times). So with
both waiting the worker alternates turns of about equal length: captions at no less than half the rate
they would have alone, questions at no less than a turn per caption. A caption that waited for a
question turn keeps its place in the rate's schedule, so at rates the worker has time for, a flood does
not slow captions at all.

With a `history` (clip_vlm_core.stream.history), each sample gets its views' past frames as CLIP tokens kept
from earlier captions, and the tokens of its own frames are kept for later ones: every frame is encoded once.

Everything it reports goes through `log` (a `ThrottledLog`; the node's writes to its rclpy logger).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from clip_vlm_core.config import DecodingConfig
from clip_vlm_core.images import EncodedImage
from clip_vlm_core.stream.batching import PairQueue
from clip_vlm_core.stream.history import HistoryMemory
from clip_vlm_core.stream.logs import PythonLogSink, ThrottledLog
from clip_vlm_core.stream.pairing import FramePair
from clip_vlm_core.stream.questions import Question, QuestionQueue
from clip_vlm_core.stream.stats import StreamStats

HISTORY = "@history"  # a sample's past frames (clip_vlm_core.model.inputs.HISTORY, named without importing torch)
WAIT_SLICE_S = 0.05  # how long one wait for a pair lasts before the stop flag is looked at again


class Captioner(Protocol):
    def caption(self, batch: Sequence[Mapping[str, Any]], decoding: DecodingConfig | None = None) -> list[str]: ...

    def ask(self, batch: Sequence[Mapping[str, Any]], questions: Sequence[str],
            decoding: DecodingConfig | None = None) -> list[str]: ...

    def decode_frames(self, images: Sequence[EncodedImage]) -> list[Any]:
        """Each encoded frame decoded for this captioner, or the exception that stopped it."""
        ...

    def last_clip_tokens(self) -> list[Mapping[str, Any]]:
        """Per sample of the last call, each view's CLIP tokens (used only with a history)."""
        ...


Publish = Callable[[FramePair, str], None]
Answer = Callable[[Question, str], None]


class CaptionWorker:
    def __init__(
        self,
        captioner: Captioner,
        queue: PairQueue,
        stats: StreamStats,
        publish: Publish,
        rate_hz: float,
        batch_size: int,
        newest_stamp_ns: Callable[[], int | None],
        source_clock_ns: Callable[[], int],
        decoding: DecodingConfig | None = None,
        questions: QuestionQueue | None = None,
        answer: Answer | None = None,
        log: ThrottledLog | None = None,
        history: HistoryMemory | None = None,
    ) -> None:
        self.captioner = captioner
        self.history = history
        self.queue = queue
        self.stats = stats
        self.publish = publish
        self.rate_hz = rate_hz  # read every tick, so the node may change it live
        self.decoding = decoding or DecodingConfig()  # read every batch, so the node may change it live
        self.batch_limit = 1 if queue.policy == "latest" else batch_size
        self.in_flight = 0
        self._newest_stamp_ns = newest_stamp_ns
        self._source_clock_ns = source_clock_ns
        if (questions is None) != (answer is None):
            raise ValueError("give both a question queue and an answer callback, or neither")
        self.questions = questions
        self.answer = answer
        self.question_batch = batch_size  # questions are answered in batches under either policy
        self.log = log or ThrottledLog(PythonLogSink(logging.getLogger(__name__)))
        self._caption_ledger = _CaptionLedger(self)
        self._question_ledger = _QuestionLedger(self)
        self.taken = 0  # pairs the last tick took (its share of the rate)
        self._caption_s = 0.0  # how long the last caption batches took (moving average)
        self._per_question_s = 0.0  # how long a question took in the last answer batches (moving average)
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by a question (and by stop) to end any wait early
        self._thread = threading.Thread(target=self._run, name="caption-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 1.5) -> bool:
        """Ask the loop to end and join it; False when an inference call outlived the timeout."""
        self._stop.set()
        self._wake_up()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def ask(self, question: Question) -> Question | None:
        """Queue a question for the next opportunity and wake the worker; return a question pushed out of
        the full queue, if any."""
        if self.questions is None:
            raise RuntimeError("this worker was made without a question queue")
        dropped = self.questions.put(question)
        self._wake_up()
        return dropped

    def _wake_up(self) -> None:
        self._wake.set()
        self.queue.nudge()  # ends a wait for pairs too

    def _run(self) -> None:
        earliest = time.monotonic()  # when the next caption may start
        held_back = False  # a question turn ran while a caption waited for its time
        while not self._stop.is_set():
            self._wake.clear()  # cleared before looking, so a question arriving from now on ends the wait
            now = time.monotonic()
            if now >= earliest and len(self.queue):
                start = earliest if held_back else now  # held back by questions: keep its place in the schedule
                held_back = False
                self.tick()  # one question turn, then the due caption
                if self.taken:  # read every tick: the node may change rate_hz live
                    earliest = start + self.taken / self.rate_hz
                continue
            if self.questions is not None and len(self.questions):
                caption_waiting = len(self.queue) > 0
                held_back = held_back or caption_waiting
                # Not paced: questions use whatever time captions leave, in turns no longer than a caption's.
                self.answer_questions(self.question_turn() if caption_waiting else None)
                continue
            if now < earliest:
                self._wake.wait(earliest - now)  # a question (or stop) ends the wait early
            else:
                self.queue.wait(WAIT_SLICE_S, also=self._wake.is_set)

    def question_turn(self) -> int:
        """How many questions a turn ahead of a caption may answer: as many as fit in the time the last
        caption batch took (at least one, at most a batch), so captions keep half of the worker."""
        if not self._caption_s or not self._per_question_s:
            return self.question_batch
        return max(1, min(self.question_batch, int(self._caption_s / self._per_question_s + 1e-9)))

    def tick(self) -> int:
        """Answer waiting questions (one turn), then caption one batch if there is one; return how many
        captions were published (`taken`: how many pairs were taken for it)."""
        self.answer_questions(self.question_turn())
        pairs = self.queue.take(self.batch_limit, self._newest_stamp_ns(), time.monotonic_ns())
        self.taken = len(pairs)
        if not pairs:
            return 0
        started = time.monotonic()
        self.in_flight = len(pairs)
        try:
            return self._run_batch(pairs, pairs, None, self.publish, self._caption_ledger)
        finally:
            self._caption_s = _moving_average(self._caption_s, time.monotonic() - started)

    def answer_questions(self, limit: int | None = None) -> int:
        """Answer one batch of waiting questions (at most `limit`), each about its own pair; return how many
        were answered."""
        if self.questions is None or self.answer is None:
            return 0
        questions = self.questions.take(min(limit or self.question_batch, self.question_batch))
        if not questions:
            return 0
        started = time.monotonic()
        try:
            return self._run_batch(questions, [q.pair for q in questions], [q.text for q in questions], self.answer,
                                   self._question_ledger)
        finally:
            self._per_question_s = _moving_average(self._per_question_s, (time.monotonic() - started) / len(questions))

    def _run_batch(self, items: list, pairs: list[FramePair], questions: list[str] | None,
                   deliver: Callable[[Any, str], None], ledger: _Ledger) -> int:
        """The one batch routine: decode the pairs' still-encoded frames in one call, run the model once for
        the items whose frames decoded (captions, or answers to `questions`), deliver each result; what goes
        wrong is counted in `ledger`. Returns how many results were delivered."""
        try:
            samples = [dict(pair.images) for pair in pairs]  # still-encoded frames are decoded in place
            bad = {n: [(view, str(error)) for view, error in errors]  # by item: (view, why) of each frame
                   for n, errors in decode_in_place(self.captioner, samples).items()}
            if bad:
                ledger.frames_bad(bad)
                keep = [n for n in range(len(items)) if n not in bad]
                items, samples = [items[n] for n in keep], [samples[n] for n in keep]
                questions = None if questions is None else [questions[n] for n in keep]
            if not items:
                return 0
            if self.history is not None:
                kept = [pair for n, pair in enumerate(pairs) if n not in bad]
                for sample, pair in zip(samples, kept, strict=True):
                    sample[HISTORY] = self.history.past_for(pair.stamp_ns)
            if questions is None:
                texts = self.captioner.caption(samples, decoding=self.decoding)
            else:
                texts = self.captioner.ask(samples, questions, decoding=self.decoding)
            if self.history is not None:
                tokens = self.captioner.last_clip_tokens()  # [] when the model kept none: nothing to keep
                for pair, own in zip(kept, tokens if len(tokens) == len(kept) else [], strict=False):
                    self.history.keep(pair.stamp_ns, own)
        except Exception as exc:  # a failed batch must not stop the stream; it is counted and logged
            ledger.inference_failed(exc, len(items))
            return 0
        delivered = 0
        for item, text in zip(items, texts, strict=True):
            try:
                deliver(item, text)
            except Exception as exc:  # one result that cannot go out must not end the worker thread
                ledger.publish_failed(exc)
                continue
            ledger.delivered(item)
            delivered += 1
        return delivered


class _Ledger(Protocol):
    """What the batch routine counts, by the kind of work it runs."""

    def frames_bad(self, bad: dict[int, list[tuple[str, str]]]) -> None: ...

    def inference_failed(self, exc: Exception, count: int) -> None: ...

    def publish_failed(self, exc: Exception) -> None: ...

    def delivered(self, item: Any) -> None: ...


class _CaptionLedger:
    """Captions: pairs taken leave `in_flight` as published or dropped; errors go to the stream's stats."""

    def __init__(self, worker: CaptionWorker) -> None:
        self.worker, self.stats, self.log = worker, worker.stats, worker.log

    def frames_bad(self, bad: dict[int, list[tuple[str, str]]]) -> None:
        self.stats.frames_found_bad([frame for frames in bad.values() for frame in frames], len(bad))
        self.worker.in_flight -= len(bad)
        self.log.warning(f"{len(bad)} pair(s) dropped: a frame would not decode ({next(iter(bad.values()))[0][1]})",
                         key="pair_frame_bad")

    def inference_failed(self, exc: Exception, count: int) -> None:
        if is_out_of_memory(exc) and self.worker.batch_limit > 1:
            self.worker.batch_limit = max(1, self.worker.batch_limit // 2)
            self.stats.batch_halvings += 1
        error = f"{type(exc).__name__}: {exc}"[:300]
        self.stats.inference_failed(error, count)
        self.worker.in_flight -= count
        self.log.warning(f"captioning failed for {count} pair(s): {error}", key="caption_failed:captioning")

    def publish_failed(self, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"[:300]
        self.stats.publish_failed(error)
        self.worker.in_flight -= 1
        self.log.warning(f"publishing a caption failed for 1 pair(s): {error}", key="caption_failed:publishing")

    def delivered(self, pair: FramePair) -> None:
        self.stats.caption_published(self.worker._source_clock_ns() - pair.stamp_ns,
                                     time.monotonic_ns() - pair.received_ns, pair.stamp_ns)
        self.worker.in_flight -= 1


class _QuestionLedger:
    """Questions: every failure is the question's own (QuestionQueue's counters), never a caption error."""

    def __init__(self, worker: CaptionWorker) -> None:
        self.questions, self.log = worker.questions, worker.log

    def frames_bad(self, bad: dict[int, list[tuple[str, str]]]) -> None:
        self.questions.failed(len(bad), next(iter(bad.values()))[0][1])
        self.log.warning(f"{len(bad)} question(s) not answered: a frame of their pair would not decode "
                         f"({next(iter(bad.values()))[0][1]})", key="question_frame_bad")

    def inference_failed(self, exc: Exception, count: int) -> None:
        error = f"{type(exc).__name__}: {exc}"[:300]
        self.questions.failed(count, error)
        self.log.warning(f"answering failed for {count} question(s): {error}", key="question_failed:answering")

    def publish_failed(self, exc: Exception) -> None:
        error = f"publishing: {type(exc).__name__}: {exc}"[:300]
        self.questions.failed(1, error)
        self.log.warning(f"publishing an answer failed for 1 question(s): {error}",
                         key="question_failed:publishing an answer")

    def delivered(self, question: Question) -> None:
        self.questions.answered(question, time.monotonic_ns())


def _moving_average(average: float, sample: float) -> float:
    return sample if not average else 0.5 * average + 0.5 * sample


def decode_in_place(captioner: Any, samples: list[dict[str, Any]]) -> dict[int, list[tuple[str, Exception]]]:
    """Decode the samples' still-encoded frames in one `captioner.decode_frames` call (on the model's device),
    in place; return, by sample, (view, error) of each frame that would not decode (that view stays encoded)."""
    encoded = [(n, view) for n, sample in enumerate(samples) for view, image in sample.items()
               if isinstance(image, EncodedImage)]
    bad: dict[int, list[tuple[str, Exception]]] = {}
    if encoded:
        decoded = captioner.decode_frames([samples[n][view] for n, view in encoded])
        for (n, view), image in zip(encoded, decoded, strict=True):
            if isinstance(image, Exception):
                bad.setdefault(n, []).append((view, image))
            else:
                samples[n][view] = image
    return bad


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError, named without importing torch here
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()
