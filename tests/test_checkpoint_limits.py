"""Hostile checkpoints: sizes and dtypes a weight file declares are checked against the
architecture its config declares, from the headers, before any tensor is read.

Hostile files are small on disk (sparse tensors, headers that declare huge shapes); the real CLI runs
them under an address-space limit, so anything that did allocate what they declare would fail. A
real-size Qwen2.5-VL-3B + ViT-L/14 checkpoint (its published config, sparse weights of the real names
and shapes) passes every check without a byte of it being allocated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hostile_files import (
    ADDRESS_SPACE_LIMIT,
    VIEWS,
    copy_embedded,
    digest,
    edit_json,
    run_limited,
    write_safetensors,
)
from intact import assert_one_sentence
from safetensors.torch import load_file

from clip_vlm_core.cli import main
from clip_vlm_core.errors import UserError

# The published config.json of Qwen/Qwen2.5-VL-3B-Instruct (the hub's flat layout).
QWEN25_VL_3B_HUB_CONFIG = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 128000,
    "max_window_layers": 70, "model_type": "qwen2_5_vl", "num_attention_heads": 16, "num_hidden_layers": 36,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return copy_embedded(tmp_path)


def connector_tensors(checkpoint: Path, **replace) -> dict:
    tensors = dict(load_file(checkpoint / "connector.safetensors"))
    tensors.update(replace)
    return tensors


def caption_argv(checkpoint: Path) -> list[str]:
    return ["caption", *VIEWS, "--checkpoint", str(checkpoint), "--local-files-only", "--max-new-tokens", "2"]


class address_space_limit:  # noqa: N801 - used as a context manager, like a function
    """Cap this process's address space a little above what it maps now (the model libraries are loaded),
    so that allocating what a hostile file declares fails here too; restored on exit."""

    def __enter__(self):
        import resource

        self.previous = resource.getrlimit(resource.RLIMIT_AS)
        mapped = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) << 10
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), self.previous[1]))
        return self

    def __exit__(self, *exc):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, self.previous)


# -- hostile checkpoints: (damage, what the sentence says) ------------------------------------------------

def huge_connector_tensor(c: Path) -> None:  # 16 GB, sparse
    write_safetensors(c / "connector.safetensors", connector_tensors(c, **{"proj.weight": ("F32", (64, 62_500_000))}))


def extra_connector_tensor(c: Path) -> None:
    write_safetensors(c / "connector.safetensors", connector_tensors(c, evil=("F32", (4_000_000_000,))))


def int8_connector(c: Path) -> None:
    weight = load_file(c / "connector.safetensors")["proj.weight"]
    write_safetensors(c / "connector.safetensors", connector_tensors(c, **{"proj.weight": weight.to(torch.int8)}))


def nan_connector(c: Path) -> None:
    write_safetensors(c / "connector.safetensors", connector_tensors(c, gate=torch.tensor([float("nan")])))


def truncated_connector(c: Path) -> None:
    data = (c / "connector.safetensors").read_bytes()
    (c / "connector.safetensors").write_bytes(data[: len(data) // 2])


def adapter_rank_10_million(c: Path) -> None:
    edit_json(c / "adapter" / "adapter_config.json", r=10_000_000)


def adapter_huge_lora_tensor(c: Path) -> None:
    path = c / "adapter" / "adapter_model.safetensors"
    tensors = dict(load_file(path))
    first = sorted(k for k in tensors if k.endswith("lora_A.weight"))[0]
    write_safetensors(path, {**tensors, first: ("F32", (10_000_000, 64))})


def adapter_for_other_modules(c: Path) -> None:
    path = c / "adapter" / "adapter_model.safetensors"
    write_safetensors(path, {**load_file(path),
                             "base_model.model.model.visual.blocks.0.attn.qkv.lora_A.weight": ("F32", (32, 32))})


def qwen_vocab_2_billion(c: Path) -> None:
    config = c.parent / "tiny_base" / "qwen" / "config.json"
    data = json.loads(config.read_text())
    data["text_config"]["vocab_size"] = 2_000_000_000
    config.write_text(json.dumps(data))


def qwen_inconsistent_heads(c: Path) -> None:
    config = c.parent / "tiny_base" / "qwen" / "config.json"
    data = json.loads(config.read_text())
    data["text_config"]["num_attention_heads"] = 3
    config.write_text(json.dumps(data))


def qwen_huge_weight(c: Path) -> None:  # 51 GB declared, sparse
    path = c.parent / "tiny_base" / "qwen" / "model.safetensors"
    write_safetensors(path, {**load_file(path), "model.embed_tokens.weight": ("F32", (200_000_000, 64))})


def clip_width_10_million(c: Path) -> None:
    config = c.parent / "tiny_base" / "clip" / "open_clip_config.json"
    data = json.loads(config.read_text())
    data["model_cfg"]["vision_cfg"]["width"] = 10_000_000
    config.write_text(json.dumps(data))


HOSTILE = [
    (huge_connector_tensor, "holds tensor 'proj.weight' of shape [64, 62,500,000], where the architecture its "
                            "config declares has [64, 32]"),
    (extra_connector_tensor, "holds a tensor 'evil' [4,000,000,000] that the architecture"),
    (int8_connector, "holds tensor 'proj.weight' as I8; as a trainable weight it must be one of BF16, F16, F32"),
    (nan_connector, "holds NaN or infinite values in tensor 'gate'"),
    (truncated_connector, "connector.safetensors is corrupt"),
    (adapter_rank_10_million, "r must be at least 1 and at most 1,024"),
    (adapter_huge_lora_tensor, "[10,000,000, 64], where its rank (32)"),
    (adapter_for_other_modules, "which is no LoRA weight of a module its target_modules names"),
    (qwen_vocab_2_billion, "text_config.vocab_size is 2,000,000,000, beyond the 1 to 1,048,576"),
    (qwen_inconsistent_heads, "is inconsistent: text hidden_size is not a multiple of num_attention_heads"),
    (qwen_huge_weight, "holds tensor 'model.embed_tokens.weight' of shape [200,000,000, 64], where the architecture"),
    (clip_width_10_million, "vision_cfg.width is 10,000,000, beyond"),
]


@pytest.mark.parametrize("damage, says", HOSTILE, ids=[d.__name__ for d, _ in HOSTILE])
def test_a_hostile_checkpoint_is_refused_from_its_headers_in_one_sentence(checkpoint, capsys, damage, says):
    damage(checkpoint)
    before = digest(checkpoint.parent)
    with address_space_limit():
        assert main(caption_argv(checkpoint)) == 2
    assert_one_sentence(capsys.readouterr().err, "caption", says)
    assert digest(checkpoint.parent) == before


@pytest.mark.slow
@pytest.mark.parametrize("damage", [huge_connector_tensor, adapter_rank_10_million, qwen_vocab_2_billion],
                         ids=lambda d: d.__name__)
def test_the_real_cli_refuses_what_the_issue_names_under_an_address_space_limit(checkpoint, damage):
    damage(checkpoint)
    before = digest(checkpoint.parent)
    done = run_limited(*caption_argv(checkpoint))
    assert done.returncode == 2, done.stderr
    assert_one_sentence(done.stderr, "caption", dict(HOSTILE)[damage])
    assert digest(checkpoint.parent) == before
    assert ADDRESS_SPACE_LIMIT < 16 << 30  # what each declares (16 GB, ~143 GB, ~512 GB) could not fit


def test_the_embedded_checkpoint_still_loads_and_captions(checkpoint, capsys):
    with address_space_limit():
        assert main(caption_argv(checkpoint)) == 0
    assert capsys.readouterr().out.strip()


# -- a real-size checkpoint passes, header-only -----------------------------------------------------------

def _hub_name(name: str) -> str:
    """The name a tensor has in the hub's Qwen2.5-VL files (transformers 5 renames them when loading)."""
    return re.sub(r"^model\.visual\.", "visual.", re.sub(r"^model\.language_model\.", "model.", name))


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    """Qwen2.5-VL-3B-Instruct as on the hub (config.json, two bf16 shards), ViT-L-14 as open_clip saves it,
    and the default recipe's connector and LoRA adapter: every file of real names and shapes, sparse."""
    import open_clip
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from clip_vlm_core.config import LANGUAGE_MODEL_LORA_TARGETS
    from clip_vlm_core.model.connector import FusionConnector

    root = tmp_path_factory.mktemp("real_size")
    qwen_dir, clip_dir, adapter_dir = root / "Qwen2.5-VL-3B-Instruct", root / "ViT-L-14", root / "best" / "adapter"
    for folder in (qwen_dir, clip_dir, adapter_dir):
        folder.mkdir(parents=True)
    (qwen_dir / "config.json").write_text(json.dumps(QWEN25_VL_3B_HUB_CONFIG))
    with torch.device("meta"):
        qwen = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig.from_dict(QWEN25_VL_3B_HUB_CONFIG))
        clip = open_clip.create_model("ViT-L-14", pretrained=None, device="meta")
        connector = FusionConnector(clip_dim=768, hidden_size=2048, num_views=2, num_layers=2, num_heads=16)
    weights = {_hub_name(n): ("BF16", tuple(t.shape)) for n, t in qwen.state_dict().items() if n != "lm_head.weight"}
    names = sorted(weights)
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), 1):
        write_safetensors(qwen_dir / f"model-0000{i}-of-00002.safetensors", {n: weights[n] for n in part})
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": open_clip.get_model_config("ViT-L-14")}))
    write_safetensors(clip_dir / "open_clip_model.safetensors",
                      {n: ("F32", tuple(t.shape)) for n, t in clip.state_dict().items()})
    write_safetensors(root / "best" / "connector.safetensors",
                      {n: ("F32", tuple(t.shape)) for n, t in connector.state_dict().items()})
    targets = re.compile(LANGUAGE_MODEL_LORA_TARGETS)
    lora = {}
    for name, module in qwen.named_modules():
        if isinstance(module, torch.nn.Linear) and targets.fullmatch(name):
            lora[f"base_model.model.{name}.lora_A.weight"] = ("F32", (16, module.in_features))
            lora[f"base_model.model.{name}.lora_B.weight"] = ("F32", (module.out_features, 16))
    write_safetensors(adapter_dir / "adapter_model.safetensors", lora)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": LANGUAGE_MODEL_LORA_TARGETS}))
    return {"root": root, "qwen": qwen, "connector": connector, "lora_tensors": len(lora)}


def test_a_real_size_qwen25_vl_3b_and_vit_l14_checkpoint_passes_every_check_without_being_allocated(real_size):
    from clip_vlm_core.model.checkpoint_limits import check_adapter, check_open_clip_folder, check_qwen_folder
    from clip_vlm_core.model.tensor_files import check_tensors, read_safetensors_header, specs_of

    root = real_size["root"]
    assert sum(f.stat().st_size for f in root.rglob("*.safetensors")) > 8e9  # declared: the real sizes
    assert sum(f.stat().st_blocks * 512 for f in root.rglob("*.safetensors")) < 50e6  # on disk: headers
    check_qwen_folder(root / "Qwen2.5-VL-3B-Instruct")
    check_open_clip_folder(root / "ViT-L-14")
    check_tensors(read_safetensors_header(root / "best" / "connector.safetensors", "checkpoint file"),
                  specs_of(real_size["connector"].state_dict()), "connector")
    check_adapter(root / "best" / "adapter", real_size["qwen"])
    assert real_size["lora_tensors"] == 36 * 7 * 2


@pytest.mark.parametrize("key, value, says", [
    ("vocab_size", 2_000_000_000, "vocab_size is 2,000,000,000, beyond"),
    ("num_hidden_layers", 100_000, "num_hidden_layers is 100,000, beyond"),
    ("intermediate_size", 1 << 40, "intermediate_size is 1,099,511,627,776, beyond"),
    ("hidden_size", "2048", "hidden_size must be a number"),
])
def test_a_real_size_config_beyond_any_real_model_is_refused(real_size, tmp_path, key, value, says):
    from clip_vlm_core.model.checkpoint_limits import check_qwen_folder

    folder = tmp_path / "qwen"
    folder.mkdir()
    for shard in (real_size["root"] / "Qwen2.5-VL-3B-Instruct").glob("*.safetensors"):
        (folder / shard.name).symlink_to(shard)
    (folder / "config.json").write_text(json.dumps({**QWEN25_VL_3B_HUB_CONFIG, key: value}))
    with pytest.raises(UserError, match=re.escape(says)):
        check_qwen_folder(folder)


def test_a_real_size_shard_with_one_tensor_of_another_shape_is_refused(real_size, tmp_path):
    from clip_vlm_core.model.checkpoint_limits import check_qwen_folder

    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN25_VL_3B_HUB_CONFIG))
    write_safetensors(folder / "model.safetensors", {"model.layers.0.mlp.up_proj.weight": ("BF16", (11008, 2049))})
    with pytest.raises(UserError, match=r"up_proj.weight' of shape \[11,008, 2,049\], where the architecture its "
                                        r"config declares \[11,008, 2,048\]"):
        check_qwen_folder(folder)


@pytest.mark.parametrize("dtype, ok", [("U8", True), ("I8", True), ("F8_E4M3", True), ("F64", False), ("I64", False)])
def test_frozen_weights_may_be_quantized_but_not_of_any_dtype(real_size, tmp_path, dtype, ok):
    """bitsandbytes 4-bit packs a weight into uint8 of another shape, LLM.int8 stores int8, FP8 checkpoints
    float8: frozen base weights may be any of them (no larger than the parameter); other dtypes are refused."""
    from clip_vlm_core.model.checkpoint_limits import check_qwen_folder

    folder = tmp_path / "qwen"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN25_VL_3B_HUB_CONFIG))
    shape = (11008 * 2048 // 2, 1) if dtype == "U8" else (11008, 2048)  # 4-bit: two weights a byte
    write_safetensors(folder / "model.safetensors", {"model.layers.0.mlp.up_proj.weight": (dtype, shape)})
    if ok:
        check_qwen_folder(folder)
    else:
        with pytest.raises(UserError, match=f"as {dtype}; weights must be one of"):
            check_qwen_folder(folder)


# -- a training run's optimizer state ---------------------------------------------------------------------

@pytest.mark.parametrize("state, says", [
    (lambda p: {"state": {0: {"exp_avg": torch.zeros(4_000_000)}}, "param_groups": []},
     "holds a tensor of 15.3 MiB, more than the"),
    (lambda p: {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(8)}},
                "param_groups": []}, "exp_avg of parameter 0 has shape [3], the parameter [8]"),
    (lambda p: {"state": {0: {"exp_avg": torch.full((8,), float("nan")), "exp_avg_sq": torch.zeros(8)}},
                "param_groups": []}, "holds NaN or infinite values in tensor 'exp_avg of parameter 0'"),
    (lambda p: {"state": {0: {"exp_avg": torch.zeros(8, dtype=torch.float64)}}, "param_groups": []},
     "exp_avg of parameter 0 is F64; optimizer state must be one of"),
    (lambda p: {"state": {7: {}}, "param_groups": []}, "holds state for parameter 7"),
])
def test_optimizer_state_is_checked_against_its_parameters_before_and_after_it_is_read(tmp_path, state, says):
    from clip_vlm_core.train_state import check_optimizer_file, check_optimizer_state

    params = [torch.nn.Parameter(torch.zeros(8)), torch.nn.Parameter(torch.zeros(2, 2))]
    path = tmp_path / "optimizer.pt"
    torch.save(state(params), path)
    with pytest.raises(UserError, match=re.escape(says)):
        check_optimizer_file(path, params)
        check_optimizer_state(torch.load(path, weights_only=True), params, path)


def test_8_bit_optimizer_state_is_allowed(tmp_path):
    """bitsandbytes' 8-bit AdamW keeps uint8 state1/state2 of the parameter's shape beside float scales."""
    from clip_vlm_core.train_state import check_optimizer_file, check_optimizer_state

    params = [torch.nn.Parameter(torch.zeros(64, 64))]
    state = {"state": {0: {"step": torch.tensor(3.0), "state1": torch.zeros(64, 64, dtype=torch.uint8),
                           "state2": torch.zeros(64, 64, dtype=torch.uint8), "absmax1": torch.ones(16),
                           "absmax2": torch.ones(16), "qmap1": torch.linspace(-1, 1, 256),
                           "qmap2": torch.linspace(0, 1, 256)}}, "param_groups": [{"params": [0]}]}
    torch.save(state, tmp_path / "optimizer.pt")
    check_optimizer_file(tmp_path / "optimizer.pt", params)
    check_optimizer_state(torch.load(tmp_path / "optimizer.pt", weights_only=True), params, tmp_path)
