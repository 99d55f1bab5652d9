"""Pure metric functions on hand-computed examples."""

import math

import pytest

from law_fast.eval.metrics import (
    answer_in,
    exact_match,
    gsm8k_exact_match,
    gsm8k_extract,
    mean,
    ngram_entropy,
    normalize_answer,
    qa_f1,
    text_ngram_entropy,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple,  a day ", "apple day"),
        ("Paris.", "paris"),
        ("the", ""),
        ("Theater anathema", "theater anathema"),  # articles only as whole words
        ("Jean-Paul's", "jeanpauls"),  # punctuation removed, not replaced by spaces
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_f1_exact_and_partial():
    assert qa_f1("Paris", "paris") == 1.0
    # pred "paris is capital" (3 tokens) vs gold "paris" (1): P = 1/3, R = 1, F1 = 2·(1/3)/(4/3) = 0.5
    assert qa_f1(" Paris is the capital", "Paris") == pytest.approx(0.5)
    # pred "bill gates" vs gold "bill gates foundation": P = 1, R = 2/3 → F1 = 0.8
    assert qa_f1("Bill Gates", "Bill Gates Foundation") == pytest.approx(0.8)


def test_f1_edge_cases():
    assert qa_f1("", "Paris") == 0.0  # empty prediction
    assert qa_f1("   ", "Paris") == 0.0
    assert qa_f1("Paris", "") == 0.0  # empty gold
    assert qa_f1("the a an", "The") == 0.0  # articles only: both normalise to nothing
    assert qa_f1("!!!", "...") == 0.0  # punctuation only
    assert qa_f1("Paris!!!", "paris.") == 1.0  # punctuation ignored
    # repeated tokens: multiset intersection counts "paris" once; P = 1/2, R = 1 → 2/3
    assert qa_f1("paris paris", "Paris") == pytest.approx(2 / 3)
    # both repeated: common = 2 of each side → 1.0
    assert qa_f1("new new york", "New New York") == 1.0
    # "new york new" vs "new york": common {new:1, york:1} = 2; P = 2/3, R = 1 → 0.8
    assert qa_f1("new york new", "new york") == pytest.approx(0.8)


def test_exact_match():
    assert exact_match("The  Paris.", "paris") == 1.0
    assert exact_match("Paris France", "paris") == 0.0


def test_answer_in_is_the_reference_rule():
    assert answer_in(" Paris ", " paris, the city of light")
    assert not answer_in("Rome", " paris")
    assert answer_in("US", " the usa")  # substring, as the reference (no word boundary)


@pytest.mark.parametrize(
    "generation, flexible, strict",
    [
        ("She has 5 apples. The answer is 5.", "5.", "5"),
        ("So 20 - 12 = 8. The answer is 8.\n\n", "8.", "8"),  # the regex's final "." is any char but newline
        ("It costs $1,250.50 in total", "$1,250.50", "[invalid]"),
        ("No number here", "[invalid]", "[invalid]"),
        ("The answer is -3. Then 7", "7", "-3."),  # ... so "3." + " " (normalised away later)
    ],
)
def test_gsm8k_extract(generation, flexible, strict):
    assert gsm8k_extract(generation, "flexible") == flexible
    assert gsm8k_extract(generation, "strict") == strict


def test_gsm8k_exact_match_normalises_like_the_harness():
    gold = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 1,800"
    assert gsm8k_exact_match("The answer is 1800.", gold) == 1.0  # "," and trailing "." dropped
    assert gsm8k_exact_match("so $1,800.", gold) == 1.0  # "$" dropped
    assert gsm8k_exact_match("1800 eggs or 17", gold) == 0.0  # flexible takes the last number
    assert gsm8k_exact_match("1800 eggs or 17", gold, mode="strict") == 0.0  # no "The answer is"
    assert gsm8k_exact_match("The answer is 1800. Then 17", gold, mode="strict") == 1.0
    with pytest.raises(ValueError, match="mode"):
        gsm8k_extract("1", "loose")


def test_ngram_entropy_hand_computed():
    # words a b a b: bigrams (a,b),(b,a),(a,b) → p = 2/3, 1/3; trigrams (a,b,a),(b,a,b) → 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    expected = (2 / 3 * h2 + 4 / 3 * 1.0) / 2
    assert text_ngram_entropy("a b a b") == pytest.approx(expected)
    assert text_ngram_entropy("x x x x x x") == 0.0  # fully repetitive
    assert text_ngram_entropy("one") == 0.0  # no n-grams
    assert ngram_entropy(["a b a b", "x x x x"]) == pytest.approx(expected / 2)


def test_mean_of_nothing_is_nan():
    assert math.isnan(mean([]))
    assert mean([1, 2]) == 1.5
