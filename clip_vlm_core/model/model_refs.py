"""How a model is named, and where it is loaded from: one rule for every place that names one.

A value (`--checkpoint`, the node's `model`, a recipe's `captioner.qwen_model` / `clip_model` /
`optim.init`, `--resume`, or the base models a checkpoint's config names) is, in this order:

1. a model shipped in the package: the embedded default model when it is empty ('' or not given) or
   `embedded:default`, and `embedded:surround` (six cameras with a history) by name (EMBEDDED_MODELS);
2. a local path, when it is absolute, starts with '.' or '~', or when a folder named by its first path
   component exists (next to the checkpoint for a value read from its config, else in the current
   folder). A local path must exist: `runs/x/best` with best/ gone "does not exist" and is never sent
   to the hub (a folder a killed run left set aside, `.best.old-*`, is put back first);
3. for OpenCLIP, a model name of open_clip's registry (`ViT-L-14`) or `hf-hub:org/name`;
4. a Hugging Face hub id `org/name`; anything else does not exist.

A hub id is looked up in the local Hugging Face cache first and downloaded only when allowed
(`--local-files-only` and HF_HUB_OFFLINE=1 forbid it): not cached, offline or with the hub out of reach,
it is one sentence at once, saying how to get it, never a minute of retries.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from clip_vlm_core.atomic import restore_interrupted
from clip_vlm_core.errors import UserError
from clip_vlm_core.jsonin import read_json_object
from clip_vlm_core.limits import MAX_SMALL_JSON_BYTES
from clip_vlm_core.paths import resolve_inside

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a Qwen2.5-VL folder needs from the hub: configs, tokenizer, chat template, safetensors weights.
QWEN_HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt"]
OPEN_CLIP_HUB_FILES = ["open_clip_config.json", "*.safetensors"]
# Where a checkpoint's local base models may lie when no root is given: e.g. a shared /models folder that
# the fine-tuned checkpoints of a team name (default: the folder holding the checkpoint).
BASE_MODELS_ENV = "CLIP_VLM_BASE_MODELS"


def embedded_assets() -> Path:
    """The package's model assets: the embedded models (default_model/, surround_model/) and their base models."""
    return Path(__file__).resolve().parent.parent / "assets"


# The models shipped in the package, named `embedded:NAME` wherever a checkpoint is accepted (the default
# also by an empty value), and the assets folder each is installed in (by clip_vlm_core.model.embedded).
EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = {"default": "default_model", "surround": "surround_model"}


def embedded_model_path(name: str = "default") -> Path:
    """The assets folder of the embedded model `name` (one of EMBEDDED_MODELS)."""
    return embedded_assets() / EMBEDDED_MODELS[name]


def embedded_name(value: str | os.PathLike | None) -> str | None:
    """The embedded model a value names ('default' for an empty one), or None when it names none; one
    sentence for `embedded:` and a name the package does not ship."""
    text = "" if value is None else os.fspath(value).strip()
    if not text:
        return "default"
    if not text.startswith(EMBEDDED_PREFIX):
        return None
    name = text.removeprefix(EMBEDDED_PREFIX)
    if name not in EMBEDDED_MODELS:
        raise UserError(f"{text!r} names no embedded model: the package ships "
                        f"{', '.join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)}")
    return name


@dataclass(frozen=True)
class ModelRef:
    """What a value names: kind "embedded", "folder" (`path`), "hub" (an id) or "open_clip" (a name)."""

    kind: str
    value: str
    path: Path | None = None


def classify_ref(value: str | os.PathLike | None, what: str, base: Path | None = None,
                 open_clip_names: bool = False) -> ModelRef:
    """The one rule (see the module's docstring). `base`: the folder relative values are read against
    (default: the current folder); `open_clip_names`: OpenCLIP's registry names count as names."""
    text = "" if value is None else os.fspath(value)
    name = embedded_name(text)
    if name is not None:
        path = embedded_model_path(name)
        if not path.is_dir():
            raise UserError(f"{what} {EMBEDDED_PREFIX}{name}: this installation has no {path} (it is built and "
                            f"installed by `make embedded-model`)")
        return ModelRef("embedded", name, path)
    if open_clip_names and text.startswith("local-dir:"):
        text = text.removeprefix("local-dir:")
    path = Path(text).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    first = Path(text).parts[0]
    local = (text.startswith(("/", ".", "~")) or path.exists() or path.is_symlink()
             or ((base or Path.cwd()) / first).is_dir())
    if open_clip_names and not local:
        if text.startswith("hf-hub:"):
            return ModelRef("hub", text.removeprefix("hf-hub:"))
        if _is_open_clip_name(text):
            return ModelRef("open_clip", text)
    if not local and HUB_ID.match(text):
        return ModelRef("hub", text)
    if not path.exists() and not restore_interrupted(path):
        hint = ""
        if not local:
            hint = " (nor a hub id 'org/name')"
        elif HUB_ID.match(text) and not text.startswith((".", "/", "~")):
            hint = f" (a folder {first!r} is there, so it names a local path, not a hub id)"
        raise UserError(f"{what} {text} does not exist{hint}")
    return ModelRef("folder", text, path)


def local_checkpoint(value: str | os.PathLike | None, what: str) -> Path:
    """The folder of a clip-vlm checkpoint on this machine that `value` names (embedded:NAME or a folder):
    one sentence when it names nothing here (a hub id is not a clip-vlm checkpoint) or a folder without a
    checkpoint config."""
    ref = classify_ref(value, what)
    if ref.kind == "hub":
        raise UserError(f"{what} {ref.value} does not exist here (a clip-vlm checkpoint is a local folder or "
                        f"{EMBEDDED_PREFIX}NAME, not a hub id)")
    if not (ref.path / "clip_vlm_config.json").is_file():
        raise UserError(f"{what} must be a clip-vlm checkpoint (a folder with clip_vlm_config.json), "
                        f"got {os.fspath(value)!r}")
    return ref.path


def _is_open_clip_name(name: str) -> bool:
    import open_clip

    return name in open_clip.list_models()


def resolve_config_ref(ref: str, checkpoint: Path | None, root: Path | None, what: str,
                       open_clip_names: bool = False) -> ModelRef:
    """A base model named by a checkpoint's config (a file that may have been downloaded): a hub id / model
    name, or a folder inside `root` (default: $CLIP_VLM_BASE_MODELS, else the folder holding the checkpoint),
    written relative to the checkpoint (the embedded model's are ../tiny_base/...): never an absolute path,
    nor one leading out of `root`. Given directly (`checkpoint` None: a flag, a recipe), the rule applies
    as to any value."""
    if checkpoint is None:
        return classify_ref(ref, what, open_clip_names=open_clip_names)
    root = Path(root or os.environ.get(BASE_MODELS_ENV) or checkpoint.parent).resolve()
    shown = f"checkpoint {checkpoint} names its {what} {ref!r}"
    rule = (f"a checkpoint may name a hub id, or a folder inside {root} (if you trust this checkpoint, name a "
            f"folder that holds its base models: --base-models-root DIR, the node's base_models_root "
            f"parameter, or {BASE_MODELS_ENV}=DIR)")
    if not isinstance(ref, str) or not ref.strip():
        raise UserError(f"{shown}, which is empty")
    if Path(ref).is_absolute() or ref.startswith(("~", "local-dir:")):
        raise UserError(f"{shown}, an absolute path; {rule}")
    lexical = os.path.relpath(os.path.normpath(checkpoint / ref), root)
    if lexical.split(os.sep)[0] == "..":
        raise UserError(f"{shown}, which leads out of {root}; {rule}")
    named = classify_ref(ref, what, base=checkpoint, open_clip_names=open_clip_names) \
        if not (checkpoint / Path(ref).parts[0]).exists() and not ref.startswith(".") else None
    if named is not None and named.kind != "folder":
        return named
    folder = resolve_inside(root, lexical, f"{shown}: folder", kind="folder").resolve()
    return ModelRef("folder", str(folder), folder)


_SNAPSHOTS: dict[tuple[str, tuple[str, ...], bool], Path] = {}


def hub_snapshot(repo_id: str, what: str, local_files_only: bool, files: list[str]) -> Path:
    """The local folder of hub model `repo_id` (its `files` patterns), from the Hugging Face cache, or
    downloaded when allowed. Not cached and offline (`local_files_only`, HF_HUB_OFFLINE=1) or with the hub
    out of reach: one sentence at once, saying how to get it."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or constants.HF_HUB_OFFLINE or \
        os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    key = (repo_id, tuple(files), offline)
    if key in _SNAPSHOTS and _SNAPSHOTS[key].is_dir():  # asked again in this process: no second request
        return _SNAPSHOTS[key]
    try:
        # One request, bounded by HF_HUB_ETAG_TIMEOUT (10 s) and never retried, says whether the hub answers;
        # if it does not, the cache alone is used (hf_hub_download would retry for most of a minute).
        cache_only = offline or not _hub_answers(repo_id)
        _SNAPSHOTS[key] = Path(snapshot_download(repo_id, allow_patterns=files, local_files_only=cache_only))
        return _SNAPSHOTS[key]
    except LocalEntryNotFoundError:
        reason = "(offline: --local-files-only or HF_HUB_OFFLINE)" if offline else "and the hub cannot be reached"
        raise UserError(
            f"{what} {repo_id!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) {reason}; "
            f"get it where the hub is reachable with `hf download {repo_id}` (into this cache, or set HF_HOME to "
            f"a copy of one), or name a local folder that holds it instead"
        ) from None
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError):
        raise UserError(f"{what} {repo_id!r} is not a model on the Hugging Face hub, or it is private or gated "
                        f"(`hf auth login` with an account that may read it)") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} {repo_id!r} cannot be downloaded from the Hugging Face hub ({first})") from None


def _hub_answers(repo_id: str) -> bool:
    """Whether the hub answers about `repo_id` within HF_HUB_ETAG_TIMEOUT: a repository it does not have
    (or that is gated) raises; a connection that fails or times out is False."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().repo_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError):
        raise
    except Exception:  # noqa: BLE001 - DNS, refused, timed out, proxy, 5xx: the hub is not answering now
        return False
    return True


def check_available(value: str | os.PathLike | None, local_files_only: bool, base_models_root: str | None = None,
                    what: str = "checkpoint") -> None:
    """Fail at once, before the model libraries are imported, when a checkpoint value names nothing, or
    names a Qwen2.5-VL hub id (itself, or as its config's base model) that is not cached and cannot be
    downloaded now. What passes is loaded (and checked whole) by SceneCaptioner.from_pretrained."""
    ref = classify_ref(value, what)
    if ref.kind == "hub":
        hub_snapshot(ref.value, "Qwen2.5-VL model", local_files_only, QWEN_HUB_FILES)
    if ref.kind != "folder" or not (ref.path / "clip_vlm_config.json").is_file():
        return
    raw = read_json_object(ref.path / "clip_vlm_config.json", "config", MAX_SMALL_JSON_BYTES)
    qwen = raw.get("qwen_model")
    if isinstance(qwen, str):
        root = Path(base_models_root) if base_models_root else None
        named = resolve_config_ref(qwen, ref.path.resolve(), root, "Qwen2.5-VL base model")
        if named.kind == "hub":
            hub_snapshot(named.value, "Qwen2.5-VL base model", local_files_only, QWEN_HUB_FILES)
