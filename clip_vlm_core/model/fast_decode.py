"""Greedy captioning with a static KV cache, each decode step replayed from one captured CUDA graph.

`generate()` in transformers spends a decode step mostly in Python and in launching ~1,000 small
kernels (36 layers, LoRA on seven projections each); on an H100 that is tens of milliseconds per token
for a 3B model whose weights take ~2 ms to read. Here the prefill runs once through Qwen's own forward
(vision tokens, 3-D rope positions, flash/SDPA causal attention), its keys and values are copied into a
preallocated `StaticCache`, and every later token is one replay of a graph that embeds the previous
token, runs the language model over the static cache, takes the arg-max and writes it back.

Exactly greedy decoding: the tokens equal `generate(do_sample=False, num_beams=1)`'s, with every
setting generate() would take from the model's generation config resolved the same way: several EOS
ids, `repetition_penalty` (transformers' rule: every token of the prompt, left padding excepted, and of
the caption so far has its logit divided by the penalty, or multiplied where negative) and
`min_new_tokens` (tests/test_fast_decode.py checks this against transformers). It takes the same
`DecodingConfig` generate() is given; any setting that changes tokens otherwise goes to generate()
(`greedy_decoding` says None). On CPU the same step runs eagerly, so the logic is tested without a GPU;
only the graph capture needs CUDA.

Graphs are kept per (batch size, cache length), the cache length rounded up to `cache_bucket` tokens
so prompts of slightly different lengths share one, at most `max_sessions` of them (each holds its KV
cache: ~0.6 GB for 4 full-resolution pairs at full size); `reset()` drops them (needed after anything that
changes which weights the step reads, e.g. turning LoRA adapters off).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clip_vlm_core.config import DecodingConfig

EOS_CHECK_EVERY = 8  # decode steps between looks (a GPU sync) at whether every caption has ended

# Generation-config settings that change greedy tokens or stop early, which this decoder does not do:
# when the model's config sets any of them, generate() decodes instead.
_UNSUPPORTED = ("guidance_scale", "sequence_bias", "encoder_repetition_penalty", "no_repeat_ngram_size",
                "encoder_no_repeat_ngram_size", "bad_words_ids", "min_length", "forced_bos_token_id",
                "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
                "suppress_tokens", "begin_suppress_tokens", "watermarking_config", "stop_strings", "max_time",
                "penalty_alpha", "dola_layers", "prompt_lookup_num_tokens", "num_return_sequences",
                "renormalize_logits", "low_memory")


def greedy_decoding(decoding: DecodingConfig, generation_config: Any = None) -> DecodingConfig | None:
    """`decoding` with what it leaves unset (EOS ids, repetition penalty) taken from this generation config
    as generate() takes it, when that is greedy decoding this decoder reproduces; None when it is anything
    else (beams, sampling, or n-gram blocking and the like in the model's config)."""
    from transformers import GenerationConfig

    if decoding.num_beams != 1 or decoding.do_sample:
        return None
    config = generation_config if generation_config is not None else GenerationConfig()
    defaults = GenerationConfig._get_default_generation_params()
    if any(getattr(config, name, None) not in (None, defaults.get(name)) for name in _UNSUPPORTED):
        return None
    eos = decoding.eos_token_ids
    if eos is None:
        own = config.eos_token_id
        eos = tuple([own] if isinstance(own, int) else own or ())
    if not eos:
        return None  # nothing to stop on
    penalty = decoding.repetition_penalty
    if penalty is None:
        penalty = config.repetition_penalty or 1.0
    return dataclasses.replace(decoding, eos_token_ids=tuple(eos), repetition_penalty=float(penalty))


def handles(decoding: DecodingConfig, generation_config: Any = None) -> bool:
    """True when this decoding over this generation config is greedy decoding this decoder reproduces exactly."""
    return greedy_decoding(decoding, generation_config) is not None


@dataclass
class _Session:
    """Everything one (batch, cache length) decode graph reads and writes, at fixed addresses."""

    cache: Any  # transformers.StaticCache
    tokens: torch.Tensor  # [B, 1] the last token (input of the next step, output of this one)
    offset: torch.Tensor  # [B, 1] rope position = cache position + offset (Qwen's rope delta - left padding)
    key_valid: torch.Tensor  # [B, L] False at left padding
    finished: torch.Tensor  # [B] bool
    min_tokens_left: torch.Tensor  # [B]-broadcast scalar: EOS is forbidden while > 0
    positions: torch.Tensor  # [L] 0..L-1
    eos_ids: torch.Tensor  # [E] every id that ends a caption
    seen: torch.Tensor | None  # [B, V + 1] tokens of the prompt and caption so far (repetition penalty)
    decoding: DecodingConfig  # greedy, resolved: ids and penalty are baked into the graph (the session's key)
    pad_token_id: int
    graph: torch.cuda.CUDAGraph | None = None
    captured: bool = False  # warm-up and capture done (off CUDA: warm-up only, no graph)


class StaticGreedyDecoder:
    def __init__(self, qwen: nn.Module, cuda_graphs: bool = True, cache_bucket: int = 256, max_sessions: int = 4) -> None:
        self.qwen = qwen  # Qwen2_5_VLForConditionalGeneration, possibly PEFT-wrapped
        self.cuda_graphs = cuda_graphs
        self.cache_bucket = cache_bucket
        self.max_sessions = max_sessions  # each holds a KV cache: the least recently used goes beyond this
        self._sessions: dict[tuple[int, int, DecodingConfig, int], _Session] = {}

    @property
    def _base(self) -> nn.Module:
        return self.qwen.get_base_model() if hasattr(self.qwen, "get_base_model") else self.qwen

    def reset(self) -> None:
        """Forget captured graphs and caches (they hold GPU memory and the weights' current form)."""
        self._sessions.clear()

    # -- public ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoding: DecodingConfig, pad_token_id: int,
        **prefill_kwargs: Any
    ) -> torch.Tensor:
        """New tokens [B, <= max_new_tokens] (rows that end early are padded with `pad_token_id`); `decoding`
        is greedy with every setting resolved (`greedy_decoding`)."""
        from transformers import DynamicCache

        batch, prompt_len = input_ids.shape
        max_new_tokens = decoding.max_new_tokens
        cache_len = -(-(prompt_len + max_new_tokens) // self.cache_bucket) * self.cache_bucket

        prefill_cache = DynamicCache(config=self._base.config)
        out = self.qwen(
            input_ids=input_ids,
            attention_mask=attention_mask,
            past_key_values=prefill_cache,
            use_cache=True,
            logits_to_keep=1,
            **prefill_kwargs,
        )
        vocab = out.logits.shape[-1]
        session = self._session((batch, cache_len, decoding, pad_token_id), prefill_cache, vocab)
        self._load_prefill(session, prefill_cache, input_ids, attention_mask)
        first = self._choose(out.logits[:, -1].float(), session)
        session.tokens.copy_(first[:, None])

        generated = [first]
        for step in range(1, max_new_tokens):
            if step % EOS_CHECK_EVERY == 0 and bool(session.finished.all()):
                break
            if session.graph is not None:
                session.graph.replay()
            else:
                self._step(session)
            generated.append(session.tokens[:, 0].clone())
        return torch.stack(generated, dim=1)

    # -- internals ------------------------------------------------------------------------------
    def _session(self, key: tuple[int, int, DecodingConfig, int], prefill_cache: Any, vocab: int) -> _Session:
        """The session for (batch, cache length, decoding, padding id): the ids and penalty are baked into its graph."""
        batch, cache_len, decoding, pad_token_id = key
        if key in self._sessions:
            self._sessions[key] = self._sessions.pop(key)  # most recently used last
            return self._sessions[key]
        while len(self._sessions) >= self.max_sessions:
            del self._sessions[next(iter(self._sessions))]
        from transformers import StaticCache

        layer0 = prefill_cache.layers[0]
        device = layer0.keys.device
        cache = StaticCache(config=self._base.config, max_cache_len=cache_len)
        cache.early_initialization(batch, layer0.keys.shape[1], layer0.keys.shape[-1], layer0.keys.dtype, device)
        penalised = decoding.repetition_penalty != 1.0
        session = _Session(
            cache=cache,
            tokens=torch.zeros(batch, 1, dtype=torch.long, device=device),
            offset=torch.zeros(batch, 1, dtype=torch.long, device=device),
            key_valid=torch.ones(batch, cache_len, dtype=torch.bool, device=device),
            finished=torch.zeros(batch, dtype=torch.bool, device=device),
            min_tokens_left=torch.zeros((), dtype=torch.long, device=device),
            positions=torch.arange(cache_len, device=device),
            eos_ids=torch.tensor(decoding.eos_token_ids, dtype=torch.long, device=device),
            # one column more than the vocabulary: left padding is marked there, where no logit reads it
            seen=torch.zeros(batch, vocab + 1, dtype=torch.bool, device=device) if penalised else None,
            decoding=decoding,
            pad_token_id=pad_token_id,
        )
        self._sessions[key] = session
        return session

    def _load_prefill(
        self, session: _Session, prefill_cache: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> None:
        """Copy the prompt's keys/values into the static cache and set the per-caption state."""
        prompt_len = attention_mask.shape[1]
        for static, dynamic in zip(session.cache.layers, prefill_cache.layers, strict=True):
            static.keys[:, :, :prompt_len].copy_(dynamic.keys)
            static.values[:, :, :prompt_len].copy_(dynamic.values)
            static.cumulative_length.fill_(prompt_len)
        padding = (attention_mask == 0).sum(dim=1, keepdim=True)
        session.offset.copy_(self._base.model.rope_deltas.to(session.offset.device) - padding)
        session.key_valid.fill_(True)
        session.key_valid[:, :prompt_len].copy_(attention_mask.bool())
        session.finished.fill_(False)
        session.min_tokens_left.fill_(session.decoding.min_new_tokens)
        if session.seen is not None:  # the prompt counts as seen, its left padding does not (as in transformers)
            session.seen.fill_(False)
            vocab = session.seen.shape[1] - 1
            session.seen.scatter_(1, input_ids.masked_fill(attention_mask == 0, vocab).clamp(max=vocab), True)
        if self.cuda_graphs and session.graph is None and not session.captured:
            self._capture(session, prompt_len)
            session.captured = True

    def _choose(self, logits: torch.Tensor, session: _Session) -> torch.Tensor:
        """Greedy choice after the repetition penalty, with every EOS forbidden before min_new_tokens;
        finished rows get padding. The order and arithmetic are transformers' logits processors'."""
        penalty = session.decoding.repetition_penalty
        if session.seen is not None:
            penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
            logits = torch.where(session.seen[:, : logits.shape[1]], penalised, logits)
        eos = session.eos_ids
        logits[:, eos] = torch.where(session.min_tokens_left > 0, float("-inf"), logits[:, eos])
        session.min_tokens_left.sub_(1)
        token = logits.argmax(dim=-1)
        token = torch.where(session.finished, session.pad_token_id, token)
        session.finished.logical_or_((token[:, None] == eos[None, :]).any(dim=1))
        if session.seen is not None:
            session.seen.scatter_(1, token[:, None], True)
        return token

    def _step(self, session: _Session) -> None:
        """One token: the previous token in, the next token written to `session.tokens`."""
        base = self._base
        position = session.cache.layers[0].cumulative_length  # before this step's update
        batch = session.tokens.shape[0]
        rope_positions = (position + session.offset).view(1, batch, 1).expand(3, batch, 1)
        mask = session.key_valid & (session.positions <= position)
        hidden = base.model.language_model(
            input_ids=session.tokens,
            attention_mask={"full_attention": mask[:, None, None, :]},
            position_ids=rope_positions,
            past_key_values=session.cache,
            use_cache=True,
        ).last_hidden_state
        logits = base.lm_head(hidden[:, -1]).float()
        session.tokens.copy_(self._choose(logits, session)[:, None])

    def _capture(self, session: _Session, prompt_len: int) -> None:
        """Record `_step` as a CUDA graph. Warm-up steps run for real, so the state is restored after.

        Off CUDA the warm-up and rewind still run (and no graph is made), so they are tested anywhere.
        """
        saved = (session.tokens.clone(), session.finished.clone(), session.min_tokens_left.clone(),
                 session.seen.clone() if session.seen is not None else None)
        on_cuda = session.tokens.is_cuda
        stream = torch.cuda.Stream() if on_cuda else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            for _ in range(2):  # kernels choose their algorithms and workspaces outside the capture
                self._rewind(session, prompt_len, saved)
                self._step(session)
        if stream is not None:
            torch.cuda.current_stream().wait_stream(stream)
        self._rewind(session, prompt_len, saved)
        if not on_cuda:
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(session)
        self._rewind(session, prompt_len, saved)
        session.graph = graph

    @staticmethod
    def _rewind(session: _Session, prompt_len: int, saved: tuple[torch.Tensor | None, ...]) -> None:
        for layer in session.cache.layers:
            layer.cumulative_length.fill_(prompt_len)
        session.tokens.copy_(saved[0])
        session.finished.copy_(saved[1])
        session.min_tokens_left.copy_(saved[2])
        if session.seen is not None:
            session.seen.copy_(saved[3])
