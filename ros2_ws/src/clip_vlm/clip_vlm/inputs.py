"""`TopicInput`: one subscribed topic, with what the middleware can say about it.

Every input of the node (each camera view, the questions) is one of these, so each gets the same care:
- it takes at most its budget of messages a second (clip_vlm_core.stream.budget), so a flood on one input
  cannot starve the others of the executor: while the budget is spent its subscription is left out of the
  executor's wait set (`IntakeBudget`, a callback group) and its messages wait in the history;
- its reliability follows its publishers (clip_vlm_core.stream.qos): re-created once per change, counted;
- a publisher whose QoS it cannot accept is counted and explained;
- messages lost before the node took them are counted from sequence gaps per publisher and the
  middleware's message-lost events (clip_vlm_core.stream.losses).

rclpy differs by distro: Kilted gives each message's publisher id and sequence number, Jazzy the sequence
number only, Humble neither (then only message-lost events count). All of it runs on the executor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSPolicyKind, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind
from rclpy.subscription import Subscription

from clip_vlm_core.stream.budget import RateBudget
from clip_vlm_core.stream.logs import ThrottledLog
from clip_vlm_core.stream.losses import DeliveryLosses
from clip_vlm_core.stream.qos import BEST_EFFORT, RELIABLE, ReliabilityFollower

try:  # Iron and later
    from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks, UnsupportedEventTypeError

# Jazzy and later hand a callback taking two arguments the message's MessageInfo.
WITH_MESSAGE_INFO = hasattr(Subscription, "CallbackType")
RELIABILITIES = {ReliabilityPolicy.RELIABLE: RELIABLE, ReliabilityPolicy.BEST_EFFORT: BEST_EFFORT}


class IntakeBudget(CallbackGroup):
    """A callback group whose subscription, and its QoS events, run only while its `RateBudget` allows.

    rclpy's executor waits only on entities whose group can execute, so a spent budget costs the executor
    nothing until it refills (the node's executor wakes at least every 0.1 s). The events must wait too:
    Fast DDS wakes a wait on a subscription's events whenever the subscription has data, so with the
    subscription left out and its events in, the executor spun at 97 % of a core (measured)."""

    def __init__(self, budget: RateBudget) -> None:
        super().__init__()
        self.budget = budget

    def can_execute(self, entity: Any) -> bool:
        return self.budget.available()

    def beginning_execution(self, entity: Any) -> bool:
        if isinstance(entity, Subscription):
            self.budget.spend()
        return True

    def ending_execution(self, entity: Any) -> None:
        pass


class TopicInput:
    def __init__(self, node: Node, name: str, msg_type: type, topic: str, depth: int, reliability: str,
                 on_message: Callable[[Any], None], log: ThrottledLog, max_rate_hz: float) -> None:
        """`name` is what /diagnostics and the log call it (CAM_FRONT, scene_question); `reliability` is
        auto, reliable or best_effort; `max_rate_hz` the messages a second it may take."""
        self.node = node
        self.name = name
        self.msg_type = msg_type
        self.topic = topic
        self.depth = depth
        self.on_message = on_message
        self.log = log
        self.follower = ReliabilityFollower(name, reliability)
        self.losses = DeliveryLosses()
        self.budget = RateBudget(max_rate_hz)
        self.subscription: Subscription | None = None

    # -- lifetime --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe (again), asking the reliability the follower chose."""
        self.stop()
        qos = QoSProfile(depth=self.depth, reliability=ReliabilityPolicy.RELIABLE
                         if self.follower.current == RELIABLE else ReliabilityPolicy.BEST_EFFORT)
        callback = self._took_with_info if WITH_MESSAGE_INFO else self._took
        events = {"incompatible_qos": self._on_incompatible_qos, "message_lost": self._on_message_lost}
        try:
            self.subscription = self.node.create_subscription(
                self.msg_type, self.topic, callback, qos, event_callbacks=SubscriptionEventCallbacks(**events),
                callback_group=IntakeBudget(self.budget))
        except UnsupportedEventTypeError:  # a middleware without message-lost events: sequence gaps only
            del events["message_lost"]
            self.subscription = self.node.create_subscription(
                self.msg_type, self.topic, callback, qos, event_callbacks=SubscriptionEventCallbacks(**events),
                callback_group=IntakeBudget(self.budget))

    def stop(self) -> None:
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
            self.subscription = None

    @property
    def topic_name(self) -> str:
        """The resolved name (namespace and remaps applied)."""
        return self.subscription.topic_name if self.subscription is not None else self.topic

    def follow_publishers(self) -> None:
        """Re-create the subscription when its publishers' reliability calls for the other one."""
        if self.subscription is None:
            return
        offered = [RELIABILITIES.get(info.qos_profile.reliability, RELIABLE)
                   for info in self.node.get_publishers_info_by_topic(self.subscription.topic_name)]
        if self.follower.follow(offered):
            self.log.info(f"{self.name}: publishers on {self.subscription.topic_name} offer "
                          f"{', '.join(sorted(set(offered)))}: subscribing {self.follower.current.replace('_', ' ')} "
                          f"(qos_reliability auto; change {self.follower.changes})")
            self.start()

    # -- messages and events ---------------------------------------------------------------------------
    def _took(self, msg: Any) -> None:
        self.losses.took(None, None)
        self.on_message(msg)

    def _took_with_info(self, msg: Any, info: Any) -> None:
        gid = info.get("publisher_gid")  # Kilted and later
        publisher = bytes(gid["data"]) if gid else None
        matched = 1 if publisher is not None or self.subscription is None else self.subscription.get_publisher_count()
        self.losses.took(publisher, info.get("publication_sequence_number"), matched)
        self.on_message(msg)

    def _on_incompatible_qos(self, event: Any) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind).lower()
        if event.last_policy_kind == QoSPolicyKind.RELIABILITY:
            policy = "reliability"
        reason = self.follower.incompatible_publisher(policy)
        hint = "; it follows the publishers within a second" if self.follower.setting == "auto" else ""
        self.log.warning(f"{reason}: no messages from it{hint}", key=f"incompatible_qos:{self.name}")

    def _on_message_lost(self, event: Any) -> None:
        self.losses.middleware_lost(event.total_count_change)

    def report(self) -> list[tuple[str, str]]:
        # Publishers this subscription has matched: a player that waits for its own side to see a subscriber
        # can still start before this side has matched it (the demo starts a replay only once this is >= 1).
        matched = self.subscription.get_publisher_count() if self.subscription is not None else 0
        return [*self.follower.report(), (f"{self.name}.publishers", str(matched)),
                (f"{self.name}.lost_before_taken", str(self.losses.lost)),
                (f"{self.name}.intake_limited", str(self.budget.exhausted))]
