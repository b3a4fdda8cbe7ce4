"""The `decontaminate` stage: pairs that overlap an evaluation set (MTEB/BEIR-style queries and documents) go.

A pair is rejected ``contaminated`` when its query or document, after normalization (NFKC, case folded, words
only), equals an evaluation text, or shares an n-gram of ``ngram`` words (13: the GPT-3 / NeMo Curator rule)
with one. Texts shorter than ``ngram`` words are compared whole. An n-gram shared by more than ``max_matches``
pairs is too common to mean contamination (boilerplate, licences) and is ignored; the report lists the most
frequent of those.

Graph (it scales like MinHash: only 64-bit hashes are shuffled, never texts):

    evaluation files ─read─> (key, evaluation record)  ─min per key─┐
    pairs ─keys─> (key, pair id), distinct per pair ────────────────┴─ CoGroupByKey(key)
          ─per key─> too common (reported) | (pair id, (key, evaluation record)) matches
    pairs by id + matches ─ CoGroupByKey(id) ─> kept pairs | rejects (the matching n-gram recomputed from the
                                                 pair's own text, so no text travelled)

A key is xxh64 of a tagged normalized text: ``t`` + the whole text, or ``n`` + an n-gram.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Any, Iterable, Iterator

import apache_beam as beam
import xxhash
from apache_beam.io.filesystems import FileSystems

from filters.stage import Stage
from pipelines.core.config import DecontaminateConfig
from pipelines.core.metrics import StageMetrics
from pipelines.core.records import RejectPolicy, make_reject

STAGE = "decontaminate"
REASON = "contaminated"
FIELDS = ("query", "document")
# Most frequent too-common n-grams listed by the report (all are counted).
MAX_REPORTED_COMMON = 20
# Longest matching text quoted in a reject's detail.
MAX_DETAIL_CHARS = 300
_WORD = re.compile(r"\w+")
_HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


# ----------------------------------------------------------------------------------------- plain functions

def normalized_words(text: str) -> list[str]:
    """The words compared: NFKC, case folded, punctuation and spacing dropped."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _key(tag: bytes, text: str) -> int:
    return xxhash.xxh64_intdigest(tag + b"\x00" + text.encode("utf-8", "surrogatepass"))


def text_keys(text: str, ngram: int) -> dict[int, tuple[str, str]]:
    """Every key of one text -> (match kind, the normalized text or n-gram it stands for).

    The whole text always has a key (equality); a text of at least ``ngram`` words also has one per n-gram."""
    words = normalized_words(text)
    if not words:
        return {}
    whole = " ".join(words)
    keys = {_key(b"t", whole): ("text", whole)}
    for start in range(len(words) - ngram + 1):
        gram = " ".join(words[start:start + ngram])
        keys.setdefault(_key(b"n", gram), ("ngram", gram))
    return keys


def pair_keys(pair: dict[str, Any], ngram: int) -> dict[int, tuple[str, str, str]]:
    """The keys of a pair's query and document -> (field, match kind, text); the query's win on a tie."""
    found: dict[int, tuple[str, str, str]] = {}
    for field in FIELDS:
        for key, (kind, text) in text_keys(pair.get(field) or "", ngram).items():
            found.setdefault(key, (field, kind, text))
    return found


def choose_match(pair: dict[str, Any], matches: Iterable[tuple[int, str]], ngram: int
                 ) -> tuple[str, str, str, str] | None:
    """The match a reject reports: (field, kind, text, evaluation record), equality before n-grams, the query
    before the document, then the smallest record and text (deterministic, whatever the arrival order)."""
    keys = pair_keys(pair, ngram)
    candidates = []
    for key, record in matches:
        if key in keys:
            field, kind, text = keys[key]
            candidates.append((kind != "text", FIELDS.index(field), record, text, field, kind))
    if not candidates:
        return None  # a 64-bit collision with a text the pair does not hold: not contamination
    _, _, record, text, field, kind = min(candidates)
    return field, kind, text, record


def reject_detail(field: str, kind: str, text: str, record: str, keep_texts: bool) -> dict[str, Any]:
    detail = {"evaluation_record": record, "field": field, "match": kind}
    if keep_texts:  # the matching span is text of the pair: only where rejects may carry texts
        detail[kind] = text[:MAX_DETAIL_CHARS]
    return detail


def eval_texts_of_row(row: Any, fields: list[str]) -> list[str | None]:
    """The row's texts; [None] when it has none (counted by the report as rows without text)."""
    if not isinstance(row, dict):
        return [None]
    texts = [row[field] for field in fields if isinstance(row.get(field), str) and row[field].strip()]
    return texts or [None]


def is_hf_dataset_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, marker)) for marker in _HF_MARKERS)


def read_evaluation_file(uri: str, name: str, fields: list[str]) -> Iterator[tuple[str, str]]:
    """(evaluation record, text) for every text of one evaluation input: JSON lines (optionally .gz), parquet, or
    a Hugging Face dataset folder (``save_to_disk``). The record is ``NAME:ROW`` (``NAME:SPLIT:ROW``)."""
    if is_hf_dataset_folder(uri):
        import datasets

        loaded = datasets.load_from_disk(uri)
        splits = sorted(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
        for split, dataset in splits:
            prefix = f"{name}:{split}:" if split else f"{name}:"
            for number, row in enumerate(dataset):
                for text in eval_texts_of_row(row, fields):
                    yield f"{prefix}{number}", text
        return
    if uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        with FileSystems.open(uri) as handle:
            table = pq.read_table(handle, columns=[f for f in fields if f in pq.read_schema(handle).names])
        for number, row in enumerate(table.to_pylist()):
            for text in eval_texts_of_row(row, fields):
                yield f"{name}:{number}", text
        return
    with FileSystems.open(uri) as handle:  # compression from the name (.gz)
        for number, raw in enumerate(handle):
            try:
                row = json.loads(raw)
            except ValueError:
                row = None  # an unreadable line: counted by the report as a row without text
            for text in eval_texts_of_row(row, fields):
                yield f"{name}:{number + 1}", text


def evaluation_files(patterns: list[str]) -> list[tuple[str, str]]:
    """(uri, name) of every evaluation input: a Hugging Face dataset folder stays whole, other folders and
    globs are listed; the name (the file or folder's base name) is what rejects cite."""
    found: dict[str, str] = {}
    for pattern in patterns:
        path = os.path.expanduser(pattern)
        if is_hf_dataset_folder(path):
            found[os.path.abspath(path)] = os.path.basename(os.path.abspath(path))
            continue
        if os.path.isdir(path):
            for folder, dirs, names in os.walk(path):
                dirs.sort()
                for file_name in sorted(names):
                    if not file_name.startswith("."):
                        full = os.path.join(folder, file_name)
                        found[os.path.abspath(full)] = os.path.relpath(full, path).replace(os.sep, "/")
            continue
        for metadata in FileSystems.match([path])[0].metadata_list:
            found[metadata.path] = os.path.basename(metadata.path)
    return sorted(found.items())


def build_report(config: DecontaminateConfig, *, evaluation_texts: int, rows_without_text: int,
                 evaluation_keys: int, matched: int, too_common: int,
                 most_common: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "stage": STAGE,
        "parameters": {"ngram": config.ngram, "max_matches": config.max_matches,
                       "text_field": config.text_field},
        "evaluation_texts": evaluation_texts,
        # Evaluation rows with no text in text_field (or unreadable lines): nothing to compare.
        "evaluation_rows_without_text": rows_without_text,
        "evaluation_keys": evaluation_keys,
        "contaminated_pairs": matched,
        "too_common_ngrams": too_common,
        "most_common_ngrams": sorted(most_common, key=lambda e: (-e["pairs"], e["key"])),
    }


# ----------------------------------------------------------------------------------------- the transform

class Decontaminate(beam.PTransform):
    def __init__(self, config: DecontaminateConfig, policy: RejectPolicy):
        super().__init__()
        self.config = config
        self.policy = policy

    def expand(self, pairs):
        config, policy = self.config, self.policy
        ngram, max_matches = config.ngram, config.max_matches
        fields = config.text_fields
        metrics = StageMetrics(STAGE)
        pipeline = pairs.pipeline

        eval_rows = (pipeline
                     | "EvalFiles" >> beam.Create(evaluation_files(config.inputs))
                     | "ReadEval" >> beam.FlatMapTuple(lambda uri, name: read_evaluation_file(uri, name, fields))
                     | "SpreadEval" >> beam.Reshuffle())
        eval_texts = eval_rows | "EvalWithText" >> beam.Filter(lambda row: row[1] is not None)
        eval_without_text = eval_rows | "EvalWithoutText" >> beam.Filter(lambda row: row[1] is None)
        eval_keys = (eval_texts
                     | "EvalKeys" >> beam.FlatMapTuple(
                         lambda record, text: [(key, record) for key in text_keys(text, ngram)])
                     # One record per key (the smallest): what a reject cites, whatever the arrival order.
                     | "EvalRecordPerKey" >> beam.CombinePerKey(min))

        def keys_of_pair(pair):
            metrics.seen()
            return [(key, pair["id"]) for key in pair_keys(pair, ngram)]

        pair_keys_pc = pairs | "PairKeys" >> beam.FlatMap(keys_of_pair)

        def by_key(element):
            key, grouped = element
            records = list(grouped["eval"])
            if not records:
                return
            ids = set()
            smallest = None
            count = 0
            for pair_id in grouped["pairs"]:
                count += 1
                smallest = pair_id if smallest is None or pair_id < smallest else smallest
                if len(ids) <= max_matches:
                    ids.add(pair_id)
            if count > max_matches:
                yield beam.pvalue.TaggedOutput("common", {"key": format(key, "016x"), "pairs": count,
                                                          "evaluation_record": records[0],
                                                          "example_id": smallest})
                return
            for pair_id in sorted(ids):
                yield pair_id, ("match", key, records[0])

        joined = (({"eval": eval_keys, "pairs": pair_keys_pc})
                  | "JoinKeys" >> beam.CoGroupByKey()
                  | "Matches" >> beam.FlatMap(by_key).with_outputs("common", main="matches"))
        common = joined.common
        top_common = (common
                      | "TopCommon" >> beam.combiners.Top.Of(MAX_REPORTED_COMMON,
                                                             key=lambda e: (e["pairs"], e["key"]))
                      | "EachTopCommon" >> beam.FlatMap(lambda top: top))
        example_wants = top_common | "ExampleWants" >> beam.Map(
            lambda e: (e["example_id"], ("example", int(e["key"], 16), e["evaluation_record"])))

        def decide(element):
            pair_id, grouped = element
            wants = list(grouped["wants"])
            for pair in grouped["pairs"]:
                matches = [(key, record) for tag, key, record in wants if tag == "match"]
                chosen = choose_match(pair, matches, ngram) if matches else None
                for tag, key, record in wants:
                    if tag == "example":  # the text of a reported too-common n-gram, from the pair that has it
                        field_kind_text = pair_keys(pair, ngram).get(key)
                        yield beam.pvalue.TaggedOutput("examples", {
                            "key": format(key, "016x"),
                            "text": field_kind_text[2][:MAX_DETAIL_CHARS] if field_kind_text and policy.keep_texts
                            else None})
                if chosen is None:
                    metrics.passed()
                    yield pair
                    continue
                field, kind, text, record = chosen
                metrics.dropped(REASON)
                yield beam.pvalue.TaggedOutput("rejects", make_reject(
                    pair, stage=STAGE, reason=REASON, detail=reject_detail(field, kind, text, record,
                                                                           policy.keep_texts),
                    policy=policy))

        decided = (({"pairs": pairs | "PairById" >> beam.Map(lambda pair: (pair["id"], pair)),
                     "wants": (joined.matches, example_wants) | "AllWants" >> beam.Flatten()})
                   | "JoinPairs" >> beam.CoGroupByKey()
                   | "Decide" >> beam.FlatMap(decide).with_outputs("rejects", "examples", main="pairs"))

        def report(_, eval_count, without_text, key_count, matched, common_count, tops, examples):
            texts = {example["key"]: example["text"] for example in examples}
            most_common = []
            for entry in tops:
                item = {k: entry[k] for k in ("key", "pairs", "evaluation_record")}
                if texts.get(entry["key"]):
                    item["ngram"] = texts[entry["key"]]
                most_common.append(item)
            yield build_report(config, evaluation_texts=eval_count[0] if eval_count else 0,
                               rows_without_text=without_text[0] if without_text else 0,
                               evaluation_keys=key_count[0] if key_count else 0,
                               matched=matched[0] if matched else 0,
                               too_common=common_count[0] if common_count else 0, most_common=most_common)

        def count(pcoll, label):
            return beam.pvalue.AsList(pcoll | label >> beam.combiners.Count.Globally())

        report_pc = (pipeline
                     | "ReportTrigger" >> beam.Create([None])
                     | "Report" >> beam.FlatMap(
                         report,
                         eval_count=count(eval_texts, "CountEvalTexts"),
                         without_text=count(eval_without_text, "CountEvalWithoutText"),
                         key_count=count(eval_keys, "CountEvalKeys"),
                         matched=count(decided.rejects, "CountRejects"),
                         common_count=count(common, "CountCommon"),
                         tops=beam.pvalue.AsList(top_common),
                         examples=beam.pvalue.AsList(decided.examples)))
        return {"pairs": decided.pairs, "rejects": decided.rejects, "report": report_pc}


STAGE_SPEC = Stage(STAGE, config_key="decontaminate",
                   transform=lambda config, policy: Decontaminate(config.decontaminate, policy))
