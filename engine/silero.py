"""Silero VAD's 16 kHz network, batched over streams, as a few matrix products.

The silero-vad package ships the network as TorchScript: an STFT computed
as a conv1d against a stored basis (a periodic-Hann-windowed DFT, plus the
phase it never uses), four conv layers, an LSTM cell and a 1x1 conv. Its
calls cost ~290 us each before any row was scored, and the ingest makes
~60 a second (one per 32 ms chunk per VAD tick, over the streams that sent
audio in that tick). Here the same weights run as an rfft, four im2col
matrix products, `lstm_cell` and one more product: ~75 us per call and
~12 us per row (one core, float32: 390 -> 170 us for 8 rows, 710 -> 450 us
for 32, 1080 -> 830 us for 64). In the service at 64 streams the ingest's
VAD went from 1.9 to 1.2 ms of CPU per stream-second.

A row's result depends only on that row for a given batch shape (callers
pad batches to fixed sizes). At load the network is checked against the
package's own on a probe batch, so a silero-vad release that changes it
fails loudly here instead of scoring wrongly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FILTER = 256  # samples per spectrogram frame
HOP = 128
RIGHT_PAD = 64  # reflect padding Silero adds after each chunk
INPUT = 576  # 64 samples of the previous chunk, then the 512 scored
STATE = (2, 128)  # (h, c) of the LSTM cell per stream
# Our results and the package's differ by float summation order only (~1e-7 seen).
_TOLERANCE = 1e-4


class SileroNet:
    """(samples [B, 576], state [2, B, 128]) -> (speech probability [B], new state)."""

    def __init__(self) -> None:
        from silero_vad import load_silero_vad

        model = load_silero_vad()._model  # the 16 kHz network
        self._window = torch.hann_window(FILTER, periodic=True)
        # Conv weights [out, in, 3] as [in * 3, out], the order unfold lays an input window out in.
        self._convs: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        for i in range(4):
            conv = getattr(model.encoder, str(i)).reparam_conv
            weight = conv.weight.detach()
            self._convs.append((weight.reshape(weight.shape[0], -1).t().contiguous(), conv.bias.detach().clone(),
                                int(conv.stride[0])))
        rnn = model.decoder.rnn
        self._lstm = [p.detach().clone() for p in (rnn.weight_ih, rnn.weight_hh, rnn.bias_ih, rnn.bias_hh)]
        head = dict(model.decoder.decoder.named_parameters())
        self._head = (head["2.weight"].detach().reshape(1, -1).t().contiguous(), head["2.bias"].detach().clone())
        self._check(model)

    @torch.inference_mode()
    def __call__(self, samples: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = samples.shape[0]
        frames = F.pad(samples, (0, RIGHT_PAD), mode="reflect").unfold(1, FILTER, HOP) * self._window
        x = torch.fft.rfft(frames).abs()  # [B, time, 129]: time-major from here on
        for weight, bias, stride in self._convs:
            windows = F.pad(x, (0, 0, 1, 1)).unfold(1, 3, stride)  # [B, time', channels, 3]
            steps = windows.shape[1]
            x = torch.relu(torch.addmm(bias, windows.reshape(rows * steps, -1), weight)).reshape(rows, steps, -1)
        h, c = torch.lstm_cell(x[:, 0], (state[0], state[1]), *self._lstm)
        weight, bias = self._head
        prob = torch.sigmoid(torch.addmm(bias, torch.relu(h), weight))[:, 0]
        return prob, torch.stack([h, c])

    @torch.inference_mode()
    def _check(self, model: torch.jit.ScriptModule) -> None:
        generator = torch.Generator().manual_seed(0)
        samples = torch.randn(4, INPUT, generator=generator) * 0.3
        state = torch.randn(STATE[0], 4, STATE[1], generator=generator) * 0.3
        theirs, their_state = model(samples, state)
        ours, our_state = self(samples, state)
        if not (torch.allclose(theirs[:, 0], ours, atol=_TOLERANCE)
                and torch.allclose(their_state, our_state, atol=_TOLERANCE)):
            raise RuntimeError("engine/silero.py no longer computes what silero_vad's network does "
                               "(a new silero-vad release?): update it")
