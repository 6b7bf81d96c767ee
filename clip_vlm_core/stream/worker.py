"""`CaptionWorker`: the thread that turns queued frame pairs into captions at `rate_hz`.

It never runs in a subscription callback: callbacks only decode, pair and queue. Each tick it takes
up to one batch (one pair under policy `latest`), calls the captioner ONCE for the whole batch and
hands each caption to `publish`. An exception in inference (or in publishing one caption) is logged
and its pairs are counted as dropped on error; the worker goes on. Out of GPU memory also halves the
batch for the ticks that follow. `in_flight` is how many pairs were taken and are neither published nor
dropped yet: queued, in-flight, captioned and dropped pairs add up to the pairs made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from clip_vlm_core.stream.batching import PairQueue
from clip_vlm_core.stream.pairing import FramePair
from clip_vlm_core.stream.stats import StreamStats

log = logging.getLogger(__name__)


class Captioner(Protocol):
    def caption(self, batch: Sequence[Mapping[str, Any]], **decoding: Any) -> list[str]: ...


Publish = Callable[[FramePair, str], None]


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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="caption-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 1.5) -> bool:
        """Ask the loop to end and join it; False when an inference call outlived the timeout."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            next_tick += 1.0 / self.rate_hz
            delay = next_tick - time.monotonic()
            if delay > 0:
                if self._stop.wait(delay):
                    return
            else:
                next_tick = time.monotonic()  # running late: do not try to catch up on missed ticks
            self.tick()

    def tick(self) -> int:
        """Caption one batch if there is one; return how many captions were published."""
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
