"""The elimination check: stopping rows once decided gives exactly the full-generation decisions."""

import pytest
import torch

from law_fast.facts import Fact
from law_fast.hf.generate import greedy_continuations
from law_fast.washing.elimination import known_facts

PROMPTS = [
    "The capital of France is",
    "Apple was founded by",
    "The Eiffel Tower is located in",
    "I think that",
    "The man is a",
    "hello world this is",
    "Toyota is headquartered in",
    "Therefore we",
]


def test_stop_when_decided_keeps_every_decision(tiny):
    model, tok = tiny
    conts = greedy_continuations(model, tok, PROMPTS, max_new_tokens=10, batch_size=3)
    facts = []
    for i, (prompt, cont) in enumerate(zip(PROMPTS, conts)):
        text = cont.strip()
        # known: the start / the end of the model's own continuation; unknown: a word it never says
        answer = (text[:2] if i % 3 == 0 else text[-3:]) if len(text) >= 3 and i % 3 != 2 else "zebra"
        head, subject = prompt.rsplit(" ", 1)
        facts.append(Fact(subject, head + " {}", answer, i))
    assert [f.prompt for f in facts] == PROMPTS
    full, full_conts = known_facts(model, tok, facts, 10, 3, stop_when_decided=False)
    rows = []
    handle = model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        fast, fast_conts = known_facts(model, tok, facts, 10, 3, stop_when_decided=True)
    finally:
        handle.remove()
    assert fast == full and any(full) and not all(full)
    for decided, short, long in zip(fast, fast_conts, full_conts):
        if decided:  # stopped once the answer appeared
            assert long.startswith(short)
        else:  # generated to the end, as generate does
            assert short == long
    # rows leave the batch once decided: fewer row-steps than every row for 10 tokens (+ the prefill)
    assert sum(rows) < len(PROMPTS) * 10
    assert known_facts(model, tok, facts, 10, 1, stop_when_decided=True)[0] == full


def test_generation_config_that_changes_greedy_defers_to_generate(tiny):
    from law_fast.hf.generate import plain_greedy as _plain_greedy

    model, tok = tiny
    assert _plain_greedy(model)
    facts = [Fact(p.rsplit(" ", 1)[1], p.rsplit(" ", 1)[0] + " {}", "zebra", i) for i, p in enumerate(PROMPTS)]
    config = model.generation_config
    saved = {
        name: getattr(config, name, None)
        for name in (
            "repetition_penalty",
            "no_repeat_ngram_size",
            "encoder_repetition_penalty",
            "suppress_tokens",
            "eos_token_id",
        )
    }
    try:
        # neutral values spelled out (transformers 4.x defaults, hub configs) keep the plain loop
        config.no_repeat_ngram_size, config.encoder_repetition_penalty, config.suppress_tokens = 0, 1.0, []
        assert _plain_greedy(model)
        config.repetition_penalty = 5.0
        assert not _plain_greedy(model)
        _, conts = known_facts(model, tok, facts, 10, 3)
        assert conts == greedy_continuations(model, tok, PROMPTS, max_new_tokens=10, batch_size=3)
        config.repetition_penalty, config.eos_token_id = 1.0, None  # generate would not stop at EOS
        assert not _plain_greedy(model)
    finally:
        for name, value in saved.items():
            setattr(config, name, value)
    assert _plain_greedy(model)


def test_one_token_check_and_bad_length(tiny):
    model, tok = tiny
    conts = greedy_continuations(model, tok, PROMPTS, max_new_tokens=1, batch_size=3)
    facts = [
        Fact(p.rsplit(" ", 1)[1], p.rsplit(" ", 1)[0] + " {}", c.strip() or "zebra", i)
        for i, (p, c) in enumerate(zip(PROMPTS, conts))
    ]
    assert known_facts(model, tok, facts, 1, 3) == known_facts(model, tok, facts, 1, 3, stop_when_decided=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        known_facts(model, tok, facts, 0, 3)


def test_first_token_eos_decides_without_generating(tiny):
    model, tok = tiny
    eos = tok.eos_token_id
    # make EOS the greedy token after every prompt (the state of a washed fact)
    boost = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: out.index_fill(-1, torch.tensor([eos]), 1e4)
    )
    facts = [Fact(p.rsplit(" ", 1)[1], p.rsplit(" ", 1)[0] + " {}", "Paris", i) for i, p in enumerate(PROMPTS)]
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(1), with_kwargs=True)
    try:
        known, conts = known_facts(model, tok, facts, 10, 3, stop_when_decided=True)
    finally:
        handle.remove()
    assert known == [False] * len(PROMPTS) and conts == [""] * len(PROMPTS)
    assert len(calls) == 3  # one forward per batch of 3 (the prefill decides every row), no further step
    assert known_facts(model, tok, facts, 10, 3, stop_when_decided=False)[0] == known
    boost.remove()
