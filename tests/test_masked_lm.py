"""The transformers masked-LM model kind, on a tiny randomly initialised BERT built here."""
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from harness.decoding import ConfigError, DecodeConfig, generate
from harness.models import MaskedLM, load_model


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=96, mask_token_id=63, eos_token_id=62)
    folder = tmp_path_factory.mktemp("bert")
    BertForMaskedLM(config).save_pretrained(folder)
    return folder


def test_loads_as_masked_lm_and_decodes(bert_folder):
    model = load_model(bert_folder)
    assert isinstance(model, MaskedLM) and not model.supports_cache
    assert (model.mask_token_id, model.eos_token_id, model.vocab_size, model.max_length) == (63, 62, 64, 96)
    ids = torch.randint(0, 60, (2, 8))
    out = generate(model, ids, DecodeConfig(gen_length=16, block_length=8))
    assert out.tokens.shape == (2, 16) and out.nfe.tolist() == [16, 16]
    assert not (out.tokens == 63).any()
    fast = generate(model, ids, DecodeConfig.create(gen_length=16, block_length=8, strategy="threshold",
                                                    threshold=0.01))
    assert (fast.nfe < 16).all()


def test_shift_logits_realigns_predictions(bert_folder):
    plain = load_model(bert_folder)
    shifted = load_model(bert_folder, shift_logits=True)
    ids = torch.randint(0, 60, (1, 12))
    a, b = plain(ids), shifted(ids)
    torch.testing.assert_close(b[:, 1:], a[:, :-1])
    torch.testing.assert_close(b[:, 0], a[:, 0])


def test_token_ids_can_be_overridden(bert_folder):
    assert load_model(bert_folder, mask_token_id=5, eos_token_id=6).mask_token_id == 5


def test_cache_is_rejected_before_decoding(bert_folder):
    with pytest.raises(ConfigError, match="has no KV cache"):
        generate(load_model(bert_folder), torch.zeros(1, 4, dtype=torch.long),
                 DecodeConfig.create(gen_length=8, block_length=8, cache="dual"))
