import copy
import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mossa.errors import MossaError
from mossa.tasks import (TASK_SOURCES, builtin_templates, convert_row, hub_table, load_tasks, render_body,
                         stated_rows, template_fields)
from mossa.tasks import _hub
from mossa.tasks._hub import CLUSTERS, table_template_fields
from tests.conftest import FLAN_MINI

FIXTURES = Path(__file__).parent / "fixtures"
ROWS = json.loads((FIXTURES / "hub_rows.json").read_text())

# The task names of the FLAN code (google-research/FLAN, flan/task_splits.py).
FLAN_2021 = """
aeslc cnn_dailymail gigaword multi_news newsroom samsum xsum ag_news_subset opinion_abstracts_rotten_tomatoes
opinion_abstracts_idebate wiki_lingua_english_en web_nlg_en common_gen e2e_nlg dart squad_v1 squad_v2 drop multirc
openbookqa bool_q trivia_qa natural_questions arc_challenge arc_easy glue_mrpc glue_qqp paws_wiki stsb imdb_reviews
sentiment140 yelp_polarity_reviews sst2 true_case fix_punct word_segment copa hellaswag story_cloze piqa
para_crawl_enes wmt14_enfr wmt16_translate_deen wmt16_translate_tren wmt16_translate_csen wmt16_translate_fien
wmt16_translate_roen wmt16_translate_ruen definite_pronoun_resolution winogrande wsc anli_r1 anli_r2 anli_r3 cb rte
mnli_matched mnli_mismatched qnli wnli snli math_dataset quac coqa wic cola trec record cosmos_qa
""".split()
# Tasks per cluster in the FLAN paper's figure, with ANLI, MNLI, ARC, SQuAD split into their task names
# and the FLAN code's true_case and word_segment in Misc beside fix_punct.
PAPER_CLUSTER_SIZES = {
    "Natural language inference": 10, "Reading comprehension": 6, "Closed-book QA": 4, "Commonsense reasoning": 4,
    "Coreference": 3, "Sentiment": 4, "Paraphrase detection": 4, "Struct-to-text": 4, "Translation": 8,
    "Summarization": 11, "Reading comprehension with commonsense": 2, "Misc": 9,
}
UNAVAILABLE = {"story_cloze", "newsroom", "opinion_abstracts_idebate", "opinion_abstracts_rotten_tomatoes"}


@pytest.fixture()
def hub_rows(monkeypatch):
    """`datasets.load_dataset` answering from the fixture rows; returns (rows to edit, calls seen)."""
    datasets = pytest.importorskip("datasets")
    rows, calls = copy.deepcopy(ROWS), []

    def load_dataset(path, name=None, split=None, **kwargs):
        calls.append({"path": path, "name": name, "split": split, **kwargs})
        found = rows[f"{path}|{name or ''}"]
        parts = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in found.items()})
        return parts if split is None else parts[split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return rows, calls


# --- the table ------------------------------------------------------------------------------------

def test_table_covers_flan_2021_in_the_paper_clusters():
    table = hub_table()
    flan = [name for name, task in table.items() if task.flan2021]
    assert len(flan) == 69 and sorted(flan) == sorted(FLAN_2021)
    assert Counter(table[name].cluster for name in flan) == PAPER_CLUSTER_SIZES
    assert {name for name, task in table.items() if not task.flan2021} == {
        f"tatoeba_translate_{p}en" for p in ("cs", "de", "fi", "fr", "ro", "ru", "tr")}
    assert {name for name in flan if table[name].unavailable} == UNAVAILABLE


def test_every_entry_is_complete_and_matches_its_template():
    templates = builtin_templates()
    for name, task in hub_table().items():
        assert task.cluster in CLUSTERS, name
        if task.unavailable:
            assert len(task.unavailable) > 40, name
        if "fields" not in task.entry:
            assert task.unavailable, name
            continue
        assert task.dataset and task.entry["train"] and task.entry["test"], name
        assert name in templates, f"{name} has no written template"
        assert template_fields(templates[name].templates[0].text) == table_template_fields(task), name
        if task.entry.get("revision") == "refs/convert/parquet":
            assert task.entry.get("data_dir") and not task.entry.get("config"), name


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_every_flan_mini_task_is_in_the_table_with_its_cluster_and_fields():
    manifest = json.loads((FLAN_MINI / "MANIFEST.json").read_text())["tasks"]
    table = hub_table()
    for name, info in manifest.items():
        assert table[name].cluster == info["cluster"], name
        if not table[name].unavailable:
            assert set(info["input_fields"]) == set(table[name].entry["fields"]), name
            assert ("options" in table[name].entry) == info["has_options"], name


def test_default_hub_tasks_leave_out_what_cannot_be_downloaded():
    catalog = TASK_SOURCES["hub:flan2021"].catalog("hub:flan2021")
    assert {name for name, entry in catalog.items() if entry.default} == set(FLAN_2021) - UNAVAILABLE
    with pytest.raises(MossaError, match=r"^flan2021 task 'newsroom' cannot be downloaded: Newsroom is given out "
                                         r"only after a request form .*local task folder$"):
        load_tasks("hub:flan2021", ["newsroom"])


# --- stated split sizes ---------------------------------------------------------------------------

def _slice_rows(split):
    """The rows a split slice such as "train[:3000]" names by itself, or None."""
    match = re.fullmatch(r"\w+\[:(\d+)\]", split)
    return int(match.group(1)) if match else None


def test_every_entry_states_positive_rows_for_its_splits():
    table = hub_table()
    for name, task in table.items():
        assert set(task.rows) == {"train", "test"}, name
        assert all(type(n) is int and n > 0 for n in task.rows.values()), name
        assert task.rows == task.entry["rows"] and task.rows is not task.entry["rows"], name
        for split in ("train", "test"):
            if task.entry.get(split) and _slice_rows(task.entry[split]) is not None:
                assert task.rows[split] == _slice_rows(task.entry[split]), (name, split)
        note = task.entry.get("rows_note")
        assert note is None or (isinstance(note, str) and len(note) > 20), name
    # a few counts from the data sets' cards
    assert table["anli_r1"].rows == {"train": 16946, "test": 1000}
    assert table["snli"].rows == {"train": 550152, "test": 10000}
    assert table["sst2"].rows == {"train": 67349, "test": 872}
    assert table["mnli_matched"].rows["test"] == 9815 and table["mnli_mismatched"].rows["test"] == 9832
    assert table["para_crawl_enes"].rows == {"train": 21987267 - 3000, "test": 3000}
    # tasks reading the same hub splits state the same rows
    by_split = {}
    for name, task in table.items():
        for split in ("train", "test"):
            if task.dataset:
                key = (task.dataset, task.entry.get("config") or task.entry.get("data_dir"), task.entry[split])
                by_split.setdefault(key, set()).add(task.rows[split])
    assert all(len(counts) == 1 for counts in by_split.values()), by_split


def test_stated_rows_are_the_rows_read_under_the_caps(monkeypatch):
    table = hub_table()
    assert stated_rows(table["snli"]) == {"train": 50_000, "test": 10_000}
    assert stated_rows(table["cb"]) == {"train": 250, "test": 56}
    assert stated_rows(table["imdb_reviews"]) == {"train": 25_000, "test": 10_000}
    assert stated_rows(table["newsroom"]) == {"train": 50_000, "test": 10_000}  # unavailable, still estimated
    monkeypatch.setitem(_hub.MAX_ROWS, "test", 100)
    assert stated_rows(table["cb"]) == {"train": 250, "test": 56}
    assert stated_rows(table["anli_r1"]) == {"train": 16_946, "test": 100}
    bare = _hub.HubTask("bare", "Misc", "t.yaml: tasks.bare", {"cluster": "Misc"})
    assert bare.rows is None
    with pytest.raises(MossaError, match=r"^t\.yaml: tasks\.bare: states no rows, so its size cannot be "
                                         r"estimated offline$"):
        stated_rows(bare)


@pytest.fixture()
def table_file(monkeypatch, tmp_path):
    """Write a one-task hub table (sst2's shipped entry, edited by the test) and read it as the table."""
    path = tmp_path / "flan2021.yaml"
    monkeypatch.setattr(_hub, "table_path", lambda: path)
    hub_table.cache_clear()

    def write(**changes):
        entry = {**yaml.safe_load(_SHIPPED.read_text(encoding="utf-8"))["tasks"]["sst2"], **changes}
        entry = {k: v for k, v in entry.items() if v is not _DROP}
        path.write_text(yaml.safe_dump({"version": 1, "tasks": {"sst2": entry}}), encoding="utf-8")
        hub_table.cache_clear()
        return path

    yield write
    hub_table.cache_clear()


_SHIPPED = _hub.table_path()
_DROP = object()


def test_a_table_without_rows_still_loads(table_file):
    table_file(rows=_DROP, rows_note="a note")
    task = hub_table()["sst2"]
    assert task.rows is None and task.entry["rows_note"] == "a note"


@pytest.mark.parametrize("rows", [
    {"train": 10}, {"train": 0, "test": 5}, {"train": -3, "test": 5}, {"train": "10", "test": 5},
    {"train": 10, "test": 5.0}, {"train": True, "test": 5}, {"train": 1, "test": 2, "validation": 3},
    [10, 5], 15, None,
])
def test_malformed_rows_are_one_line_naming_the_file_and_task(table_file, rows):
    path = table_file(rows=rows if rows is not None else {"train": None, "test": 5})
    with pytest.raises(MossaError) as info:
        hub_table()
    message = str(info.value)
    assert message.startswith(f"{path}: tasks.sst2.rows: expected {{train: n, test: n}} with positive whole "
                              f"numbers, got ")
    assert "\n" not in message


def test_an_empty_rows_note_is_one_line_naming_the_file_and_task(table_file):
    path = table_file(rows_note="")
    with pytest.raises(MossaError, match=r"^" + re.escape(f"{path}: tasks.sst2.rows_note: expected a non-empty "
                                                          f"text") + r"$"):
        hub_table()


def test_an_unknown_key_beside_rows_is_still_refused(table_file):
    path = table_file(row_count=5)
    with pytest.raises(MossaError, match=r"^" + re.escape(f"{path}: tasks.sst2: unknown key 'row_count'")):
        hub_table()


# --- converting rows ------------------------------------------------------------------------------

def _convert(name, row):
    return convert_row(hub_table()[name], row)


@pytest.mark.parametrize("name, row, expected", [
    ("sentiment140", {"text": "love it", "sentiment": 4, "query": "NO_QUERY"},
     {"input": {"text": "love it", "options": ["negative", "positive"]}, "target": "positive"}),
    ("sentiment140", {"text": "meh", "sentiment": 2, "query": "NO_QUERY"}, None),
    ("stsb", {"sentence1": "a", "sentence2": "b", "label": 3.8, "idx": 0},
     {"input": {"sentence1": "a", "sentence2": "b", "options": ["0", "1", "2", "3", "4", "5"]}, "target": "4"}),
    ("bool_q", {"question": "is persian spoken in iran", "passage": "Persian language -- Persian is spoken in Iran.",
                "idx": 0, "label": 1},
     {"input": {"title": "Persian language", "text": "Persian is spoken in Iran.", "question": "is persian spoken "
                "in iran", "options": ["no", "yes"]}, "target": "yes"}),
    ("fix_punct", {"translation": {"en": "Hello, world!", "ro": "Salut, lume!"}},
     {"input": {"no_punct": "Hello world"}, "target": "Hello, world!"}),
    ("fix_punct", {"translation": {"en": "Hello world", "ro": "Salut lume"}}, None),
    ("word_segment", {"translation": {"en": "Resumption of the session", "ro": "x"}},
     {"input": {"no_space": "Resumptionofthesession"}, "target": "Resumption of the session"}),
    ("hellaswag", {"ctx": "A man sits.", "endings": ["a", "b", "c", "d"], "label": ""}, None),
    ("hellaswag", {"ctx": "A man sits.", "endings": ["a", "b", "c", "d"], "label": "2"},
     {"input": {"context": "A man sits.", "options": ["a", "b", "c", "d"]}, "target": "c"}),
    ("trec", {"text": "How far is it?", "coarse_label": 5, "fine_label": 40},
     {"input": {"text": "How far is it?", "options": ["abbreviation", "description", "entity", "human", "location",
                                                       "numeric"]}, "target": "numeric"}),
    ("squad_v2", {"id": "x", "title": "T", "context": "C", "question": "Q", "answers": {"text": [],
                                                                                      "answer_start": []}},
     {"input": {"title": "T", "context": "C", "question": "Q"}, "target": "unanswerable"}),
    ("coqa", {"source": "wiki", "story": "S", "questions": ["Q1", "Q2"],
              "answers": {"input_text": ["A1", "A2"], "answer_start": [0, 1], "answer_end": [1, 2]}},
     {"input": {"story": "S", "questions": ["Q1", "Q2"]}, "target": "A1; A2"}),
    ("record", {"passage": "P", "query": "@placeholder won", "entities": ["Ann", "Bob", "Ann"], "entity_spans": {},
                "answers": ["Bob"], "idx": {}},
     {"input": {"passage": "P", "query": "@placeholder won", "options": ["Ann", "Bob"]}, "target": "Bob"}),
    ("ag_news_subset", {"label": 3, "title": "Stocks up", "description": "Markets rallied."},
     {"input": {"title": "Stocks up", "text": "Markets rallied.", "options": ["World", "Sports", "Business",
                                                                              "Sci/Tech"]}, "target": "Business"}),
    ("story_cloze", {"story_id": "s", "input_sentence_1": "A.", "input_sentence_2": "B.", "input_sentence_3": "C.",
                     "input_sentence_4": "D.", "sentence_quiz1": "E1.", "sentence_quiz2": "E2.",
                     "answer_right_ending": 2},
     {"input": {"context": "A. B. C. D.", "options": ["E1.", "E2."]}, "target": "E2."}),
    ("openbookqa", {"id": "7-980", "question_stem": "The sun is", "choices": {"text": ["hot", "cold"],
                                                                              "label": ["A", "B"]},
                    "answerKey": "B"},
     {"input": {"question": "The sun is", "options": ["hot", "cold"]}, "target": "cold"}),
    ("openbookqa", {"id": "7-981", "question_stem": "Q", "choices": {"text": ["x", "y"], "label": ["A", "B"]},
                    "answerKey": "E"}, None),
])
def test_convert_row(name, row, expected):
    assert _convert(name, row) == expected


def test_hub_tasks_convert_from_real_row_layouts(hub_rows, monkeypatch, tmp_path):
    monkeypatch.setenv("MOSSA_CACHE", str(tmp_path))
    _, calls = hub_rows
    names = ["sst2", "snli", "squad_v1", "e2e_nlg", "arc_easy", "winogrande", "wmt16_translate_deen", "dart"]
    tasks = {t.name: t for t in load_tasks("hub:flan2021", names)}
    assert list(tasks) == names
    assert all(c["cache_dir"] == str(tmp_path / "datasets") for c in calls)
    assert {(c["path"], c["name"], c["split"]) for c in calls if c["path"] != "stanfordnlp/sst2"} >= {
        ("allenai/ai2_arc", "ARC-Easy", "train"), ("allenai/winogrande", "winogrande_xl", "validation")}

    sst2 = tasks["sst2"]
    assert sst2.cluster == "Sentiment" and sst2.template.origin.endswith("tasks.sst2[0]") and len(sst2.templates) >= 3
    assert [e.target for e in sst2.split("train")] == ["negative", "negative", "positive"]
    assert [e.target for e in sst2.split("test")] == ["positive", "negative"]
    assert sst2.split("train")[0].fields == {"sentence": "hide new secretions from the parental units"}
    assert sst2.split("train")[0].options == ("negative", "positive") and sst2.split("train")[0].id == "sst2:train:0"
    assert [e.id for e in tasks["snli"].split("train")] == ["snli:train:0", "snli:train:1", "snli:train:2"]
    assert tasks["squad_v1"].split("test")[0].target == "Denver Broncos"
    assert tasks["e2e_nlg"].split("test")[0].target == "A coffee shop in the city centre area called Blue Spice."
    arc = tasks["arc_easy"].split("train")[0]
    assert arc.target == "a bacterial population in the bloodstream" and len(arc.options) == 4
    assert tasks["winogrande"].split("train")[0].target == "Dennis"
    assert tasks["winogrande"].split("test")[0].target == "Sarah"
    wmt = tasks["wmt16_translate_deen"]
    assert wmt.split("train")[0].target == "Wiederaufnahme der Sitzungsperiode"
    assert render_body(wmt, wmt.split("train")[0]) == ("English: Resumption of the session\n"
                                                       "Translate this sentence from English to German.")
    dart = tasks["dart"]
    assert dart.split("train")[0].fields["tripleset"] == ("Mars Hill College | JOINED | 1973; Mars Hill College | "
                                                          "LOCATION | Mars Hill, North Carolina")
    assert dart.split("test")[0].target == "The Aarhus is the airport of Aarhus, Denmark."
    for task in tasks.values():
        for ex in task.split("test"):
            assert render_body(task, ex)


def test_hub_fingerprint_follows_the_data(hub_rows):
    rows, _ = hub_rows
    first = load_tasks("hub:flan2021", ["sst2", "e2e_nlg"])
    assert [t.fingerprint for t in first] == [t.fingerprint for t in load_tasks("hub:flan2021", ["sst2", "e2e_nlg"])]
    assert first[0].fingerprint != first[1].fingerprint
    assert first[0].path.name == "flan2021.yaml"
    rows["stanfordnlp/sst2|"]["validation"][0]["sentence"] = "a different review"
    assert load_tasks("hub:flan2021", ["sst2"])[0].fingerprint != first[0].fingerprint


def test_stated_rows_are_not_in_the_fingerprint(hub_rows, monkeypatch):
    first = load_tasks("hub:flan2021", ["sst2"])[0].fingerprint
    entry = hub_table()["sst2"].entry
    monkeypatch.setitem(entry, "rows", {"train": 1, "test": 1})
    monkeypatch.setitem(entry, "rows_note", "a corrected count")
    assert load_tasks("hub:flan2021", ["sst2"])[0].fingerprint == first
    monkeypatch.setitem(entry, "options", ["bad", "good"])  # how rows are read still is
    assert load_tasks("hub:flan2021", ["sst2"])[0].fingerprint != first


def test_hub_columns_that_do_not_match_the_table_are_named(hub_rows):
    rows, _ = hub_rows
    for split in rows["stanfordnlp/sst2|"].values():
        for row in split:
            row["text"] = row.pop("sentence")
    with pytest.raises(MossaError, match=r"tasks\.sst2: column 'sentence' is not in stanfordnlp/sst2\[train\] .*"
                                         r"\(columns: idx, label, text\)"):
        load_tasks("hub:flan2021", ["sst2"])


# --- capped splits --------------------------------------------------------------------------------

def _sorted_sst2(rows, monkeypatch, train=3000, test=150, cap=200):
    """sst2 with a train split sorted by label (first half negative) and caps of `cap` rows."""
    rows["stanfordnlp/sst2|"]["train"] = [{"idx": i, "sentence": f"review {i}", "label": int(i >= train // 2)}
                                          for i in range(train)]
    rows["stanfordnlp/sst2|"]["validation"] = [{"idx": i, "sentence": f"check {i}", "label": i % 2}
                                               for i in range(test)]
    monkeypatch.setitem(_hub.MAX_ROWS, "train", cap)
    monkeypatch.setitem(_hub.MAX_ROWS, "test", cap)


def _row_ids(examples):
    return [int(e.id.rsplit(":", 1)[-1]) for e in examples]


def test_a_capped_sorted_split_is_a_seeded_sample_of_both_classes(hub_rows, monkeypatch):
    rows, _ = hub_rows
    _sorted_sst2(rows, monkeypatch)
    task = load_tasks("hub:flan2021", ["sst2"])[0]
    train = task.split("train")
    ids = _row_ids(train)
    assert len(train) == 200 and ids == sorted(set(ids)) and all(0 <= i < 3000 for i in ids)
    assert all(e.id == f"sst2:train:{i}" for e, i in zip(train, ids))
    # each example is the hub row its id names
    assert all(e.fields == {"sentence": f"review {i}"} and e.target == ("positive" if i >= 1500 else "negative")
               for e, i in zip(train, ids))
    share = Counter(e.target for e in train)["negative"] / len(train)
    assert 0.35 <= share <= 0.65
    again = load_tasks("hub:flan2021", ["sst2"])[0]
    assert [(e.id, e.fields, e.target) for e in again.split("train")] == [(e.id, e.fields, e.target) for e in train]
    assert again.fingerprint == task.fingerprint


def test_a_capped_split_is_not_read_from_its_head(hub_rows, monkeypatch):
    rows, _ = hub_rows
    _sorted_sst2(rows, monkeypatch)
    ids = set(_row_ids(load_tasks("hub:flan2021", ["sst2"])[0].split("train")))
    assert ids != set(range(200)) and max(ids) >= 1500


def test_a_split_within_the_cap_is_read_whole_and_in_order(hub_rows, monkeypatch):
    rows, _ = hub_rows
    _sorted_sst2(rows, monkeypatch, train=200, test=150)
    task = load_tasks("hub:flan2021", ["sst2"])[0]
    assert _row_ids(task.split("train")) == list(range(200))
    test = task.split("test")
    assert [e.id for e in test] == [f"sst2:test:{i}" for i in range(150)]
    assert [e.fields["sentence"] for e in test] == [f"check {i}" for i in range(150)]


def test_the_sample_follows_its_seed_and_is_in_the_fingerprint(hub_rows, monkeypatch):
    rows, _ = hub_rows
    _sorted_sst2(rows, monkeypatch)
    first = load_tasks("hub:flan2021", ["sst2"])[0]
    monkeypatch.setattr(_hub, "SAMPLE_SEED", _hub.SAMPLE_SEED + 1)
    other = load_tasks("hub:flan2021", ["sst2"])[0]
    assert _row_ids(other.split("train")) != _row_ids(first.split("train"))
    assert other.fingerprint != first.fingerprint
    # the test split is within the cap: the same rows, but the sampling rule is still in the fingerprint
    assert [e.id for e in other.split("test")] == [e.id for e in first.split("test")]


def test_row_indices_are_per_task_and_split_and_work_without_select(monkeypatch):
    assert _hub._row_indices("sst2", "train", _hub.MAX_ROWS["train"]) is None
    monkeypatch.setitem(_hub.MAX_ROWS, "train", 100)
    monkeypatch.setitem(_hub.MAX_ROWS, "test", 100)
    big = 1000
    picked = _hub._row_indices("imdb_reviews", "test", big)
    assert len(picked) == 100 == len(set(picked)) and picked == sorted(picked) and picked != list(range(100))
    assert picked == _hub._row_indices("imdb_reviews", "test", big)
    assert picked != _hub._row_indices("sentiment140", "test", big)
    assert picked != _hub._row_indices("imdb_reviews", "train", big)
    rows = [{"n": i} for i in range(big)]  # a plain sequence: rows read by index
    assert [(i, row["n"]) for i, row in _hub._rows(rows, "imdb_reviews", "test")] == [(i, i) for i in picked]


# --- failing without the hub ----------------------------------------------------------------------

def test_offline_without_cache_is_one_clear_line(monkeypatch, tmp_path):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MOSSA_CACHE", str(tmp_path))
    with pytest.raises(MossaError) as info:
        load_tasks("hub:flan2021", ["sst2"])
    assert str(info.value) == ("flan2021 task 'sst2' needs the hub dataset 'stanfordnlp/sst2': HF_HUB_OFFLINE is set "
                               "and it is not in the cache; go online, or use a local task folder with --tasks-dir")


def test_without_the_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MossaError, match=r"^flan2021 task 'sst2' needs the hub dataset 'stanfordnlp/sst2' and the "
                                         r"`datasets` package, which is not installed: pip install datasets"):
        load_tasks("hub:flan2021", ["sst2"])
