"""Train a tiny Qwen3-ASR (the real architecture, small sizes) on the synthetic corpus.

    python -m training.train --corpus artifacts/corpus --out models/tiny-en [--minutes 95]

(`make tiny-en` runs the five phases that made the bundled model.)

The model is Qwen3ASRForConditionalGeneration from qwen-asr; the prompt is
the one the engine builds (engine.prompt); the audio encoder runs batched
through engine.encoder. Losses:

* cross-entropy on the assistant tokens (`language English<asr_text>` +
  transcript + `<|im_end|>`): the task itself;
* CTC on the encoder output, scored by the decoder's tied output embedding
  (plus a blank): the encoder learns sounds, in the decoder's token space;
* word classification of every encoder token where word times are known;
* guided attention: GUIDED_HEADS look at the audio of the word they write.

The auxiliary heads (blank, word classes) are not saved: the checkpoint is a
plain Qwen3-ASR directory (weights in float16) that engine.loader loads.

Training stops after --minutes of wall time (or --steps); a checkpoint to
resume from (--resume) is written to --work every five minutes.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import jiwer
import numpy as np
import torch
import torch.nn.functional as F

from engine.config import EngineConfig
from engine.encoder import WindowEncoder
from engine.features import MelFrontend
from engine.loader import assemble
from engine.policy import PolicyConfig
from engine.prompt import PromptTemplate
from engine.core import Engine
from engine.timing import AudioGrid
from engine.tiny import TinyDims, random_model, save_checkpoint
from engine.tiny_tokenizer import read_words
from engine.transcribe import transcribe
from training.data import PREFIX_FRACTION, Corpus, Example, features

log = logging.getLogger("training")

DIMS = TinyDims(
    enc_d_model=192, enc_layers=4, enc_heads=4, enc_ffn=768, enc_conv_channels=32,
    dec_hidden=192, dec_layers=4, dec_heads=4, dec_kv_heads=2, dec_head_dim=48, dec_ffn=576,
    tie_embeddings=True,
)


class Batcher:
    """Batches of about `seconds` of audio, clips of similar length together."""

    def __init__(self, corpus: Corpus, seconds: float, rng: np.random.Generator) -> None:
        self.corpus, self.seconds, self.rng = corpus, seconds, rng
        self.queue: list[list[int]] = []

    def next(self, max_clip_s: float) -> list[int]:
        if not self.queue:
            eligible = [i for i in range(len(self.corpus)) if self.corpus.seconds(i) <= max_clip_s]
            pool = sorted(self.rng.permutation(eligible)[:4000].tolist(), key=self.corpus.seconds)
            batch, total = [], 0.0
            for index in pool:
                batch.append(index)
                total += self.corpus.seconds(index)
                if total >= self.seconds:
                    self.queue.append(batch)
                    batch, total = [], 0.0
            self.rng.shuffle(self.queue)
        return self.queue.pop()


# Decoder heads (layer, query head) whose attention over the audio is guided
# to the word being written (clips with word times): they become alignment
# heads that the AlignAtt policy reads, and the guidance teaches the decoder
# to find its place in the audio far sooner than cross-entropy alone.
GUIDED_HEADS = ((2, 0), (2, 2), (3, 0), (3, 2))


class AsrLoss:
    """Forward pass and losses of a batch of examples."""

    def __init__(
        self, model: torch.nn.Module, tokenizer: object, ctc_head: torch.nn.Module, frame_head: torch.nn.Module,
        vocabulary: list[str],
    ) -> None:
        self.thinker = model.thinker
        self.tokenizer = tokenizer
        # CTC scores tokens with the decoder's own (tied) output embedding plus a
        # blank: the encoder learns to put each spoken token's audio near that
        # token's embedding, so for the decoder, reading audio becomes copying.
        self.ctc_head = ctc_head
        self.frame_head = frame_head
        # Frame classes: 0 is "no word", then the word list.
        self.word_class = {word: i + 1 for i, word in enumerate(vocabulary)}
        spec = self.thinker.config
        self.grid = AudioGrid.from_spec(spec.audio_config.n_window, spec.audio_config.n_window_infer)
        self.encoder = WindowEncoder(self.thinker.audio_tower, self.grid)
        self.template = PromptTemplate.from_tokenizer(tokenizer, tokenizer.chat_template, spec.audio_token_id)
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.blank = self.thinker.lm_head.out_features
        # Guided attention needs the attention weights: eager attention returns
        # them from each attention module; one hook per guided layer keeps them.
        self.thinker.model.config._attn_implementation = "eager"
        self.attention: dict[int, torch.Tensor] = {}
        for layer in {layer for layer, _ in GUIDED_HEADS}:
            self.thinker.model.layers[layer].self_attn.register_forward_hook(self._keep_attention(layer))

    def target(self, example: Example) -> tuple[list[int], list[int], list[int], int]:
        """(assistant ids, transcript ids, word index of each transcript id, leading ids given, not learned)."""
        text, word_of = [], []
        for j, word in enumerate(example.words):
            # Byte-level BPE splits at spaces, so word by word equals the whole text.
            ids = self.tokenizer.encode(word if j == 0 else " " + word, add_special_tokens=False)
            text += ids
            word_of += [j] * len(ids)
        prefix = list(self.template.language_prefix("None" if example.silence else "English"))
        given = len(prefix) if example.language_given else 0
        return prefix + text + [self.im_end], text, word_of, given

    def __call__(self, examples: list[Example], mels: list[np.ndarray]) -> dict[str, torch.Tensor]:
        audio = self.encoder.encode(mels)
        rows, label_rows, label_cols, label_ids, texts, guides = [], [], [], [], [], []
        for b, (example, embeds) in enumerate(zip(examples, audio)):
            target, text, word_of, given = self.target(example)
            context = self.tokenizer.encode(example.context, add_special_tokens=False) if example.context else []
            layout = self.template.build(context, embeds.shape[0], target)
            rows.append(layout)
            first = len(layout.ids) - len(target)
            label_rows += [b] * (len(target) - given)
            label_cols += list(range(first - 1 + given, len(layout.ids) - 1))
            label_ids += target[given:]
            texts.append(text)
            if example.spans:
                text_start = first - 1 + len(target) - len(text) - 1
                guides += self._guides(b, layout.audio_pos, embeds.shape[0], example.spans, word_of, text_start)
        width = max(len(r.ids) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, layout in enumerate(rows):
            ids[b, : len(layout.ids)] = torch.tensor(layout.ids)
            mask[b, : len(layout.ids)] = 1
        x = self.thinker.model.embed_tokens(ids)
        audio_rows = torch.cat([torch.full((r.n_audio,), b) for b, r in enumerate(rows)])
        audio_cols = torch.cat([torch.arange(r.audio_pos, r.audio_pos + r.n_audio) for r in rows])
        x = x.index_put((audio_rows, audio_cols), torch.cat(audio))
        positions = torch.arange(width)[None, :].expand(len(rows), width)
        hidden = self.thinker.model(inputs_embeds=x, attention_mask=mask, position_ids=positions).last_hidden_state
        logits = self.thinker.lm_head(hidden[label_rows, label_cols])
        targets = torch.tensor(label_ids)
        ce = F.cross_entropy(logits, targets)
        return {
            "ce": ce,
            "ctc": self._ctc(audio, texts),
            "frames": self._frames(audio, examples),
            "guide": self._guide(guides),
            "accuracy": (logits.argmax(-1) == targets).float().mean(),
        }

    def _guides(
        self, row: int, audio_pos: int, n_audio: int, spans: list[tuple[str, float, float]], word_of: list[int],
        text_start: int,
    ) -> list[tuple[int, int, torch.Tensor]]:
        """(row, query position, audio key positions) for each transcript token with a known word time.

        The token at position text_start + m + 1 is predicted at position
        text_start + m; that query should look at the audio of its word.
        """
        times = self.grid.token_time(np.arange(n_audio, dtype=np.float64))
        guides = []
        for m, j in enumerate(word_of):
            _, start, end = spans[j]
            keys = np.nonzero((times >= start - 0.04) & (times < end + 0.04))[0]
            if len(keys):
                guides.append((row, text_start + m, torch.from_numpy(keys + audio_pos)))
        return guides

    def _keep_attention(self, layer: int):
        def hook(module: torch.nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
            self.attention[layer] = output[1]

        return hook

    def _guide(self, guides: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
        """Mean -log(attention mass on the word's audio) over the guided heads."""
        if not guides:
            return torch.zeros(())
        # One gather per head for all guides: indexing per guide cost a dense
        # attention-sized gradient each in backward (most of a step's time).
        sizes = torch.tensor([len(keys) for _, _, keys in guides])
        rows = torch.repeat_interleave(torch.tensor([row for row, _, _ in guides]), sizes)
        queries = torch.repeat_interleave(torch.tensor([query for _, query, _ in guides]), sizes)
        keys = torch.cat([keys for _, _, keys in guides])
        segment = torch.repeat_interleave(torch.arange(len(guides)), sizes)
        losses = []
        for layer, head in GUIDED_HEADS:
            picked = self.attention[layer][rows, head, queries, keys]
            mass = torch.zeros(len(guides), dtype=picked.dtype).index_add(0, segment, picked)
            losses.append(-torch.log(mass.clamp_min(1e-6)).mean())
        return torch.stack(losses).mean()

    def _frames(self, audio: list[torch.Tensor], examples: list[Example]) -> torch.Tensor:
        """Per-token word classification where word times are known (fast, direct encoder signal)."""
        feats, labels = [], []
        for embeds, example in zip(audio, examples):
            if example.spans is None:
                continue
            times = self.grid.token_time(np.arange(embeds.shape[0], dtype=np.float64))
            label = np.zeros(len(times), dtype=np.int64)
            for word, start, end in example.spans:
                label[(times >= start) & (times < end)] = self.word_class.get(word, 0)
            feats.append(embeds)
            labels.append(torch.from_numpy(label))
        if not feats:
            return torch.zeros(())
        return F.cross_entropy(self.frame_head(torch.cat(feats)), torch.cat(labels))

    def _ctc(self, audio: list[torch.Tensor], texts: list[list[int]]) -> torch.Tensor:
        lengths = torch.tensor([a.shape[0] for a in audio])
        padded = torch.nn.utils.rnn.pad_sequence(audio, batch_first=True)
        logits = torch.cat([self.thinker.lm_head(padded), self.ctc_head(padded)], dim=-1)
        log_probs = logits.log_softmax(-1).transpose(0, 1)
        targets = torch.tensor([t for text in texts for t in text], dtype=torch.long)
        return F.ctc_loss(
            log_probs, targets, lengths, torch.tensor([len(t) for t in texts]), blank=self.blank, zero_infinity=True
        )


# Conv-stem feature scale at the start of training, ~6x the sinusoidal
# position embedding (std 0.68) that the encoder adds to every chunk.
CONV_FEATURE_STD = 4.0


def init_encoder(model: torch.nn.Module, mels: list[np.ndarray], grid: AudioGrid) -> None:
    """Initialise the audio tower so that it can learn sounds from scratch.

    HF initialises every linear and conv with std 0.02, which shrinks the mel
    signal ~1000x through the conv stem: the transformer then sees mostly the
    position embedding. And because that embedding restarts every 100-frame
    chunk, the layers cannot tell a neighbour from a token 1 s away by
    position; they must go by content. Measured on word-frame classification
    (tools in the commit message): with HF init word accuracy stays ~1% after
    160 steps; with variance-preserving convs, PyTorch's default linear init
    and conv features at std 4 it reaches 12%.
    """
    tower = model.thinker.audio_tower
    for module in tower.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    for conv in (tower.conv2d1, tower.conv2d2, tower.conv2d3):
        torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        torch.nn.init.zeros_(conv.bias)
    torch.nn.init.normal_(tower.conv_out.weight, std=tower.conv_out.in_features**-0.5)
    encoder = WindowEncoder(tower, grid)
    with torch.no_grad():
        std = float(encoder.conv(encoder.layout(mels).pieces).std())
        tower.conv_out.weight.mul_(CONV_FEATURE_STD / std)


def load_model_dir(model: torch.nn.Module, directory: Path) -> None:
    """Weights of a saved model directory (float16) into the float32 training model."""
    from safetensors.torch import load_file

    state = {k: v.float() for k, v in load_file(str(directory / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The output layer is tied to the embeddings, so the file does not hold it.
    if unexpected or set(missing) - {"thinker.lm_head.weight"}:
        raise ValueError(f"{directory}: weights do not fit {DIMS}: missing {missing}, unexpected {unexpected}")


def fit_aux_heads(
    loss_fn: AsrLoss, model: torch.nn.Module, corpus: Corpus, batcher: Batcher, rng: np.random.Generator,
    vocabulary: list[str], frontend: MelFrontend, steps: int, max_clip_s: float,
) -> None:
    """Fit the CTC blank and word-class heads (not saved in a model directory) on the frozen model.

    Fine-tuning with untrained heads would send their large early losses back
    into a trained encoder.
    """
    heads = list(loss_fn.ctc_head.parameters()) + list(loss_fn.frame_head.parameters())
    optimizer = torch.optim.AdamW(heads, lr=1e-2)
    model.requires_grad_(False)
    for step in range(steps):
        examples = [corpus.example(i, rng, vocabulary) for i in batcher.next(max_clip_s)]
        with torch.no_grad():
            audio = loss_fn.encoder.encode([features(frontend, ex) for ex in examples])
        ctc = loss_fn._ctc(audio, [loss_fn.target(ex)[1] for ex in examples])
        frames = loss_fn._frames(audio, examples)
        optimizer.zero_grad(set_to_none=True)
        (ctc + frames).backward()
        optimizer.step()
        if (step + 1) % 25 == 0:
            log.info("head fit %d: ctc %.3f frames %.3f", step + 1, float(ctc.detach()), float(frames.detach()))
    model.requires_grad_(True)


def learning_rate(step: int, total: int, peak: float, warmup: int, progress: float | None = None) -> float:
    """Linear warm-up, then cosine to 10% of peak over `total` steps (or by `progress`, 0-1, when given)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if progress is None:
        progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def evaluate_wer(model: torch.nn.Module, tokenizer: object, corpus: Corpus, frontend_filters: np.ndarray, n: int) -> float:
    """Offline greedy WER of the model on the first n clips of `corpus`, through the engine."""
    model.eval()
    loaded = assemble("training", model, tokenizer, tokenizer.chat_template, frontend_filters, torch.device("cpu"))
    # Offline decoding of clips up to 12 s; the final pass ignores the policy.
    cfg = EngineConfig(
        model="training", max_streams=1, max_batch=1, max_buffer_s=14.0, max_step_s=14.0,
        max_backlog_s=14.0, max_chunk_s=14.0, policy=PolicyConfig(),
    )
    scheduler = Engine(cfg, loaded)
    refs, hyps = [], []
    for index in range(min(n, len(corpus))):
        samples = corpus.samples(index)
        result = transcribe(scheduler, samples, chunk_ms=14_000, language=None)
        refs.append(corpus.clips[index]["text"] or "<silence>")
        hyps.append(result.text or "<silence>")
    model.train()
    return float(jiwer.wer(refs, hyps))


def save(model: torch.nn.Module, tokenizer: object, out: Path, meta: dict) -> None:
    """Write a float16 copy as a loadable checkpoint (the training copy stays float32)."""
    save_checkpoint(copy.deepcopy(model).half().eval(), tokenizer, out)
    (out / "training.json").write_text(json.dumps(meta, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the model directory to write")
    parser.add_argument("--work", type=Path, default=Path("artifacts/train"), help="checkpoints for --resume")
    parser.add_argument("--minutes", type=float, default=95.0)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--expected-steps", type=int, default=5000, help="length of the learning-rate schedule")
    parser.add_argument("--batch-seconds", type=float, default=60.0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--ctc-weight", type=float, default=1.0)
    parser.add_argument("--guide-weight", type=float, default=0.5)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-clips", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--curriculum", type=float, default=0.15,
        help="fraction of the schedule over which the longest clip grows from 5 s to 12 s (0: all lengths at once)",
    )
    parser.add_argument(
        "--prefix-fraction", type=float, default=PREFIX_FRACTION,
        help="share of word-by-word clips cut at a random time (streaming practice)",
    )
    parser.add_argument(
        "--init-from", type=Path,
        help="start from the model weights of this --work checkpoint, or of a model directory (e.g. models/tiny-en)",
    )
    parser.add_argument("--max-clip-s", type=float, default=12.0, help="longest training clip (the curriculum's end)")
    parser.add_argument(
        "--nonspeech-fraction", type=float, default=0.0,
        help="non-speech clips made at training time, as a fraction of the corpus's clips",
    )
    parser.add_argument(
        "--padded-fraction", type=float, default=0.0,
        help="corpus clips with long leading/trailing silence or noise, as a fraction of the corpus's clips",
    )
    parser.add_argument(
        "--schedule-by-time", action="store_true",
        help="learning-rate and loss-weight schedules follow wall time (--minutes), not --expected-steps",
    )
    parser.add_argument("--head-fit-steps", type=int, default=200, help="--init-from a model directory: fit the auxiliary heads first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("engine").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    model, tokenizer = random_model(DIMS, args.seed)
    model.train()
    from transformers import WhisperFeatureExtractor

    filters = WhisperFeatureExtractor(feature_size=128).mel_filters.astype(np.float32)
    frontend = MelFrontend(filters)
    train, heldout = Corpus(args.corpus / "train"), Corpus(args.corpus / "heldout")
    # Its own generator: runs without extras draw exactly what they drew before.
    train.add_extras(args.nonspeech_fraction, args.padded_fraction, args.max_clip_s, np.random.default_rng(args.seed + 1))
    spec = model.thinker.config.audio_config
    grid = AudioGrid.from_spec(spec.n_window, spec.n_window_infer)
    init_encoder(model, [frontend.offline(train.samples(i)) for i in range(16)], grid)
    vocabulary = read_words()
    ctc_head = torch.nn.Linear(DIMS.dec_hidden, 1)  # the blank
    frame_head = torch.nn.Linear(DIMS.dec_hidden, len(vocabulary) + 1)
    loss_fn = AsrLoss(model, tokenizer, ctc_head, frame_head, vocabulary)
    params = list(model.parameters()) + list(ctc_head.parameters()) + list(frame_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    batcher = Batcher(train, args.batch_seconds, rng)
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = args.work / "checkpoint.pt"
    step, elapsed, history = 0, 0.0, []
    if args.init_from and args.init_from.is_dir():
        load_model_dir(model, args.init_from)
        log.info("model weights from %s; fitting the auxiliary heads (%d steps)", args.init_from, args.head_fit_steps)
        fit_aux_heads(loss_fn, model, train, batcher, rng, vocabulary, frontend, args.head_fit_steps, args.max_clip_s)
    elif args.init_from:
        state = torch.load(args.init_from, weights_only=False)
        model.load_state_dict(state["model"])
        ctc_head.load_state_dict(state["ctc_head"])
        frame_head.load_state_dict(state["frame_head"])
        log.info("model weights from %s (step %d)", args.init_from, state["step"])
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        ctc_head.load_state_dict(state["ctc_head"])
        frame_head.load_state_dict(state["frame_head"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        rng = np.random.default_rng(args.seed + step)
        batcher.rng = rng
        log.info("resumed at step %d (%.1f min)", step, elapsed / 60)
    started, last_ckpt, window = time.perf_counter() - elapsed, time.perf_counter(), []
    while step < args.steps and (time.perf_counter() - started) < args.minutes * 60:
        # Curriculum: short clips first, all lengths after --curriculum of the schedule.
        grown = min(1.0, step / max(1.0, args.curriculum * args.expected_steps))
        max_clip = 5.0 + (args.max_clip_s - 5.0) * grown
        indices = batcher.next(max_clip)
        examples = [train.example(i, rng, vocabulary, args.prefix_fraction) for i in indices]
        mels = [features(frontend, ex) for ex in examples]
        losses = loss_fn(examples, mels)
        # --schedule-by-time: on a shared machine the step rate is unknown in advance.
        timed = (time.perf_counter() - started) / (args.minutes * 60) if args.schedule_by_time else None
        ctc_weight = args.ctc_weight * max(0.2, 1.0 - (step / args.expected_steps if timed is None else timed))
        total = losses["ce"] + ctc_weight * (losses["ctc"] + losses["frames"]) + args.guide_weight * losses["guide"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.expected_steps, args.lr, args.warmup, timed)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        window.append({k: float(v.detach()) for k, v in losses.items()})
        if step % 25 == 0:
            mean = {k: round(float(np.mean([w[k] for w in window])), 4) for k in window[0]}
            window = []
            minutes = (time.perf_counter() - started) / 60
            log.info("step %d  %.1f min  lr %.2e  max_clip %.1f s  %s", step, minutes, optimizer.param_groups[0]["lr"], max_clip, mean)
            history.append({"step": step, "minutes": round(minutes, 2), **mean})
        if step % args.eval_every == 0:
            wer = evaluate_wer(model, tokenizer, heldout, filters, args.eval_clips)
            log.info("step %d  held-out offline WER (%d clips): %.3f", step, args.eval_clips, wer)
            history.append({"step": step, "heldout_wer": round(wer, 4)})
        if time.perf_counter() - last_ckpt > 300:
            torch.save(
                {"model": model.state_dict(), "ctc_head": ctc_head.state_dict(), "frame_head": frame_head.state_dict(),
                 "optimizer": optimizer.state_dict(),
                 "step": step, "elapsed": time.perf_counter() - started, "history": history},
                ckpt,
            )
            last_ckpt = time.perf_counter()
    minutes = (time.perf_counter() - started) / 60
    wer = evaluate_wer(model, tokenizer, heldout, filters, len(heldout))
    log.info("done: %d steps in %.1f min; held-out offline WER %.3f", step, minutes, wer)
    meta = {
        "steps": step, "wall_minutes": round(minutes, 1), "threads": args.threads, "heldout_wer": round(wer, 4),
        "train_clips": len(train), "args": {k: str(v) for k, v in vars(args).items()}, "dims": asdict(DIMS),
        "history": history,
    }
    save(model, tokenizer, args.out, meta)
    torch.save(
        {"model": model.state_dict(), "ctc_head": ctc_head.state_dict(), "frame_head": frame_head.state_dict(),
                 "optimizer": optimizer.state_dict(),
         "step": step, "elapsed": minutes * 60, "history": history},
        ckpt,
    )


if __name__ == "__main__":
    main()
