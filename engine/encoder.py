"""The Qwen3-ASR audio encoder run in batches (no caches, grad-safe).

The HF encoder loops over audios one at a time and builds a full-length
attention mask. This module runs the same modules batched: every 100-frame
chunk of every audio through the conv stack in one call, then the
transformer layers over all audios' tokens packed together, where only the
attention puts each 800-frame window in a padded, masked row. The runner
adds its slot caches on top; training uses it as is (with gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.shapes import padded
from engine.timing import AudioGrid, conv_tokens


@dataclass(frozen=True)
class ChunkLayout:
    """How a batch of mel arrays is cut into chunks and windows."""

    pieces: list[np.ndarray]  # [n_mels, <= chunk] per chunk, in order
    window_of: list[int]  # window index of each chunk
    n_windows: int
    windows_per_audio: list[int]

    @property
    def token_counts(self) -> list[int]:
        return [conv_tokens(piece.shape[1]) for piece in self.pieces]


class WindowEncoder:
    """Batched forward of one audio tower."""

    def __init__(self, tower: torch.nn.Module, grid: AudioGrid) -> None:
        self.tower = tower
        self.grid = grid

    def layout(self, mels: list[np.ndarray]) -> ChunkLayout:
        chunk, per_window = self.grid.chunk_frames, self.grid.window_frames // self.grid.chunk_frames
        pieces, window_of, per_audio, n_windows = [], [], [], 0
        for mel in mels:
            n_chunks = -(-mel.shape[1] // chunk)
            for c in range(n_chunks):
                pieces.append(mel[:, c * chunk : (c + 1) * chunk])
                window_of.append(n_windows + c // per_window)
            per_audio.append(-(-n_chunks // per_window))
            n_windows += per_audio[-1]
        return ChunkLayout(pieces, window_of, n_windows, per_audio)

    def conv(self, pieces: list[np.ndarray]) -> torch.Tensor:
        """Conv stack + projection + chunk position embedding: [n, 13, d_model]."""
        tower, chunk = self.tower, self.grid.chunk_frames
        # A padded number of chunks (engine/shapes.py); the padding chunks are silence, dropped below.
        feats = np.zeros((padded(len(pieces)), 1, pieces[0].shape[0], chunk), np.float32)
        for i, piece in enumerate(pieces):
            feats[i, 0, :, : piece.shape[1]] = piece
        weight = tower.conv2d1.weight
        x = torch.from_numpy(feats).to(weight.device, weight.dtype)
        x = F.gelu(tower.conv2d1(x))
        x = F.gelu(tower.conv2d2(x))
        x = F.gelu(tower.conv2d3(x))
        n, channels, freq, steps = x.shape
        x = tower.conv_out(x.permute(0, 3, 1, 2).reshape(n, steps, channels * freq))[: len(pieces)]
        return x + tower.positional_embedding.positional_embedding[:steps].to(x.dtype)

    def windows(self, chunks: torch.Tensor, layout: ChunkLayout) -> list[torch.Tensor]:
        """Transformer layers with attention confined to each window; [n_tokens, out] per audio.

        Token-wise work (norms, projections, MLP) runs over the real tokens
        packed one after another; only attention sees them in padded window
        rows. A streaming step's open windows are half full on average and
        their row count is padded too, so with every window padded to its
        full width most of the encoder's matrix work was padding (3x the time
        per stream-second, benchmarks/capacity.py).
        """
        tower, width = self.tower, self.grid.tokens_per_window
        counts = layout.token_counts
        places, fill = self._places(layout, counts)
        n_tokens, n_rows = len(places), padded(layout.n_windows)
        # Padded sizes (engine/shapes.py). Padding tokens are zeros that no window reads;
        # padding windows are zeros that see themselves (a window that sees nothing would be NaN).
        x = torch.cat([chunks[i, :count] for i, count in enumerate(counts)])
        x = F.pad(x, (0, 0, 0, padded(n_tokens) - n_tokens))
        place = torch.tensor(places, device=chunks.device)
        sees = torch.tensor(fill + [width] * (n_rows - layout.n_windows), device=chunks.device)
        mask = (torch.arange(width, device=chunks.device)[None, :] < sees[:, None])[:, None, None, :]
        for layer in tower.layers:
            x = x + self._attention(layer.self_attn, layer.self_attn_layer_norm(x), place, n_rows, mask)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
            if x.dtype == torch.float16:
                # The HF layer clamps fp16 activations the same way.
                bound = torch.finfo(x.dtype).max - 1000
                x = x.clamp(-bound, bound)
        x = tower.proj2(tower.act(tower.proj1(tower.ln_post(x))))[:n_tokens]
        # Tokens are in audio order, windows after windows, so each audio's are one run.
        per_audio, first = [], 0
        for n_windows in layout.windows_per_audio:
            per_audio.append(sum(fill[first : first + n_windows]))
            first += n_windows
        return list(torch.split(x, per_audio))

    def _places(self, layout: ChunkLayout, counts: list[int]) -> tuple[list[int], list[int]]:
        """Each packed token's place in the [windows * width] padded layout; tokens per window."""
        width = self.grid.tokens_per_window
        places, fill = [], [0] * layout.n_windows
        for count, w in zip(counts, layout.window_of):
            start = w * width + fill[w]
            places.extend(range(start, start + count))
            fill[w] += count
        return places, fill

    def _attention(
        self, attn: torch.nn.Module, h: torch.Tensor, place: torch.Tensor, n_rows: int, mask: torch.Tensor
    ) -> torch.Tensor:
        """Self-attention within windows of packed tokens `h` [T_padded, d]; out_proj applied."""
        width, n_tokens = self.grid.tokens_per_window, len(place)
        shape = (n_rows, width, attn.num_heads, attn.head_dim)

        def rows(proj: torch.nn.Module) -> torch.Tensor:
            flat = h.new_zeros((n_rows * width, attn.num_heads * attn.head_dim))
            # The projection runs over all of h: its row count stays on the ladder (engine/shapes.py).
            return flat.index_copy(0, place, proj(h)[:n_tokens]).view(shape).transpose(1, 2)

        a = F.scaled_dot_product_attention(
            rows(attn.q_proj), rows(attn.k_proj), rows(attn.v_proj), attn_mask=mask, scale=attn.scaling
        )
        a = a.transpose(1, 2).reshape(n_rows * width, -1)[place]
        return attn.out_proj(F.pad(a, (0, 0, 0, h.shape[0] - n_tokens)))

    def encode(self, mels: list[np.ndarray]) -> list[torch.Tensor]:
        """Embeddings [n_tokens, out] of each mel array [n_mels, F > 0]."""
        layout = self.layout(mels)
        return self.windows(self.conv(layout.pieces), layout)
