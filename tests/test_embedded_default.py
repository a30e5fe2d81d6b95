"""The shipped embedded default loads by name with the code that loads LLaDA-8B, and decodes the tasks."""
import json

from harness.decoding import DecodeConfig, generate
from harness.learn2pd.filter import load_filter
from harness.models import LLaDA, load_model
from harness.models.loading import NAMED_MODELS
from harness.tasks import TASKS, held_out
from harness.tasks.evaluate import answer_text, left_pad

from .conftest import FIXTURE


def test_shipped_checkpoint_is_in_the_official_format():
    folder = NAMED_MODELS["tiny"]
    official_keys = set(json.loads((FIXTURE / "config.json").read_text()))
    assert set(json.loads((folder / "config.json").read_text())) == official_keys
    assert (folder / "model.safetensors").stat().st_size < 10 * 2**20
    model = load_model("tiny")
    assert isinstance(model, LLaDA) and model.tokenizer is not None
    assert model.tokenizer.mask_token_id == model.mask_token_id and model.tokenizer.eos_token_id == model.eos_token_id


def test_shipped_model_and_filter_decode_every_task():
    model = load_model("tiny")
    assert load_filter(NAMED_MODELS["tiny"] / "filter.safetensors").block_length == 8
    for name in TASKS:
        problems = [vars(p) for p in held_out(TASKS[name])["test"][:8]]
        ids, mask = left_pad(model.tokenizer, [p["prompt"] for p in problems])
        for config in (DecodeConfig.create(gen_length=32, block_length=8, eotp=True),
                       DecodeConfig.create(gen_length=32, block_length=8, strategy="learned", filter_path="tiny")):
            out = generate(model, ids, config, attention_mask=mask)
            texts = answer_text(model.tokenizer, out.tokens, model.eos_token_id)
            assert not (out.tokens == model.mask_token_id).any() and all(isinstance(t, str) for t in texts)
            assert (out.nfe <= 32).all() and (not config.eotp or (out.nfe < 32).all())  # EoTP saves forwards
