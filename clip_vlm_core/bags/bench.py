"""How fast `bag convert` is: seconds per scene and MB/s of image data, keyframes and sweeps.

    python -m clip_vlm_core.bags.bench                      # synthetic tree, full-size (1600x900) JPEGs
    python -m clip_vlm_core.bags.bench --dataroot data/nuscenes --version v1.0-mini --scenes 2

Compressed conversion copies JPEG bytes, so it should run near the speed of reading the files; the
"read only" line is that ceiling (warm page cache, as for the conversion after it).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clip_vlm_core.bags.convert import BagConvertOptions, convert_scene
from clip_vlm_core.bags.scene_plan import load_nuscenes, plan_scene

FULL_SIZE = (1600, 900)  # nuScenes camera resolution


def synthetic_tree(root: Path, scenes: int, samples: int, sweeps: int) -> Path:
    """A synthetic nuScenes tree whose JPEGs are re-encoded at full size, so file sizes are realistic."""
    from clip_vlm_core.data.synthetic import generate_synthetic_nuscenes

    generate_synthetic_nuscenes(root, scenes=scenes, samples_per_scene=samples, sweeps=sweeps, seed=0)
    rng = np.random.default_rng(0)
    # Smooth gradients plus noise compress like a street scene (~200-400 kB at quality 90), unlike pure noise.
    yy, xx = np.mgrid[0 : FULL_SIZE[1], 0 : FULL_SIZE[0]]
    base = np.stack([xx * 255 // FULL_SIZE[0], yy * 255 // FULL_SIZE[1], (xx + yy) % 256], axis=-1)
    variants = []
    for i in range(8):  # encoding thousands of full-size JPEGs would dominate; a few distinct ones suffice
        noise = rng.integers(0, 48, size=base.shape)
        buffer = io.BytesIO()
        Image.fromarray(((base + noise + 16 * i) % 256).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        variants.append(buffer.getvalue())
    for i, path in enumerate(sorted(root.glob("s*/CAM_*/*.jpg"))):
        path.write_bytes(variants[i % len(variants)])
    return root


def _measure(nusc, scene: str, out: Path, options: BagConvertOptions) -> tuple[float, float, int, float]:
    plan = plan_scene(nusc, scene, options.cameras, options.sweeps)
    image_mb = plan.image_bytes / 1e6
    start = time.perf_counter()
    for frame in plan.frames:
        frame.path.read_bytes()
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    convert_scene(nusc, scene, out, options)
    return image_mb, time.perf_counter() - start, len(plan.frames), read_s


def run(dataroot: Path | None, version: str, scenes: int, samples: int, sweeps: int, raw: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="clip-vlm-bag-bench-") as tmp:
        tmp = Path(tmp)
        if dataroot is None:
            print(f"building a synthetic tree: {scenes} scenes x {samples} samples, {sweeps} sweeps between keyframes")
            dataroot = synthetic_tree(tmp / "nuscenes", scenes, samples, sweeps)
            version = "v1.0-mini"
        nusc = load_nuscenes(dataroot, version)
        names = [s["name"] for s in nusc.scene[:scenes]]
        print(f"{'mode':<18}{'scene':<14}{'frames':>7}{'image MB':>10}{'read s':>8}{'convert s':>11}{'MB/s':>8}")
        for mode, options in [
            ("keyframes", BagConvertOptions(progress=False, overwrite=True)),
            ("sweeps", BagConvertOptions(sweeps=True, progress=False, overwrite=True)),
            *([("sweeps raw", BagConvertOptions(sweeps=True, raw=True, progress=False, overwrite=True))] if raw else []),
        ]:
            for name in names:
                image_mb, seconds, frames, read_s = _measure(nusc, name, tmp / "bags" / mode.replace(" ", "_"), options)
                print(f"{mode:<18}{name:<14}{frames:>7}{image_mb:>10.1f}{read_s:>8.2f}{seconds:>11.2f}{image_mb / seconds:>8.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", type=Path, default=None, help="nuScenes tree (default: build a synthetic one)")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--scenes", type=int, default=2, help="scenes to convert (default %(default)s)")
    parser.add_argument("--samples", type=int, default=40, help="keyframes per synthetic scene (default %(default)s)")
    parser.add_argument("--sweeps", type=int, default=5, help="sweeps between synthetic keyframes (default %(default)s)")
    parser.add_argument("--raw", action="store_true", help="also time --raw (decodes every JPEG)")
    args = parser.parse_args(argv)
    run(args.dataroot, args.version, args.scenes, args.samples, args.sweeps, args.raw)


if __name__ == "__main__":
    main()
