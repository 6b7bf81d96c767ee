"""What a benchmark run times: settings shared by the CLI (which must start fast) and the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

from clip_vlm_core.errors import UserError
from clip_vlm_core.limits import MAX_NEW_TOKENS, Bound, check_batch, check_number


@dataclass
class CaptionBenchSettings:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    max_new_tokens: int = 48
    warmup: int = 2
    iters: int = 10
    static_cache: bool = False  # generate(cache_implementation="static"): transformers compiles the decode step
    decoder: str = "auto"  # clip_vlm_core.model.inference: static (CUDA graphs) | transformers | auto
    vision_attention: str = "auto"  # varlen | sdpa | auto
    merge_lora: bool | None = None  # None: merge on GPU

    def __post_init__(self) -> None:
        self.batch_sizes = _checked_batch_sizes(self.batch_sizes)
        if self.max_new_tokens < 2:
            raise UserError("--max-new-tokens must be at least 2 to separate decoding from the first token")
        check_number("--max-new-tokens", self.max_new_tokens, Bound(2, MAX_NEW_TOKENS), whole=True)
        if self.warmup < 0 or self.iters < 1:
            raise UserError("--warmup must be >= 0 and --iters >= 1")
        if self.static_cache and self.decoder == "static":
            raise UserError("--compile times transformers' generate(); it cannot be combined with --decoder static")
        if self.static_cache:
            self.decoder = "transformers"


@dataclass
class TrainBenchSettings:
    batch_sizes: tuple[int, ...] = (8, 16)
    caption_tokens: int = 48
    warmup: int = 2
    iters: int = 5
    cached_encoders: tuple[bool, ...] = (False, True)
    gradient_checkpointing: tuple[bool, ...] = (False, True)
    learning_rate: float = 1e-5
    optimizer: str = "adamw"  # or "adamw8bit" (bitsandbytes)

    def __post_init__(self) -> None:
        self.batch_sizes = _checked_batch_sizes(self.batch_sizes)
        if self.caption_tokens < 2:
            raise UserError("--caption-tokens must be at least 2")
        check_number("--caption-tokens", self.caption_tokens, Bound(2, MAX_NEW_TOKENS), whole=True)
        if self.warmup < 0 or self.iters < 1:
            raise UserError("--warmup must be >= 0 and --iters >= 1")


def _checked_batch_sizes(sizes) -> tuple[int, ...]:
    """Each batch size within the one bound every batch of pairs has (clip_vlm_core.limits)."""
    sizes = tuple(sizes)
    if not sizes:
        raise UserError("give at least one batch size")
    for size in sizes:
        check_batch(size, 1, "--batch-sizes value")
    return sizes


@dataclass
class PreprocessBenchSettings:
    pairs: int = 1  # front/back pairs per call (a batch)
    warmup: int = 3
    iters: int = 20

    def __post_init__(self) -> None:
        check_batch(self.pairs, 1, "--pairs")
        if self.warmup < 0 or self.iters < 1:
            raise UserError("--warmup must be >= 0 and --iters >= 1")
