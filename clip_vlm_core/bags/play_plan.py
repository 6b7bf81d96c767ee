"""Which of a bag's topics `bag play` plays, and why it skips the others; and the check that a play
published what the bag declares."""

from __future__ import annotations

import re
from collections import Counter
from typing import NamedTuple

from rosbags.interfaces import Qos

from clip_vlm_core.bags.interfaces import UnplayableType, message_class
from clip_vlm_core.bags.metadata import TopicRecord
from clip_vlm_core.bags.reader import Bag
from clip_vlm_core.errors import UserError

PLAYER_NODE = "clip_vlm_bag_player"


def chosen_topics(bag: Bag, topics: list[str] | None) -> list[TopicRecord]:
    known = {t.name for t in bag.topics}
    for topic in topics or []:
        if topic not in known:
            raise UserError(f"topic {topic} is not in bag {bag.shown} (it has {', '.join(sorted(known)) or 'none'})")
    return [t for t in bag.topics if topics is None or t.name in topics]


def checked_remap(remap: dict[str, str], chosen: list[TopicRecord], bag: Bag) -> dict[str, str]:
    names = {t.name for t in chosen}
    for old, new in remap.items():
        if old not in names:
            raise UserError(f"--remap {old}:={new} names {old}, which is not a topic played from bag {bag.shown}")
        if (why := topic_name_problem(new)) is not None:
            raise UserError(f"--remap {old}:={new}: {why}")
    return remap


class PlayedTopic(NamedTuple):
    """A topic of the bag that will be played, with the message class its CDR bytes are published as."""

    name: str
    msgtype: str
    count: int
    offered_qos: tuple[Qos, ...]
    msg_class: type


def plan_topics(chosen: list[TopicRecord]) -> tuple[list[PlayedTopic], dict[str, str]]:
    """The topics that can be played, and why each other one cannot."""
    plan, skipped = [], {}
    for topic in chosen:
        why = topic_name_problem(topic.name)
        if why is None and topic.serialization_format != "cdr":
            why = f"its messages are serialized as {topic.serialization_format!r}, not CDR"
        if why is None:
            try:
                plan.append(PlayedTopic(topic.name, topic.msgtype, topic.count, topic.offered_qos,
                                         message_class(topic.msgtype)))
                continue
            except UnplayableType as exc:
                why = str(exc)
        skipped[topic.name] = why
    return plan, skipped


def topic_name_problem(name: str) -> str | None:
    """Why `name` is not a valid ROS 2 topic name (as rcl checks it), or None."""
    from rclpy.expand_topic_name import expand_topic_name
    from rclpy.validate_full_topic_name import validate_full_topic_name

    try:
        validate_full_topic_name(expand_topic_name(name, PLAYER_NODE, "/"))
    except Exception as exc:  # rclpy raises InvalidTopicNameException, ValueError or RCLError
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        rule = re.search(r"(topic name (?:token )?must .*?)(?::$|, at |$)", text)
        return f"{name!r} is not a valid ROS 2 topic name ({rule[1] if rule else text})"
    return None


def skipped_reasons(skipped: dict[str, str], most: int = 3) -> str:
    parts = [f"{topic}: {why}" for topic, why in list(skipped.items())[:most]]
    if len(skipped) > most:
        parts.append(f"and {len(skipped) - most} more topic{'s' if len(skipped) - most > 1 else ''} like these")
    return "; ".join(parts)


def check_counts(bag: Bag, plan: list[PlayedTopic], first_pass: Counter) -> None:
    """Each played topic's messages must number what the bag declares (what `bag info` shows)."""
    wrong = [(t, first_pass[t.name]) for t in plan if first_pass[t.name] != t.count]
    if wrong:
        source = "its metadata.yaml" if bag.metadata is not None else "its storage file"
        details = "; ".join(f"{t.name} {played} of {t.count}" for t, played in wrong[:4])
        raise UserError(f"bag {bag.shown}: the messages played differ from what {source} declares ({details}); "
                        f"the bag is damaged or its metadata is wrong")
