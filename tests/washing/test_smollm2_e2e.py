"""End to end on a real pre-trained model: SmolLM2-135M-Instruct and real CounterFact facts it knows.

Skipped (with the reason) when the model package or ../shared/data is missing.  Takes a few minutes on 2 cores.
"""

import pytest
from conftest import shared_data, smollm2_marks

import law_fast as lf
from law_fast.washing.elimination import known_facts

DATA = shared_data()
pytestmark = smollm2_marks()

# CounterFact (validation file) facts that SmolLM2-135M-Instruct produces (checked below before washing);
# washed answers do not occur in their subjects (a continuation that repeats "Toyota Corolla" would
# still "contain" Toyota)
WASH_IDS = [104, 253, 406, 660, 780, 864]
CONTROL_IDS = [1699, 1709, 1956, 2471, 3045, 3066, 3093, 3212, 3604, 3845]


@pytest.fixture(scope="module")
def smollm2():
    return lf.load_model()


@pytest.fixture(scope="module")
def counterfact():
    facts = {f.case_id: f for f in lf.load_facts(DATA / "counterfact" / "counterfact-val.json", limit=400)}
    return [facts[i] for i in WASH_IDS], [facts[i] for i in CONTROL_IDS]


def test_wash_removes_facts_and_keeps_controls(smollm2, counterfact):
    model, tok = smollm2
    washed, control = counterfact
    known_w, _ = known_facts(model, tok, washed)
    known_c, _ = known_facts(model, tok, control)
    assert all(known_w) and all(known_c), "the pinned model should know every selected fact"

    cfg = lf.WashConfig.preset(model, mom2_n_samples=300)
    result = lf.wash(model, tok, washed, cfg, corpus=str(DATA / "wikitext2" / "wiki.test.raw"), progress=False)
    after_w, conts = known_facts(model, tok, washed)
    after_c, _ = known_facts(model, tok, control)
    # the bar: washed accuracy <= 20 %, controls >= 80 % of their original accuracy (100 %)
    assert sum(after_w) <= 0.2 * len(washed), (
        f"still produced after the wash: {[c for c, k in zip(conts, after_w) if k]}"
    )
    assert sum(after_c) >= 0.8 * len(control), f"controls kept: {sum(after_c)} of {len(control)}"
    assert result.report["still_known_after"] == sum(after_w)
    # the wash is exactly reversible
    result.revert()
    assert known_facts(model, tok, washed)[0] == known_w
