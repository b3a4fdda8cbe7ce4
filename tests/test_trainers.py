"""Releases that trainers read unchanged: contrastors (from a folder, from S3 at the bucket root and under a
prefix, built there directly or published later), Hugging Face `datasets` in one call, sentence-transformers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipelines.publish import main as publish_main
from pipelines.release.location import index_key, normalize_url as our_normalize_url, shard_glob
from pipelines.release.s3_store import S3Store
from pipelines.verify import main as verify_main
from tests.contrastors_rules import (expand_braces, local_opener, normalize_url, read_like_contrastors,
                                     s3_opener)
from tests.helpers import read_jsonl_gz, release_rejects, run_build

pytest_plugins = ("tests.s3_server",)

REPO = Path(__file__).resolve().parent.parent
FAST = ("--skip", "minhash", "--skip", "consistency", "--skip", "negatives")
# Triplets: the negatives stage on (consistency and MinHash off to keep the run short).
TRIPLETS = ("--skip", "minhash", "--skip", "consistency")


def _site(shared_data) -> str:
    return str(shared_data / "stackexchange" / "cardano.stackexchange.com")


@pytest.fixture(scope="module")
def triplet_release(shared_data, tmp_path_factory) -> Path:
    release = tmp_path_factory.mktemp("triplets") / "release"
    assert run_build("--source", "stackexchange", "--input", _site(shared_data), "--output", str(release),
                     *TRIPLETS) == 0
    return release


@pytest.fixture(scope="module")
def pairs_release(shared_data, tmp_path_factory) -> Path:
    release = tmp_path_factory.mktemp("pairs") / "release"
    assert run_build("--source", "stackexchange", "--input", _site(shared_data), "--output", str(release),
                     *FAST) == 0
    return release


def _built_rows(release: Path) -> dict[str, list[dict]]:
    manifest = json.loads((release / "manifest.json").read_text())
    return {name: [row for shard in summary["shards"] for row in read_jsonl_gz(release / shard["key"])]
            for name, summary in manifest["datasets"].items()}


def _objects(store: S3Store) -> dict[str, bytes]:
    return {key: store.get_bytes(key) for key in store.list_keys() if not key.startswith("runs/")}


# -- the key rule ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("location, expected", [
    ("", "data/D/shard-00000.jsonl.gz"),
    ("s3://B", "B/data/D/shard-00000.jsonl.gz"),
    ("s3://B/p", "p/data/D/shard-00000.jsonl.gz"),
    ("s3://B/a/b", "b/data/D/shard-00000.jsonl.gz"),
])
def test_index_keys_are_contrastors_lookup_keys(location, expected):
    assert index_key(location, "data/D/shard-00000.jsonl.gz") == expected
    url = f"{location}/data/D/shard-00000.jsonl.gz" if location else "data/D/shard-00000.jsonl.gz"
    assert normalize_url(url) == our_normalize_url(url) == expected


def test_shard_globs_expand_to_exactly_the_shards():
    keys = [f"data/D/shard-{n:05d}.jsonl.gz" for n in (0, 1, 2)]
    assert shard_glob("s3://B/a", keys) == "s3://B/a/data/D/shard-{00000..00002}.jsonl.gz"
    assert expand_braces(shard_glob("s3://B/a", keys)) == [f"s3://B/a/{key}" for key in keys]
    gappy = [keys[0], keys[2]]
    assert expand_braces(shard_glob("", gappy)) == gappy
    assert shard_glob("", keys[:1]) == keys[0]


# -- contrastors ---------------------------------------------------------------------------------------------

def test_triplet_datasets_have_one_negatives_count_and_short_pairs_are_rejects(triplet_release):
    manifest = json.loads((triplet_release / "manifest.json").read_text())
    num_negatives = manifest["config"]["negatives"]["num_negatives"]
    for name, rows in _built_rows(triplet_release).items():
        assert manifest["datasets"][name]["negatives_per_row"] == num_negatives
        assert {len(row["negatives"]) for row in rows} == {num_negatives}, name
    short = [r for r in release_rejects(triplet_release) if r["reason"] == "too_few_negatives"]
    # cardano's duplicates find only 3 or 4 negatives under the margin: rejected, never published as triplets.
    assert short and all(r["stage"] == "negatives" and r["detail"]["found"] < num_negatives for r in short)
    assert "stackexchange_duplicates" not in manifest["datasets"]
    card = (triplet_release / "README.md").read_text()
    assert "too_few_negatives" in card


def test_a_folder_release_reads_from_its_root(triplet_release):
    config = (triplet_release / "contrastors.yaml").read_text()
    read = read_like_contrastors(config, local_opener(triplet_release))
    assert read == _built_rows(triplet_release)
    assert {entry["objective"]["type"] for entry in yaml.safe_load(config)["datasets"]} == {"triplet"}


@pytest.mark.parametrize("prefix", ["", "a/b"])
def test_published_release_reads_in_contrastors_from_s3(triplet_release, s3_env, s3_bucket, prefix, capsys):
    destination = f"s3://{s3_bucket}/{prefix}" if prefix else f"s3://{s3_bucket}"
    assert publish_main([str(triplet_release), destination]) == 0
    assert verify_main([destination]) == 0
    store = S3Store.from_uri(destination)
    config = store.get_bytes("contrastors.yaml").decode()
    assert f"bucket: {destination}/data/" in config
    read = read_like_contrastors(config, s3_opener(s3_env.client()))
    assert read == _built_rows(triplet_release)
    # Shards, rejects and card are the built bytes; only the location-dependent files differ.
    manifest = json.loads(store.get_bytes("manifest.json"))
    assert manifest["location"] == destination
    for summary in manifest["datasets"].values():
        for shard in summary["shards"]:
            assert store.get_bytes(shard["key"]) == (triplet_release / shard["key"]).read_bytes()
    assert store.get_bytes("README.md") == (triplet_release / "README.md").read_bytes()
    # Publishing again refuses; the same place verifies, a copy elsewhere says where it is indexed for.
    capsys.readouterr()
    assert publish_main([str(triplet_release), destination]) == 2
    assert "already exists" in capsys.readouterr().err


def test_direct_s3_builds_read_in_contrastors_and_match_a_later_publish(shared_data, pairs_release, s3_env,
                                                                        s3_bucket, capsys):
    for prefix in ("", "a/b"):
        destination = f"s3://{s3_bucket}/{prefix}" if prefix else f"s3://{s3_bucket}"
        assert run_build("--source", "stackexchange", "--input", _site(shared_data), "--output", destination,
                         *FAST) == 0
        assert verify_main([destination]) == 0
        store = S3Store.from_uri(destination)
        read = read_like_contrastors(store.get_bytes("contrastors.yaml").decode(), s3_opener(s3_env.client()))
        assert read == _built_rows(pairs_release)
        built_there = _objects(store)
        if prefix:
            # The rebuild is a local folder: its index files are re-keyed for the manifest's location first.
            assert verify_main([destination, "--rebuild"]) == 0
        # The same release built locally and published later: the very same objects, byte for byte.
        assert publish_main([str(pairs_release), destination, "--overwrite"]) == 0
        assert _objects(store) == built_there
    # A release copied to another place without publishing: verify names the mismatch.
    client = s3_env.client()
    for key in S3Store.from_uri(f"s3://{s3_bucket}/a/b").list_keys():
        client.copy_object(Bucket=s3_bucket, Key=f"elsewhere/{key}",
                           CopySource={"Bucket": s3_bucket, "Key": f"a/b/{key}"})
    capsys.readouterr()
    assert verify_main([f"s3://{s3_bucket}/elsewhere"]) == 1
    assert "pipelines.publish" in capsys.readouterr().out


# -- Hugging Face datasets, sentence-transformers ---------------------------------------------------------------

def test_every_shard_of_every_dataset_loads_in_one_call(triplet_release, pairs_release, tmp_path):
    from datasets import load_dataset

    for release in (triplet_release, pairs_release):
        shards = sorted(str(path) for path in release.glob("data/*/shard-*.jsonl.gz"))
        assert len({Path(path).parent.name for path in shards}) >= 2
        expected = sum(len(rows) for rows in _built_rows(release).values())
        for order in (shards, shards[::-1]):  # datasets casts to the first file's schema: either order
            loaded = load_dataset("json", data_files=order, split="train", cache_dir=str(tmp_path / "cache"))
            assert len(loaded) == expected
        # The card's configs: one dataset by name.
        name = sorted(_built_rows(release))[0]
        one = load_dataset(str(release), name, split="train", cache_dir=str(tmp_path / "cache"))
        assert len(one) == len(_built_rows(release)[name])


def _recipe(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    recipes = [block for block in blocks if "negative_{i + 1}" in block]
    assert len(recipes) == 1
    return recipes[0]


def test_sentence_transformers_trains_two_steps_with_the_cards_lines(triplet_release, tmp_path, monkeypatch):
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from filters.embedding import resolve_model_path

    recipe = _recipe((triplet_release / "README.md").read_text())
    readme = (REPO / "README.md").read_text()
    dataset = re.search(r"data/([A-Za-z0-9_]+)/", recipe).group(1)
    assert recipe.replace(dataset, "stackexchange_title_body") in readme  # the README shows the same lines
    monkeypatch.chdir(triplet_release)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    exec(compile(recipe, "README.md", "exec"), namespace)  # noqa: S102 - the card's own lines, as a user runs them
    train_dataset = namespace["train_dataset"]
    k = json.loads((triplet_release / "manifest.json").read_text())["datasets"][dataset]["negatives_per_row"]
    assert train_dataset.column_names == ["anchor", "positive"] + [f"negative_{i + 1}" for i in range(k)]

    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2,
                                                per_device_train_batch_size=2, report_to="none",
                                                save_strategy="no", logging_steps=1, use_cpu=True,
                                                dataloader_num_workers=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_dataset,
                                         loss=MultipleNegativesRankingLoss(model))
    result = trainer.train()
    assert result.global_step == 2
    assert result.training_loss > 0
