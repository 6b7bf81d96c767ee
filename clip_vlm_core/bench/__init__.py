"""Benchmarks of the captioner: captioning latency/throughput and training throughput (issue 8).

    from clip_vlm_core.bench.caption import benchmark_captioning
    from clip_vlm_core.bench.settings import CaptionBenchSettings
    from clip_vlm_core.bench.subject import load_bench_model
    from clip_vlm_core.bench.report import format_caption_report, write_json

    bench = load_bench_model(tiny=True)                       # or a checkpoint, or full-size random weights
    report = benchmark_captioning(bench, CaptionBenchSettings(batch_sizes=(1, 2), max_new_tokens=4))
    print(format_caption_report(report)); write_json(report, Path("bench-caption.json"))

Submodules are imported where used, so `clip-vlm --help` does not load torch.
"""
