"""evaluate() on the real default model (SmolLM2-135M-Instruct): small subsets, deterministic.

Skipped (with the reason) when the model package or ../shared/data is missing. About a minute
on 2 cores. The 200-item baseline numbers are in the README (measured with `law-fast eval`).
"""

import pytest
from conftest import shared_data, smollm2_marks

import law_fast as lf
from law_fast.cli import demo_facts

DATA = shared_data()
pytestmark = smollm2_marks("reasoning files, WikiText-2")


@pytest.fixture(scope="module")
def smollm2():
    return lf.load_model()


def test_small_subset_is_deterministic_and_sane(smollm2):
    model, tok = smollm2
    kwargs = dict(
        corpus=DATA / "wikitext2" / "wiki.test.raw",
        ppl_max_tokens=512,
        ppl_window=256,
        ppl_stride=128,
        reasoning=["lambada", "arc_easy"],
        limit={"lambada": 10, "arc_easy": 12},
        seed=0,
        data_dir=DATA / "reasoning",
        progress=False,
    )
    first = lf.evaluate(model, tok, **kwargs)
    second = lf.evaluate(model, tok, **kwargs)
    assert first.reasoning == second.reasoning
    assert first.fluency == second.fluency
    assert first.reasoning["arc_easy"]["n"] == 12 and first.reasoning["lambada_openai"]["n"] == 10
    # a real language model: WikiText perplexity far below the vocabulary size (49,152), lambada's
    # last-word perplexity finite and well below it too
    assert 5 < first.fluency["perplexity"] < 200
    assert first.reasoning["lambada_openai"]["perplexity"] < 5000


def test_demo_facts_are_known(smollm2):
    model, tok = smollm2
    washed, _ = demo_facts()
    report = lf.evaluate(model, tok, facts=washed, known_only=True, progress=False)
    block = report.knowledge["facts"]
    assert len(block["case_ids"]) >= 14 and block["rewrite"]["acc"] == 1.0
    assert block["rewrite"]["nll_first_token"] < 2.0  # the answers are likely, not just present
