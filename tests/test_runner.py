"""The batched runner against the checkpoint's own HF forward (tiny random model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.features import MelFrontend
from engine.heads import default_heads
from engine.prompt import PromptTemplate
from engine.batch import EncodeRequest, ForwardBatch
from engine.runner import ModelRunner
from engine.shapes import padded

from .conftest import noise


@pytest.fixture(scope="module")
def runner(tiny_model) -> ModelRunner:
    return ModelRunner(tiny_model, default_heads(tiny_model.spec, 8), n_slots=4, max_len=1024, max_audio_tokens=512)


@pytest.fixture(scope="module")
def mels(tiny_model) -> list[np.ndarray]:
    front = MelFrontend(tiny_model.mel_filters)
    return [front.offline(noise(seconds, seed=i)) for i, seconds in enumerate((19.3, 3.2, 0.4, 8.0))]


def hf_encode(model, mel: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        tower = model.thinker.audio_tower
        return tower(torch.from_numpy(mel.copy()), feature_lens=torch.tensor([mel.shape[1]])).last_hidden_state


def assert_embeddings_close(ours: torch.Tensor, ref: torch.Tensor, tolerance: float) -> None:
    """Max abs difference at most `tolerance` times the largest activation."""
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=tolerance * float(ref.abs().max()))


def test_batched_encoder_equals_hf(runner, tiny_model, mels) -> None:
    # Tolerance 5e-3 of the largest activation: HF's encoder disagrees with
    # itself by 2.5e-3 of it on this audio (the last window of a full encode vs
    # the same window encoded alone: one masked 250x250 attention vs 42x42).
    for mel, ours in zip(mels, runner.encode([EncodeRequest(m) for m in mels])):
        assert_embeddings_close(ours, hf_encode(tiny_model, mel), 5e-3)


def test_tail_from_window_boundary_equals_full_encode(runner, tiny_model, mels) -> None:
    # The encoder cache's premise: windows are independent, so a tail encoded
    # from a window boundary equals the same tokens of a full encode. Both are
    # our batched path, and it matches HF's encode of the tail to 1e-5.
    (full,) = runner.encode([EncodeRequest(mels[0])])
    (tail,) = runner.encode([EncodeRequest(mels[0][:, 1600:])])
    assert_embeddings_close(tail, full[208:], 1e-5)
    assert_embeddings_close(tail, hf_encode(tiny_model, mels[0][:, 1600:]), 1e-5)


def prompt_batch(tiny_model, runner, mel: np.ndarray, slot: int, start: int = 0):
    template = PromptTemplate.from_tokenizer(tiny_model.tokenizer, tiny_model.chat_template, tiny_model.spec.audio_token_id)
    (embeds,) = runner.encode([EncodeRequest(mel)])
    runner.store_audio(slot, 0, embeds)
    context = tiny_model.tokenizer.encode(" the cat", add_special_tokens=False)
    assistant = list(template.language_prefix("English")) + tiny_model.tokenizer.encode("the dog", add_special_tokens=False)
    layout = template.build(context, embeds.shape[0], assistant)
    batch = ForwardBatch.of_rows([slot], [start], [layout.ids[start:]], [layout.audio_pos], [layout.n_audio])
    return batch, layout, embeds


def hf_logits(model, ids: list[int], embeds: torch.Tensor, eager: bool = False):
    with torch.inference_mode():
        t = torch.tensor([ids])
        x = model.thinker.get_input_embeddings()(t)
        x[t == model.spec.audio_token_id] = embeds
        return model.thinker(input_ids=t, inputs_embeds=x, attention_mask=torch.ones_like(t), output_attentions=eager)


def test_decoder_prefill_and_step_equal_hf(runner, tiny_model, mels) -> None:
    batch, layout, embeds = prompt_batch(tiny_model, runner, mels[1], slot=1)
    out = runner.forward(batch, want_logits=True)
    ref = hf_logits(tiny_model, layout.ids, embeds).logits[0, -1]
    torch.testing.assert_close(out.logits[0], ref, rtol=0, atol=1e-4)
    step = ForwardBatch.of_rows([1], [len(layout.ids)], [out.tokens.tolist()], [layout.audio_pos], [layout.n_audio])
    out2 = runner.forward(step, want_logits=True)
    ref2 = hf_logits(tiny_model, layout.ids + [int(out.tokens[0])], embeds).logits[0, -1]
    torch.testing.assert_close(out2.logits[0], ref2, rtol=0, atol=1e-4)


def test_prefix_reuse_equals_recompute(runner, tiny_model, mels) -> None:
    batch, layout, _ = prompt_batch(tiny_model, runner, mels[1], slot=2)
    full = runner.forward(batch, want_logits=True)
    reused, _, _ = prompt_batch(tiny_model, runner, mels[1], slot=2, start=layout.audio_pos + 20)
    part = runner.forward(reused, want_logits=True)
    torch.testing.assert_close(part.logits, full.logits, rtol=0, atol=1e-5)
    assert (part.frames == full.frames).all()


def test_alignment_frames_are_argmax_of_hf_attention(tiny_dir, tiny_model, runner, mels) -> None:
    from transformers import AutoModel

    from engine.loader import register_qwen3_asr

    register_qwen3_asr()
    eager = AutoModel.from_pretrained(str(tiny_dir)).thinker.eval()
    # The composite config does not pass attn_implementation down; set it on the decoder.
    eager.model.config._attn_implementation = "eager"
    # qwen-asr's output_attentions recorder targets another attention class than
    # its layers use, so read the eager weights off the attention modules.
    weights: dict[int, torch.Tensor] = {}
    hooks = [
        layer.self_attn.register_forward_hook(lambda mod, args, out, i=i: weights.__setitem__(i, out[1]))
        for i, layer in enumerate(eager.model.layers)
    ]
    batch, layout, embeds = prompt_batch(tiny_model, runner, mels[1], slot=3)
    out = runner.forward(batch)
    with torch.inference_mode():
        t = torch.tensor([layout.ids])
        x = eager.get_input_embeddings()(t)
        x[t == tiny_model.spec.audio_token_id] = embeds
        eager(input_ids=t, inputs_embeds=x, attention_mask=torch.ones_like(t))
    for hook in hooks:
        hook.remove()
    audio = slice(layout.audio_pos, layout.audio_pos + layout.n_audio)
    expected = [int(weights[layer][0, head, -1, audio].argmax()) for layer, head in runner.heads]
    assert out.frames[0].tolist() == expected


def test_rows_with_different_lengths_in_one_batch(runner, tiny_model, mels) -> None:
    # Two prompts of different lengths batched together give their solo results.
    solo = []
    for slot, mel in ((0, mels[1]), (1, mels[2])):
        batch, _, _ = prompt_batch(tiny_model, runner, mel, slot=slot)
        solo.append((batch, runner.forward(batch, want_logits=True)))
    (b0, o0), (b1, o1) = solo
    both = ForwardBatch.of_rows(
        [0, 1], [0, 0], [b0.ids.tolist(), b1.ids.tolist()],
        [int(b0.audio_pos[0]), int(b1.audio_pos[0])], [int(b0.n_audio[0]), int(b1.n_audio[0])],
    )
    out = runner.forward(both, want_logits=True)
    torch.testing.assert_close(out.logits[0], o0.logits[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.logits[1], o1.logits[0], rtol=0, atol=1e-5)
    assert out.frames.tolist() == [o0.frames[0].tolist(), o1.frames[0].tolist()]


def test_prompt_too_long_is_refused(runner) -> None:
    batch = ForwardBatch.of_rows([0], [1020], [[0] * 10], [0], [0])
    with pytest.raises(ValueError, match="exceeds"):
        runner.forward(batch)


def test_chunk_cache_equals_fresh_encode(runner, mels) -> None:
    # Grow one stream's audio step by step as the scheduler does: each call
    # reuses conv outputs of complete chunks cached by the previous call.
    mel, window, cached_windows, conv_chunks = mels[0], 800, 0, 0
    for frames in (130, 260, 799, 800, 1010, 1290, 1650, 1930):
        tail = mel[:, cached_windows * window : frames]
        (cached,) = runner.encode([EncodeRequest(tail, slot=0, cached_chunks=conv_chunks)])
        (fresh,) = runner.encode([EncodeRequest(tail)])
        assert_embeddings_close(cached, fresh, 1e-5)
        cached_windows, conv_chunks = frames // window, (frames % window) // 100


def test_padded_sizes_cover_every_count_with_few_shapes() -> None:
    sizes = [padded(n) for n in range(5001)]
    assert all(s >= n for n, s in enumerate(sizes)) and sizes == sorted(sizes)
    assert all(s - n <= max(7, n // 8) for n, s in enumerate(sizes))  # at most one ladder step wasted
    assert len(set(sizes)) <= 60  # 5001 counts, a bounded set of kernels (engine/shapes.py)


def test_matrix_products_see_only_padded_row_counts(runner, tiny_model, mels, monkeypatch) -> None:
    """Every linear and conv of an encode and a forward runs on a ladder size of rows, whatever the batch."""
    seen: list[int] = []
    linear, conv = torch.nn.functional.linear, torch.nn.Conv2d._conv_forward

    def linear_rows(x, weight, bias=None):
        seen.append(int(np.prod(x.shape[:-1])) if x.dim() == 2 else x.shape[0])
        return linear(x, weight, bias)

    def conv_rows(self, x, weight, bias):
        seen.append(x.shape[0])
        return conv(self, x, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", linear_rows)
    monkeypatch.setattr(torch.nn.Conv2d, "_conv_forward", conv_rows)
    runner.encode([EncodeRequest(m) for m in mels[1:3]])  # 3 windows, 37 chunks
    batch, _, _ = prompt_batch(tiny_model, runner, mels[2], slot=0)  # an odd number of tokens
    runner.forward(batch)
    assert seen and all(n % 8 == 0 and n == padded(n) for n in seen), sorted(set(seen))
