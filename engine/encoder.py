"""The Qwen3-ASR audio encoder run in batches (no caches, grad-safe).

The HF encoder loops over audios one at a time and builds a full-length
attention mask. This module runs the same modules batched: every 100-frame
chunk of every audio through the conv stack in one call, then every
800-frame attention window of every audio as one row of a padded, masked
attention batch. The runner adds its slot caches on top; training uses it
as is (with gradients).
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
        """Transformer layers with attention confined to each window; [n_tokens, out] per audio."""
        tower, width = self.tower, self.grid.tokens_per_window
        n_windows, device = layout.n_windows, chunks.device
        rows, fill = [[] for _ in range(n_windows)], [0] * n_windows
        for i, (count, w) in enumerate(zip(layout.token_counts, layout.window_of)):
            rows[w].append(chunks[i, :count])
            fill[w] += count
        # A padded number of windows (engine/shapes.py): padding windows are zeros that see
        # themselves (a window that sees nothing would be NaN), and are never read back.
        n_padded = padded(n_windows)
        x = torch.stack([F.pad(torch.cat(r), (0, 0, 0, width - f)) for r, f in zip(rows, fill)])
        x = F.pad(x, (0, 0, 0, 0, 0, n_padded - n_windows))
        sees = torch.tensor(fill + [width] * (n_padded - n_windows), device=device)
        mask = (torch.arange(width, device=device)[None, :] < sees[:, None])[:, None, None, :]
        for layer in tower.layers:
            attn = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            shape = (n_padded, width, attn.num_heads, attn.head_dim)
            q, k, v = (proj(h).view(shape).transpose(1, 2) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
            x = x + attn.out_proj(a.transpose(1, 2).reshape(n_padded, width, -1))
            x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
            if x.dtype == torch.float16:
                # The HF layer clamps fp16 activations the same way.
                bound = torch.finfo(x.dtype).max - 1000
                x = x.clamp(-bound, bound)
        x = tower.proj2(tower.act(tower.proj1(tower.ln_post(x))))
        out, w = [], 0
        for count in layout.windows_per_audio:
            out.append(torch.cat([x[i, : fill[i]] for i in range(w, w + count)]))
            w += count
        return out

    def encode(self, mels: list[np.ndarray]) -> list[torch.Tensor]:
        """Embeddings [n_tokens, out] of each mel array [n_mels, F > 0]."""
        layout = self.layout(mels)
        return self.windows(self.conv(layout.pieces), layout)
