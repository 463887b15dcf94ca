"""Adapters turn each source format, written in its real shape, into exact conversation records."""

from __future__ import annotations

import base64
import hashlib
import inspect
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.data.adapters import ADAPTERS, csv_folder, get_adapter, hf, llava, sharegpt
from vlmtune.data.validate import RecordValidator, validate_records
from vlmtune.errors import ConfigError, DataError


def png_bytes(color: str, size: tuple[int, int] = (16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def cached_name(data: bytes, suffix: str = ".png") -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest() + suffix


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A dataset root with images/a.jpg and images/b.png."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 16), "orange").save(tmp_path / "images" / "a.jpg", "JPEG")
    (tmp_path / "images" / "b.png").write_bytes(png_bytes("green"))
    return tmp_path


def records(items) -> list[tuple[int, dict]]:
    out = []
    for _, line, item in items:
        assert not isinstance(item, DataError), item
        out.append((line, item))
    return out


def all_valid(items, image_root: Path) -> list[dict]:
    items = list(items)
    kept = list(validate_records(items, RecordValidator(image_root), on_invalid="raise"))
    assert len(kept) == len(items)
    return kept


def test_registry_names_the_adapters_and_rejects_unknown_names():
    assert set(ADAPTERS) == {"llava", "sharegpt", "hf", "csv", "foodieqa"}
    assert get_adapter("csv") is csv_folder.iter_records
    with pytest.raises(ConfigError, match=r"dataset\.adapter='parquet'"):
        get_adapter("parquet")


# --- LLaVA ---------------------------------------------------------------------------------

LLAVA = [
    {
        "id": "000001",
        "image": "images/a.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\n图中是什么菜？"},
            {"from": "gpt", "value": "北京烤鸭。"},
            {"from": "human", "value": "它来自哪里？"},
            {"from": "gpt", "value": "北京。"},
        ],
    },
    {
        "id": "multi-1",
        "image": ["images/a.jpg", "images/b.png"],
        "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhich picture shows 小笼包?"},
            {"from": "gpt", "value": "The second."},
        ],
        "source": "mix665k",
    },
]


def test_llava_json_array_keeps_records_and_moves_extra_keys_to_meta(root):
    path = root / "llava.json"
    path.write_text(json.dumps(LLAVA, ensure_ascii=False, indent=2), encoding="utf-8")
    got = records(llava.iter_records(path))
    assert got == [
        (1, {**LLAVA[0], "meta": {}}),
        (2, {"id": "multi-1", "image": ["images/a.jpg", "images/b.png"],
             "conversations": LLAVA[1]["conversations"], "meta": {"source": "mix665k"}}),
    ]
    all_valid(llava.iter_records(path), root)


def test_llava_jsonl_streams_with_file_line_numbers_and_default_ids(root):
    path = root / "train.jsonl"
    text_only = {"conversations": [{"from": "human", "value": "你好"},
                                   {"from": "gpt", "value": "你好！"}], "meta": {"lang": "zh"}}
    lines = [json.dumps(LLAVA[0], ensure_ascii=False), "", json.dumps(text_only,
                                                                      ensure_ascii=False)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stream = llava.iter_records(path)
    assert inspect.isgenerator(stream)
    assert records(stream) == [
        (1, {**LLAVA[0], "meta": {}}),
        (3, {"id": "train-3", "conversations": text_only["conversations"],
             "meta": {"lang": "zh"}}),
    ]
    all_valid(llava.iter_records(path), root)


def test_llava_reports_unparseable_lines_and_goes_on(root):
    path = root / "bad.jsonl"
    path.write_bytes(b'{"id": "x",\n' + b'{"id": "\xff"}\n' + b"[1, 2]\n"
                     + json.dumps(LLAVA[0]).encode() + b"\n")
    items = list(llava.iter_records(path))
    assert [(line, getattr(item, "reason", "record")) for _, line, item in items] == [
        (1, "bad_json"), (2, "bad_json"), (3, "bad_record"), (4, "record")]
    assert f"{path}:2: [bad_json] not UTF-8" in str(items[1][2])


def test_llava_json_array_syntax_error_names_the_line(root):
    path = root / "broken.json"
    path.write_text('[\n  {"id": "1"},\n  {"id": }\n]\n', encoding="utf-8")
    [(file, line, err)] = list(llava.iter_records(path))
    assert (file, line, err.reason, err.line) == (str(path), 3, "bad_json", 3)


def test_llava_takes_no_column_mapping(root):
    with pytest.raises(ConfigError, match="dataset.columns"):
        list(llava.iter_records(root / "x.json", question="q"))


# --- ShareGPT / OpenAI messages ------------------------------------------------------------


def test_sharegpt_from_value_and_role_content(root):
    path = root / "chat.jsonl"
    rows = [
        {"id": "s1", "images": ["images/a.jpg"], "conversations": [
            {"from": "system", "value": "你是美食专家。"},
            {"from": "user", "value": "<image>这是什么？"},
            {"from": "assistant", "value": "麻婆豆腐。"},
        ]},
        {"conversations": [
            {"from": "human", "value": "推荐一道川菜"},
            {"from": "gpt", "value": "回锅肉。"},
        ], "lang": "zh"},
        {"conversations": [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！有什么可以帮你？"},
        ]},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    assert records(sharegpt.iter_records(path)) == [
        (1, {"id": "s1", "image": "images/a.jpg", "conversations": [
            {"from": "human", "value": "<image>这是什么？"},
            {"from": "gpt", "value": "麻婆豆腐。"},
        ], "meta": {"system": "你是美食专家。"}}),
        (2, {"id": "chat-2", "conversations": [
            {"from": "human", "value": "推荐一道川菜"},
            {"from": "gpt", "value": "回锅肉。"},
        ], "meta": {"lang": "zh"}}),
        (3, {"id": "chat-3", "conversations": [
            {"from": "human", "value": "你好"},
            {"from": "gpt", "value": "你好！有什么可以帮你？"},
        ], "meta": {}}),
    ]
    all_valid(sharegpt.iter_records(path), root)


def test_openai_messages_with_local_paths_and_a_data_uri(root):
    data = png_bytes("red", (12, 10))
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    rows = [
        {"id": "o1", "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image", "image": "images/a.jpg"},
                {"type": "image_url", "image_url": {"url": str(root / "images" / "b.png")}},
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "Both are 中餐."}]},
        ]},
        {"id": "o2", "messages": [
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": uri}},
                {"type": "text", "text": "这是什么颜色？"},
            ]},
            {"role": "assistant", "content": "红色。"},
        ]},
    ]
    path = root / "openai.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    got = records(sharegpt.iter_records(path, data_uri_dir=root / "cache" / "uri"))
    name = cached_name(data)
    assert got == [
        (1, {"id": "o1", "image": ["images/a.jpg", "images/b.png"], "conversations": [
            {"from": "human", "value": "Compare\n<image>\n<image>"},
            {"from": "gpt", "value": "Both are 中餐."},
        ], "meta": {"system": "Answer briefly."}}),
        (2, {"id": "o2", "image": f"cache/uri/{name}", "conversations": [
            {"from": "human", "value": "<image>\n这是什么颜色？"},
            {"from": "gpt", "value": "红色。"},
        ], "meta": {}}),
    ]
    assert (root / "cache" / "uri" / name).read_bytes() == data
    all_valid(sharegpt.iter_records(path, data_uri_dir=root / "cache" / "uri"), root)


def test_sharegpt_data_uri_problems_are_record_errors(root, tmp_path_factory):
    rows = [
        {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
        {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]}]},
    ]
    path = root / "odd.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    got = [item.reason for _, _, item in sharegpt.iter_records(path, data_uri_dir=root / "c")]
    assert got == ["unreadable_image", "missing_image", "bad_record"]
    without_dir = list(sharegpt.iter_records(path))[0][2]
    assert without_dir.reason == "bad_record" and "data_uri_dir" in str(without_dir)
    with pytest.raises(ConfigError, match="data_uri_dir"):
        list(sharegpt.iter_records(path, data_uri_dir=tmp_path_factory.mktemp("elsewhere")))


# --- Hugging Face datasets -----------------------------------------------------------------


def _hf_features(answer_type: str = "string"):
    import datasets

    return datasets.Features({
        "qid": datasets.Value("string"), "q": datasets.Value("string"),
        "a": datasets.Value(answer_type), "img": datasets.Image(),
        "lang": datasets.Value("string"),
    })


def test_hf_save_to_disk_with_an_image_feature(root, monkeypatch):
    import datasets

    embedded = png_bytes("blue")
    monkeypatch.chdir(root)
    ds = datasets.Dataset.from_dict({
        "qid": ["h1", "h2"],
        "q": ["这是什么菜？", "What is this?"],
        "a": ["宫保鸡丁", "Dumplings"],
        "img": [{"bytes": embedded, "path": None}, "images/b.png"],
        "lang": ["zh", "en"],
    }, features=_hf_features())
    saved = root / "hf_saved"
    ds.save_to_disk(str(saved))
    images = root / "images"
    got = records(hf.iter_records(saved, image_root=images, cache_dir=images / "cache",
                                  id="qid", question="q", answer="a", image="img"))
    assert got == [
        (1, {"id": "h1", "image": f"cache/{cached_name(embedded)}", "conversations": [
            {"from": "human", "value": "<image>\n这是什么菜？"},
            {"from": "gpt", "value": "宫保鸡丁"},
        ], "meta": {"lang": "zh"}}),
        # save_to_disk embeds the file and keeps its base name, which exists under the root
        (2, {"id": "h2", "image": "b.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "Dumplings"},
        ], "meta": {"lang": "en"}}),
    ]
    assert (images / "cache" / cached_name(embedded)).read_bytes() == embedded
    all_valid(hf.iter_records(saved, image_root=images, cache_dir=images / "cache",
                              id="qid", question="q", answer="a", image="img"), images)


def test_hf_parquet_files_stream_rows(root, monkeypatch):
    import datasets

    embedded = png_bytes("purple")
    monkeypatch.chdir(root)
    ds = datasets.Dataset.from_dict({
        "qid": ["p1", "p2"],
        "q": ["图里有几个饺子？", "<image>\nHow many?"],
        "a": [3, 5],
        "img": ["images/b.png", {"bytes": embedded, "path": None}],
        "lang": ["zh", "en"],
    }, features=_hf_features("int64"))
    parquet = root / "train.parquet"
    ds.to_parquet(str(parquet))
    got = records(hf.iter_records(parquet, cache_dir=root / "cache", id="qid", question="q",
                                  answer="a", image="img"))
    assert got == [
        (1, {"id": "p1", "image": "images/b.png", "conversations": [
            {"from": "human", "value": "<image>\n图里有几个饺子？"},
            {"from": "gpt", "value": "3"},
        ], "meta": {"lang": "zh"}}),
        (2, {"id": "p2", "image": f"cache/{cached_name(embedded)}", "conversations": [
            {"from": "human", "value": "<image>\nHow many?"},
            {"from": "gpt", "value": "5"},
        ], "meta": {"lang": "en"}}),
    ]
    all_valid(hf.iter_records(parquet, cache_dir=root / "cache", id="qid", question="q",
                              answer="a", image="img"), root)


def test_hf_column_mapping_errors_name_the_key(root):
    import datasets

    parquet = root / "t.parquet"
    datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]}).to_parquet(str(parquet))
    assert records(hf.iter_records(parquet)) == [(1, {"id": "t-1", "conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "meta": {}})]
    with pytest.raises(ConfigError, match=r"dataset\.columns\.image='picture'"):
        list(hf.iter_records(parquet, image="picture"))
    with pytest.raises(ConfigError, match="dataset.columns"):
        list(hf.iter_records(parquet, choices="c"))


# --- CSV / TSV -----------------------------------------------------------------------------


def test_csv_rows_with_image_folder_and_file_line_numbers(root):
    path = root / "data.csv"
    path.write_text(
        "id,image,question,answer,category\n"
        "c1,a.jpg,这是什么菜？,北京烤鸭,main\n"
        'c2,b.png,"第一行\n第二行",小笼包,snack\n'
        "\n"
        ",,没有图片的问题,回答,text\n",
        encoding="utf-8",
    )
    got = records(csv_folder.iter_records(path, image_dir="images"))
    assert got == [
        (2, {"id": "c1", "image": "images/a.jpg", "conversations": [
            {"from": "human", "value": "<image>\n这是什么菜？"},
            {"from": "gpt", "value": "北京烤鸭"},
        ], "meta": {"category": "main"}}),
        (3, {"id": "c2", "image": "images/b.png", "conversations": [
            {"from": "human", "value": "<image>\n第一行\n第二行"},
            {"from": "gpt", "value": "小笼包"},
        ], "meta": {"category": "snack"}}),
        (6, {"id": "data-6", "conversations": [
            {"from": "human", "value": "没有图片的问题"},
            {"from": "gpt", "value": "回答"},
        ], "meta": {"category": "text"}}),
    ]
    all_valid(csv_folder.iter_records(path, image_dir="images"), root)


def test_tsv_with_column_mapping_and_an_image_list(root):
    path = root / "qa.tsv"
    path.write_text(
        "qid\timgs\tq\ta\n"
        't1\t["images/a.jpg", "images/b.png"]\t对比两道菜\t都是中餐\n'
        "t2\timages/b.png\tWhat, exactly, is this?\tA \"green\" square\n",
        encoding="utf-8",
    )
    got = records(csv_folder.iter_records(path, id="qid", image="imgs", question="q",
                                          answer="a"))
    assert got == [
        (2, {"id": "t1", "image": ["images/a.jpg", "images/b.png"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\n对比两道菜"},
            {"from": "gpt", "value": "都是中餐"},
        ], "meta": {}}),
        (3, {"id": "t2", "image": "images/b.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat, exactly, is this?"},
            {"from": "gpt", "value": 'A "green" square'},
        ], "meta": {}}),
    ]
    all_valid(csv_folder.iter_records(path, id="qid", image="imgs", question="q", answer="a"),
              root)


def test_csv_bad_lines_and_bad_mappings(root):
    path = root / "bad.csv"
    path.write_bytes(b"id,question,answer\n" + b"x1,\xff\xfe,a\n"
                     + "x2,好,对,extra\n".encode() + "x3,问,答\n".encode())
    got = [(line, getattr(item, "reason", "record")) for _, line, item
           in csv_folder.iter_records(path, image=None)]
    assert got == [(2, "bad_json"), (3, "bad_record"), (4, "record")]
    with pytest.raises(ConfigError, match=r"dataset\.columns\.question='prompt'"):
        list(csv_folder.iter_records(path, question="prompt"))
    with pytest.raises(ConfigError, match="must end in"):
        list(csv_folder.iter_records(root / "data.txt"))


def test_hf_dataset_dict_picks_the_split(root):
    import datasets

    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": ["问一"], "answer": ["答一"]}),
        "test": datasets.Dataset.from_dict({"question": ["问二"], "answer": ["答二"]}),
    })
    dd.save_to_disk(str(root / "dd"))
    [(_, line, rec)] = list(hf.iter_records(root / "dd"))
    assert (line, rec["id"], rec["conversations"][0]["value"]) == (1, "dd-train-1", "问一")
    [(_, _, rec)] = list(hf.iter_records(root / "dd", split="test"))
    assert (rec["id"], rec["conversations"][1]["value"]) == ("dd-test-1", "答二")
    with pytest.raises(ConfigError, match=r"dataset\.split='val'"):
        list(hf.iter_records(root / "dd", split="val"))
