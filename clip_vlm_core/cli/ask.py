"""`clip-vlm ask`: ask a question about one set of camera images (the playground, for questions)."""

from __future__ import annotations

import argparse
import time

from clip_vlm_core.cli.caption import (
    append_log,
    decoding_from_args,
    guard_log,
    load_captioner,
    log_fields,
    parse_views,
    scene_command,
)

EPILOG = """examples:
  clip-vlm ask --view CAM_FRONT=front.jpg --view CAM_BACK=back.jpg --question "What colour is the vehicle ahead?"
  clip-vlm ask --view CAM_FRONT=f.jpg --view CAM_BACK=b.jpg --question "Is anything following us?" \\
      --question "Is it day or night?" --checkpoint runs/tiny/best --log playground.jsonl

The question takes the place of the caption prompt over the same views and the same model; the answer
is printed, one line per --question in the order given. With no --checkpoint the embedded default model
is used: it was trained on synthetic scenes to answer questions about the vehicle ahead and behind (type,
colour, lane), the traffic light, day or night, whether anything follows, and where a car, truck or bus is."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = scene_command(subparsers, "ask", "answer a question about a set of camera images",
                           "Ask a question about one scene seen by several cameras. Give one --view per camera the "
                           "model reads and one or more --question.", EPILOG, "each question and answer", run)
    parser.add_argument("--question", action="append", default=[], required=True, metavar="TEXT",
                        help="a question about the scene (repeatable; answered in one batch)")


def run(args: argparse.Namespace) -> int:
    from clip_vlm_core.images import load_image
    from clip_vlm_core.limits import check_question

    decoding = decoding_from_args(args)
    for n, question in enumerate(args.question, 1):  # before seconds of model loading; ask() checks again
        check_question(question, f"--question number {n}" if len(args.question) > 1 else "--question")
    views = parse_views(args.view)
    guard_log(args, views)
    images = {name: load_image(path) for name, path in views.items()}
    captioner = load_captioner(args)
    captioner.images_for([images])  # bad view names fail here, before any model work
    start = time.perf_counter()
    settings = captioner.decoding_in_effect(decoding)
    answers = captioner.ask([images] * len(args.question), args.question, decoding=settings)
    seconds = time.perf_counter() - start
    for answer in answers:
        print(answer)
    if args.log:
        common = log_fields(captioner, views, settings)  # one time stamp for the questions asked together
        append_log(args.log, [{**common, "question": question.strip(), "answer": answer,
                               "seconds": round(seconds / len(answers), 4)}
                              for question, answer in zip(args.question, answers, strict=True)])
    return 0
