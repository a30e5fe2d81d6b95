"""A word-level tokenizer for the synthetic tasks, built with `tokenizers` and used through transformers."""
from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS, MASK, UNK = "<|endoftext|>", "<|mdm_mask|>", "<|unk|>"  # LLaDA's names; EOS doubles as pad, as in LLaDA


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate([*words, EOS, MASK, UNK])}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=EOS, mask_token=MASK,
                                   unk_token=UNK, padding_side="left")
