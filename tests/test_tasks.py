"""Synthetic tasks, their tokenizer, and the training objective (a few steps on a micro model)."""
import argparse
import random

import pytest
import torch

from harness.tasks import TASKS, held_out, training_stream, vocabulary, write_splits
from harness.tasks.synthetic import DRILLS, code_agrees
from harness.tasks.tokenizer import build_tokenizer
from harness.train import answer_mask, batches, make_model, sft_loss


def test_generators_are_deterministic_and_held_out_is_excluded():
    for name, task in TASKS.items():
        a, b = held_out(task), held_out(task)
        assert [p.prompt for p in a["test"]] == [p.prompt for p in b["test"]]
        assert len(a["test"]) == 500 and len(a["validation"]) == 200
        held = {p.prompt for split in a.values() for p in split}
        assert len(held) == 700, f"{name}: held-out prompts must be distinct"
        stream = training_stream(task, held, seed=0)
        assert not any(next(stream).prompt in held for _ in range(2000))


def test_first_test_problems_are_stable():
    """Guards the published test sets against accidental generator changes."""
    firsts = {name: held_out(task)["test"][0].prompt for name, task in TASKS.items()}
    assert firsts["perm"].startswith("perm : ") and firsts["code"].startswith("code : def f ( x , y , z )")
    assert len(set(firsts.values())) == 4


@pytest.mark.parametrize("task, problem, good, bad", [
    ("perm", {"meta": {"numbers": [14, 50, 86]}}, ["50 86 14", "14 50 86"], ["14 14 86", "14 50", "14 50 86 1"]),
    ("code", {"meta": {"reference": "return x * y + 4"}}, ["return 4 + y * x", "return y * x + 4"],
     ["return x * x + 4", "return x * y +", "import os", "return x + y * 4"]),
    ("arith", {"meta": {"target": 12}}, ["3 + 9 = 12 . #### 12"], ["3 + 9 = 12 .", "#### 13"]),
    ("facts", {"meta": {"target": "a red cup"}}, ["a red cup"], ["a red", "red cup"]),
])
def test_scorers_accept_every_valid_answer(task, problem, good, bad):
    assert all(TASKS[task].score(problem, g) for g in good)
    assert not any(TASKS[task].score(problem, b) for b in bad)


def test_code_is_run_not_trusted():
    assert not code_agrees("return x", "return __import__('os')")
    assert code_agrees("return x + y", "return y + x")


def test_every_generated_word_is_in_the_vocabulary():
    tokenizer = build_tokenizer(vocabulary())
    rng = random.Random(0)
    for task in TASKS.values():
        for _ in range(300):
            p = task.sample(rng)
            ids = tokenizer(p.prompt + " " + p.answer).input_ids
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == p.prompt + " " + p.answer


def test_tokenizer_saves_and_loads_through_transformers(tmp_path):
    from transformers import AutoTokenizer
    build_tokenizer(vocabulary()).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.eos_token == "<|endoftext|>" and tok.mask_token == "<|mdm_mask|>" and tok.pad_token_id == tok.eos_token_id
    batch = tok(["perm : 3 4", "perm : 3 4 5"], padding=True)
    assert batch.attention_mask[0][0] == 0  # left padding, as batched decoding expects


def test_write_splits(tmp_path):
    write_splits(tmp_path)
    for name in TASKS:
        for split, n in (("train", 2000), ("validation", 200), ("test", 500)):
            assert len((tmp_path / name / f"{split}.jsonl").read_text().splitlines()) == n


def test_sft_loss_falls_on_a_micro_model():
    torch.manual_seed(0)
    tokenizer = build_tokenizer(vocabulary())
    args = argparse.Namespace(d_model=32, heads=2, layers=1, mlp=64, max_length=64, seed=0)
    model = make_model(args, tokenizer)
    streams = {name: training_stream(task, set(), seed=0) for name, task in TASKS.items()}
    gen_length = 24
    data = batches(tokenizer, streams, batch_size=16, gen_length=gen_length, rng=random.Random(0))
    ids, key_mask = next(data)
    assert (ids[:, -gen_length:] != model.mask_token_id).all()
    masked, t = answer_mask(ids, gen_length, torch.Generator().manual_seed(0))
    assert not masked[:, :-gen_length].any() and masked.any()  # prompts are never masked
    assert ((t > 0) & (t <= 1)).all() and len(set(t.tolist())) == 16
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    before = sft_loss(model, ids, key_mask, gen_length, torch.Generator().manual_seed(1)).item()
    for _ in range(40):
        batch, mask = next(data)
        loss = sft_loss(model, batch, mask, gen_length, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = sft_loss(model, ids, key_mask, gen_length, torch.Generator().manual_seed(1)).item()
    assert after < 0.7 * before


def test_vary_padding_ends_each_row_at_its_own_length():
    tokenizer = build_tokenizer(vocabulary())
    streams = {name: training_stream(task, set(), seed=0) for name, task in TASKS.items()}
    gen_length = 32
    data = batches(tokenizer, streams, batch_size=8, gen_length=gen_length, rng=random.Random(0), vary_padding=True)
    ends = set()
    for _ in range(20):
        ids, key_mask = next(data)
        region, keys = ids[:, -gen_length:], key_mask[:, -gen_length:].bool()
        row_ends = keys.sum(-1)
        assert (keys == (torch.arange(gen_length) < row_ends[:, None])).all()  # each canvas is a prefix
        assert (region[torch.arange(8), row_ends - 1] == tokenizer.eos_token_id).all()  # ending in EOS
        ends |= set(row_ends.tolist())
    assert min(ends) < 8 and len(ends) > 10  # short canvases occur, not only the batch's longest answer

    # What lies past a row's end is invisible: changing it changes neither the loss nor its gradient.
    model = make_model(argparse.Namespace(d_model=32, layers=1, heads=2, mlp=64, max_length=128, seed=0),
                       tokenizer)
    hidden = ~key_mask.bool()
    hidden[:, :-gen_length] = False
    other = ids.masked_fill(hidden, 7)
    losses = [sft_loss(model, x, key_mask, gen_length, torch.Generator().manual_seed(0)).item() for x in (ids, other)]
    assert hidden.any() and losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_train_refuses_a_missing_device_before_building_anything(tmp_path, capsys):
    from harness.train import main
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "run"), "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_train_stops_after_a_step_on_the_full_schedule_and_resumes_to_its_end(tmp_path):
    from harness.train import main
    run = tmp_path / "run"
    micro = ["--out", str(run), "--d-model", "32", "--layers", "1", "--heads", "2", "--mlp", "64", "--steps", "4",
             "--gen-length", "8", "--block-length", "8", "--val-problems", "2", "--tasks", "kv", "kvrev"]
    main(micro + ["--stop-after", "2"])
    state = torch.load(run / "train_state.pt", weights_only=False)
    assert state["step"] == 2 and (run / "model" / "model.safetensors").exists()
    assert [h["step"] for h in state["history"]] == [2] and set(state["history"][0]) >= {"kv", "kvrev"}
    main(micro + ["--resume"])
    assert torch.load(run / "train_state.pt", weights_only=False)["step"] == 4


def test_lookup_drills_answer_from_their_context():
    for task in DRILLS.values():
        problem = task.sample(random.Random(0))
        assert problem.answer in problem.prompt.split() and task.score(vars(problem), problem.answer)
        assert not task.score(vars(problem), "nobody")
