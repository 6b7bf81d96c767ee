"""Benchmarks of the captioner: captioning latency/throughput and training throughput (issue 8).

    bench = load_bench_model(tiny=True)                       # or a checkpoint, or full-size random weights
    report = benchmark_captioning(bench, CaptionBenchSettings(batch_sizes=(1, 2), max_new_tokens=4))
    print(format_caption_report(report)); write_json(report, Path("bench-caption.json"))
"""

from clip_vlm_core.bench.caption import CaptionBenchSettings, benchmark_captioning
from clip_vlm_core.bench.report import format_caption_report, format_train_report, write_json
from clip_vlm_core.bench.subject import BenchModel, load_bench_model
from clip_vlm_core.bench.train import TrainBenchSettings, benchmark_training

__all__ = [
    "BenchModel",
    "CaptionBenchSettings",
    "TrainBenchSettings",
    "benchmark_captioning",
    "benchmark_training",
    "format_caption_report",
    "format_train_report",
    "load_bench_model",
    "write_json",
]
