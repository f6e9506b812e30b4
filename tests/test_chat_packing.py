"""Chat-format data (a `messages` column rendered by a chat template, the loss on assistant turns only) and sequence
packing (rows packed into full sequences, each attending to itself only), on tiny causal LMs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunefork import Model, config
from tunefork.config import ConfigError
from tunefork.data import chat, packing, prompts
from tunefork.errors import DataError
from tunefork.models.llm import logits

# a ChatML-like template over the tiny tokenizer's own special tokens
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def conversation(i: int) -> list[dict]:
    return [{"role": "system", "content": "answer briefly"}, {"role": "user", "content": f"how was film {i}?"},
            {"role": "assistant", "content": f"film {i} was good"}, {"role": "user", "content": "and the music?"},
            {"role": "assistant", "content": "great music"}]


def chat_config(base, **sections) -> dict:
    return {"model_type": "llm", "base_model": str(base), "input_features": [{"name": "messages", "type": "messages"}],
            "output_features": [{"name": "reply", "type": "text"}], "prompt": {"chat_template": TEMPLATE},
            "generation": {"max_new_tokens": 5}, "preprocessing": {"global_max_sequence_length": 96}, **sections}


def trainer(**keys) -> dict:
    return {"type": "finetune", "epochs": 1, "batch_size": 4, "learning_rate": 0.01, "early_stop": -1, **keys}


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


# ------------------------------------------------------------------------------------------------ chat data


def test_loss_falls_on_assistant_turns_only(tokenizer):
    ids, mask, firsts, cut = chat.encode(tokenizer, [conversation(7)], TEMPLATE, 512, "t")
    row, scored = ids.row(0), mask.row(0)
    assert len(row) == len(scored) and not cut.any()
    # the scored tokens, as runs, are exactly the two assistant turns as the template writes them
    runs, run = [], []
    for token, on in zip(row.tolist(), scored.tolist(), strict=True):
        if on:
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    runs += [run] if run else []
    assert [tokenizer.decode(r) for r in runs] == ["film 7 was good</s>\n", "great music</s>\n"]
    # the tokens are the whole rendered conversation's, and the user's, system's and the cues' carry no loss
    rendered = tokenizer.apply_chat_template(conversation(7), chat_template=TEMPLATE, tokenize=False)
    assert row.tolist() == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert firsts[0] == int(np.argmax(scored))
    labels = prompts.batch(prompts.Encoded(ids, firsts, cut, mask), np.array([0]), 0)["labels"][0]
    assert labels[scored == 1].tolist() == row[scored == 1].tolist()
    assert (labels != -100).sum() == scored.sum() == sum(len(r) for r in runs)


def test_sharegpt_rows_read_as_messages(tokenizer):
    sharegpt = [{"from": {"user": "human", "assistant": "gpt"}.get(t["role"], t["role"]), "value": t["content"]}
                for t in conversation(3)]
    frame = pd.DataFrame({"conversations": [json.dumps(sharegpt)], "messages": [conversation(3)]})
    assert chat.conversations(frame, "conversations") == chat.conversations(frame, "messages") == [conversation(3)]


@pytest.mark.parametrize(("turns", "says"), [
    ([{"content": "hi"}], "turn 0: the turn has no 'role'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}], "turn 1: the assistant turn has empty"),
    ([{"role": "narrator", "content": "hi"}], "role 'narrator' is not one of"),
    ("[{'role': 'user'", "not a JSON list"),
    ([], "expected a non-empty list"),
])
def test_bad_turns_are_one_sentence_naming_the_row(turns, says):
    frame = pd.DataFrame({"messages": [conversation(0), turns]})
    frame.attrs["source"] = "chats.jsonl"
    with pytest.raises(DataError) as err:
        chat.conversations(frame, "messages")
    assert says in str(err.value) and "chats.jsonl: row 1, column 'messages'" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_model_without_a_chat_template_is_told_to_give_one(tiny_llama, tmp_path):
    cfg = chat_config(tiny_llama, trainer=trainer())
    del cfg["prompt"]
    frame = pd.DataFrame({"messages": [json.dumps(conversation(i)) for i in range(8)]})
    with pytest.raises(ConfigError, match=r"ships no chat template.*prompt.chat_template"):
        Model(cfg, progress=False, quiet=True).train(frame, output_directory=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize(("change", "says"), [
    ({"prompt": {"chat_template": TEMPLATE, "template": "{messages}"}}, "prompt.template: a `messages` input"),
    ({"output_features": [{"name": "reply", "type": "category"}]}, "write type: text"),
    ({"input_features": [{"name": "messages", "type": "text"}]}, "prompt.chat_template renders a `messages` input"),
])
def test_chat_keys_that_would_mean_nothing_are_refused(tiny_llama, change, says):
    with pytest.raises(ConfigError, match=says):
        config.load({**chat_config(tiny_llama), **change})


@pytest.fixture(scope="module")
def chat_run(tiny_llama, tmp_path_factory):
    frame = pd.DataFrame({"messages": [json.dumps(conversation(i)) for i in range(40)]})
    model = Model(chat_config(tiny_llama, trainer=trainer(epochs=2)), progress=False, quiet=True)
    return model, model.train(frame, output_directory=tmp_path_factory.mktemp("chat"))


def test_predict_continues_the_conversation(chat_run, tokenizer):
    model, _ = chat_run
    asked = conversation(99)[:4]  # ends with the user's question
    answered = conversation(99)  # ends with the reference answer, which the model must not be shown
    out = model.predict(pd.DataFrame({"messages": [asked, answered]}))
    text = tokenizer.apply_chat_template(asked, chat_template=TEMPLATE, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        new = model.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    expected = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert out["reply_response"].tolist() == [expected, expected]


def test_chat_run_learns_and_scores_the_closing_turn(chat_run):
    _, result = chat_run
    losses = result.statistics["validation"]["reply"]["loss"]
    assert losses[-1] < losses[0]
    scores = chat_run[0].evaluate(pd.DataFrame({"messages": [conversation(5), conversation(6)]}))["reply"]
    # the generated replies are scored against each conversation's closing turn ("great music")
    assert {"loss", "perplexity", "exact_match", "rouge_l"} <= set(scores) and 0 <= scores["exact_match"] <= 1


# ------------------------------------------------------------------------------------------------ packing


def _token_losses(model, batch: dict) -> torch.Tensor:
    out = logits(model, batch)[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(out.transpose(1, 2), targets, ignore_index=-100, reduction="none")


def test_packed_rows_keep_their_unpacked_per_token_losses(tiny_llama, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    texts = [("Review: a gorgeous, witty film", " positive"), ("Review: dull", " negative and long winded"),
             ("Review: I laughed and cried", " positive"), ("Review: no", " negative")]
    encoded = prompts.encode(tokenizer, [p for p, _ in texts], [o for _, o in texts], prompts.Limits(None, None, 64))
    packed, pad = packing.pack(encoded, capacity=64), tokenizer.eos_token_id
    assert len(packed) < len(encoded)  # short rows share sequences
    with torch.no_grad():
        together = _token_losses(model, packing.batch(packed, np.arange(len(packed)), pad))
        for p in range(len(packed)):
            at = 0
            for r in packed.packs.row(p):
                n = len(encoded.ids.row(r))
                alone = _token_losses(model, prompts.batch(encoded, np.array([r]), pad))[0]
                mine = together[p, at : at + n - 1]
                scored = alone != 0  # -100 positions give 0
                assert torch.allclose(mine[scored], alone[scored], atol=1e-5), (p, r)
                assert int(scored.sum()) == encoded.scored(np.array([r]))
                at += n
    assert packed.scored(np.arange(len(packed))) == encoded.scored(np.arange(len(encoded)))


def test_packing_respects_capacity_and_rows_per_pack():
    rows = prompts.Encoded(prompts.TokenIds.from_rows([[1] * n for n in (30, 5, 20, 7, 9, 3, 18)]),
                           np.ones(7, dtype=np.int64))
    packed = packing.pack(rows, capacity=32)
    assert sorted(packed.members(np.arange(len(packed))).tolist()) == list(range(7))  # each row once
    assert packed.lengths.max() <= 32 and len(packed) == 3  # 92 tokens: 3 packs of 32 is the least possible
    capped = packing.pack(rows, capacity=32, max_rows=2)
    assert max(len(capped.packs.row(p)) for p in range(len(capped))) == 2


def test_packing_trains_fewer_longer_sequences_and_says_so(tiny_llama, tmp_path):
    frame = pd.DataFrame({"instruction": [f"say {i}" for i in range(48)], "output": ["ok " * (1 + i % 7) for i in range(48)]})
    cfg = {"model_type": "llm", "base_model": str(tiny_llama), "input_features": [{"name": "instruction", "type": "text"}],
           "output_features": [{"name": "output", "type": "text"}], "generation": {"max_new_tokens": 2},
           "preprocessing": {"global_max_sequence_length": 64}, "trainer": trainer(packing=True)}
    result = Model(cfg, progress=False, quiet=True).train(frame, output_directory=tmp_path)
    summary = result.efficiency["packing"]
    assert summary["packs"] < summary["rows"] and 0 < summary["fill"] <= 1
    assert result.plan["steps_per_epoch"]["value"] == -(-summary["packs"] // 4)  # batch_size counts packed sequences
    assert np.isfinite(result.statistics["validation"]["output"]["loss"][-1])
    random = {**cfg, "trainer": trainer(packing=False, group_by_length=False)}
    unpacked = Model(random, progress=False, quiet=True).train(frame, output_directory=tmp_path / "unpacked")
    assert unpacked.efficiency["train_tokens"] == result.efficiency["train_tokens"]  # the same rows, the same tokens
    packed_share, random_share = result.efficiency["train_padding_share"], unpacked.efficiency["train_padding_share"]
    assert 0 <= packed_share < random_share < 1  # rows of 7 lengths: random batches pad, packs barely do


def test_a_model_that_cannot_keep_packed_rows_apart_is_refused():
    from transformers import MambaConfig, MambaForCausalLM

    recurrent = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, state_size=4))
    with pytest.raises(ConfigError, match=r"trainer.packing: MambaForCausalLM does not keep packed rows apart.*packing: false"):
        packing.check_model(recurrent, 64)


def test_packing_keys_need_each_other_and_training(tiny_llama):
    base = chat_config(tiny_llama)
    with pytest.raises(ConfigError, match="packing_max_sequences_per_pack needs trainer.packing"):
        config.load({**base, "trainer": trainer(packing_max_sequences_per_pack=2)})
    with pytest.raises(ConfigError, match="trainer.type none trains nothing"):
        config.load({**base, "trainer": {"type": "none", "packing": True}})


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_conversations_read_the_same_from_every_file_format(suffix, tmp_path):
    from tunefork.data import read

    turns = [conversation(i) for i in range(3)]
    frame = pd.DataFrame({"messages": [json.dumps(t) for t in turns] if suffix == ".csv" else turns})
    path = tmp_path / f"chats{suffix}"
    {".jsonl": lambda p: frame.to_json(p, orient="records", lines=True), ".json": lambda p: frame.to_json(p, orient="records"),
     ".parquet": frame.to_parquet, ".csv": lambda p: frame.to_csv(p, index=False)}[suffix](path)
    loaded = read.read(path)
    assert chat.conversations(loaded, "messages") == turns
    assert len(read.fingerprint(loaded)) == 32  # nested turns hash (pandas cannot hash lists or arrays itself)
    if suffix != ".csv":  # a list read from JSON and an array read from Parquet are the same content
        assert read.fingerprint(loaded) == read.fingerprint(frame)


def test_a_served_conversation_is_a_list_of_turns_or_their_json(tiny_llama):
    from pydantic import ValidationError

    from tunefork.serve_model import row_model

    Row = row_model(config.load(chat_config(tiny_llama)))
    assert Row.model_validate({"messages": conversation(1)}).model_dump(by_alias=True)["messages"] == conversation(1)
    assert Row.model_validate({"messages": json.dumps(conversation(1))}).model_dump(by_alias=True)["messages"]
    with pytest.raises(ValidationError):
        Row.model_validate({"messages": 3})
