"""`QuestionQueue`: questions about the live scene, waiting for the caption worker, and their figures.

A question is asked about the freshest synchronized pair at the moment it arrives (the pair is fixed
then, so the answer describes what the cameras showed when it was asked, however long it waits). The
worker answers waiting questions ahead of its next caption, with the same model. The queue is bounded:
a burst of questions pushes the oldest out, counted as dropped. Thread-safe: the node's callback puts,
the worker takes; both update the figures /diagnostics shows.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from clip_vlm_core.latency import LatencyWindow
from clip_vlm_core.stream.pairing import FramePair


@dataclass(frozen=True)
class Question:
    text: str
    pair: FramePair  # the freshest synchronized pair when the question arrived
    received_ns: int  # time.monotonic_ns() at arrival


@dataclass
class QuestionCounters:
    received: int = 0
    answered: int = 0
    dropped: int = 0  # pushed out of a full queue
    unanswerable: int = 0  # no fresh synchronized pair to ask about
    failed: int = 0  # lost to an error: answering, publishing the answer, a frame that would not decode
    refused: int = 0  # empty, too long, or not a question (clip_vlm_core.limits.check_question)


class QuestionQueue:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.counters = QuestionCounters()
        self.last_error = ""
        self._questions: deque[Question] = deque()
        self._latency_ms = LatencyWindow()
        self._lock = threading.Lock()

    def put(self, question: Question) -> Question | None:
        """Queue a question; return the oldest one if it had to make room (it is counted as dropped)."""
        with self._lock:
            self.counters.received += 1
            dropped = None
            if len(self._questions) == self.capacity:
                dropped = self._questions.popleft()
                self.counters.dropped += 1
            self._questions.append(question)
            return dropped

    def unanswerable(self) -> None:
        """A question arrived with no fresh pair to ask about."""
        with self._lock:
            self.counters.received += 1
            self.counters.unanswerable += 1

    def refused(self) -> None:
        """A message on the question topic that is not a question that can be asked."""
        with self._lock:
            self.counters.received += 1
            self.counters.refused += 1

    def take(self, limit: int) -> list[Question]:
        """Up to `limit` questions, oldest first."""
        with self._lock:
            return [self._questions.popleft() for _ in range(min(limit, len(self._questions)))]

    def answered(self, question: Question, now_ns: int) -> None:
        with self._lock:
            self.counters.answered += 1
            self._latency_ms.add((now_ns - question.received_ns) / 1e6)

    def failed(self, count: int, error: str) -> None:
        """Questions lost to an error (their own: a failed question is never a failed caption)."""
        with self._lock:
            self.counters.failed += count
            self.last_error = error

    def __len__(self) -> int:
        return len(self._questions)

    def report(self) -> list[tuple[str, str]]:
        """Key-value pairs for /diagnostics: counts, queue depth, answer latency (arrival to publish)."""
        with self._lock:
            c = self.counters
            values = [("questions_received", str(c.received)), ("questions_answered", str(c.answered)),
                      ("questions_dropped", str(c.dropped)), ("questions_unanswerable", str(c.unanswerable)),
                      ("questions_failed", str(c.failed)), ("questions_refused", str(c.refused)),
                      ("question_queue_depth", str(len(self._questions)))]
            values += [(f"answer_latency_p{q}_ms", f"{self._latency_ms.percentile(q):.1f}") for q in (50, 95)]
            if self.last_error:
                values.append(("last_question_error", self.last_error))
        return values
