"""The model runner: batched audio encoding and decoder forwards over slots.

The runner holds device memory indexed by slot (decoder key/values, audio
embeddings) but no stream state: the scheduler owns slots and tells the
runner, per call, which slot each batch row uses and which positions are
valid. It drives the checkpoint's own modules (projections, norms, MLPs,
rotary embedding) with batching the HF forward does not do:

* encoder: every 100-frame chunk of every stream goes through the conv stack
  in one call, and every attention window (800 frames) of every stream is one
  row of a padded, masked attention batch;
* decoder: rows have their own lengths and reuse their own cached prefix;
  new key/values are written into the slot's cache, attention reads the
  slot's cache with a causal mask;
* alignment: for the selected heads only, the raw attention scores of each
  row's last query over its audio positions are reduced to an argmax inside
  the same forward.

tests/test_runner.py checks both forwards against the HF modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from qwen_asr.core.transformers_backend.modeling_qwen3_asr import apply_rotary_pos_emb

from engine.heads import Head
from engine.loader import LoadedModel
from engine.encoder import WindowEncoder
from engine.timing import AudioGrid


@dataclass(frozen=True)
class ForwardBatch:
    """One decoder forward. All arrays have B rows; positions are per row.

    Row b computes positions [start[b], start[b] + lengths[b]) of its prompt
    from ids[b, :lengths[b]]; key/values of positions [0, start[b]) in its
    slot are valid and reused. Audio placeholders at positions
    [audio_pos[b], audio_pos[b] + n_audio[b]) take the slot's stored audio
    embeddings.
    """

    slots: np.ndarray
    start: np.ndarray
    ids: np.ndarray
    lengths: np.ndarray
    audio_pos: np.ndarray
    n_audio: np.ndarray


@dataclass(frozen=True)
class EncodeRequest:
    """Audio of one stream, from one of its encoder window boundaries on.

    The first `cached_chunks` chunks of `mel` have their conv outputs in the
    slot's chunk cache from an earlier call. slot -1: no slot, no caching.
    """

    mel: np.ndarray
    slot: int = -1
    cached_chunks: int = 0


@dataclass(frozen=True)
class ForwardOut:
    """Greedy next token and alignment-head argmax (audio token index) per row."""

    tokens: np.ndarray  # int64[B]
    frames: np.ndarray  # int64[B, n_heads]: audio token index, relative to audio_pos
    logits: torch.Tensor | None = None  # float32[B, vocab], only when asked for (tests, tools)
    # int64[B, T, layers, heads]: every head at every new position (heads detection only).
    probe: np.ndarray | None = None


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
        self.audio_token_id = spec.audio_token_id
        self.groups = spec.n_heads // spec.n_kv_heads
        kv_shape = (spec.n_layers, n_slots, max_len, spec.n_kv_heads, spec.head_dim)
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
        self.heads = list(heads)
        # layer -> (query head indices, output columns), so each layer captures its heads at once.
        self._align: dict[int, tuple[torch.Tensor, list[int]]] = {}
        for column, (layer, head) in enumerate(self.heads):
            idx, cols = self._align.get(layer, (torch.empty(0, dtype=torch.long), []))
            self._align[layer] = (torch.cat([idx, torch.tensor([head])]), cols + [column])
        self._align = {l: (idx.to(self.device), cols) for l, (idx, cols) in self._align.items()}

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
        if int((batch.start + batch.lengths).max()) > self.max_len:
            raise ValueError(f"prompt of {int((batch.start + batch.lengths).max())} tokens exceeds {self.max_len}")
        dev = self.device
        slots = torch.as_tensor(batch.slots, device=dev)
        start = torch.as_tensor(batch.start, device=dev)
        lengths = torch.as_tensor(batch.lengths, device=dev)
        ids = torch.as_tensor(batch.ids, device=dev)
        n_rows, width = ids.shape
        steps = torch.arange(width, device=dev)
        pos = start[:, None] + steps[None, :]
        valid = steps[None, :] < lengths[:, None]
        x = self._embed(ids, pos, valid, slots, batch)
        cos, sin = self.thinker.model.rotary_emb(x, pos)
        kv_len = int((batch.start + batch.lengths).max())
        keys = torch.arange(kv_len, device=dev)
        # Additive causal mask (0 / -inf), shared by every layer.
        mask = torch.zeros((n_rows, 1, width, kv_len), dtype=self.dtype, device=dev)
        mask.masked_fill_((keys[None, None, :] > pos[:, :, None])[:, None], float("-inf"))
        write_slot, write_pos = slots[:, None].expand(n_rows, width)[valid], pos[valid]
        last = lengths - 1
        rows = torch.arange(n_rows, device=dev)
        frames = torch.zeros((n_rows, len(self.heads)), dtype=torch.long, device=dev)
        layers = self.thinker.model.layers
        n_heads = self.thinker.config.text_config.num_attention_heads
        probed = torch.zeros((n_rows, width, len(layers), n_heads), dtype=torch.long, device=dev) if probe else None
        every_head = torch.arange(n_heads, device=dev)
        for index, layer in enumerate(layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_norm(attn.q_proj(h).view(n_rows, width, -1, attn.head_dim)).transpose(1, 2)
            k = attn.k_norm(attn.k_proj(h).view(n_rows, width, -1, attn.head_dim)).transpose(1, 2)
            v = attn.v_proj(h).view(n_rows, width, -1, attn.head_dim)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.k_cache[index][write_slot, write_pos] = k.transpose(1, 2)[valid]
            self.v_cache[index][write_slot, write_pos] = v[valid]
            keys_b = self.k_cache[index][slots, :kv_len].transpose(1, 2)
            values_b = self.v_cache[index][slots, :kv_len].transpose(1, 2)
            out = F.scaled_dot_product_attention(
                q, keys_b, values_b, attn_mask=mask, scale=attn.scaling, enable_gqa=True
            )
            if index in self._align:
                head_idx, columns = self._align[index]
                q_last = q[rows, :, last][:, head_idx, None]
                frames[:, columns] = self._align_argmax(q_last, keys_b, head_idx, batch)[..., 0]
            if probed is not None:
                probed[:, :, index] = self._align_argmax(q, keys_b, every_head, batch).transpose(1, 2)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(n_rows, width, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        hidden = self.thinker.model.norm(x[rows, last])
        logits = self.thinker.lm_head(hidden).float()
        return ForwardOut(
            tokens=logits.argmax(-1).cpu().numpy(),
            frames=frames.cpu().numpy(),
            logits=logits if want_logits else None,
            probe=probed.cpu().numpy() if probed is not None else None,
        )

    def _embed(
        self, ids: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, slots: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """Token embeddings with audio placeholders replaced by the slot's audio embeddings."""
        x = self.thinker.model.embed_tokens(ids)
        index = pos - torch.as_tensor(batch.audio_pos, device=self.device)[:, None]
        n_audio = torch.as_tensor(batch.n_audio, device=self.device)[:, None]
        is_audio = valid & (index >= 0) & (index < n_audio)
        if bool(is_audio.any()):
            row_slots = slots[:, None].expand_as(ids)[is_audio]
            x[is_audio] = self.audio[row_slots, index[is_audio]]
        return x

    def _align_argmax(
        self, q: torch.Tensor, keys: torch.Tensor, head_idx: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """Argmax over each row's audio positions of the selected heads' scores.

        q: [B, H_l, Tq, d] queries; keys: [B, kv_heads, T, d]. Returns [B, H_l, Tq]
        audio token indices (relative to the row's audio start). The raw scores
        have the same argmax as the attention weights.
        """
        k_heads = keys[:, head_idx // self.groups]
        scores = torch.einsum("bhqd,bhtd->bhqt", q.float(), k_heads.float())
        first = torch.as_tensor(batch.audio_pos, device=self.device)[:, None, None, None]
        count = torch.as_tensor(batch.n_audio, device=self.device)[:, None, None, None]
        t = torch.arange(scores.shape[-1], device=self.device)
        outside = (t < first) | (t >= first + count)
        return scores.masked_fill(outside, float("-inf")).argmax(-1) - first[..., 0]
