"""Benchmarks on fixtures in their real formats: MMBench TSV (base64 images, a row reusing
another's image, rotations), a FoodieQA root, VQA JSONL. Expected values are written by hand
from the published formats (InternVL / VLMEvalKit prompt, VQAv2 accuracy, ANLS)."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from PIL import Image

from vlmtune.config import compose_recipe, validate
from vlmtune.errors import ConfigError
from vlmtune.evaluation.benchmarks import cards, mmbench, vqa
from vlmtune.evaluation.benchmarks import foodieqa as foodieqa_bench
from vlmtune.evaluation.benchmarks.score import _normed
from vlmtune.evaluation.multiple_choice import MCItem

COLUMNS = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category",
           "l2-category", "split"]


def png_b64(colour) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


@pytest.fixture
def tsv(tmp_path):
    red = png_b64((255, 0, 0))
    return write_tsv(tmp_path / "MMBench_DEV_EN.tsv", [
        [0, red, "What colour is the square?", "nan", "red", "green", "blue", "black", "A",
         "attribute", "perception", "dev"],
        [1, "0", "What shape is shown?", "Look closely.", "circle", "square", "", "", "B",
         "shape", "perception", "dev"],
    ])


def test_tsv_reads_images_reuse_and_options(tsv):
    items = mmbench.read_tsv(tsv)
    assert [i.index for i in items] == [0, 1]
    assert items[1].image == items[0].image  # "0": row 0's image
    assert Image.open(io.BytesIO(base64.b64decode(items[1].image))).getpixel((0, 0)) == \
        (255, 0, 0)
    assert items[0].hint == ""  # nan
    assert items[1].options == {"A": "circle", "B": "square"}  # empty C, D dropped
    assert (items[0].category, items[0].l2_category) == ("attribute", "perception")


def test_internvl_prompt_exact(tsv):
    first, second = mmbench.read_tsv(tsv)
    assert mmbench.build_prompt(first) == (
        "What colour is the square?\nA. red\nB. green\nC. blue\nD. black\n"
        "Answer with the option's letter from the given choices directly.")
    assert mmbench.build_prompt(second) == (
        "Look closely.\nWhat shape is shown?\nA. circle\nB. square\n"
        "Answer with the option's letter from the given choices directly.")


def test_generated_rotations(tsv):
    items = mmbench.with_rotations(mmbench.read_tsv(tsv))
    assert [i.index for i in items] == [0, 1_000_000, 2_000_000, 3_000_000, 1, 1_000_001]
    r1 = items[1]
    assert r1.options == {"A": "green", "B": "blue", "C": "black", "D": "red"}
    assert r1.answer == "D"  # red moved from A to D
    assert items[2].answer == "C" and items[3].answer == "B"
    assert items[5].options == {"A": "square", "B": "circle"} and items[5].answer == "A"


def test_rotations_in_the_file_are_used_as_is(tmp_path):
    img = png_b64((0, 0, 255))
    path = write_tsv(tmp_path / "circ.tsv", [
        [7, img, "Q?", "", "x", "y", "", "", "A", "c", "l2", "dev"],
        [1_000_007, "7", "Q?", "", "y", "x", "", "", "B", "c", "l2", "dev"],
    ])
    items = mmbench.with_rotations(mmbench.read_tsv(path))
    assert [(i.index, i.group, i.rotation, i.answer) for i in items] == \
        [(7, 7, 0, "A"), (1_000_007, 7, 1, "B")]


@pytest.mark.parametrize(("output", "expected"), [
    ("B", "B"),
    ("The answer is (B).", "B"),
    ("**C**", "C"),
    ("answer: [D]", "D"),
    ("It is blue.", "C"),            # option text, unique
    ("red or green", None),          # two options' texts
    ("A or B", None),                # two letters
    ("I'm sorry, I cannot help with that.", None),  # refusal: unparsed
    ("", None),
])
def test_exact_matching_extraction(output, expected):
    options = {"A": "red", "B": "green", "C": "blue", "D": "black"}
    assert mmbench.extract_answer(output, options) == expected


def test_circular_and_vanilla_accuracy_by_hand():
    def row(index, correct, cat):
        return {"index": index, "correct": correct, "unparsed": not correct,
                "category": cat, "l2_category": "all"}
    # q0: right in all 4 rotations; q1: rotation 0 right, rotation 2 wrong; q2: rotation 0
    # wrong, every other right.
    rows = [row(0 + k * 1_000_000, True, "a") for k in range(4)]
    rows += [row(1 + k * 1_000_000, k != 2, "a") for k in range(4)]
    rows += [row(2 + k * 1_000_000, k != 0, "b") for k in range(4)]
    summary = mmbench.summarize(rows)
    assert summary["n"] == 3 and summary["rows"] == 12
    assert summary["circular_accuracy"] == pytest.approx(1 / 3)
    assert summary["vanilla_accuracy"] == pytest.approx(2 / 3)
    assert summary["unparsed"] == 2
    assert summary["per_category"]["a"] == {"n": 2, "circular_accuracy": 0.5,
                                            "vanilla_accuracy": 1.0}
    assert summary["per_category"]["b"]["circular_accuracy"] == 0.0


def test_prediction_row_fields(tsv):
    item = mmbench.read_tsv(tsv)[0]
    row = mmbench.prediction(item, "PROMPT", "The answer is (A)")
    assert {k: row[k] for k in ("id", "index", "prompt", "output", "parsed", "unparsed",
                                "correct")} == {
        "id": "0", "index": 0, "prompt": "PROMPT", "output": "The answer is (A)",
        "parsed": "A", "unparsed": False, "correct": True}


# --- VQA ------------------------------------------------------------------------------------

def test_vqa_normalisation():
    assert vqa.normalize_answer("Two Dogs!") == "2 dogs"
    assert vqa.normalize_answer("the cat's toy") == "cats toy"
    assert vqa.normalize_answer("1,000") == "1000"
    assert vqa.normalize_answer("3.5 m.") == "3.5 m"


def test_vqa_accuracy_known_pairs():
    ten = ["yes"] * 2 + ["no"] * 8
    # "yes" matches 2 of 10: 8 leave-one-out subsets hold 2 matches (2/3), 2 hold 1 (1/3)
    assert vqa.vqa_accuracy("Yes", ten) == pytest.approx((8 * 2 / 3 + 2 * 1 / 3) / 10)
    three = ["red"] * 3 + ["blue"] * 7
    assert vqa.vqa_accuracy("red", three) == pytest.approx((7 * 1 + 3 * 2 / 3) / 10)
    assert vqa.vqa_accuracy("no", ten) == 1.0
    assert vqa.vqa_accuracy("cat", ["a cat"]) == 1.0  # single reference: exact after norm
    assert vqa.vqa_accuracy("cat", ["cat", "dog"]) == 0.5
    assert vqa.vqa_accuracy("green", ten) == 0.0


def test_anls_known_pairs():
    assert vqa.anls("kitten", ["sitting"]) == pytest.approx(1 - 3 / 7)
    assert vqa.anls("abc", ["xyz"]) == 0.0
    assert vqa.anls("Invoice", ["invoice", "bill"]) == 1.0
    assert vqa.anls("abcd", ["abxy"]) == 0.0  # distance 2/4 = 0.5: not below the threshold
    assert vqa.exact_match("The Invoice.", ["invoice"]) is True


def test_vqa_jsonl_both_shapes(tmp_path):
    path = tmp_path / "vqa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "q1", "image": "img/a.png", "question": "What colour?", "answers": ["red", "red"]},
        {"id": "q2", "image": "img/b.png", "conversations": [
            {"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "2"}],
         "meta": {"answers": ["two"]}},
    ]) + "\n")
    a, b = vqa.read_records(path)
    assert (a.id, a.question, a.answers, a.images) == ("q1", "What colour?", ["red", "red"],
                                                       [tmp_path / "img/a.png"])
    assert (b.question, b.answers) == ("How many?", ["2", "two"])
    assert vqa.prompt_text(b) == \
        "<image>\nHow many?\nAnswer the question using a single word or phrase."
    row = vqa.prediction(b, "P", "Two")
    assert (row["correct"], row["exact_match"], row["anls"]) == (1.0, True, 1.0)  # "two"
    row = vqa.prediction(b, "P", "3")
    assert (row["correct"], row["exact_match"], row["anls"]) == (0.0, False, 0.0)
    assert vqa.summarize([row, vqa.prediction(a, "P", "")])["unparsed"] == 1


# --- FoodieQA -------------------------------------------------------------------------------

def test_foodieqa_root_whole_file(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images/a.jpg")
    recs = [{"question": "这是什么菜？", "question_en": "What dish is this?",
             "choices": ["饺子", "包子", "面条", "米饭"],
             "choices_en": ["dumplings", "buns", "noodles", "rice"], "answer": str(k),
             "question_type": "name", "food_name": "饺子", "question_id": f"sivqa-{k}",
             "food_meta": {"food_file": "images/a.jpg"}} for k in range(3)]
    (tmp_path / "sivqa_tidy.json").write_text(json.dumps(recs, ensure_ascii=False))
    items = foodieqa_bench.load_items(tmp_path, task="sivqa", lang="en", template=0)
    assert [i.answer for i in items] == [0, 1, 2]  # the whole file, no split
    assert items[0].question == (
        "<image>\nWhat dish is this? Here are the options: （A) dumplings\n（B) buns\n"
        "（C) noodles\n（D) rice\n If had to select one of the options, my answer would be (")
    assert items[0].images == [tmp_path / "images/a.jpg"]
    assert len(foodieqa_bench.load_items(tmp_path, task="sivqa", lang="zh", template=0,
                                         limit=2)) == 2


# --- cards and the likelihood norm ----------------------------------------------------------

def test_cards_resolve_paths_and_refuse_unknown(tsv):
    recipe = validate(compose_recipe([
        "experiment=demo", "benchmarks=[heldout,mmbench]", f"benchmark_paths.mmbench={tsv}",
        "benchmark_limits.mmbench=1"]))
    loaded = cards.load_cards(recipe)
    assert list(loaded) == ["foodie_synth_sivqa", "mmbench"]
    assert loaded["mmbench"].format == "mmbench" and loaded["mmbench"].limit == 1
    assert cards.resolve_path(loaded["mmbench"]) == tsv
    cards.check_cards(recipe)
    bad = validate(compose_recipe(["experiment=demo", "benchmarks=[heldout,mmbnch]"]))
    with pytest.raises(ConfigError, match=r"benchmarks\[1\]='mmbnch' .*did you mean mmbench\?"):
        cards.load_cards(bad)
    nopath = validate(compose_recipe(["experiment=demo", "benchmarks=[heldout,vqa]"]))
    with pytest.raises(ConfigError, match=r"set benchmark_paths\.vqa=FILE"):
        cards.check_cards(nopath)
    gone = validate(compose_recipe(["experiment=demo", "benchmarks=[mmbench]",
                                    "benchmark_paths.mmbench=/nonexistent.tsv"]))
    with pytest.raises(ConfigError, match=r"benchmark_paths\.mmbench='/nonexistent.tsv' does"):
        cards.check_cards(gone)


def test_demo_logs_the_bundled_mmbench_sample():
    recipe = validate(compose_recipe(["experiment=demo"]))
    loaded = cards.load_cards(recipe)
    assert list(loaded) == ["foodie_synth_sivqa", "mmbench_synth"]
    items = mmbench.read_tsv(cards.data_file(loaded["mmbench_synth"]))
    assert len(items) == 12 and items[1].image == items[0].image


def test_likelihood_norm_sum_vs_mean():
    item = MCItem("x", "t", "q", [], ["short", "a much longer option"], "AB", 1, "en")
    # sums: A -2.0 (2 tokens), B -3.0 (6 tokens); means: A -1.0, B -0.5
    pred = {"scores": [-2.0, -3.0], "mean_scores": [-1.0, -0.5], "pred": "A", "correct": False}
    by_sum, by_mean = _normed(pred, item, "sum"), _normed(pred, item, "mean")
    assert (by_sum["pred"], by_sum["correct"]) == ("A", False)
    assert (by_mean["pred"], by_mean["correct"]) == ("B", True)
    assert (by_sum["correct_sum"], by_sum["correct_mean"]) == (False, True)


def test_foodieqa_mivqa_and_textqa_files(tmp_path):
    for n in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / f"p{n}.jpg")
    mivqa = [{"question": "哪一张是饺子？", "question_en": "Which one is dumplings?",
              "images": [f"p{n}.jpg" for n in range(4)], "answer": "2",
              "question_type": "name", "qid": "m1"}]
    textqa = [{"question": "饺子是哪里的菜？", "choices": ["东北", "四川", "广东", "上海"],
               "answer": "0", "question_type": "region", "qid": "t1"}]
    (tmp_path / "mivqa_tidy.json").write_text(json.dumps(mivqa, ensure_ascii=False))
    (tmp_path / "textqa_tidy.json").write_text(json.dumps(textqa, ensure_ascii=False))
    (m,) = foodieqa_bench.load_items(tmp_path, task="mivqa", lang="zh", template=0)
    assert m.images == [tmp_path / f"p{n}.jpg" for n in range(4)]
    assert m.question.count("<image>") == 4 and m.answer == 2 and m.letters == "ABCD"
    (t,) = foodieqa_bench.load_items(tmp_path, task="textqa", lang="zh", template=0)
    assert t.images == [] and t.choices == ["东北", "四川", "广东", "上海"] and t.answer == 0
    assert "（A) 东北" in t.question
