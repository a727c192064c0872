"""SAELens folders and releases load to exactly the SAE that SAELens computes.

The fixtures in tests/fixtures/saelens/ were written by sae-lens 6.54.12 itself
(tests/fixtures/make_saelens_fixtures.py), with what sae-lens computes from fixed inputs; sae-lens
is too heavy to install for the tests. Registry tests read an excerpt of the real
pretrained_saes.yaml, and the real file where sae-lens is installed. Nothing touches the Hub:
downloads read a pre-filled cache with HF_HUB_OFFLINE=1.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, random_sae
from safetensors.numpy import load_file, save_file

from saematch.errors import SAEMatchError
from saematch.sae import fold, load_sae, read_arrays, read_meta, save_sae
from saematch.saelens import format_of
from saematch.saelens.registry import lookup
from saematch.sources import neuronpedia_id, neuronpedia_url, sha256

FIXTURES = REPO / "tests/fixtures/saelens"
REGISTRY = FIXTURES / "pretrained_saes.yaml"
EQUIVALENT = ["jumprelu_b_dec_in", "jumprelu_no_b_dec_in", "jumprelu_bf16", "scaled_b_dec_in",
              "scaled_no_b_dec_in", "whitened_b_dec_in", "whitened_no_b_dec_in",
              "batchtopk_inference"]
# Cases where reading the arrays as they are (the loader before SAELens configs were read)
# computes something else: b_dec subtracted from the input, or a normalisation to fold.
CONVERTED = ["jumprelu_b_dec_in", "scaled_b_dec_in", "scaled_no_b_dec_in", "whitened_b_dec_in",
             "whitened_no_b_dec_in", "batchtopk_inference"]


def reference(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "reference.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """float32 tolerance, relative to the largest value compared."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * max(1.0, np.abs(want).max()))


@pytest.mark.parametrize("case", EQUIVALENT)
def test_loader_computes_what_saelens_computes(case):
    sae = load_sae(FIXTURES / case)
    ref = reference(FIXTURES / case)
    x = ref["x"]
    assert_close(x @ sae.W_enc + sae.b_enc, ref["pre"])
    assert_close(sae.encode(x), ref["acts"])
    assert_close(sae.reconstruct(x), ref["recon"])
    assert 0.05 < (ref["acts"] > 0).mean() < 0.95  # the inputs exercise the jump
    # the folder, its cfg.json and its weights file all name the same SAE
    for path in (FIXTURES / case / "cfg.json", FIXTURES / case / "sae_weights.safetensors"):
        np.testing.assert_array_equal(load_sae(path).b_enc, sae.b_enc)


def assert_saelens_parameters(sae, ref: dict[str, np.ndarray]) -> None:
    """The weights SAELens holds after loading (and folding its normalisation), bit for bit; b_enc
    is SAELens's minus b_dec @ W_enc where SAELens subtracts b_dec from the input, to float32
    rounding of that float64 sum."""
    for name in ("W_enc", "W_dec", "b_dec", "threshold"):
        np.testing.assert_array_equal(getattr(sae, name), ref[f"saelens_{name}"], err_msg=name)
    b_enc = ref["saelens_b_enc"].astype(np.float64)
    if sae.meta["apply_b_dec_to_input"]:
        b_enc = b_enc - ref["saelens_b_dec"].astype(np.float64) @ ref["saelens_W_enc"]
    np.testing.assert_allclose(sae.b_enc, b_enc, rtol=0, atol=2e-7 * max(1, np.abs(b_enc).max()))


@pytest.mark.parametrize("case", EQUIVALENT)
def test_parameters_are_those_saelens_holds(case):
    assert_saelens_parameters(load_sae(FIXTURES / case), reference(FIXTURES / case))


@pytest.mark.parametrize("case", EQUIVALENT)
def test_folding_leaves_the_saelens_computation_unchanged(case):
    sae = load_sae(FIXTURES / case)
    ref = reference(FIXTURES / case)
    folded = fold(sae)
    np.testing.assert_array_equal(folded.threshold, 1.0)
    assert_close(folded.reconstruct(ref["x"]), ref["recon"])
    assert_close(folded.encode(ref["x"]) * sae.threshold, ref["acts"])
    assert folded.meta == sae.meta


@pytest.mark.parametrize("case", CONVERTED)
def test_the_arrays_as_stored_compute_something_else(case):
    """The fixtures really exercise the conversion: SAELens's weights used as they are stored
    (what saematch did before it read cfg.json) give a reconstruction off by more than 0.1."""
    raw = load_file(str(FIXTURES / case / "sae_weights.safetensors"))
    ref = reference(FIXTURES / case)
    pre = ref["x"] @ raw["W_enc"] + raw["b_enc"]
    naive = (pre * (pre > raw["threshold"])) @ raw["W_dec"] + raw["b_dec"]
    assert np.abs(naive - ref["recon"]).max() > 0.1


def test_b_dec_is_folded_into_the_effective_encoder_bias():
    raw = {k: v.astype(np.float64) for k, v in
           load_file(str(FIXTURES / "jumprelu_b_dec_in/sae_weights.safetensors")).items()}
    sae = load_sae(FIXTURES / "jumprelu_b_dec_in")
    np.testing.assert_allclose(sae.b_enc, raw["b_enc"] - raw["b_dec"] @ raw["W_enc"], rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_array_equal(sae.W_enc, raw["W_enc"].astype(np.float32))
    no_bdec = load_sae(FIXTURES / "jumprelu_no_b_dec_in")
    raw = load_file(str(FIXTURES / "jumprelu_no_b_dec_in/sae_weights.safetensors"))
    np.testing.assert_array_equal(no_bdec.b_enc, raw["b_enc"])


def test_metadata_is_recorded_and_survives_folding(tmp_path):
    sae = load_sae(FIXTURES / "scaled_b_dec_in")
    assert sae.meta["hook_name"] == "blocks.3.hook_resid_post" and sae.meta["layer"] == 3
    assert sae.meta["model_name"] == "tiny-test-model"
    assert sae.meta["neuronpedia_id"] == "tiny-test-model/3-test-res-32"
    assert sae.meta["apply_b_dec_to_input"] is True
    assert sae.meta["normalize_activations"] == "expected_average_only_in"
    assert sae.meta["norm_scaling_factor"] == pytest.approx(0.37)
    assert load_sae(FIXTURES / "jumprelu_bf16").meta["dtype"] == "bfloat16"
    assert load_sae(FIXTURES / "whitened_b_dec_in").meta["whitening_folded"] is True
    save_sae(tmp_path / "folded.npz", fold(sae))
    assert load_sae(tmp_path / "folded.npz").meta == sae.meta
    assert read_meta(tmp_path / "folded.npz") == sae.meta
    assert neuronpedia_id(tmp_path / "folded.npz") == "tiny-test-model/3-test-res-32"
    assert neuronpedia_id(FIXTURES / "scaled_b_dec_in") == "tiny-test-model/3-test-res-32"
    assert neuronpedia_id(FIXTURES / "scaled_b_dec_in/cfg.json") == "tiny-test-model/3-test-res-32"
    save_sae(tmp_path / "plain.npz", random_sae())
    assert neuronpedia_id(tmp_path / "plain.npz") is None
    assert neuronpedia_url("gemma-2-2b/12-gemmascope-res-16k", np.int64(7)) == \
        "https://www.neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/7"


@pytest.mark.parametrize("case, message", [
    ("refuse_standard", "architecture 'standard' cannot be matched as a JumpReLU SAE"),
    ("refuse_topk", "architecture 'topk'"),
    ("refuse_gated", "architecture 'gated'"),
    ("refuse_transcoder", "architecture 'jumprelu_transcoder'"),
    ("refuse_layer_norm", "normalize_activations 'layer_norm' cannot be folded"),
    ("refuse_constant_norm", "normalize_activations 'constant_norm_rescale' cannot be folded"),
    ("refuse_scaled_without_factor", "'expected_average_only_in' needs the scaling factor"),
    ("refuse_zero_threshold", "threshold must be > 0 to fold; 8 feature(s)"),
])
def test_what_cannot_be_matched_is_refused_with_one_clear_error(case, message):
    with pytest.raises(SAEMatchError) as err:
        load_sae(FIXTURES / case)
    assert message in str(err.value) and str(FIXTURES / case) in str(err.value)


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_training_checkpoints_are_refused(tmp_path, architecture):
    """A BatchTopK SAE saved with save_model (a training checkpoint: cfg.json says 'batchtopk',
    as TrainingSAEConfig.to_dict writes it) keeps a top-k per batch, not a threshold per
    feature; save_inference_model turns it into the JumpReLU SAE that loads
    (batchtopk_inference)."""
    folder = copy_case(tmp_path)
    edit_cfg(folder, architecture=architecture)
    with pytest.raises(SAEMatchError) as err:
        load_sae(folder)
    assert f"SAELens architecture {architecture!r} cannot be matched as a JumpReLU SAE: a " \
           "BatchTopK training checkpoint; save it with SAELens's save_inference_model" \
           in str(err.value) and str(folder / "cfg.json") in str(err.value)


def test_bfloat16_weights_are_read_exactly_without_torch(monkeypatch):
    """bfloat16 weights (Llama Scope, bf16 SAELens SAEs) are widened to float32 by their bits,
    so the jobs that load SAEs need no torch (envs/core.yaml has none)."""
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert_saelens_parameters(load_sae(FIXTURES / "jumprelu_bf16"),
                              reference(FIXTURES / "jumprelu_bf16"))
    llama = FIXTURES / "llama_scope/Llama3_1-8B-Base-L0R-8x"
    raw = read_arrays(llama / "checkpoints/final.safetensors")
    assert raw["encoder.weight"].dtype == np.float32 and raw["encoder.weight"].shape == (32, 8)


def copy_case(tmp_path: Path, case: str = "jumprelu_b_dec_in") -> Path:
    folder = tmp_path / case
    shutil.copytree(FIXTURES / case, folder)
    return folder


def edit_cfg(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del cfg[key]
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("change, message", [
    (lambda f: edit_cfg(f, d_in=None), "cfg.json: missing key(s) ['d_in']"),
    (lambda f: edit_cfg(f, architecture=None), "cfg.json: missing key(s) ['architecture']"),
    (lambda f: edit_cfg(f, architecture="mystery"), "architecture 'mystery'"),
    (lambda f: edit_cfg(f, normalize_activations="mystery"), "unknown normalize_activations"),
    (lambda f: edit_cfg(f, d_in=9), "W_enc has shape (8, 32), but the config says d_in=9"),
    (lambda f: edit_cfg(f, d_sae=31), "config says d_in=8, d_sae=31"),
    (lambda f: (f / "cfg.json").write_text("{not json"), "cfg.json: not valid JSON"),
    (lambda f: _edit_weights(f, threshold=lambda t: np.where(np.arange(32) == 5, -0.1, t)),
     "first feature 5 (threshold -0.1"),
    (lambda f: _edit_weights(f, W_dec=lambda w: np.where(np.arange(32)[:, None] == 3, np.nan, w)),
     "W_dec has 8 non-finite"),
    (lambda f: _edit_weights(f, b_enc=None), "missing array(s) ['b_enc']"),
    (lambda f: _edit_weights(f, scaling_factor=lambda _: np.full(32, 2.0, np.float32)),
     "'scaling_factor' other than 1"),
    (lambda f: (f / "sae_weights.safetensors").write_bytes(
        (f / "sae_weights.safetensors").read_bytes()[:500]), "cannot read"),
    (lambda f: (f / "sae_weights.safetensors").unlink(), "file not found"),
])
def test_bad_saelens_folders_fail_clearly(tmp_path, change, message):
    folder = copy_case(tmp_path)
    change(folder)
    with pytest.raises(SAEMatchError) as err:
        load_sae(folder)
    assert message in str(err.value) and str(folder) in str(err.value), str(err.value)


def _edit_weights(folder: Path, **changes) -> None:
    path = folder / "sae_weights.safetensors"
    arrays = load_file(str(path))
    for key, change in changes.items():
        if change is None:
            del arrays[key]
        else:
            arrays[key] = change(arrays.get(key, arrays["threshold"]))
    save_file(arrays, str(path))


def test_saelens_before_6_configs_get_saelens_defaults(tmp_path):
    """Configs written before SAELens 6 have no architecture (meaning 'standard'), name the hook
    hook_point, subtract b_dec by default and store normalisation as a bool."""
    folder = copy_case(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    old = {"d_in": 8, "d_sae": 32, "dtype": "float32", "hook_point": "blocks.5.hook_resid_pre",
           "model_name": "gpt2", "neuronpedia_id": "gpt2-small/5-res-jb",
           "sae_lens_version": "3.1.0", "normalize_activations": False}
    (folder / "cfg.json").write_text(json.dumps(old))
    with pytest.raises(SAEMatchError, match="architecture 'standard'"):
        load_sae(folder)
    edit_cfg(folder, architecture="jumprelu")
    sae = load_sae(folder)
    new = load_sae(FIXTURES / "jumprelu_b_dec_in")  # same weights, apply_b_dec_to_input true
    np.testing.assert_array_equal(sae.b_enc, new.b_enc)
    assert sae.meta["hook_name"] == "blocks.5.hook_resid_pre" and sae.meta["layer"] == 5
    assert sae.meta["neuronpedia_id"] == "gpt2-small/5-res-jb" and cfg["architecture"]
    edit_cfg(folder, normalize_activations=True)
    with pytest.raises(SAEMatchError, match="'expected_average_only_in' needs the scaling"):
        load_sae(folder)


def test_weights_without_cfg_json_are_used_as_they_are(tmp_path):
    """The bare-weights path of before: no cfg.json, so no SAELens settings to apply."""
    folder = copy_case(tmp_path)
    (folder / "cfg.json").unlink()
    raw = load_file(str(folder / "sae_weights.safetensors"))
    for path in (folder, folder / "sae_weights.safetensors"):
        sae = load_sae(path)
        np.testing.assert_array_equal(sae.b_enc, raw["b_enc"])
        assert sae.meta == {}


# ---- registry -------------------------------------------------------------------------------

def test_registry_resolves_repo_path_format_and_neuronpedia_id():
    e = lookup("gemma-scope-2b-pt-res-canonical", "layer_1/width_16k/canonical", REGISTRY)
    assert (e.repo_id, e.path, e.conversion, e.model) == (
        "google/gemma-scope-2b-pt-res", "layer_1/width_16k/average_l0_102", "gemma_2",
        "gemma-2-2b")
    assert e.neuronpedia_id == "gemma-2-2b/1-gemmascope-res-16k"
    e = lookup("llama_scope_lxr_8x", "l1r_8x", REGISTRY)
    assert e.conversion == "llama_scope" and e.norm_scaling_factor == pytest.approx(39.766990291)
    e = lookup("gpt2-small-res-jb", "blocks.0.hook_resid_pre", REGISTRY)
    assert e.conversion == "sae_lens"  # a release without conversion_func is a SAELens folder
    assert e.config_overrides == {"model_from_pretrained_kwargs": {"center_writing_weights": True}}
    assert format_of(e).config_file == "cfg.json"


@pytest.mark.parametrize("release, sae_id, message", [
    ("gemma-scope-2b-pt-res-canonicl", "x", "no release 'gemma-scope-2b-pt-res-canonicl'; did you "
     "mean ['gemma-scope-2b-pt-res-canonical'"),
    ("gemma-scope-2b-pt-res-canonical", "layer_1/width_16k/canonicl",
     "has no SAE id 'layer_1/width_16k/canonicl'"),
])
def test_registry_names_what_it_cannot_find(release, sae_id, message):
    with pytest.raises(SAEMatchError) as err:
        lookup(release, sae_id, REGISTRY)
    assert message in str(err.value) and str(REGISTRY) in str(err.value)


def test_unsupported_conversions_are_refused_before_any_download():
    e = lookup("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_big", REGISTRY)
    with pytest.raises(SAEMatchError, match="uses conversion 'gemma_3'"):
        format_of(e)


def test_missing_registry_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SAEMatchError, match=r"pip install 'saematch\[saelens\]'"):
        lookup("gemma-scope-2b-pt-res-canonical", "layer_0/width_16k/canonical")


@pytest.mark.skipif(importlib.util.find_spec("sae_lens") is None, reason="sae-lens not installed")
def test_real_registry_agrees_with_saelens_and_the_gemma_scope_config():
    """Every SAE of every release in the installed pretrained_saes.yaml resolves as sae-lens
    resolves it, and the canonical Gemma Scope ids give config/gemma-scope-2b.yaml's folders."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    for release, info in get_pretrained_saes_directory().items():
        for sae_id, path in info.saes_map.items():
            e = lookup(release, sae_id)
            assert (e.repo_id, e.path, e.neuronpedia_id) == (
                info.repo_id, path, info.neuronpedia_id[sae_id])
            assert e.conversion == (info.conversion_func or "sae_lens")
            assert e.norm_scaling_factor == info.norm_scaling_factor.get(sae_id)
    folders = yaml.safe_load((REPO / "config/gemma-scope-2b.yaml").read_text())["widths"]
    for width, spec in folders.items():
        for layer, folder in spec["folder"].items():
            e = lookup("gemma-scope-2b-pt-res-canonical", f"layer_{layer}/width_{width}/canonical")
            assert e.path == f"layer_{layer}/width_{width}/{folder}"


# ---- downloads from a pre-filled, offline Hub cache -----------------------------------------

def prefill_hub_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """A Hub cache holding ``files`` (repo path -> local file) at one commit, as
    ``huggingface-cli download`` leaves it (snapshot entries link to blobs); returns the
    snapshot folder."""
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / sha
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for i, (name, src) in enumerate(files.items()):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(src, blob)
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).symlink_to(os.path.relpath(blob, (snap / name).parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs/main").write_text(sha)
    return snap


def fetch_offline(cache: Path, release: str, sae_id: str, manifest: Path,
                  registry: Path = REGISTRY) -> subprocess.CompletedProcess:
    """fetch_saelens_sae in a fresh process (huggingface_hub reads its cache settings at
    import), offline, with a token in the environment that must not leak."""
    code = ("import sys; from saematch.sources import fetch_saelens_sae; "
            "fetch_saelens_sae(*sys.argv[1:4], sys.argv[4], registry=sys.argv[5])")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "HF_TOKEN": "hf_secret_do_not_log", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, release, sae_id, "main", str(manifest),
                           str(registry)], capture_output=True, text=True, env=env)


def test_llama_scope_release_loads_as_saelens_from_pretrained(tmp_path):
    """fnlp's Llama Scope layout, converted as SAELens converts it: the reference is
    SAE.from_pretrained('llama_scope_lxr_8x', 'l0r_8x') on the same files."""
    src = FIXTURES / "llama_scope/Llama3_1-8B-Base-L0R-8x"
    snap = prefill_hub_cache(tmp_path / "hub", "fnlp/Llama3_1-8B-Base-LXR-8x", {
        f"Llama3_1-8B-Base-L0R-8x/{n}": src / n
        for n in ("hyperparams.json", "checkpoints/final.safetensors")})
    manifest = tmp_path / "layer_0.json"
    proc = fetch_offline(tmp_path / "hub", "llama_scope_lxr_8x", "l0r_8x", manifest)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(manifest.read_text())
    assert m["path"] == str((snap / m["filename"]).resolve())  # the blob the snapshot links to
    assert m["commit"] == snap.name and m["revision"] == "main"
    assert m["files"]["hyperparams.json"]["sha256"] == sha256(src / "hyperparams.json")
    assert m["filename"] == "Llama3_1-8B-Base-L0R-8x/checkpoints/final.safetensors"
    assert set(m["files"]) == {"hyperparams.json", "checkpoints/final.safetensors"}
    assert neuronpedia_id(manifest) == "llama3.1-8b/0-llamascope-res-32k"
    assert m["meta"]["hook_name"] == "blocks.0.hook_resid_post" and m["meta"]["layer"] == 0
    assert b"hf_secret_do_not_log" not in manifest.read_bytes()
    sae = load_sae(manifest)
    ref = reference(FIXTURES / "llama_scope")
    assert sae.meta["norm_scaling_factor"] == pytest.approx(float(ref["norm_scaling_factor"]))
    assert len(set(sae.threshold.tolist())) == 1  # one scalar threshold for all features
    assert_saelens_parameters(sae, ref)
    assert_close(ref["x"] @ sae.W_enc + sae.b_enc, ref["pre"])
    assert_close(sae.encode(ref["x"]), ref["acts"])
    assert_close(sae.reconstruct(ref["x"]), ref["recon"])
    assert_close(fold(sae).reconstruct(ref["x"]), ref["recon"])


def test_saelens_format_release_and_refusal_before_the_weights(tmp_path):
    """A release in SAELens's own format downloads cfg.json first: an SAE that cannot be
    matched is refused before its weights are fetched (here they are not even in the cache)."""
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"tiny": {
        "model": "tiny-test-model", "repo_id": "saematch/tiny",
        "saes": [{"id": "ok", "path": "jumprelu", "neuronpedia": "tiny/3-res"},
                 {"id": "topk", "path": "topk"}],
        "config_overrides": {"dataset_path": "somewhere"}}}))
    case = FIXTURES / "jumprelu_b_dec_in"
    prefill_hub_cache(tmp_path / "hub", "saematch/tiny", {
        "jumprelu/cfg.json": case / "cfg.json",
        "jumprelu/sae_weights.safetensors": case / "sae_weights.safetensors",
        "topk/cfg.json": FIXTURES / "refuse_topk/cfg.json"})
    proc = fetch_offline(tmp_path / "hub", "tiny", "ok", tmp_path / "ok.json", registry)
    assert proc.returncode == 0, proc.stderr
    sae = load_sae(tmp_path / "ok.json")
    np.testing.assert_array_equal(sae.b_enc, load_sae(case).b_enc)
    assert sae.meta["neuronpedia_id"] == "tiny/3-res" == neuronpedia_id(tmp_path / "ok.json")
    assert sae.meta["release"] == "tiny" and sae.meta["sae_id"] == "ok"
    proc = fetch_offline(tmp_path / "hub", "tiny", "topk", tmp_path / "topk.json", registry)
    assert proc.returncode != 0 and not (tmp_path / "topk.json").exists()
    assert "tiny topk (saematch/tiny/topk): SAELens architecture 'topk'" in proc.stderr
    assert "cannot fetch" not in proc.stderr  # refused on cfg.json, weights never asked for
