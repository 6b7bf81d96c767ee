"""`CaptionWorker`: the thread that turns queued frame pairs into captions at `rate_hz`.

It never runs in a subscription callback: callbacks only decode, pair and queue. Each tick it takes
up to one batch (one pair under policy `latest`), calls the captioner ONCE for the whole batch and
hands each caption to `publish`. An exception in inference (or in publishing one caption) is logged
and its pairs are counted as dropped on error; the worker goes on. Out of GPU memory also halves the
batch for the ticks that follow. `in_flight` is how many pairs were taken and are neither published nor
dropped yet: queued, in-flight, captioned and dropped pairs add up to the pairs made.

Questions (optional, `ask`) share the worker and its one model: a question wakes the worker at once,
and waiting questions are answered, a batch at a time, before the next caption; each answer goes to
`answer`. Between ticks the worker answers questions as they come, so they never wait for a tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from clip_vlm_core.stream.batching import PairQueue
from clip_vlm_core.stream.pairing import FramePair
from clip_vlm_core.stream.questions import Question, QuestionQueue
from clip_vlm_core.stream.stats import StreamStats

log = logging.getLogger(__name__)


class Captioner(Protocol):
    def caption(self, batch: Sequence[Mapping[str, Any]], **decoding: Any) -> list[str]: ...

    def ask(self, batch: Sequence[Mapping[str, Any]], questions: Sequence[str], **decoding: Any) -> list[str]: ...


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
        decoding: Mapping[str, Any] | None = None,
        questions: QuestionQueue | None = None,
        answer: Answer | None = None,
    ) -> None:
        self.captioner = captioner
        self.queue = queue
        self.stats = stats
        self.publish = publish
        self.rate_hz = rate_hz  # read every tick, so the node may change it live
        self.decoding = dict(decoding or {})
        self.batch_limit = 1 if queue.policy == "latest" else batch_size
        self.in_flight = 0
        self._newest_stamp_ns = newest_stamp_ns
        self._source_clock_ns = source_clock_ns
        if (questions is None) != (answer is None):
            raise ValueError("give both a question queue and an answer callback, or neither")
        self.questions = questions
        self.answer = answer
        self.question_batch = batch_size  # questions are answered in batches under either policy
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by a question (and by stop) to end a wait early
        self._thread = threading.Thread(target=self._run, name="caption-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 1.5) -> bool:
        """Ask the loop to end and join it; False when an inference call outlived the timeout."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def ask(self, question: Question) -> Question | None:
        """Queue a question for the next opportunity and wake the worker; return a question pushed out of
        the full queue, if any."""
        if self.questions is None:
            raise RuntimeError("this worker was made without a question queue")
        dropped = self.questions.put(question)
        self._wake.set()
        return dropped

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            next_tick += 1.0 / self.rate_hz
            if next_tick <= time.monotonic():
                next_tick = time.monotonic()  # running late: do not try to catch up on missed ticks
            elif self._wait_answering(next_tick):
                return
            self.tick()

    def _wait_answering(self, deadline: float) -> bool:
        """Until `deadline`, answer questions as they arrive; True when asked to stop."""
        while True:
            self._wake.clear()  # cleared before looking, so a question arriving now still ends the wait
            if self._stop.is_set():
                return True
            delay = deadline - time.monotonic()
            if delay <= 0:
                return False
            if self.questions is not None and len(self.questions):
                self.answer_questions()
                continue
            self._wake.wait(delay)

    def answer_questions(self) -> int:
        """Answer one batch of waiting questions, each about its own pair; return how many were answered."""
        if self.questions is None or self.answer is None:
            return 0
        questions = self.questions.take(self.question_batch)
        if not questions:
            return 0
        try:
            answers = self.captioner.ask([q.pair.images for q in questions], [q.text for q in questions],
                                         **self.decoding)
        except Exception as exc:  # like a failed caption: counted and logged, the worker goes on
            self._question_failed(f"{type(exc).__name__}: {exc}", len(questions), "answering")
            return 0
        answered = 0
        for question, answer in zip(questions, answers, strict=True):
            try:
                self.answer(question, answer)
            except Exception as exc:  # one answer that cannot go out must not end the worker thread
                self._question_failed(f"publishing: {type(exc).__name__}: {exc}", 1, "publishing an answer")
                continue
            self.questions.answered(question, time.monotonic_ns())
            answered += 1
        return answered

    def _question_failed(self, error: str, count: int, doing: str) -> None:
        self.questions.failed(count)
        self.stats.inference_failed(error[:300], 0)  # an inference error, but no pair was lost
        log.warning("%s failed for %d question(s): %s", doing, count, error)

    def tick(self) -> int:
        """Answer waiting questions (one batch), then caption one batch if there is one; return how many
        captions were published."""
        self.answer_questions()
        pairs = self.queue.take(self.batch_limit, self._newest_stamp_ns(), time.monotonic_ns())
        if not pairs:
            return 0
        self.in_flight = len(pairs)
        try:
            captions = self.captioner.caption([pair.images for pair in pairs], **self.decoding)
        except Exception as exc:  # a failed batch must not stop the stream; it is counted and logged
            if _is_out_of_memory(exc) and self.batch_limit > 1:
                self.batch_limit = max(1, self.batch_limit // 2)
                self.stats.batch_halvings += 1
            self._failed(f"{type(exc).__name__}: {exc}", len(pairs), "captioning")
            return 0
        published = 0
        for pair, caption in zip(pairs, captions, strict=True):
            try:
                self.publish(pair, caption)
            except Exception as exc:  # one caption that cannot go out must not end the worker thread
                self._failed(f"publishing: {type(exc).__name__}: {exc}", 1, "publishing a caption")
                continue
            self.stats.caption_published(self._source_clock_ns() - pair.stamp_ns, time.monotonic_ns() - pair.received_ns)
            self.in_flight -= 1
            published += 1
        return published

    def _failed(self, error: str, pairs_lost: int, doing: str) -> None:
        self.stats.inference_failed(error[:300], pairs_lost)
        self.in_flight -= pairs_lost
        log.warning("%s failed for %d pair(s): %s", doing, pairs_lost, error)


def _is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError, named without importing torch here
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()
