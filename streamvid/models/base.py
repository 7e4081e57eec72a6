"""What every Video-LLM adapter shares: prompts, the prefill container, generation."""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from streamvid.clock import format_clock
from streamvid.errors import BudgetError, ConfigError, EmptyInputError, ShapeError
from streamvid.types import CompressedSegment, TokenGrid

__all__ = [
    "CHATML",
    "Capabilities",
    "Prefill",
    "Generation",
    "VideoLLM",
    "SegmentLike",
    "POSITION_LAYOUTS",
    "default_device_dtype",
    "check_frames",
    "check_position_layout",
]

_PLACEHOLDER = "\u2063STREAMVID_VIDEO\u2063"  # never produced by a user; split point of the prompt
# the template used when a checkpoint's tokenizer has none (Qwen-family checkpoints speak ChatML)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# how kept visual tokens are numbered in the prompt (see docs/algorithms.md, Positions):
# "original": each keeps its index in the uncompressed layout of the segments (gaps kept);
# "contiguous": numbered 0..L-1 as laid out
POSITION_LAYOUTS = ("original", "contiguous")


class SegmentLike(Protocol):
    """What prompt layout needs of a segment: its start time and token count."""

    start_time: float

    @property
    def budget(self) -> int: ...


@dataclass(frozen=True)
class Capabilities:
    """What an adapter supports, declared once (callers branch on these, never on names).

    positions: "1d" (contiguous) or "mrope" (3-D temporal/height/width positions).
    video_end_embedding: a learned embedding closes the visual block (LLaVA-OV newline).
    frames_per_token_step: frames folded into one temporal token (Qwen2.5-VL: 2).
    saliency: where the saliency map comes from.
    position_layouts: the ``position_layout`` values :meth:`VideoLLM.build_prefill` accepts
        (the first is the default).
    score_maps: the :attr:`TokenGrid.scores` maps ``encode(..., attention_scores=True)`` can fill.
    deepstack: the tower also gives features of earlier vision layers that are added into the
        first LLM layers at the visual positions (Qwen3-VL); compression carries them.
    timestamps: how the prompt tells the model when a frame was: "none", "temporal-position"
        (the M-RoPE temporal index follows seconds) or "text" (a "<t seconds>" text before
        each kept frame, as Qwen3-VL and Qwen3.5 do).
    attention: "full", or "hybrid" (linear-attention layers beside full ones: prefill cost grows
        linearly in the prompt for those layers, so compression saves less of it).
    """

    positions: Literal["1d", "mrope"]
    video_end_embedding: bool
    frames_per_token_step: int
    saliency: str
    position_layouts: tuple[str, ...] = ("original",)
    score_maps: tuple[str, ...] = ()
    deepstack: bool = False
    timestamps: Literal["none", "temporal-position", "text"] = "none"
    attention: Literal["full", "hybrid"] = "full"


@dataclass
class Prefill:
    """Everything the language model takes for the prompt.

    inputs_embeds: [1, L, H]; attention_mask: [1, L]; position_ids: [1, L] (1-D) or
    [3, 1, L] (M-RoPE); visual_tokens: how many of the L are video tokens;
    segment_spans: (start, stop) of each segment's tokens in the sequence.
    position_layout: how the visual tokens were numbered ("original" or "contiguous").
    saliency_source: which saliency this adapter's encoder runs ("siglip-head",
    "vision-feature-norm", "merged-token-norm"), recorded with every answer.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    visual_tokens: int
    segment_spans: list[tuple[int, int]] = field(default_factory=list)
    assemble_seconds: float = 0.0
    position_layout: str = "original"
    saliency_source: str = "none"

    @property
    def length(self) -> int:
        return self.inputs_embeds.shape[1]


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    stopped_by: Literal["eos", "length"]


def default_device_dtype(
    device: str | torch.device | None, dtype: torch.dtype | str | None
) -> tuple[torch.device, torch.dtype]:
    """CUDA bf16 when a GPU exists, CPU fp32 otherwise; either can be overridden."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    return dev, dtype


def check_frames(frames: Any, timestamps: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [T, H, W, 3] frames (numpy or torch) and [T] seconds -> tensors, or a ShapeError."""
    f = torch.from_numpy(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ShapeError(f"frames must be uint8 [T, H, W, 3] RGB, got shape {list(f.shape)}")
    if f.dtype != torch.uint8:
        raise ShapeError(f"frames must be uint8 RGB (0-255), got {f.dtype}; convert with .astype(np.uint8)")
    if f.shape[0] == 0:
        raise EmptyInputError("no frames to encode")
    t = torch.as_tensor(np.asarray(timestamps), dtype=torch.float64)
    if t.shape != (f.shape[0],):
        raise ShapeError(f"give one timestamp per frame: {f.shape[0]} frames, timestamps {list(t.shape)}")
    return f, t


def check_position_layout(value: Any, accepted: Sequence[str] = POSITION_LAYOUTS) -> str:
    """A ``position_layout`` value, or a ConfigError listing the accepted ones."""
    if value not in accepted:
        choices = ", ".join(repr(a) for a in accepted)
        raise ConfigError(f"position_layout must be one of {choices}, got {value!r}")
    return str(value)


def read_processor_config(name_or_path: str) -> dict[str, Any]:
    """Merged preprocessor/video processor JSON of a checkpoint ({} when it has none)."""
    from transformers.utils import cached_file

    merged: dict[str, Any] = {}
    for fname in ("preprocessor_config.json", "video_preprocessor_config.json"):
        try:
            path = cached_file(name_or_path, fname, _raise_exceptions_for_missing_entries=False)
        except OSError:
            path = None
        if path:
            with open(path) as fh:
                merged.update(json.load(fh))
    return merged


class VideoLLM(ABC):
    """A Video-LLM behind stages you can call alone: encode -> (compress) -> prefill -> generate.

    Options (also keyword arguments of :meth:`from_pretrained` and ``load_adapter``):

    - ``saliency_head``: where a SigLIP pooling head for saliency comes from, for adapters
      whose tower needs one re-attached: ``"auto"`` (the adapter's default), a hub name or
      local directory, or ``None`` / ``"none"`` for the fallback (see the adapter).
    - ``attention_scores``: whether :meth:`encode` fills the attention maps of
      ``capabilities.score_maps`` by default (opt-in: it runs the tower with eager attention).
    - ``position_layout``: default numbering of visual tokens in :meth:`build_prefill`, one of
      ``capabilities.position_layouts``.
    """

    capabilities: ClassVar[Capabilities]
    model_class: ClassVar[str]  # transformers class name

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        processor_config: dict[str, Any],
        *,
        saliency_head: str | None = "auto",
        attention_scores: bool = False,
        position_layout: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor_config = processor_config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        # one model, many threads (ingest and questions): every stage that runs the model holds this
        self.lock = threading.RLock()
        layouts = self.capabilities.position_layouts
        layout = layouts[0] if position_layout is None else position_layout
        self.position_layout = check_position_layout(layout, layouts)
        self.attention_scores = bool(attention_scores)
        self._setup_saliency(saliency_head)

    def _setup_saliency(self, saliency_head: str | None) -> None:
        """Adapters whose tower takes a re-attached pooling head override this."""
        if saliency_head is not None and str(saliency_head).strip().lower() not in ("auto", "none", "off", ""):
            raise ConfigError(
                f"{type(self).__name__} has no SigLIP pooling head to re-attach (its saliency: "
                f"{self.capabilities.saliency}); leave saliency_head unset"
            )

    @property
    def saliency_source(self) -> str:
        """Which saliency :meth:`encode` computes (recorded in every TokenGrid and Prefill)."""
        return "none"

    @property
    def hidden_size(self) -> int:
        """Width D of the visual tokens this adapter makes (the LLM's embedding width)."""
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def context_length(self) -> int | None:
        """The language model's context window in tokens (None when the config does not say)."""
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(limit) if limit else None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        config: Any = None,
        **options: Any,
    ) -> VideoLLM:
        """Load weights, tokenizer and preprocessing values from a hub name or local path.

        ``options``: ``saliency_head``, ``attention_scores``, ``position_layout`` (see the class).
        """
        import transformers

        dev, dt = default_device_dtype(device, dtype)
        model_cls = getattr(transformers, cls.model_class)
        kwargs: dict[str, Any] = {"dtype": dt}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        if config is not None:
            kwargs["config"] = config
        model = model_cls.from_pretrained(name_or_path, **kwargs).to(dev)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_path)
        return cls(model, tokenizer, read_processor_config(name_or_path), **options)

    # -- stage 1: encode ---------------------------------------------------------------

    def encode(
        self,
        frames: Any,
        timestamps: Any,
        *,
        batch_size: int | None = None,
        attention_scores: bool | None = None,
    ) -> TokenGrid:
        """uint8 [T, H, W, 3] frames + [T] seconds -> visual tokens [T', h, w, D] with saliency.

        Holds :attr:`lock` while the tower runs; ``batch_size`` frames go through it at once
        (default: the adapter's own). ``attention_scores`` (default: the adapter's option)
        also fills the ``capabilities.score_maps`` attention maps in ``TokenGrid.scores``
        where the tower can return attention weights (left out otherwise).
        """
        frames, times = check_frames(frames, timestamps)
        scores = self.attention_scores if attention_scores is None else bool(attention_scores)
        with self.lock, torch.inference_mode():
            return self._encode(frames, times, batch_size or self.encode_batch_size, scores)

    encode_batch_size: ClassVar[int] = 8

    @abstractmethod
    def _encode(self, frames: torch.Tensor, times: torch.Tensor, batch_size: int, attention_scores: bool) -> TokenGrid:
        """Checked uint8 [T, H, W, 3] frames and float64 [T] seconds -> TokenGrid."""

    # -- stage 2: prefill -----------------------------------------------------------------

    def prompt_parts(self, question: str, history: Sequence[tuple[str, str]] = ()) -> tuple[list[int], list[int]]:
        """Token ids before and after the video for a chat turn (the checkpoint's chat template,
        ChatML when it has none). ``history``: earlier (question, answer) turns.

        Memoised per adapter for the last few prompts: a question measures its prompt before it
        builds it, and rendering the template and tokenizing costs more than the lookup."""
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("the question is empty; ask something")
        memo_key = (question, tuple(tuple(turn) for turn in history))
        cache = self.__dict__.setdefault("_prompt_cache", {})
        if memo_key not in cache:
            if len(cache) >= 64:
                cache.clear()
            cache[memo_key] = self._prompt_parts(question, history)
        before, after = cache[memo_key]
        return list(before), list(after)

    def _prompt_parts(self, question: str, history: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
        messages: list[dict[str, str]] = []
        for q, a in history:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": f"{_PLACEHOLDER}\n{question}"})
        template = self.tokenizer.chat_template or CHATML
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        before, after = text.split(_PLACEHOLDER)
        return self._ids(before), self._ids(after)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def timestamp_ids(self, segment: SegmentLike) -> list[int]:
        """The short text put before each segment: its start time, '[m:ss] ' (or '[h:mm:ss] ').

        Memoised per adapter: a budgeted question measures the layout of dozens of segments."""
        text = f"[{format_clock(segment.start_time)}] "
        cache = self.__dict__.setdefault("_timestamp_cache", {})
        if text not in cache:
            if len(cache) >= 65536:
                cache.clear()
            cache[text] = self._ids(text)
        return list(cache[text])

    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """[n] token ids -> [n, H] input embeddings."""
        ids_t = torch.tensor(list(ids), dtype=torch.long, device=self.device)
        return self.model.get_input_embeddings()(ids_t)

    @abstractmethod
    def _assemble(
        self,
        before: list[int],
        after: list[int],
        segments: Sequence[CompressedSegment],
        timestamps: bool,
        position_layout: str,
    ) -> Prefill:
        """Lay out text and segment tokens; compute positions (``position_layout`` is checked)."""

    @abstractmethod
    def visual_block_length(self, segments: Sequence[SegmentLike], timestamps: bool = True) -> int:
        """Tokens the video part of the prompt takes for these segments (time texts, markers, tokens)."""

    def prefill_length(
        self,
        question: str,
        segments: Sequence[SegmentLike],
        *,
        timestamps: bool = True,
        history: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Length of the prompt :meth:`build_prefill` would build, without building it.

        ``segments`` only need ``start_time`` and ``budget``, so a caller can plan how many
        tokens each segment may keep before merging anything.
        """
        before, after = self.prompt_parts(question, history)
        return len(before) + len(after) + self.visual_block_length(segments, timestamps)

    def build_prefill(
        self,
        question: str,
        segments: Sequence[CompressedSegment],
        *,
        max_prefill_tokens: int | None = None,
        timestamps: bool = True,
        history: Sequence[tuple[str, str]] = (),
        position_layout: str | None = None,
    ) -> Prefill:
        """Question + chat template + compressed segments (put in time order) -> Prefill.

        A short timestamp text precedes each segment (``timestamps=False`` drops it).
        With ``max_prefill_tokens``, a prompt that does not fit raises BudgetError.
        ``position_layout`` (default: the adapter's option): ``"original"`` numbers every
        token by its index in the uncompressed layout of these segments (gaps kept),
        ``"contiguous"`` numbers them as laid out; see ``capabilities.position_layouts``.
        """
        start = time.perf_counter()
        layout = check_position_layout(
            self.position_layout if position_layout is None else position_layout, self.capabilities.position_layouts
        )
        if not segments:
            raise EmptyInputError("no video segments to answer from; ingest something first")
        dims = {s.dim for s in segments}
        hidden = self.model.get_input_embeddings().weight.shape[1]
        if dims != {hidden}:
            raise ShapeError(f"segment tokens have width {sorted(dims)} but this model takes {hidden}")
        ordered = sorted(segments, key=lambda s: (s.start_time, s.stream_id, s.segment_index))
        before, after = self.prompt_parts(question, history)
        prefill = self._assemble(before, after, ordered, timestamps, layout)
        prefill.position_layout = layout
        prefill.saliency_source = self.saliency_source
        if max_prefill_tokens is not None and prefill.length > max_prefill_tokens:
            raise BudgetError(
                f"the prompt needs {prefill.length} tokens ({prefill.visual_tokens} visual) but the "
                f"prefill budget is {max_prefill_tokens}; use fewer segments, a lower ratio or a larger budget"
            )
        prefill.assemble_seconds = time.perf_counter() - start
        return prefill

    # -- stage 3: generate ------------------------------------------------------------------

    def run_prefill(self, prefill: Prefill) -> Any:
        """One forward pass over the prompt with a KV cache; logits for the last position only.

        This is exactly the prefill that generation runs (benchmarks time it alone).
        """
        with self.lock, torch.inference_mode():
            return self.model(
                inputs_embeds=prefill.inputs_embeds,
                attention_mask=prefill.attention_mask,
                position_ids=prefill.position_ids,
                use_cache=True,
                logits_to_keep=1,
            )

    def next_positions(self, prefill: Prefill, step: int) -> torch.Tensor:
        """Position ids of the step-th generated token: the prompt's last (largest) position
        + 1 + step, for either position layout."""
        nxt = int(prefill.position_ids.max()) + 1 + step
        pos = torch.tensor([[nxt]], device=self.device)
        return pos.expand(3, 1, 1) if self.capabilities.positions == "mrope" else pos

    def stream(
        self,
        prefill: Prefill,
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> Iterator[int]:
        """Generate token ids one by one (greedy unless ``do_sample``), stopping at EOS.

        ``timings`` (if given) receives prefill_seconds and decode_seconds.
        """
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        eos = _eos_ids(self.model, self.tokenizer)
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(seed)
        mask = prefill.attention_mask
        with self.lock, torch.inference_mode():  # released when the generator finishes or is closed
            t0 = time.perf_counter()
            out = self.run_prefill(prefill)
            logits = out.logits[:, -1].float()
            _sync(self.device)
            if timings is not None:
                timings["prefill_seconds"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            past = out.past_key_values
            for step in range(max_new_tokens):
                token = _pick(logits, do_sample, temperature, top_p, gen)
                if timings is not None:
                    timings["decode_seconds"] = time.perf_counter() - t1
                yield token
                if token in eos or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
                out = self.model(
                    inputs_embeds=self.embed([token])[None],
                    attention_mask=mask,
                    position_ids=self.next_positions(prefill, step),
                    past_key_values=past,
                    use_cache=True,
                )
                past = out.past_key_values
                logits = out.logits[:, -1].float()
            _sync(self.device)
            if timings is not None:
                timings["decode_seconds"] = time.perf_counter() - t1

    def generate(
        self,
        prefill: Prefill,
        *,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Answer text, token ids and timings. ``on_text`` receives text pieces as they decode."""
        timings: dict[str, float] = {}
        eos = _eos_ids(self.model, self.tokenizer)
        ids: list[int] = []
        shown = ""
        for token in self.stream(
            prefill,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            timings=timings,
        ):
            ids.append(token)
            if on_text is not None:
                # byte-level BPE can rewrite the last characters as more bytes arrive: only text up
                # to the last whitespace is final; the rest is sent at the end
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                stable = max(text.rfind(" "), text.rfind("\n")) + 1
                if stable > len(shown):
                    on_text(text[len(shown) : stable])
                    shown = text[:stable]
        final = self.tokenizer.decode(ids, skip_special_tokens=True)
        if on_text is not None and len(final) > len(shown):
            on_text(final[len(shown) :])
        return Generation(
            text=final,
            token_ids=ids,
            prompt_tokens=prefill.length,
            prefill_seconds=timings.get("prefill_seconds", 0.0),
            decode_seconds=timings.get("decode_seconds", 0.0),
            stopped_by="eos" if ids and ids[-1] in eos else "length",
        )


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            ids |= set(value) if isinstance(value, (list, tuple)) else {int(value)}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """logits: [1, V] -> one token id."""
    if not do_sample:
        return int(logits.argmax(dim=-1))
    probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1)[0]
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
