"""Which model a value names, crash consistency, no accidental network access, and an uncached hub id.

One rule says what a model value names (clip_vlm_core.model.model_refs): '' the embedded model; an
absolute path, one starting with '.' or '~', or one whose first component is a folder here is a local
path and must exist (never a hub request); otherwise a hub id 'org/name' (or an OpenCLIP name). A hub id
is taken from the local cache; not there, offline or with the hub out of reach, it is one sentence at
once. A folder a run killed between the two renames of a replace left set aside is put back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_files import VIEWS, copy_embedded, digest, edit_json
from intact import REPO, assert_one_sentence, clip_vlm

from clip_vlm_core.atomic import _HOST, restore_interrupted
from clip_vlm_core.cli import main
from clip_vlm_core.errors import UserError
from clip_vlm_core.model.model_refs import classify_ref

HUB_ID = "Qwen/Qwen2.5-VL-3B-Instruct"
NOT_CACHED = f"'{HUB_ID}' is not in the local Hugging Face cache"
UNREACHABLE = "http://127.0.0.1:9"  # refuses at once: no test ever reaches (or downloads from) the hub


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: a local path must never become a hub request."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


# -- the rule -----------------------------------------------------------------------------------------

def test_the_rule_names_each_kind_of_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x" / "best").mkdir(parents=True)
    assert classify_ref("", "checkpoint").kind == classify_ref(None, "checkpoint").kind == "embedded"
    assert classify_ref("runs/x/best", "checkpoint").kind == "folder"
    assert classify_ref(HUB_ID, "checkpoint").kind == "hub"
    assert classify_ref("ViT-L-14", "clip", open_clip_names=True).kind == "open_clip"
    assert classify_ref("hf-hub:timm/vit_base_patch16_clip_224.openai", "clip", open_clip_names=True).kind == "hub"
    (tmp_path / "Qwen").mkdir()  # a folder named like the hub id's organisation: the value is a local path
    with pytest.raises(UserError, match="a folder 'Qwen' is there, so it names a local path, not a hub id"):
        classify_ref(HUB_ID, "checkpoint")


def test_embedded_models_are_named_embedded_colon_name(tmp_path, monkeypatch, capsys):
    from clip_vlm_core.model import model_refs

    monkeypatch.chdir(tmp_path)
    default = classify_ref("embedded:default", "checkpoint")
    assert (default.kind, default.value, default.path) == ("embedded", "default", model_refs.embedded_model_path())
    assert classify_ref("", "checkpoint") == default == classify_ref(None, "checkpoint")
    for value in ("embedded:", "embedded:Surround", "embedded:front"):
        with pytest.raises(UserError, match=f"'{value}' names no embedded model: the package ships embedded:default, "
                                            f"embedded:surround"):
            classify_ref(value, "checkpoint")
        assert main(["caption", *VIEWS, "--checkpoint", value]) == 2
        assert_one_sentence(capsys.readouterr().err, "caption", "names no embedded model")
    # A package built without one of them (an assets folder missing) says so and how to build it.
    monkeypatch.setitem(model_refs.EMBEDDED_MODELS, "missing", "no_such_model")
    with pytest.raises(UserError, match=r"checkpoint embedded:missing: this installation has no .*no_such_model \(it "
                                        r"is built and installed by `make embedded-model`\)"):
        classify_ref("embedded:missing", "checkpoint")


@pytest.mark.parametrize("value", ["runs/x/best", "runs/gone", "./best", "../nowhere/best", "/no/such/run/best",
                                   "~/no-such-clip-vlm-run", "a/b/c", "ViT-L-14"])
def test_a_local_path_that_does_not_exist_is_said_and_never_sent_to_the_hub(tmp_path, monkeypatch, capsys,
                                                                             no_network, value):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)  # best/ is gone
    assert main(["caption", *VIEWS, "--checkpoint", value]) == 2
    assert_one_sentence(capsys.readouterr().err, "caption", f"--checkpoint {value} does not exist")


def test_every_place_a_model_is_named_follows_the_rule(tmp_path, monkeypatch, no_network):
    """The node's `model` parameter (SceneCaptioner.from_pretrained), a recipe's optim.init and base models,
    and a checkpoint's config: the same sentence, no network."""
    from clip_vlm_core.model import SceneCaptioner
    from clip_vlm_core.train_config import check_base_models_available, load_run_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    with pytest.raises(UserError, match="checkpoint runs/x/best does not exist"):
        SceneCaptioner.from_pretrained("runs/x/best")
    recipe = REPO / "training" / "configs" / "synthetic-tiny.yaml"
    with pytest.raises(UserError, match="optim.init must be .*'runs/x/best', which does not exist"):
        load_run_config(recipe, ["optim.init=runs/x/best"])
    config = load_run_config(recipe, ["optim.init=base", "captioner.qwen_model=runs/x/qwen"])
    with pytest.raises(UserError, match="captioner.qwen_model runs/x/qwen does not exist"):
        check_base_models_available(config)
    checkpoint = copy_embedded(tmp_path / "copy")
    edit_json(checkpoint / "clip_vlm_config.json", qwen_model="../tiny_base/gone")
    with pytest.raises(UserError, match="names its Qwen2.5-VL base model '../tiny_base/gone'.*does not exist"):
        SceneCaptioner.from_pretrained(checkpoint)


# -- a hub id that is not cached ------------------------------------------------------------------------

def test_an_uncached_hub_id_offline_is_one_sentence_at_once(empty_cache, no_network):
    from clip_vlm_core.model.model_refs import check_available

    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        check_available(HUB_ID, local_files_only=True)
    seconds = time.perf_counter() - start
    assert NOT_CACHED in str(err.value) and f"hf download {HUB_ID}" in str(err.value) and "offline" in str(err.value)
    assert seconds < 5, seconds  # before: 53 s of retries; a cache lookup is milliseconds


@pytest.mark.parametrize("flags, env, says", [
    (["--local-files-only"], {}, "(offline: --local-files-only or HF_HUB_OFFLINE)"),
    ([], {"HF_HUB_OFFLINE": "1"}, "(offline: --local-files-only or HF_HUB_OFFLINE)"),
    ([], {"HF_ENDPOINT": UNREACHABLE}, "and the hub cannot be reached"),
])
def test_the_cli_says_an_uncached_hub_id_is_not_cached_and_how_to_get_it(tmp_path, flags, env, says):
    start = time.perf_counter()
    done = clip_vlm("caption", *VIEWS, "--checkpoint", HUB_ID, *flags,
                    env={**os.environ, "HF_HOME": str(tmp_path / "hf"), **env})
    seconds = time.perf_counter() - start
    assert done.returncode == 2
    assert_one_sentence(done.stderr, "caption", NOT_CACHED, says, f"`hf download {HUB_ID}`")
    assert "Retrying" not in done.stderr and seconds < 60, seconds


def test_a_hub_that_accepts_but_never_answers_is_given_hf_hub_etag_timeout_once(tmp_path):
    """A network that swallows requests (a proxy or firewall that never answers): one request, bounded by
    HF_HUB_ETAG_TIMEOUT and never retried, then the cache; not there, the sentence."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the kernel; nothing ever reads or answers them
    try:
        start = time.perf_counter()
        done = clip_vlm("caption", *VIEWS, "--checkpoint", HUB_ID,
                        env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_ETAG_TIMEOUT": "2",
                             "HF_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}"})
        seconds = time.perf_counter() - start
    finally:
        silent.close()
    assert done.returncode == 2
    assert_one_sentence(done.stderr, "caption", NOT_CACHED, "and the hub cannot be reached")
    assert seconds < 60, seconds  # one 2 s wait, not a retry loop


def test_a_checkpoint_naming_an_uncached_hub_base_model_is_one_sentence(tmp_path, empty_cache, capsys, no_network):
    checkpoint = copy_embedded(tmp_path)
    edit_json(checkpoint / "clip_vlm_config.json", qwen_model=HUB_ID)
    assert main(["caption", *VIEWS, "--checkpoint", str(checkpoint), "--local-files-only"]) == 2
    assert_one_sentence(capsys.readouterr().err, "caption", f"Qwen2.5-VL base model {NOT_CACHED}")


def test_a_recipe_naming_an_uncached_hub_model_stops_before_writing_anything(tmp_path):
    run = tmp_path / "run"
    done = clip_vlm("train", "--config", REPO / "training" / "configs" / "synthetic-tiny.yaml", "optim.init=base",
                    f"captioner.qwen_model={HUB_ID}", f"run_dir={run}",
                    env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": UNREACHABLE})
    assert done.returncode == 2
    assert_one_sentence(done.stderr, "train", f"Qwen2.5-VL base model {NOT_CACHED}", "the hub cannot be reached")
    assert not run.exists()


def test_an_uncached_openclip_tag_offline_is_one_sentence(tmp_path, empty_cache, capsys, no_network):
    checkpoint = copy_embedded(tmp_path)
    edit_json(checkpoint / "clip_vlm_config.json", clip_model="ViT-B-32", clip_pretrained="openai")
    assert main(["caption", *VIEWS, "--checkpoint", str(checkpoint), "--local-files-only"]) == 2
    assert_one_sentence(capsys.readouterr().err, "caption", "OpenCLIP weights of ViT-B-32/openai from",
                        "is not in the local Hugging Face cache")


# -- a replace killed between its two renames -----------------------------------------------------------

KILL_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from clip_vlm_core import atomic
atomic.sweep_stale_staging = lambda folder: []  # leave what an earlier killed replace set aside
renames, rename = [], Path.rename
def killed_on_the_second(self, target):
    renames.append(target)
    if len(renames) == 2:
        os._exit(9)  # as kill -9 between moving the old folder aside and moving the new one in
    return rename(self, target)
Path.rename = killed_on_the_second
with atomic.staged_dir(sys.argv[1]) as staged:
    (staged / "new.txt").write_text("new")
"""


def kill_while_replacing(folder: Path) -> Path:
    """Replace `folder` as clip-vlm does, in a process killed between the two renames; returns the copy set aside."""
    done = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(folder)], cwd=REPO, capture_output=True)
    assert done.returncode == 9, done.stderr
    assert not folder.exists()
    (aside,) = [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.old-")]
    return aside


def test_restore_puts_back_what_a_killed_replace_set_aside(tmp_path):
    folder = tmp_path / "latest"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    before = digest(folder)
    kill_while_replacing(folder)
    assert restore_interrupted(folder) is True
    assert digest(folder) == before
    assert restore_interrupted(folder) is False  # there already: nothing to do


@pytest.mark.parametrize("owner", ["another host", "this process", "a live process"])
def test_restore_puts_back_a_copy_whoever_set_it_aside(tmp_path, owner):
    pid = os.getpid()
    sleeper = None
    if owner == "a live process":  # alive but not replacing anything: given its moment, then restored
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        pid = sleeper.pid
    host = "otherhost" if owner == "another host" else _HOST
    aside = tmp_path / f".best.old-{host}-{pid}-abc123"
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    try:
        assert restore_interrupted(tmp_path / "best") is True
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
    assert (tmp_path / "best" / "config.json").read_text() == "{}" and not aside.exists()


@pytest.mark.slow
def test_resume_latest_recovers_latest_and_best_after_a_replace_killed_between_its_renames(synthetic_manifest,
                                                                                             tmp_path, capsys):
    from test_train import tiny_overrides

    recipe = REPO / "training" / "configs" / "synthetic-tiny.yaml"
    run = tmp_path / "run"
    overrides = tiny_overrides(synthetic_manifest, run, max_steps=4, eval_every=2, save_every=2)
    assert main(["train", "--config", str(recipe), "--no-progress", *overrides, "optim.max_steps=4"]) == 0
    capsys.readouterr()
    for name in ("latest", "best"):
        kill_while_replacing(run / name)
    assert main(["train", "--config", str(recipe), "--no-progress", "--resume", "latest", *overrides,
                 "optim.max_steps=6"]) == 0
    assert '"step": 6' in capsys.readouterr().out
    assert (run / "latest" / "trainer_state.json").is_file() and (run / "best" / "clip_vlm_config.json").is_file()
    assert not [p for p in run.iterdir() if ".old-" in p.name or ".partial-" in p.name]
    from clip_vlm_core.model import SceneCaptioner

    assert SceneCaptioner.from_pretrained(run / "best", device="cpu").views == ("CAM_FRONT", "CAM_BACK")


# -- what --resume reads from latest/ is checked as every checkpoint is -------------------------------------

@pytest.fixture(scope="module")
def trained_run(synthetic_manifest, tmp_path_factory):
    """A finished 2-step tiny run (latest/ and best/), copied afresh by each test."""
    from test_train import tiny_overrides

    from clip_vlm_core.train import run_training
    from clip_vlm_core.train_config import load_run_config

    run = tmp_path_factory.mktemp("trained") / "run"
    overrides = tiny_overrides(synthetic_manifest, run, max_steps=2, eval_every=2, save_every=2)
    run_training(load_run_config(REPO / "training" / "configs" / "synthetic-tiny.yaml", overrides),
                 show_progress=False)
    return run, overrides


def huge_optimizer_state(latest: Path) -> None:
    import torch

    state = torch.load(latest / "optimizer.pt", weights_only=True)
    state["state"][0]["exp_avg"] = torch.zeros(8_000_000)
    torch.save(state, latest / "optimizer.pt")


def huge_rng_state(latest: Path) -> None:
    from hostile_files import write_safetensors

    write_safetensors(latest / "rng.safetensors", {"torch": ("U8", (16_000_000_000,))})


def deep_trainer_state(latest: Path) -> None:
    from hostile_files import deep_json

    (latest / "trainer_state.json").write_text(deep_json())


def foreign_scheduler_state(latest: Path) -> None:
    (latest / "scheduler.json").write_text('{"optimizer": "replaced", "last_epoch": 2}')


def unknown_trainer_state(latest: Path) -> None:
    import json

    record = json.loads((latest / "trainer_state.json").read_text())
    (latest / "trainer_state.json").write_text(json.dumps({**record, "steps_left": 5}))


@pytest.mark.parametrize("damage, says", [
    (huge_optimizer_state, "holds a tensor of 30.5 MiB, more than the"),
    (huge_rng_state, "holds tensor 'torch' of shape [16,000,000,000], where the generators' state"),
    (deep_trainer_state, "trainer_state.json nests 100,000 levels deep"),
    (foreign_scheduler_state, "holds 'optimizer', which the schedule does not have"),
    (unknown_trainer_state, "holds unknown key(s) ['steps_left']"),
], ids=lambda d: getattr(d, "__name__", ""))
def test_resuming_from_a_damaged_latest_is_one_sentence_and_changes_nothing(trained_run, tmp_path, capsys,
                                                                           damage, says):
    import shutil

    source, overrides = trained_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    overrides = [o if not o.startswith("run_dir=") else f"run_dir={run}" for o in overrides]
    damage(run / "latest")
    kept = lambda: {k: v for k, v in digest(run).items() if not k.startswith("encoder_cache")}  # noqa: E731
    before = kept()  # the run's record, latest/ and best/ (the encoder cache is derived, and may be refilled)
    assert main(["train", "--config", str(REPO / "training" / "configs" / "synthetic-tiny.yaml"), "--no-progress",
                 "--resume", "latest", *overrides, "optim.max_steps=4"]) == 2
    assert_one_sentence(capsys.readouterr().err, "train", says)
    assert kept() == before
