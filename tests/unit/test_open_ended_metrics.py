"""Open-ended answer metrics against hand-computed values (SQuAD-style bag-of-tokens F1)."""

from __future__ import annotations

import math

import pytest

from vlmtune.evaluation.open_ended import (
    answer_tokens,
    exact_match,
    is_multiple_choice,
    summarize_likelihood,
    token_f1,
)


def test_normalisation_ignores_case_whitespace_and_punctuation():
    assert exact_match("  It is  RED! ", "it is red.")
    assert not exact_match("it is red", "it is blue")
    assert answer_tokens("Hello,   World!!") == ["hello", "world"]


def test_chinese_characters_are_tokens():
    assert answer_tokens("北京烤鸭。") == ["北", "京", "烤", "鸭"]
    assert exact_match("北京 烤鸭", "北京烤鸭！")
    # pred 北京烤鸭 (4 chars) vs ref 烤鸭 (2): overlap 2, P = 2/4, R = 2/2, F1 = 2/3
    assert token_f1("北京烤鸭", "烤鸭") == pytest.approx(2 / 3)


def test_token_f1_by_hand():
    # pred: the cat sat; ref: the cat is here -> overlap {the, cat} = 2, P = 2/3, R = 2/4
    # F1 = 2PR / (P + R) = (2/3) / (7/6) = 4/7
    assert token_f1("The cat sat", "the cat is here") == pytest.approx(4 / 7)
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # bags: min counts a1 + b1 = 2
    assert token_f1("", "") == 1.0
    assert token_f1("", "red") == 0.0
    assert token_f1("blue", "red") == 0.0


def test_loss_is_token_weighted_and_perplexity_its_exponential():
    preds = [{"nll": 6.0, "tokens": 2}, {"nll": 2.0, "tokens": 6}]  # (6 + 2) / 8 = 1.0
    summary = summarize_likelihood(preds)
    assert summary["loss"] == pytest.approx(1.0)
    assert summary["perplexity"] == pytest.approx(math.e)
    assert summary["tokens"] == 8 and summary["n"] == 2


def test_multiple_choice_records_need_both_fields():
    assert is_multiple_choice({"meta": {"answer_index": 1, "choices": ["a", "b"]}})
    assert not is_multiple_choice({"meta": {"choices": ["a", "b"]}})
    assert not is_multiple_choice({"conversations": []})
