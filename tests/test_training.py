"""Training-script pieces that need a model but no training run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.tiny import random_model
from engine.tiny_tokenizer import read_words
from training.data import Example
from training.train import DIMS, AsrLoss, load_model_dir

MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "tiny-en"


@pytest.fixture(scope="module")
def loss_fn() -> AsrLoss:
    model, tokenizer = random_model(DIMS, seed=0)
    vocabulary = read_words()
    heads = torch.nn.Linear(DIMS.dec_hidden, 1), torch.nn.Linear(DIMS.dec_hidden, len(vocabulary) + 1)
    return AsrLoss(model, tokenizer, *heads, vocabulary)


def test_a_given_language_is_in_the_prompt_not_in_the_loss(loss_fn: AsrLoss) -> None:
    audio = np.zeros(16_000, np.float32)
    spoken, spoken_text, _, spoken_given = loss_fn.target(Example(audio, "", ["cat"], silence=False))
    empty, text, _, given = loss_fn.target(Example(audio, "", [], silence=False, language_given=True))
    english = list(loss_fn.template.language_prefix("English"))
    assert spoken_given == 0 and spoken == english + spoken_text + [loss_fn.im_end]
    # After a given "language English<asr_text>", only the end of text is learned.
    assert text == [] and empty == english + [loss_fn.im_end] and given == len(english)
    silent, _, _, silent_given = loss_fn.target(Example(audio, "", [], silence=True))
    assert silent == list(loss_fn.template.language_prefix("None")) + [loss_fn.im_end] and silent_given == 0


def test_init_from_a_model_directory_loads_its_weights() -> None:
    from safetensors.torch import load_file

    model, _ = random_model(DIMS, seed=1)
    load_model_dir(model, MODEL_DIR)
    saved = load_file(str(MODEL_DIR / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v.float()) for k, v in saved.items())
    assert torch.equal(state["thinker.lm_head.weight"], state["thinker.model.embed_tokens.weight"])  # tied
