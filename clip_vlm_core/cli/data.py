"""`clip-vlm data`: synthetic nuScenes, and the verifiable training manifest (build/verify/inspect/gallery)."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from clip_vlm_core.config import DEFAULT_VIEWS
from clip_vlm_core.data.history import DEFAULT_HISTORY_STRIDE_S
from clip_vlm_core.data.nuinteract import DEFAULT_CAPTION_KEYS

BUILD_EPILOG = """examples:
  clip-vlm data build --dataroot /data/nuscenes --version v1.0-mini --captions /data/nuinteract \\
      --cameras CAM_FRONT CAM_BACK --out data/manifest
  clip-vlm data build --dataroot data/synthetic --captions data/synthetic/nuinteract \
      --qa data/synthetic/qa.jsonl --out data/synthetic-manifest
  clip-vlm data build --dataroot data/surround --captions data/surround/nuinteract --cameras CAM_FRONT \
      CAM_FRONT_LEFT CAM_FRONT_RIGHT CAM_BACK CAM_BACK_LEFT CAM_BACK_RIGHT --history 3 --out data/surround-manifest
  clip-vlm data verify data/manifest
  clip-vlm data gallery data/manifest --n 16 --out gallery.html

Writes OUT/<split>.jsonl (mini_train/mini_val, train/val) with one row per keyframe (sample token, scene,
timestamp, per view: path, sha256, width, height; the caption; with --qa, the keyframe's question-answer
pairs as "qa"; with --history K, per view its K past frames as "history", oldest first, each with path,
sha256, width, height and offset_s, its time minus the current frame's) and OUT/manifest.json. Past frame j
is the view's frame nearest to j * --history-stride seconds before the current one, within half a stride; a
past frame there is none of (the scene's first frames, a stride finer than the frames) is null in the row
and counted in the summary, never fatal. With more than two --cameras and no --caption-keys, the target
names each camera's own caption in --cameras order: "Front: ... Front left: ...". A --qa file holds one JSON object per line: token (sample token),
question, answer, and optionally type (accuracy is reported per type). Keyframes without a caption,
captions for unknown samples, missing or corrupt images and images over the size limits
(8192x8192 pixels, 32 MiB) are skipped and reported (or fatal with --strict). An image path that leads
out of the dataroot (absolute, '..', a symlink out) or names a folder, FIFO or device is refused.

OUT is replaced when an earlier 'data build' wrote it (it holds a .clip-vlm-output marker), or with
--overwrite; never when it is, holds, or lies inside the dataroot or the captions folder."""

SYNTH_EPILOG = """examples:
  clip-vlm data synth --out data/synthetic --scenes 2 --samples-per-scene 20 --sweeps 5 --seed 0
  clip-vlm data synth --out data/surround --cameras all --scenes 4 --samples-per-scene 20

Writes a nuScenes v1.0-mini tree (all 13 tables, six cameras at 1600x900, keyframes at 2 Hz) with procedurally
drawn scenes whose facts are known. --cameras front-back (the default): front and back scenes drawn keyframe by
keyframe, the four side cameras an empty road side, sweeps repeating their keyframe. --cameras all: every
camera shows content, and a scene's keyframes and sweeps (5 between keyframes by default, ~12 Hz) are the frames
of one continuous drive: vehicles approach, pull away, cut in, overtake us beside the car, the light changes;
facts and questions add the motion of the vehicles ahead and behind (front.motion, back.motion: approaching,
pulling away, steady, none) and what each side camera shows (front_left.vehicle_type, back_right.vehicle_colour,
...). Written: NuInteract-format captions in OUT/nuinteract/, the ground
truth in OUT/synthetic_facts.json, and questions with their answers in OUT/qa.jsonl (training phrasings) and
OUT/qa_heldout.jsonl (phrasings kept for evaluation), for `data build --qa`. Scene names come from the
devkit's mini splits, so two or more scenes give both a train and a val split. An existing non-empty OUT
(or --captions-out) that an earlier 'data synth' did not write is replaced only with --overwrite."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="build, check and browse training data",
                                   description="Synthetic nuScenes, and the training manifest built from nuScenes + NuInteract.")
    verbs = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = verbs.add_parser("synth", help="write a synthetic nuScenes whose content is known", epilog=SYNTH_EPILOG, description="Write a synthetic nuScenes tree plus NuInteract captions.")
    p.add_argument("--out", type=Path, required=True, help="folder to create")
    p.add_argument("--scenes", type=int, default=2, help="number of scenes, 1-10 (default %(default)s)")
    p.add_argument("--samples-per-scene", type=int, default=8, help="keyframes per scene (default %(default)s)")
    p.add_argument("--cameras", choices=("front-back", "all"), default="front-back",
                   help="front-back: scenes in CAM_FRONT/CAM_BACK only, drawn keyframe by keyframe; all: a continuous "
                   "drive seen by all six cameras (default %(default)s)")
    p.add_argument("--sweeps", type=int, default=None,
                   help="camera frames between keyframes (default 0, or 5 with --cameras all; 5 ~ 12 Hz)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.add_argument("--captions-out", type=Path, default=None, help="NuInteract folder (default OUT/nuinteract)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out that an earlier 'data synth' did not write")
    p.set_defaults(func=run_synth)

    p = verbs.add_parser("build", help="write the manifest from nuScenes + NuInteract", epilog=BUILD_EPILOG, description="Build one JSONL manifest per split, every image hashed.")
    p.add_argument("--dataroot", type=Path, required=True, help="nuScenes root (holds samples/ and v1.0-*/)")
    p.add_argument("--version", default="v1.0-mini", help="v1.0-mini, v1.0-trainval or v1.0-test (default %(default)s)")
    p.add_argument("--captions", type=Path, required=True, help="NuInteract folder of JSON files")
    p.add_argument("--cameras", nargs="+", default=list(DEFAULT_VIEWS), help="views per sample (default %(default)s)")
    p.add_argument("--caption-keys", nargs="+", default=None,
                   help=f"NuInteract caption keys joined into the target (default {' '.join(DEFAULT_CAPTION_KEYS)}; with "
                   "more than two --cameras, each camera's own caption, named: 'Front: ... Front left: ...')")
    p.add_argument("--history", type=int, default=0, metavar="K",
                   help="add each view's K previous frames from its sample_data chain (sweeps where present), oldest "
                   "first, with their time offsets (default %(default)s: none)")
    p.add_argument("--history-stride", type=float, default=DEFAULT_HISTORY_STRIDE_S, metavar="S",
                   help="seconds between past frames (default %(default)s, the keyframe interval; 0.1 needs sweeps)")
    p.add_argument("--out", type=Path, required=True, help="manifest folder to write")
    p.add_argument("--qa", nargs="+", type=Path, default=[], metavar="FILE.jsonl",
                   help="question-answer pairs keyed by sample token (token, question, answer[, type]) to add")
    p.add_argument("--strict", action="store_true", help="stop at the first bad sample instead of skipping it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out that an earlier 'data build' did not write (never an input)")
    p.set_defaults(func=run_build)

    p = verbs.add_parser("verify", help="re-hash every image of a manifest",
                         description="Re-hash every image; exit 1 naming each changed or missing file.",
                         epilog="example:\n  clip-vlm data verify data/manifest")
    p.add_argument("manifest", type=Path, help="manifest folder (or one of its split files)")
    p.add_argument("--dataroot", type=Path, default=None,
                   help="where the images are now, when the data moved since the build (default: manifest.json's)")
    p.set_defaults(func=run_verify)

    p = verbs.add_parser("inspect", help="counts, caption lengths and a few samples",
                         description="Print counts per split, caption length statistics and a few samples.",
                         epilog="example:\n  clip-vlm data inspect data/manifest --samples 5")
    p.add_argument("manifest", type=Path, help="manifest folder")
    p.add_argument("--samples", type=int, default=3, help="samples to print per split (default %(default)s)")
    p.set_defaults(func=run_inspect)

    p = verbs.add_parser("gallery", help="an HTML page of samples with their views, captions and questions",
                         description="Write a self-contained HTML page of N samples: every view, laid out as on the "
                         "car (front-left, front, front-right over back-left, back, back-right), the caption, the "
                         "sample's split and its question-answer pairs.",
                         epilog="examples:\n  clip-vlm data gallery data/manifest --n 16 --seed 1 --out gallery.html\n"
                         "  clip-vlm data gallery data/manifest/mini_val.jsonl --token 3e8750f331d7499e9b5123e9eb70f2e2")
    p.add_argument("manifest", type=Path, help="manifest folder (or one split file)")
    p.add_argument("--n", type=int, default=16, help="number of samples (default %(default)s)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, default=0, help="which samples, reproducibly (default %(default)s)")
    which.add_argument("--token", nargs="+", default=[], help="show these sample tokens instead of --n random ones")
    p.add_argument("--out", type=Path, default=Path("gallery.html"),
                   help="HTML file (default %(default)s); replaced when an earlier gallery wrote it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out that is not a gallery")
    p.add_argument("--dataroot", type=Path, default=None,
                   help="where the images are now, when the data moved since the build (default: manifest.json's)")
    p.set_defaults(func=run_gallery)


def run_synth(args: argparse.Namespace) -> int:
    from clip_vlm_core.data.synthetic import generate_synthetic_nuscenes

    d = generate_synthetic_nuscenes(args.out, args.scenes, args.samples_per_scene, args.sweeps, args.seed,
                                    args.captions_out, overwrite=args.overwrite, cameras=args.cameras)
    print(f"wrote {len(d.sample_tokens)} keyframes in {len(d.scene_names)} scenes ({', '.join(d.scene_names)}) "
          f"to {d.root}; captions in {d.captions}")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from clip_vlm_core.data.manifest import build_manifest

    report = build_manifest(args.dataroot, args.version, args.captions, args.cameras, args.out,
                            args.caption_keys, args.strict, overwrite=args.overwrite, qa=args.qa,
                            history=args.history, history_stride_s=args.history_stride)
    print(report.summary())
    print(f"manifest written to {args.out}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    import sys

    from clip_vlm_core.data.manifest import verify_manifest

    checked, problems = verify_manifest(args.manifest, dataroot=args.dataroot)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} of {checked} images changed or missing", file=sys.stderr)
        return 1
    print(f"all {checked} images match their sha256")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from clip_vlm_core.data.manifest import load_manifest, read_manifest_meta, split_files

    meta = read_manifest_meta(args.manifest)
    print(f"nuScenes {meta['nuscenes_version']} at {meta['dataroot']}; cameras {', '.join(meta['cameras'])}")
    for reason, n in meta.get("skipped", {}).items():
        print(f"skipped while building: {n} ({reason})")
    history = meta.get("history")
    if history:
        missing = sum(history.get("missing", {}).values())
        print(f"history: {history['frames']} past frames per view every {history['stride_s']} s; {missing} of "
              f"{history.get('past_frames', '?')} missing")
    for file in split_files(args.manifest):
        rows = load_manifest(file)
        words = [len(r.caption.split()) for r in rows] or [0]
        pairs = sum(len(r.qa) for r in rows)
        print(f"\n{file.stem}: {len(rows)} samples, caption words min {min(words)} / mean "
              f"{statistics.mean(words):.1f} / max {max(words)}" + (f"; {pairs} question-answer pairs" if pairs else ""))
        for row in rows[: args.samples]:
            print(f"  {row.sample_token} {row.scene}: {row.caption}")
            for pair in row.qa[:2]:
                print(f"      Q ({pair.type}) {pair.question}  A {pair.answer}")
    return 0


def run_gallery(args: argparse.Namespace) -> int:
    from clip_vlm_core.atomic import write_text
    from clip_vlm_core.data.gallery import WRITER, choose_rows, render_gallery, rows_by_split
    from clip_vlm_core.data.manifest import manifest_dataroot, manifest_dir
    from clip_vlm_core.output_guard import guard_output

    dataroot = manifest_dataroot(args.manifest, args.dataroot)
    inputs = {"manifest": manifest_dir(args.manifest), "nuScenes dataroot": dataroot}
    guard_output(args.out, WRITER, inputs, args.overwrite, kind="file")
    every_row, splits = rows_by_split(args.manifest)
    rows = choose_rows(every_row, args.n, args.seed, args.token)
    page = render_gallery(rows, dataroot, f"clip-vlm gallery: {manifest_dir(args.manifest)}", splits)
    write_text(args.out, page)
    print(f"wrote {len(rows)} samples to {args.out}")
    return 0
