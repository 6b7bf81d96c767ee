"""Procedural camera frames whose content is known: big, plain shapes a tiny model can learn.

A front frame shows the sky (day or night), the road with three lanes, one vehicle ahead (type and
colour, in a lane) and maybe a traffic light; a back frame shows the road behind and maybe a vehicle.
In the drive world (data.drive) a vehicle ahead or behind is drawn at its distance (smaller and nearer the
horizon when far), and a side frame shows the next lane and maybe a vehicle in profile, placed along the
frame by how far ahead of us it is. Shapes are large blocks of saturated colour so the facts survive the
tiny model's ~168x84 input.
"""

from __future__ import annotations

import io
import random
from functools import lru_cache

from PIL import Image, ImageDraw

from clip_vlm_core.data.scene_facts import NONE, SceneFacts

WIDTH, HEIGHT = 1600, 900
HORIZON = int(HEIGHT * 0.42)
RGB = {
    "red": (220, 30, 30),
    "blue": (30, 70, 225),
    "green": (30, 180, 50),
    "yellow": (240, 210, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
ACCENT = {"car": (0, 220, 230), "truck": (255, 140, 0), "bus": (210, 0, 200)}
SKY = {"day": (135, 190, 245), "night": (12, 16, 40)}
GROUND = {"day": (95, 150, 80), "night": (20, 35, 20)}
ROAD = {"day": (105, 105, 110), "night": (75, 75, 85)}  # lit by street lamps at night
LANE_CENTRE = {"left": 0.24, "ego": 0.5, "right": 0.76}  # fraction of the frame width at the bottom


@lru_cache(maxsize=8)
def _background(time: str) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), SKY[time])
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, HORIZON, WIDTH, HEIGHT], fill=GROUND[time])
    vanish = WIDTH // 2
    draw.polygon([(vanish - 60, HORIZON), (vanish + 60, HORIZON), (WIDTH, HEIGHT), (0, HEIGHT)], fill=ROAD[time])
    for frac in (1 / 3, 2 / 3):  # dashed lane lines from the vanishing point
        x_bottom = frac * WIDTH
        x_top = vanish - 60 + frac * 120
        for k in range(8):
            t0, t1 = k / 8, k / 8 + 1 / 16
            draw.line([(x_top + (x_bottom - x_top) * t0, HORIZON + (HEIGHT - HORIZON) * t0),
                       (x_top + (x_bottom - x_top) * t1, HORIZON + (HEIGHT - HORIZON) * t1)],
                      fill=(235, 235, 235), width=10)
    if time == "night":
        for x in range(60, WIDTH, 170):
            draw.ellipse([x, 40 + (x * 7) % 120, x + 4, 44 + (x * 7) % 120], fill=(230, 230, 200))
    return image


def _vehicle(draw: ImageDraw.ImageDraw, vtype: str, colour: str, lane: str, rng: random.Random) -> None:
    """A vehicle seen from behind (front view) or ahead (back view), its bottom on the road."""
    cx = LANE_CENTRE[lane] * WIDTH + rng.uniform(-30, 30)
    bottom = HEIGHT * 0.86 + rng.uniform(-20, 20)
    _vehicle_at(draw, vtype, colour, cx, bottom)


def _vehicle_at(draw: ImageDraw.ImageDraw, vtype: str, colour: str, cx: float, bottom: float,
                scale: float = 1.0) -> None:
    """A vehicle seen from behind or ahead, centred at `cx` with its wheels at `bottom`, `scale` times the
    size of one at the reference distance."""
    fill = RGB[colour]
    outline = (190, 190, 190) if colour == "black" else (0, 0, 0)  # chrome trim keeps black visible at night
    # Types differ first of all in outline (wide and low, tall and narrow, long), which survives downscaling.
    width, height = {"car": (380, 150), "truck": (280, 560), "bus": (700, 300)}[vtype]
    width, height = width * scale, height * scale
    left, right, top = cx - width / 2, cx + width / 2, bottom - height
    line = max(2, round(6 * scale))
    draw.rectangle([left, top, right, bottom], fill=fill, outline=outline, width=line)
    # Each type also carries a large accent in a colour no vehicle has (cyan glass, an orange cargo box,
    # a magenta window band): a local cue that survives the tiny model's patching, like a real
    # type's distinctive parts.
    if vtype == "car":  # a narrower cabin on top with wide cyan glass
        draw.rectangle([left + 40 * scale, top - 120 * scale, right - 40 * scale, top], fill=fill, outline=outline,
                       width=line)
        draw.rectangle([left + 60 * scale, top - 100 * scale, right - 60 * scale, top - 10 * scale], fill=ACCENT["car"])
    elif vtype == "truck":  # a tall cargo box whose upper half is orange
        draw.rectangle([left + 12 * scale, top + 12 * scale, right - 12 * scale, top + height // 2], fill=ACCENT["truck"])
    else:  # bus: a band of magenta windows along the whole side
        draw.rectangle([left + 20 * scale, top + 30 * scale, right - 20 * scale, top + 150 * scale], fill=ACCENT["bus"])
        for k in range(1, 6):
            x = left + 20 * scale + k * (width - 40 * scale) / 6
            draw.line([(x, top + 30 * scale), (x, top + 150 * scale)], fill=outline, width=max(2, round(8 * scale)))
    for x in (left + 20 * scale, right - 80 * scale):  # wheels
        draw.rectangle([x, bottom - 10 * scale, x + 60 * scale, bottom + 25 * scale], fill=(10, 10, 10))


def _traffic_light(draw: ImageDraw.ImageDraw, state: str) -> None:
    """A large light high on the right: a lit red lamp on top, or a lit green lamp below."""
    x0, y0 = WIDTH - 300, 30
    draw.rectangle([x0 + 105, y0 + 470, x0 + 135, y0 + 640], fill=(60, 60, 60))
    draw.rectangle([x0, y0, x0 + 240, y0 + 470], fill=(25, 25, 25))
    red, green = ((255, 30, 30), (40, 60, 40)) if state == "red" else ((70, 30, 30), (40, 255, 80))
    draw.ellipse([x0 + 20, y0 + 15, x0 + 220, y0 + 215], fill=red)
    draw.ellipse([x0 + 20, y0 + 255, x0 + 220, y0 + 455], fill=green)


def draw_front(facts: SceneFacts, rng: random.Random) -> Image.Image:
    image = _background(facts.time).copy()
    draw = ImageDraw.Draw(image)
    _vehicle(draw, facts.front_type, facts.front_colour, facts.front_lane, rng)
    if facts.light != NONE:
        _traffic_light(draw, facts.light)
    return image


def draw_back(facts: SceneFacts, rng: random.Random) -> Image.Image:
    image = _background(facts.time).copy()
    if facts.back_type != NONE:
        _vehicle(ImageDraw.Draw(image), facts.back_type, facts.back_colour, facts.back_lane, rng)
    return image


# The drive world: a vehicle GAP_REF metres away is drawn as large as the two-camera world's vehicles; one
# twice as far, half as large and its wheels halfway nearer the horizon.
GAP_REF = 18.0
MAX_SCALE = 1.25  # at 14 m: its wheels still above the frame's bottom edge
SIDE_BOTTOM = HEIGHT * 0.9
# Side vehicles in profile: (length, height) at their full size, with the same accent per type.
PROFILE = {"car": (760, 170), "truck": (620, 470), "bus": (1150, 330)}


def _distance_scale(gap: float) -> float:
    return min(MAX_SCALE, GAP_REF / max(gap, 1e-3))


def draw_drive_view(time: str, vehicle: tuple[str, str, str] | None, gap: float, light: str | None) -> Image.Image:
    """The front (with `light`) or back camera of the drive world: `vehicle` (type, colour, lane) `gap` metres
    away along the road, or None."""
    image = _background(time).copy()
    draw = ImageDraw.Draw(image)
    if vehicle is not None:
        vtype, colour, lane = vehicle
        scale = _distance_scale(gap)
        vanish = WIDTH / 2
        cx = vanish + (LANE_CENTRE[lane] * WIDTH - vanish) * scale  # lanes meet at the vanishing point
        bottom = HORIZON + (HEIGHT * 0.86 - HORIZON) * scale
        _vehicle_at(draw, vtype, colour, cx, bottom, scale)
    if light is not None and light != NONE:
        _traffic_light(draw, light)
    return image


def draw_side_view(time: str, vehicle: tuple[str, str] | None, along: float, forward_right: bool) -> Image.Image:
    """A side camera of the drive world: the next lane, and `vehicle` (type, colour) in profile or None.
    `along` in [-1, 1] places it from the frame's rear edge to its front edge; the front of the car is to the
    right of the frame for the left cameras (`forward_right`), to the left for the right ones."""
    image = _side_background(time).copy()
    if vehicle is None:
        return image
    vtype, colour = vehicle
    draw = ImageDraw.Draw(image)
    fill = RGB[colour]
    outline = (190, 190, 190) if colour == "black" else (0, 0, 0)
    length, height = PROFILE[vtype]
    cx = WIDTH / 2 + (1 if forward_right else -1) * along * WIDTH * 0.3
    left, right, top = cx - length / 2, cx + length / 2, SIDE_BOTTOM - height
    draw.rectangle([left, top, right, SIDE_BOTTOM], fill=fill, outline=outline, width=6)
    if vtype == "car":  # a cabin with cyan windows
        draw.rectangle([left + 150, top - 130, right - 150, top], fill=fill, outline=outline, width=6)
        draw.rectangle([left + 175, top - 110, right - 175, top - 10], fill=ACCENT["car"])
    elif vtype == "truck":  # an orange cargo box over most of its length
        box = (left + 12, right - 180) if forward_right else (left + 180, right - 12)
        draw.rectangle([box[0], top + 12, box[1], top + height // 2], fill=ACCENT["truck"])
    else:  # a long band of magenta windows
        draw.rectangle([left + 30, top + 40, right - 30, top + 170], fill=ACCENT["bus"])
    for x in (left + 90, right - 190):
        draw.ellipse([x, SIDE_BOTTOM - 50, x + 100, SIDE_BOTTOM + 50], fill=(10, 10, 10))
    return image


@lru_cache(maxsize=8)
def _side_background(time: str) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), SKY[time])
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, HORIZON, WIDTH, HEIGHT], fill=GROUND[time])
    draw.polygon([(0, HEIGHT), (WIDTH, HORIZON + 60), (WIDTH, HEIGHT)], fill=ROAD[time])
    return image


@lru_cache(maxsize=8)
def side_view_jpeg(time: str) -> bytes:
    """In the two-camera world the four side cameras show an empty road side; one encoded frame per time of
    day is enough."""
    return encode_jpeg(_side_background(time))


def encode_jpeg(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
