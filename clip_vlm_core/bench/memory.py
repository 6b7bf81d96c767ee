"""`bench memory`: clip_vlm_core.memory_estimate against memory measured on this machine's CPU.

Each size runs in a child process of its own: imports, one warm-up step of a one-layer model (torch's
allocator, thread pools, autograd engine: the process's fixed cost), then the baseline (VmRSS), a peak
reset (/proc/self/clear_refs, where the kernel allows it; else the peak since the process started), and
the run (glibc told to return large freed blocks: see measure()): the random model built from its config (fp32, as training on a CPU holds it), then `steps`
training steps (forward, backward, AdamW) at the batch and tokens asked. Measured: the peak resident set
(VmHWM) less the baseline. Estimated: memory_estimate.estimate_memory for the same model and step.

Sizes: "tiny" (a 4-layer language model of width 256, ~21 MB of weights) and "1gb" (Qwen2.5-VL-3B's
widths, vocabulary and MLP with 2 decoder layers: ~1.9 GB of fp32 weights). The vision tower is kept small
in both (its forward is frozen and leaves nothing for backward); OpenCLIP is the suite's tiny one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

SIZES = ("tiny", "1gb")


@dataclass(frozen=True)
class MemoryRun:
    size: str = "tiny"
    batch: int = 2
    image_tokens: int = 16  # visual tokens per view
    caption_tokens: int = 32
    checkpointing: bool = False
    optimizer: str = "adamw"
    steps: int = 2


def _text_config(size: str) -> dict[str, Any]:
    if size == "warm-up":  # the fixed cost's model: small enough that what it leaves on the heap is nothing
        return {"vocab_size": 512, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 1,
                "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    if size == "tiny":
        return {"vocab_size": 4096, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                "num_attention_heads": 8, "num_key_value_heads": 2,
                "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]}}
    return {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 2,
            "num_attention_heads": 16, "num_key_value_heads": 2}


def _qwen_config(size: str):
    from clip_vlm_core.model.full_size import qwen25_vl_3b_config

    config = qwen25_vl_3b_config()
    text = {**config.text_config.to_dict(), **_text_config(size)}
    for key in ("layer_types", "rope_parameters"):
        text.pop(key, None)
    vision = {**config.vision_config.to_dict(), "depth": 1, "hidden_size": 64, "intermediate_size": 128,
              "num_heads": 2, "out_hidden_size": text["hidden_size"], "fullatt_block_indexes": [0]}
    config = type(config)(text_config=text, vision_config=vision, image_token_id=min(config.image_token_id, text["vocab_size"] - 3),
                          video_token_id=text["vocab_size"] - 2, vision_start_token_id=text["vocab_size"] - 4,
                          vision_end_token_id=text["vocab_size"] - 5, tie_word_embeddings=True)
    config.text_config.eos_token_id = text["vocab_size"] - 6
    return config


def _resident() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in bytes."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        return True
    except OSError:
        return False


def _build(size: str, config, torch):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from clip_vlm_core.model.checkpoint import assemble_model
    from clip_vlm_core.model.clip_encoder import ClipViewEncoder
    from clip_vlm_core.model.tiny import build_tiny_clip

    torch.manual_seed(0)
    qwen = Qwen2_5_VLForConditionalGeneration._from_config(_qwen_config(size), dtype=torch.float32,
                                                           attn_implementation="sdpa")
    qwen.requires_grad_(False)
    clip = ClipViewEncoder(build_tiny_clip(0)[0], config.clip_tokens)
    return assemble_model(qwen, clip, config, trainable=True)


def _step(model, inputs, optimizer) -> None:
    out = model(**inputs)
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def measure_in_this_process(run: MemoryRun) -> dict[str, Any]:
    """The child's work (see the module's docstring); returns estimate and measurement in bytes."""
    import torch

    from clip_vlm_core.bench.subject import token_id_inputs
    from clip_vlm_core.config import CaptionerConfig
    from clip_vlm_core.memory_estimate import estimate_memory
    from clip_vlm_core.train_setup import make_optimizer

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    config = CaptionerConfig(qwen_model="random", clip_model="tiny", lora_dropout=0.05)

    class Optim:
        optimizer = run.optimizer

    warm = _build("warm-up", CaptionerConfig(qwen_model="random", clip_model="tiny", connector_heads=2), torch)  # the fixed cost, paid
    warm_inputs = token_id_inputs(warm, 2, (56, 56), torch.device("cpu"))(1, 4)
    _step(warm, warm_inputs, make_optimizer([{"params": [p for p in warm.parameters() if p.requires_grad]}], Optim))
    del warm, warm_inputs
    import gc

    gc.collect()
    baseline, _ = _resident()
    reset = _reset_peak()

    model = _build(run.size, config, torch)
    model.train()
    if run.checkpointing:
        model.base_qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.base_qwen.enable_input_require_grads()
    side = int(round(run.image_tokens ** 0.5)) * 28
    inputs = token_id_inputs(model, 2, (side, side), torch.device("cpu"))(run.batch, run.caption_tokens)
    optimizer = make_optimizer([{"params": [p for p in model.parameters() if p.requires_grad]}], Optim)
    for _ in range(run.steps):
        _step(model, inputs, optimizer)
    _, peak = _resident()
    tokens = int(inputs["input_ids"].shape[1])
    estimate = estimate_memory(model, model.base_qwen.config.text_config, optimizer=run.optimizer, batch=run.batch,
                               tokens=tokens, checkpointing=run.checkpointing, lora_r=config.lora_r,
                               activation_element_bytes=4)
    return {"run": asdict(run), "tokens": tokens, "measured_bytes": peak - baseline, "baseline_bytes": baseline,
            "peak_reset": reset, "estimate_bytes": estimate.total, "estimate": {
                "weights": estimate.weights, "trainable": estimate.trainable, "optimizer": estimate.optimizer,
                "activations": estimate.activations, "trainable_parameters": estimate.trainable_parameters}}


def measure(run: MemoryRun, timeout: float = 900) -> dict[str, Any]:
    """One size measured in a fresh child process (its peak is its own)."""
    code = ("import json, sys; from clip_vlm_core.bench.memory import MemoryRun, measure_in_this_process; "
            "print('RESULT ' + json.dumps(measure_in_this_process(MemoryRun(**json.loads(sys.argv[1])))))")
    # glibc hands blocks of 64 KiB and more back to the system when they are freed: the resident set then
    # follows the live tensors, as a GPU allocator's peak counter does. With glibc's default (a threshold
    # that rises as blocks are freed) freed activations stay resident and the peak reads up to ~1.2-1.8x
    # higher on small models (README, "Fine-tuning on a 12 GB GPU").
    env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(run))], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"the memory measurement of {run.size!r} failed (exit {done.returncode}): "
                           f"{done.stderr.strip().splitlines()[-1:] or done.stdout[-500:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["ratio"] = result["estimate_bytes"] / max(result["measured_bytes"], 1)
    return result


def format_memory_report(results: list[dict[str, Any]]) -> str:
    lines = [f"{'size':<6}{'batch':>6}{'tokens':>8}{'ckpt':>6}{'estimate MiB':>14}{'measured MiB':>14}{'est/meas':>10}"]
    for r in results:
        run = r["run"]
        lines.append(f"{run['size']:<6}{run['batch']:>6}{r['tokens']:>8}{'on' if run['checkpointing'] else 'off':>6}"
                     f"{r['estimate_bytes'] / 2**20:>14.1f}{r['measured_bytes'] / 2**20:>14.1f}{r['ratio']:>10.2f}")
    return "\n".join(lines)
