"""Loading, validation and folding of JumpReLU SAEs."""
import json

import numpy as np
import pytest
from conftest import random_sae
from safetensors.numpy import save_file

from saematch.errors import SAEMatchError
from saematch.sae import PARAM_NAMES as PARAMS
from saematch.sae import SAE, fold, load_sae, save_sae, validate


def test_fold_leaves_reconstruction_unchanged():
    sae = random_sae(n=256, d=32, seed=3)
    x = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32) * 2
    folded = fold(sae)
    f, f_folded = sae.encode(x), folded.encode(x)
    assert 0.05 < (f > 0).mean() < 0.95  # the test input really exercises the jump
    assert np.array_equal(f > 0, f_folded > 0)
    scale = np.abs(sae.reconstruct(x)).max()
    np.testing.assert_allclose(folded.reconstruct(x), sae.reconstruct(x), rtol=0, atol=1e-6 * scale)
    # in float64 the identity is exact up to rounding of the divisions
    sae64 = _with(sae, **{k: getattr(sae, k).astype(np.float64) for k in PARAMS})
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(fold(sae64).reconstruct(x64), sae64.reconstruct(x64), rtol=1e-12,
                               atol=1e-12 * scale)
    np.testing.assert_array_equal(folded.threshold, 1.0)
    np.testing.assert_allclose(f_folded * sae.threshold, f, rtol=0, atol=1e-6 * np.abs(f).max())


def test_fold_changes_parameters_as_the_paper_says():
    sae = random_sae(seed=1)
    f = fold(sae)
    np.testing.assert_allclose(f.W_enc, sae.W_enc / sae.threshold, rtol=1e-6)
    np.testing.assert_allclose(f.b_enc, sae.b_enc / sae.threshold, rtol=1e-6)
    np.testing.assert_allclose(f.W_dec, sae.W_dec * sae.threshold[:, None], rtol=1e-6)


def _with(sae: SAE, **changes) -> SAE:
    return SAE(**{**{k: getattr(sae, k) for k in
                     ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "source")}, **changes})


@pytest.mark.parametrize("change, message", [
    (lambda s: {"threshold": np.where(np.arange(s.n_features) == 7, 0.0, s.threshold)},
     "first feature 7"),
    (lambda s: {"threshold": -s.threshold}, "threshold must be > 0"),
    (lambda s: {"W_dec": np.where(np.arange(s.n_features)[:, None] == 5, np.nan, s.W_dec)},
     "W_dec has 16 non-finite"),
    (lambda s: {"b_enc": np.full_like(s.b_enc, np.inf)}, "b_enc has 64 non-finite"),
    (lambda s: {"W_enc": s.W_enc[:-1]}, "W_enc has shape (15, 64), expected (16, 64)"),
    (lambda s: {"b_dec": s.b_dec[:3]}, "b_dec has shape (3,)"),
])
def test_validate_names_the_problem(change, message):
    sae = random_sae()
    with pytest.raises(SAEMatchError, match=None) as err:
        validate(_with(sae, source="layer_3/params.npz", **change(sae)))
    assert "layer_3/params.npz" in str(err.value) and message in str(err.value)


def test_save_load_roundtrip_and_formats(tmp_path):
    sae = random_sae(seed=2)
    save_sae(tmp_path / "a/params.npz", sae)
    loaded = load_sae(tmp_path / "a/params.npz")
    for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        np.testing.assert_array_equal(getattr(loaded, k), getattr(sae, k))
    # SAELens folder with log_threshold: bare weights, then with a cfg.json (tests/test_saelens.py
    # checks SAELens's settings against SAELens itself)
    folder = tmp_path / "saelens"
    folder.mkdir()
    save_file({"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec,
               "log_threshold": np.log(sae.threshold)}, str(folder / "sae_weights.safetensors"))
    np.testing.assert_allclose(load_sae(folder).threshold, sae.threshold, rtol=1e-6)
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "jumprelu", "d_in": 16, "d_sae": 64, "dtype": "float32",
        "apply_b_dec_to_input": False, "metadata": {"sae_lens_version": "6.54.12"}}))
    np.testing.assert_allclose(load_sae(folder).threshold, sae.threshold, rtol=1e-6)
    np.testing.assert_array_equal(load_sae(folder).b_enc, sae.b_enc)
    # fetch manifest
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"path": str(tmp_path / "a/params.npz")}))
    np.testing.assert_array_equal(load_sae(manifest).W_dec, sae.W_dec)


def test_bad_files_fail_clearly(tmp_path):
    save_sae(tmp_path / "params.npz", random_sae())
    data = (tmp_path / "params.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEMatchError, match=r"trunc\.npz: cannot read.*truncated"):
        load_sae(tmp_path / "trunc.npz")
    with pytest.raises(SAEMatchError, match=r"nope\.npz: file not found"):
        load_sae(tmp_path / "nope.npz")
    np.savez(tmp_path / "partial.npz", W_enc=np.zeros((2, 2)))
    with pytest.raises(SAEMatchError, match=r"partial\.npz: missing array"):
        load_sae(tmp_path / "partial.npz")
    np.savez(tmp_path / "pickled.npz", W_enc=np.array([{"a": 1}], dtype=object))
    with pytest.raises(SAEMatchError, match="pickled.npz: cannot read"):
        load_sae(tmp_path / "pickled.npz")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from saematch.atomic import atomic_path

    target = tmp_path / "out.npz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
