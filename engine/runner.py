"""The model runner: batched audio encoding and decoder forwards over slots.

The runner holds device memory indexed by slot (decoder key/values, audio
embeddings, conv outputs of each slot's unfinished encoder window) but no
stream state: each StepPlan says which slot every row uses and which
positions are valid (engine/batch.py). It drives the checkpoint's own
weights with batching the HF forward does not do:

* encoder: every 100-frame chunk of every stream goes through the conv stack
  in one call; the transformer layers run over the tokens packed, and only
  attention pads, one row per window (800 frames) (engine/encoder.py);
* decoder: rows of any length in one forward (a step's prefill beside other
  rows' single decoded tokens). Token-wise work (norms, projections, MLP)
  runs over the rows' tokens flattened, so nothing is padded there; only
  attention pads, within a group of rows of similar length. q/k/v and
  gate/up projections are fused into one matrix each (one GEMM instead of
  three or two: the tiny model is bound by per-op overhead);
* alignment: for the selected heads only, the raw attention scores of each
  row's last query over its audio positions are reduced to an argmax inside
  the same forward.

tests/test_runner.py checks both forwards against the HF modules.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.batch import EncodeRequest, ForwardBatch, RunnerOutput, StepPlan
from engine.encoder import WindowEncoder
from engine.heads import Head
from engine.loader import LoadedModel
from engine.shapes import padded
from engine.timing import AudioGrid


@dataclass(frozen=True)
class ForwardOut:
    """Greedy next token and alignment-head argmax (audio token index) per row."""

    tokens: np.ndarray  # int64[B]
    frames: np.ndarray  # int64[B, n_heads]: audio token index, relative to audio_pos
    logits: torch.Tensor | None = None  # float32[B, vocab], only when asked for (tests, tools)
    # int64[B, T, layers, heads]: every head at every new position (heads detection only).
    probe: np.ndarray | None = None


@dataclass(frozen=True)
class _Layer:
    """One decoder layer's weights, fused where the math allows."""

    norm_in: torch.Tensor
    qkv: torch.Tensor  # [(H + 2 KV) * d, hidden]
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    out: torch.Tensor
    norm_post: torch.Tensor
    gate_up: torch.Tensor  # [2 * ffn, hidden]
    down: torch.Tensor


@dataclass(frozen=True)
class _Group:
    """Rows attended together: token indices into the flat batch and their padded places."""

    rows: torch.Tensor  # [G] row indices into the batch
    slots: torch.Tensor  # [G] their slots
    tokens: torch.Tensor  # [T_g] flat token indices
    row_of: torch.Tensor  # [T_g] local row of each token
    step_of: torch.Tensor  # [T_g] place of each token in its row
    last: torch.Tensor  # [G] local place of each row's last token
    width: int  # tokens of the longest row
    # [G, 1, queries, keys] additive causal mask. Queries and keys are padded to the ladder of
    # engine/shapes.py: bfloat16 attention on CPU builds a kernel for every (queries, keys)
    # block shape it meets and keeps them all (1300 after 3000 forwards of real streams, and
    # counting: the engine grew ~275 MB/hour). Padded queries are zeros whose output is never
    # read; padded keys sit after every real query's position, so the mask blocks them.
    mask: torch.Tensor
    audio_pos: torch.Tensor  # [G]
    n_audio: torch.Tensor  # [G]


class ModelRunner:
    """Stateless over batches; owns the slot-indexed caches on the device."""

    def __init__(
        self, model: LoadedModel, heads: list[Head], n_slots: int, max_len: int, max_audio_tokens: int
    ) -> None:
        spec = model.spec
        self.model = model
        self.thinker = model.thinker
        self.device, self.dtype = model.device, model.dtype
        self.grid = AudioGrid.from_spec(spec.n_window, spec.n_window_infer)
        self.encoder = WindowEncoder(self.thinker.audio_tower, self.grid)
        self.max_len, self.max_audio_tokens = max_len, max_audio_tokens
        self.n_heads, self.n_kv, self.head_dim = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.groups = spec.n_heads // spec.n_kv_heads
        # [layers, slots, kv heads, positions, head dim]: a row's keys are one contiguous block per head.
        kv_shape = (spec.n_layers, n_slots, spec.n_kv_heads, max_len, spec.head_dim)
        self.k_cache = torch.zeros(kv_shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(kv_shape, dtype=self.dtype, device=self.device)
        self.audio = torch.zeros((n_slots, max_audio_tokens, spec.hidden), dtype=self.dtype, device=self.device)
        # Conv outputs of the complete chunks of each slot's unfinished encoder window.
        tower = self.thinker.audio_tower
        per_window = self.grid.window_frames // self.grid.chunk_frames
        self.chunk_cache = torch.zeros(
            (n_slots, per_window, self.grid.tokens_per_chunk, tower.conv_out.out_features),
            dtype=self.dtype,
            device=self.device,
        )
        self._layers = [_fuse(layer) for layer in self.thinker.model.layers]
        text = self.thinker.config.text_config
        self._eps = text.rms_norm_eps
        self._scale = self.thinker.model.layers[0].self_attn.scaling
        self._embed = self.thinker.model.embed_tokens.weight
        self._norm = self.thinker.model.norm.weight
        self._lm_head = self.thinker.lm_head.weight
        self._cos, self._sin = self._rope_tables(max_len)
        self.heads = list(heads)
        # layer -> (query head indices, output columns), so each layer captures its heads at once.
        align: dict[int, tuple[list[int], list[int]]] = {}
        for column, (layer, head) in enumerate(self.heads):
            idx, cols = align.setdefault(layer, ([], []))
            idx.append(head)
            cols.append(column)
        self._align = {l: (torch.tensor(idx, device=self.device), cols) for l, (idx, cols) in align.items()}

    def _rope_tables(self, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [max_len, head_dim] of every position, from the checkpoint's own rotary module."""
        positions = torch.arange(max_len, device=self.device)[None]
        probe = torch.zeros((1, max_len, 1), dtype=self.dtype, device=self.device)
        with torch.inference_mode():
            cos, sin = self.thinker.model.rotary_emb(probe, positions)
        return cos[0].clone(), sin[0].clone()

    # --------------------------------------------------------------- one step
    def execute(self, plan: StepPlan) -> RunnerOutput:
        """Encode the plan's audio into its slots, then run its forward."""
        started = time.perf_counter()
        for move in plan.moves:
            self.drop_audio(move.slot, move.n_drop, move.n_keep)
        if plan.encode:
            for request, embeds in zip(plan.encode, self.encode(plan.encode)):
                self.store_audio(request.slot, request.store_at, embeds)
            self.synchronize()
        encoded = time.perf_counter()
        if plan.forward is None:
            empty = np.zeros(0, np.int64)
            return RunnerOutput(empty, np.zeros((0, len(self.heads)), np.int64), encoded - started, 0.0)
        out = self.forward(plan.forward)
        return RunnerOutput(out.tokens, out.frames, encoded - started, time.perf_counter() - encoded)

    # ----------------------------------------------------------------- encoder
    @torch.inference_mode()
    def encode(self, requests: list[EncodeRequest]) -> list[torch.Tensor]:
        """Embeddings [n_tokens, hidden] of each request's audio, in one batch.

        The conv stack is local to each 100-frame chunk, so only chunks not in
        the slot's chunk cache go through it; the complete chunks of each
        request's last, incomplete window are then cached for the next call.
        """
        layout = self.encoder.layout([r.mel for r in requests])
        todo, cached, index = [], [], 0
        for request in requests:
            n_chunks = -(-request.mel.shape[1] // self.grid.chunk_frames)
            for c in range(n_chunks):
                (cached if c < request.cached_chunks else todo).append((index + c, request.slot, c))
            index += n_chunks
        tower = self.thinker.audio_tower
        x = torch.empty(
            (len(layout.pieces), self.grid.tokens_per_chunk, tower.conv_out.out_features),
            dtype=self.dtype,
            device=self.device,
        )
        if todo:
            x[[i for i, _, _ in todo]] = self.encoder.conv([layout.pieces[i] for i, _, _ in todo])
        if cached:
            x[[i for i, _, _ in cached]] = self.chunk_cache[[s for _, s, _ in cached], [c for _, _, c in cached]]
        self._cache_open_window(requests, x)
        return self.encoder.windows(x, layout)

    def _cache_open_window(self, requests: list[EncodeRequest], x: torch.Tensor) -> None:
        """Store conv outputs of the complete chunks of each request's unfinished last window."""
        chunk, window = self.grid.chunk_frames, self.grid.window_frames
        first = 0
        for request in requests:
            frames = request.mel.shape[1]
            complete = (frames % window) // chunk
            if request.slot >= 0 and complete:
                start = first + (frames // window) * (window // chunk)
                self.chunk_cache[request.slot, :complete] = x[start : start + complete]
            first += -(-frames // chunk)

    def synchronize(self) -> None:
        """Wait for queued device work (so step timings attribute it correctly)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------ audio slots
    def store_audio(self, slot: int, start: int, embeds: torch.Tensor) -> None:
        """Write audio embeddings of `slot` from token `start` on."""
        end = start + embeds.shape[0]
        if end > self.max_audio_tokens:
            raise ValueError(f"slot {slot}: {end} audio tokens exceed the pool's {self.max_audio_tokens}")
        self.audio[slot, start:end] = embeds.to(self.dtype)

    def drop_audio(self, slot: int, n_drop: int, n_keep: int) -> None:
        """Forget the first `n_drop` audio tokens of `slot`, moving the next `n_keep` to the front."""
        self.audio[slot, :n_keep] = self.audio[slot, n_drop : n_drop + n_keep].clone()

    # ----------------------------------------------------------------- decoder
    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, want_logits: bool = False, probe: bool = False) -> ForwardOut:
        """Compute the batch's new positions, update caches, return next tokens.

        probe: also return the audio argmax of every head at every position.
        """
        ends = batch.start + batch.lengths
        if int(ends.max()) > self.max_len:
            raise ValueError(f"prompt of {int(ends.max())} tokens exceeds {self.max_len}")
        dev, n_rows = self.device, len(batch)
        offsets = np.concatenate([[0], np.cumsum(batch.lengths)[:-1]])
        row_of = np.repeat(np.arange(n_rows), batch.lengths)
        pos_np = batch.start[row_of] + np.arange(len(batch.ids)) - offsets[row_of]
        pos = torch.from_numpy(pos_np).to(dev)
        slots = torch.from_numpy(batch.slots).to(dev)
        token_slot = slots[torch.from_numpy(row_of).to(dev)]
        # Token-wise work runs over a padded number of rows (engine/shapes.py): padding rows are
        # zeros at position 0, never written to a cache nor attended to.
        n_tokens, n_rows_padded = len(batch.ids), padded(len(batch.ids))
        x = F.pad(self._embed_tokens(batch, pos_np, row_of, token_slot, pos), (0, 0, 0, n_rows_padded - n_tokens))
        pos_padded = F.pad(pos, (0, n_rows_padded - n_tokens))
        cos, sin = self._cos[pos_padded][:, None], self._sin[pos_padded][:, None]
        groups = [self._group(batch, rows, offsets, probe) for rows in _length_groups(batch.lengths, probe)]
        frames = torch.zeros((n_rows, len(self.heads)), dtype=torch.long, device=dev)
        n_layers = len(self._layers)
        probed = torch.zeros((n_rows, int(batch.lengths.max()), n_layers, self.n_heads), dtype=torch.long,
                             device=dev) if probe else None
        h_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        for index, layer in enumerate(self._layers):
            h = self._rms(x, layer.norm_in)
            q, k, v = F.linear(h, layer.qkv).split([h_dim, kv_dim, kv_dim], dim=-1)
            q = self._rms(q.view(n_rows_padded, self.n_heads, self.head_dim), layer.q_norm)
            k = self._rms(k.view(n_rows_padded, self.n_kv, self.head_dim), layer.k_norm)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self.k_cache[index][token_slot, :, pos] = k[:n_tokens]
            self.v_cache[index][token_slot, :, pos] = v[:n_tokens].view(n_tokens, self.n_kv, self.head_dim)
            attended = torch.zeros_like(q)
            for group in groups:
                attended[group.tokens] = self._attend(index, q, group, frames, probed)
            x = x + F.linear(attended.view(n_rows_padded, h_dim), layer.out)
            gate, up = F.linear(self._rms(x, layer.norm_post), layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        last = torch.from_numpy(offsets + batch.lengths - 1).to(dev)
        final = F.pad(self._rms(x[last], self._norm), (0, 0, 0, padded(n_rows) - n_rows))
        logits = F.linear(final, self._lm_head)[:n_rows].float()
        return ForwardOut(
            tokens=logits.argmax(-1).cpu().numpy(),
            frames=frames.cpu().numpy(),
            logits=logits if want_logits else None,
            probe=probed.cpu().numpy() if probed is not None else None,
        )

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Qwen3's RMSNorm: normalised in float32, scaled in the model's dtype."""
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self._eps)
        return weight * normed.to(x.dtype)

    def _embed_tokens(self, batch: ForwardBatch, pos_np: np.ndarray, row_of: np.ndarray, token_slot: torch.Tensor,
                      pos: torch.Tensor) -> torch.Tensor:
        """Token embeddings with audio placeholders replaced by the slot's audio embeddings."""
        x = F.embedding(torch.from_numpy(batch.ids).to(self.device), self._embed)
        index = pos_np - batch.audio_pos[row_of]
        is_audio = (index >= 0) & (index < batch.n_audio[row_of])
        if is_audio.any():
            where = torch.from_numpy(np.flatnonzero(is_audio)).to(self.device)
            x[where] = self.audio[token_slot[where], torch.from_numpy(index[is_audio]).to(self.device)]
        return x

    def _group(self, batch: ForwardBatch, rows: np.ndarray, offsets: np.ndarray, probe: bool) -> _Group:
        """Index tensors and the causal mask of one attention group (shared by every layer)."""
        dev = self.device
        lengths = batch.lengths[rows]
        width = int(lengths.max())
        # A group of single tokens (decoding) keeps its one query: that shape is always the same.
        queries = width if width == 1 else padded(width)
        kv_len = min(padded(int((batch.start[rows] + lengths).max())), self.max_len)
        row_of = np.repeat(np.arange(len(rows)), lengths)
        step_of = np.concatenate([np.arange(n) for n in lengths])
        tokens = offsets[rows][row_of] + step_of
        # Query j of a row sits at position start + j; it sees keys up to there.
        query_pos = batch.start[rows][:, None] + np.arange(queries)[None, :]
        blocked = np.arange(kv_len)[None, None, :] > query_pos[:, :, None]
        mask = torch.zeros((len(rows), 1, queries, kv_len), dtype=self.dtype, device=dev)
        mask.masked_fill_(torch.from_numpy(blocked[:, None]).to(dev), float("-inf"))
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)  # noqa: E731
        return _Group(
            rows=as_tensor(rows), slots=as_tensor(batch.slots[rows]), tokens=as_tensor(tokens), row_of=as_tensor(row_of), step_of=as_tensor(step_of),
            last=as_tensor(lengths - 1), width=width, mask=mask,
            audio_pos=as_tensor(batch.audio_pos[rows]), n_audio=as_tensor(batch.n_audio[rows]),
        )

    def _attend(self, layer: int, q: torch.Tensor, group: _Group, frames: torch.Tensor,
                probed: torch.Tensor | None) -> torch.Tensor:
        """Attention output [T_g, heads, head_dim] of one group's tokens; fills its rows' alignment frames."""
        n, _, queries, kv_len = group.mask.shape
        rows_q = q.new_zeros((n, queries, self.n_heads, self.head_dim))
        rows_q[group.row_of, group.step_of] = q[group.tokens]
        rows_q = rows_q.transpose(1, 2)
        keys = self.k_cache[layer][group.slots, :, :kv_len]
        values = self.v_cache[layer][group.slots, :, :kv_len]
        out = F.scaled_dot_product_attention(rows_q, keys, values, attn_mask=group.mask, scale=self._scale,
                                             enable_gqa=True)
        if layer in self._align:
            head_idx, columns = self._align[layer]
            q_last = rows_q[torch.arange(n, device=q.device), :, group.last][:, head_idx, None]
            frames[group.rows[:, None], torch.tensor(columns, device=q.device)] = \
                self._align_argmax(q_last, keys, head_idx, group)[..., 0]
        if probed is not None:
            every = torch.arange(self.n_heads, device=q.device)
            probed[group.rows, : group.width, layer] = \
                self._align_argmax(rows_q[:, :, : group.width], keys, every, group).transpose(1, 2)
        return out.transpose(1, 2)[group.row_of, group.step_of]

    def _align_argmax(self, q: torch.Tensor, keys: torch.Tensor, head_idx: torch.Tensor, group: _Group) -> torch.Tensor:
        """Argmax over each row's audio positions of the selected heads' scores.

        q: [G, H_l, Tq, d] queries; keys: [G, kv_heads, T, d]. Returns [G, H_l, Tq]
        audio token indices (relative to the row's audio start). The raw scores
        have the same argmax as the attention weights.
        """
        k_heads = keys[:, head_idx // self.groups]
        scores = torch.einsum("bhqd,bhtd->bhqt", q.float(), k_heads.float())
        first = group.audio_pos[:, None, None, None]
        count = group.n_audio[:, None, None, None]
        t = torch.arange(scores.shape[-1], device=q.device)
        outside = (t < first) | (t >= first + count)
        return scores.masked_fill(outside, float("-inf")).argmax(-1) - first[..., 0]


def _fuse(layer: torch.nn.Module) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    return _Layer(
        norm_in=layer.input_layernorm.weight,
        qkv=torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).contiguous(),
        q_norm=attn.q_norm.weight,
        k_norm=attn.k_norm.weight,
        out=attn.o_proj.weight,
        norm_post=layer.post_attention_layernorm.weight,
        gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous(),
        down=mlp.down_proj.weight,
    )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (the checkpoint's rotate-half convention) of [T, heads, d] at per-token cos/sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _length_groups(lengths: np.ndarray, probe: bool) -> list[np.ndarray]:
    """Rows attended together: single-token rows apart from longer ones, so neither pads to the other."""
    if probe:
        return [np.arange(len(lengths))]
    single = lengths == 1
    return [rows for rows in (np.flatnonzero(~single), np.flatnonzero(single)) if len(rows)]
