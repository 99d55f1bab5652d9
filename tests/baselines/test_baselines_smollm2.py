"""The fine-tuning baselines on a real pre-trained model: SmolLM2-135M-Instruct and CounterFact facts it knows.

Each method, with its default settings (``WashConfig.baseline_preset(method, model)``), must lower
the accuracy on the washed facts (the model is reverted after each method).  Skipped (with the reason)
when the model package or ../shared/data is missing.  About three minutes on 2 cores.
"""

import pytest
from conftest import shared_data, smollm2_marks

import law_fast as lf
from law_fast.config import BASELINE_METHODS

DATA = shared_data()
pytestmark = smollm2_marks()

# CounterFact (validation file) facts that SmolLM2-135M-Instruct produces, answers not inside their subjects
# (the same facts as test_smollm2_e2e.py)
WASH_IDS = [104, 253, 406, 660, 780, 864]
# CPU time: fewer ME-FT passes than its default 25 (6 facts make one batch, so a pass is one step)
OVERRIDES = {"me-ft": {"ft_epochs": 10}}


@pytest.fixture(scope="module")
def smollm2():
    return lf.load_model()


@pytest.fixture(scope="module")
def washed_facts():
    facts = {f.case_id: f for f in lf.load_facts(DATA / "counterfact" / "counterfact-val.json", limit=400)}
    return [facts[i] for i in WASH_IDS]


@pytest.fixture(scope="module")
def held_out():
    return lf.load_corpus(str(DATA / "wikitext2" / "wiki.test.raw"), n_samples=4, min_chars=200)


@pytest.mark.parametrize("method", BASELINE_METHODS)
def test_baseline_lowers_washed_accuracy(method, smollm2, washed_facts, held_out):
    model, tok = smollm2
    config = lf.WashConfig.baseline_preset(
        method, model, guard_texts=4, guard_max_length=64, **OVERRIDES.get(method, {})
    )
    result = lf.wash(model, tok, washed_facts, config, corpus=held_out, progress=False)
    try:
        report, training = result.report, result.report["training"]
        assert report["known_before"] == len(washed_facts), "the pinned model should know every selected fact"
        # the wash's own final check: greedy 10-token continuations, answer substring (the paper's Accuracy)
        assert report["still_known_after"] < len(washed_facts), f"{method} washed nothing"
        assert training["guard"]["final_ppl"] < training["guard"]["bound_ppl"]  # fluency within the guard's bound
    finally:
        result.revert()
