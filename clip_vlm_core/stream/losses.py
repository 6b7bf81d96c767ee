"""`DeliveryLosses`: messages a subscription lost before the node took them, counted where it can be.

A subscription's history holds `depth` messages; when a flood or a slow executor lets more arrive before
the node takes them, the oldest are overwritten, and under best effort the network may drop some. Nothing
in the node's callbacks sees those messages, so they are counted from what the middleware says:

- sequence gaps per publisher: every DDS publisher numbers its messages 1, 2, 3, ...; a message numbered 9
  after one numbered 5 from the same publisher means 6, 7 and 8 were lost on the way (the history, the
  network or the writer's own history). This needs the publisher's id with each message (rclpy on Kilted
  and later); with the sequence number alone (Jazzy) gaps are counted while one publisher is matched;
- the middleware's message-lost events, where it raises them (Fast DDS does for samples it knows it lost,
  not for a history overwritten; those show up as gaps).

Gaps cover every lost message the events do, so `lost` is the gaps where sequence numbers come, else the
events. What cannot be counted: messages before the first one taken from a publisher (a late subscriber
cannot tell missed from never meant for it), the last messages of a publisher that leaves (no later
number reveals them), and anything on Humble but the events. Used from the executor thread only.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_PUBLISHERS_TRACKED = 256  # a peer making publishers by the thousand must not grow memory


class DeliveryLosses:
    def __init__(self) -> None:
        self.taken = 0
        self.gaps = 0
        self.events = 0  # the middleware's message-lost count
        self.sequenced = False  # whether any message came with a sequence number
        self._last: OrderedDict[bytes | None, int] = OrderedDict()

    @property
    def lost(self) -> int:
        return self.gaps if self.sequenced else self.events

    def took(self, publisher: bytes | None, sequence: int | None, publishers_matched: int = 1) -> None:
        """One message taken. `publisher` is the sender's id (None where rclpy does not give it: then gaps
        count only while `publishers_matched` is 1), `sequence` its number (None where unsupported)."""
        self.taken += 1
        if sequence is None:
            return
        self.sequenced = True
        if publisher is None and publishers_matched != 1:
            self._last.pop(None, None)  # numbers of several publishers interleave: no gap can be told
            return
        last = self._last.pop(publisher, None)
        if last is not None and sequence > last + 1:
            self.gaps += sequence - last - 1
        self._last[publisher] = sequence  # a number going back (a restarted writer) starts anew
        if len(self._last) > MAX_PUBLISHERS_TRACKED:
            self._last.popitem(last=False)

    def middleware_lost(self, total_count_change: int) -> None:
        """A message-lost event: the middleware lost this many more."""
        self.events += max(0, int(total_count_change))
