"""Adapters on tiny random models of every family: keys, block outputs, weight orientation, errors."""

import copy

import pytest
import torch

from law_fast.hf.adapters import get_adapter, model_fingerprint
from law_fast.hf.hooks import capture, run_until
from law_fast.hf.tokens import encode_at, fill


def _mlp_input_to_key(family, mlp, x):
    """The down-projection input computed by hand from the MLP's input x."""
    if family == "gpt2":
        return mlp.act(mlp.c_fc(x))
    if family == "gptj":
        return mlp.act(mlp.fc_in(x))
    if family == "gpt_neox":
        return mlp.act(mlp.dense_h_to_4h(x))
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


def _batch(tok):
    return tok(["The capital of France is", "Apple was founded by Steve"], return_tensors="pt", padding=True)


def test_keys_equal_manual_computation(tiny):
    model, tok = tiny
    adapter = get_adapter(model)
    family = model.config.model_type
    enc = _batch(tok)
    layer = 2
    mlp = adapter.block(model, layer).mlp
    seen = {}
    handle = mlp.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    try:
        with torch.no_grad(), capture(model, adapter, key_layers=[layer]) as store:
            model(**enc)
    finally:
        handle.remove()
    manual = _mlp_input_to_key(family, mlp, seen["x"])
    assert store[("key", layer)].shape[-1] == adapter.dims(model, layer)[1]
    torch.testing.assert_close(store[("key", layer)], manual, rtol=1e-5, atol=1e-6)


def test_block_outputs_and_early_stop(tiny):
    model, tok = tiny
    adapter = get_adapter(model)
    enc = _batch(tok)
    with torch.no_grad():
        full = model(**enc, output_hidden_states=True).hidden_states
        with capture(model, adapter, key_layers=[1], block_layers=[1, 2], stop_after=2) as store:
            run_until(model, **enc)
    # hidden_states[l + 1] is the output of block l (the last one is normed in some models; 1, 2 < n - 1)
    torch.testing.assert_close(store[("block", 1)], full[2])
    torch.testing.assert_close(store[("block", 2)], full[3])


def test_weight_orientation_and_edit_is_used(tiny):
    model, tok = tiny
    adapter = get_adapter(model)
    layer = 1
    d, f = adapter.dims(model, layer)
    assert (d, f) == (32, 64)
    module = adapter.down_proj_module(model, layer)
    k = torch.randn(3, f)
    with torch.no_grad():
        before = module(k)
        W = adapter.weight(model, layer).clone()
        bias = before - k @ W.T
        delta = torch.randn(d, f) * 0.1
        adapter.add_to_weight(model, layer, delta)
        after = module(k)
    torch.testing.assert_close(after - before, k @ delta.T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bias, before - k @ W.T)
    with pytest.raises(ValueError, match="expected \\(d, f\\)"):
        adapter.add_to_weight(model, layer, torch.zeros(f, d))


def test_fingerprint_changes_with_weights(tiny):
    model, _ = tiny
    adapter = get_adapter(model)
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    adapter.add_to_weight(model, 0, torch.ones(adapter.dims(model, 0)))
    assert model_fingerprint(model) != before


def test_fingerprint_sees_every_value(tiny):
    """A change at any one position — not only at sampled ones — gives another fingerprint, also
    when the weight is changed behind the model's back (a new tensor, or through .data)."""
    model, _ = tiny
    before = model_fingerprint(model)
    weight = next(p for n, p in model.named_parameters() if p.numel() > 1000)
    for index in (1, weight.numel() // 3 + 1, weight.numel() - 2):
        with torch.no_grad():
            old = weight.view(-1)[index].item()
            weight.view(-1)[index] += 1e-3
        assert model_fingerprint(model) != before, index
        with torch.no_grad():
            weight.view(-1)[index] = old
        assert model_fingerprint(model) == before
    twin = copy.deepcopy(model)
    assert model_fingerprint(twin) == before
    with torch.no_grad():
        next(p for n, p in twin.named_parameters() if p.numel() > 1000).data = weight.detach().clone() * 1.0001
    assert model_fingerprint(twin) != before


def test_unsupported_model_names_class_and_how_to_add():
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    with pytest.raises(NotImplementedError, match="BertForMaskedLM.*ADAPTERS"):
        get_adapter(model)


def test_subject_index_by_offsets(tiny_tokenizer):
    tok = tiny_tokenizer
    text, end = fill("The mother tongue of {} is", "Danielle Darrieux")
    assert text[:end].endswith("Darrieux")
    enc = encode_at(tok, [text, "x"], [end, 1])
    ids = enc.input_ids[0, : enc.index[0] + 1].tolist()
    assert tok.decode(ids).endswith("Darrieux")
    assert tok.decode(enc.input_ids[0, enc.index[0] + 1 : enc.lengths[0]].tolist()) == " is"
    assert int(enc.index[1]) == 0


def test_tokenize_at_in_chunks_equals_one_call(tiny_tokenizer, monkeypatch):
    """Tokenised TOKENIZE_ROWS texts at a time (bounded memory), into int32 rows: the same ids and
    subject indices as one tokenizer call over all texts; the slow-tokenizer path agrees too."""
    from law_fast.hf import tokens

    pairs = [fill(t, s) for t in ("The capital of {} is", "{} was born in", "A {}") for s in ("France", "Ann Lee")]
    texts, ends = [t for t, _ in pairs] * 3, [e for _, e in pairs] * 3
    whole = tiny_tokenizer(texts)["input_ids"]
    monkeypatch.setattr(tokens, "TOKENIZE_ROWS", 4)
    rows, index = tokens.tokenize_at(tiny_tokenizer, texts, ends)
    assert [list(r) for r in rows] == [list(r) for r in whole] and all(r.itemsize == 4 for r in rows)
    for row, i, text, end in zip(rows, index, texts, ends):
        assert tiny_tokenizer.decode(list(row[: i + 1])) == text[:end]
    monkeypatch.setattr(type(tiny_tokenizer), "is_fast", property(lambda self: False))
    assert tokens.tokenize_at(tiny_tokenizer, texts, ends) == (rows, index)


def test_subject_index_with_bos_tokenizer(tiny_tokenizer):
    """A BOS-adding tokenizer shifts the index by one (the reference's piecewise count does not)."""
    import copy

    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
    )
    text, end = fill("The capital of {} is", "France")
    plain = encode_at(tiny_tokenizer, [text], [end])
    bos = encode_at(tok, [text], [end])
    assert int(bos.input_ids[0, 0]) == 0
    assert int(bos.index[0]) == int(plain.index[0]) + 1


def test_half_precision_edits_are_kept_in_a_float32_island(tiny, tmp_path):
    """bfloat16 spacing is 2⁻⁷ of a weight: an edit of 1e-4 of it would round away.  The edited
    down-projection becomes float32 (inputs and outputs cast at its edges), the edit is kept exactly,
    the model still computes in bfloat16 around it; revert ends the island bit for bit."""
    from law_fast.hf.adapters import end_float32_island

    model, tok = tiny
    model = copy.deepcopy(model).to(torch.bfloat16)
    adapter = get_adapter(model)
    layer = 1
    module = adapter.down_proj_module(model, layer)
    before = module.weight.detach().clone()
    enc = _batch(tok)
    with torch.no_grad():
        logits = model(**enc).logits
        delta = 1e-4 * before.float().abs().mean() * torch.randn(adapter.dims(model, layer), dtype=torch.float64)
        adapter.add_to_weight(model, layer, delta)
        assert module.weight.dtype == torch.float32
        kept = module.weight - before.float()
        want = (delta.T if adapter.transposed else delta).float()
        assert (kept - want).norm() < 1e-3 * want.norm()  # float32 rounding of the sum only
        plain = before.clone()
        plain.add_(want.to(torch.bfloat16))
        assert (plain.float() - before.float() - want).norm() > 0.5 * want.norm()  # what bfloat16 would keep
        edited = model(**enc).logits
        assert edited.dtype == torch.bfloat16 and not torch.equal(edited, logits)
        model.save_pretrained(tmp_path)  # saved as it is: the island's weight in float32
        from safetensors.torch import load_file

        saved = load_file(tmp_path / "model.safetensors")
        assert saved[adapter.down_proj_name(layer)].dtype == torch.float32
        adapter.add_to_weight(model, layer, delta)  # a second edit: the same island
        assert len(module._forward_hooks) == 1 and len(module._forward_pre_hooks) == 1
        assert end_float32_island(module) and not end_float32_island(module)
        module.weight.copy_(before)
        assert module.weight.dtype == torch.bfloat16 and not module._forward_hooks and not module._forward_pre_hooks
        assert torch.equal(model(**enc).logits, logits)


def _prefix_space_tokenizer():
    """A Llama-2-style tokenizer: the text gets a leading "▁" and every space becomes "▁" (no pre-tokenizer),
    BOS added — " French" tokenised alone is a lone "▁" then "▁French"."""
    from tokenizers import SentencePieceBPETokenizer, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    sp = SentencePieceBPETokenizer()
    text = ["The language of France is French", "The mother tongue of Danielle Darrieux is French"] * 20
    sp.train_from_iterator(text, vocab_size=120, min_frequency=1, special_tokens=["<s>"], show_progress=False)
    backend = sp._tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>")


def test_answer_ids_are_the_answer_as_it_follows_the_prompt(tiny_tokenizer):
    """The answer's ids are those of prompt + " " + answer after the prompt's: with a prefix-space tokenizer
    (Llama-2, Mistral) " French" alone starts with a lone "▁", which a z* target, a baseline's labels or the
    audit's ranks would otherwise push; with byte-level BPE the two agree."""
    from law_fast.baselines.training import build_examples
    from law_fast.facts import Fact
    from law_fast.hf.tokens import answer_ids
    from law_fast.washing.targets import answer_token_id, answer_token_ids

    fact = Fact(subject="France", template="The language of {} is", answer="French", case_id=0)
    tok = _prefix_space_tokenizer()
    alone = tok.convert_ids_to_tokens(tok(" French", add_special_tokens=False)["input_ids"])
    assert alone[0] == "▁" and len(alone) > 1  # the trap exists in this tokenizer
    ids = answer_ids(tok, fact.prompt, fact.answer)
    assert tok.convert_ids_to_tokens(ids) == ["▁French"]
    assert answer_token_ids(tok, fact) == ids and answer_token_id(tok, fact) == ids[0]
    (example,) = build_examples(tok, [fact], "answer")
    assert list(example.input_ids) == tok("The language of France is French")["input_ids"]
    assert [i for i, on in zip(example.input_ids, example.labelled) if on] == ids
    plain = tiny_tokenizer(" French", add_special_tokens=False)["input_ids"]  # byte-level BPE: the same ids
    assert answer_ids(tiny_tokenizer, fact.prompt, " French ") == plain
    with pytest.raises(ValueError, match="tokenises to nothing"):
        answer_ids(tiny_tokenizer, fact.prompt, "   ")


def test_rewriting_rows_append_the_target_ids_after_the_prompt():
    """z*'s rewriting rows are the prompt's ids then the target's ids but the last, as ids: with a prefix-space
    tokenizer the answer's text decoded and tokenised again with the prompt would lose its space ("isFrench")."""
    from law_fast.facts import Fact
    from law_fast.hf.tokens import answer_ids
    from law_fast.washing.targets import rewriting_rows

    tok = _prefix_space_tokenizer()
    fact = Fact(subject="Danielle Darrieux", template="The mother tongue of {} is", answer="French French", case_id=0)
    labels = answer_ids(tok, fact.prompt, fact.answer)
    assert len(labels) == 2
    assert tok(fact.prompt + tok.decode(labels[:1]))["input_ids"] != tok(fact.prompt)["input_ids"] + labels[:1]
    templates = ["{}", "Then {}"]
    rows, index = rewriting_rows(tok, [fact], templates, [labels])
    assert len(rows) == len(templates) + 1
    for row, context in zip(rows, templates):
        prompt = tok(context.format(fact.prompt))["input_ids"]
        assert list(row) == prompt + labels[:1]
        assert tok.decode(list(row), skip_special_tokens=True).endswith("is French")
    assert list(rows[-1]) == tok(f"{fact.subject} is a")["input_ids"]  # the KL row: no target
    assert tok.convert_ids_to_tokens([rows[0][index[0]]])[0].endswith("ux")  # the subject's last token
