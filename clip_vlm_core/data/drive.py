"""The six-camera synthetic world: one scene is one continuous drive, known at every instant.

Six slots, each holding at most one vehicle at a time: the vehicle ahead (always one, at a gap of 14-50 m
in one of three lanes), the one behind (or none), and one per side camera, in profile, placed along that
camera's frame. Time is seconds since the scene's first keyframe. Everything moves in straight segments;
a slot changes what it does only at a *turn*, just after each keyframe's cameras have fired
(TURN_AFTER_KEYFRAME_S), and only after holding it for at least MIN_HOLD_TURNS turns (unless it would
leave its range): so the frames a short history shows before a keyframe move as the keyframe's facts say.

What happens at a turn: a vehicle ahead or behind speeds towards us or away or keeps its distance
(`front.motion`, `back.motion`: approaching / pulling away / steady; none when nothing is behind); another
vehicle takes a vehicle's place on the same course (a cut-in ahead at the same gap and speed: what a short
history shows of the gap stays true); the vehicle behind turns off or one appears (keeping its distance at
first); a side vehicle drifts forward or back along its frame, turns off, or one appears. A vehicle passing us on
the left or right overtakes: reaching the front edge of a back side camera's frame it enters the front
side camera's frame at its rear edge, when that one is empty. The traffic light turns red, green, off.

The simplification: a side vehicle that leaves its frame ahead or behind is not then seen by the front or
back camera (it turns off), so that what each camera shows is drawn on its own, and blanking one camera
leaves its facts unknowable from the others.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from clip_vlm_core.data.scene_facts import COLOURS, LANES, NONE, SIDE_VIEWS, TIMES, VEHICLE_TYPES, SceneFacts

KEYFRAME_S = 0.5
TURN_AFTER_KEYFRAME_S = 0.05  # after the last camera of a keyframe fired (nuScenes': 45 ms after)
MIN_HOLD_TURNS = 2  # a motion is held for at least a second, so a 3-frame history at 0.5 s sees one motion
LEAD_IN_S = 2.0  # the drive starts before the first keyframe, so its history frames show one
GAP_RANGE = (14.0, 50.0)  # metres to the vehicle ahead / behind
GAP_SPEEDS = (-8.0, 0.0, 8.0)  # m/s: the gap shrinks (approaching), stays, grows (pulling away)
ALONG_RANGE = (-0.9, 0.9)  # a side vehicle from the rear to the front edge of its frame
ALONG_SPEEDS = (-0.5, 0.0, 0.5)  # frame widths per second
P_TURN = 0.35  # chance that a slot changes what it does at a turn it may
P_BEHIND, P_SIDE = 0.7, 0.5  # chance that a vehicle appears where none is, at a turn
# Chance that another vehicle takes a vehicle's place at a turn, on the same course (a cut-in ahead; one
# behind or beside us replaced): a vehicle stays ~1.5 s on average, so that a drive shows many types,
# colours and lanes, as the two-camera world's independent keyframes do, while motion stays continuous.
P_SWAP = 0.3
LIGHT_NEXT = {NONE: ("red", "green"), "red": ("green",), "green": (NONE, "red")}
FRONT, BACK = "front", "back"
SLOTS = (FRONT, BACK, *SIDE_VIEWS.values())
# A side camera's vehicle that reaches its frame's front edge enters this camera's frame (an overtake).
OVERTAKES_INTO = {"back_left": "front_left", "back_right": "front_right"}


@dataclass(frozen=True)
class Segment:
    """What a slot does from `start` to the next segment's start: `vehicle` (type, colour, lane) at `pos`
    (gap in metres, or place along the frame) moving at `speed` per second; vehicle None when empty."""

    start: float
    vehicle: tuple[str, str, str] | None
    pos: float = 0.0
    speed: float = 0.0

    def at(self, t: float) -> float:
        return self.pos + self.speed * (t - self.start)


@dataclass(frozen=True)
class Moment:
    """Everything visible at one instant."""

    time: str
    light: str
    slots: dict[str, Segment]  # the segment each slot is in
    t: float

    def place(self, slot: str) -> tuple[tuple[str, str, str] | None, float]:
        segment = self.slots[slot]
        return segment.vehicle, segment.at(self.t)


class Drive:
    """One scene's drive, planned up front from `rng` for `duration_s` seconds after the first keyframe."""

    def __init__(self, rng: random.Random, duration_s: float) -> None:
        self._rng = rng
        self.time = rng.choice(TIMES)
        start = -LEAD_IN_S
        self.segments: dict[str, list[Segment]] = {
            FRONT: [Segment(start, self._vehicle(), rng.uniform(*GAP_RANGE), rng.choice(GAP_SPEEDS))],
            BACK: [self._appear(start, BACK) if rng.random() < P_BEHIND else Segment(start, None)],
            **{side: [self._appear(start, side) if rng.random() < P_SIDE else Segment(start, None)]
               for side in SIDE_VIEWS.values()},
        }
        self.lights: list[tuple[float, str]] = [(start, rng.choice((*LIGHT_NEXT[NONE], NONE)))]  # (from, state)
        held = dict.fromkeys([*SLOTS, "light"], MIN_HOLD_TURNS)
        turn = start + TURN_AFTER_KEYFRAME_S
        while turn < duration_s + KEYFRAME_S:
            for slot in SLOTS:
                before = self.segments[slot][-1]
                after = self._turn(slot, before, turn, held[slot] >= MIN_HOLD_TURNS)
                held[slot] = held[slot] + 1 if after is None else 1
                if after is not None:
                    self.segments[slot].append(after)
                now = self.segments[slot][-1]
                if now.vehicle is not None and now.start < turn and rng.random() < P_SWAP:
                    # Another vehicle takes its place, on the same course: what moves stays as it was.
                    self.segments[slot].append(Segment(turn, self._vehicle(), now.at(turn), now.speed))
            if held["light"] >= MIN_HOLD_TURNS + 2 and rng.random() < P_TURN:
                self.lights.append((turn, rng.choice(LIGHT_NEXT[self.lights[-1][1]])))
                held["light"] = 0
            held["light"] += 1
            turn += KEYFRAME_S
        self._starts = {slot: [s.start for s in segments] for slot, segments in self.segments.items()}

    def moment(self, t: float) -> Moment:
        """The drive `t` seconds after the first keyframe."""
        slots = {slot: segments[bisect.bisect_right(self._starts[slot], t) - 1]
                 for slot, segments in self.segments.items()}
        light = self.lights[bisect.bisect_right([start for start, _ in self.lights], t) - 1][1]
        return Moment(self.time, light, slots, t)

    def facts(self, t: float) -> SceneFacts:
        """The facts of the keyframe at `t`: what each camera shows, and how the vehicles ahead and behind
        move (the speed of the segment they are in)."""
        moment = self.moment(t)
        front, back = moment.slots[FRONT], moment.slots[BACK]
        ftype, fcolour, flane = front.vehicle
        btype, bcolour, blane = back.vehicle or (NONE, NONE, NONE)
        sides = tuple((moment.slots[side].vehicle or (NONE, NONE))[:2] for side in SIDE_VIEWS.values())
        return SceneFacts(self.time, ftype, fcolour, flane, moment.light, btype, bcolour, blane,
                          front_motion=_motion(front), back_motion=_motion(back), sides=sides)

    def _vehicle(self) -> tuple[str, str, str]:
        return (self._rng.choice(VEHICLE_TYPES), self._rng.choice(COLOURS), self._rng.choice(LANES))

    def _appear(self, t: float, slot: str) -> Segment:
        """A vehicle newly in view: keeping its distance ahead or behind; anywhere along a side frame."""
        if slot in (FRONT, BACK):
            return Segment(t, self._vehicle(), self._rng.uniform(*GAP_RANGE), 0.0)
        return Segment(t, self._vehicle(), self._rng.uniform(*ALONG_RANGE), self._rng.choice(ALONG_SPEEDS))

    def _turn(self, slot: str, now: Segment, t: float, may: bool) -> Segment | None:
        """The slot's new segment at turn `t`, or None when it goes on as it is."""
        rng = self._rng
        lo, hi = GAP_RANGE if slot in (FRONT, BACK) else ALONG_RANGE
        speeds = GAP_SPEEDS if slot in (FRONT, BACK) else ALONG_SPEEDS
        if now.vehicle is None:
            if may and rng.random() < (P_BEHIND if slot == BACK else P_SIDE) * P_TURN:
                return self._appear(t, slot)
            return None
        pos = now.at(t)
        leaving = not lo <= pos + now.speed * KEYFRAME_S <= hi
        if not leaving and not (may and rng.random() < P_TURN):
            return None
        target = OVERTAKES_INTO.get(slot)
        if leaving and target and now.speed > 0 and self.segments[target][-1].vehicle is None:
            # Overtaking us: on into the front side camera's frame (its segment starts at this same turn).
            self.segments[target].append(Segment(t, now.vehicle, lo, now.speed))
            return Segment(t, None)
        if slot != FRONT and rng.random() < (0.5 if leaving else 0.25):
            return Segment(t, None)  # turns off, or passes out of the side camera's view
        fits = [s for s in speeds if lo <= pos + s * KEYFRAME_S * MIN_HOLD_TURNS <= hi and s != now.speed]
        return Segment(t, now.vehicle, pos, rng.choice(fits or [0.0]))


def _motion(segment: Segment) -> str:
    if segment.vehicle is None:
        return NONE
    return "approaching" if segment.speed < 0 else "pulling away" if segment.speed > 0 else "steady"
