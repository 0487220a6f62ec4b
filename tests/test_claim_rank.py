"""Claim 6's mathematics on constructed matrices: φ of equal and of random subspaces, the learned update's
row space, the paper's Table 7 and its amplification factor by hand, and the bases' B read back as PEFT's ΔW."""

import copy

import numpy as np
import pytest

from experiment_helpers import tiny_gpt
from minilora.experiments.bases import gpt
from minilora.experiments.bases.gpt_methods import LORA_QV
from minilora.experiments.claims import rank
from minilora.peft import LoraConfig, get_peft_model


def test_phi_is_one_for_equal_subspaces():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((8, 40))
    mixed = rng.standard_normal((8, 8)) @ A  # another basis of the same row space
    assert rank.subspace_similarity(A, mixed, 8, 8) == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(np.diag(rank.similarity_grid(A, A)), 1.0)  # the same singular vectors at every i
    # ΔW = s B A has A's row space: its top 8 right-singular vectors span it
    delta = rank.lora_update(rng.standard_normal((30, 8)), A, 2.0)
    assert rank.similarity_grid(delta, A, 8, 8)[-1, -1] == pytest.approx(1.0, abs=1e-12)


def test_phi_of_random_subspaces_is_about_max_i_j_over_d():
    # E φ(i, j) = max(i, j) / d exactly (E[P_U] = (i/d) I). Per trial ||U^T V||_F² is close to a sum of i j
    # squared N(0, 1/d) entries, standard deviation at most sqrt(2 i j) / d (orthonormality only lowers it),
    # so φ's is at most sqrt(2 i j) / (d min(i, j)); the mean of n trials is within 5 of those / sqrt(n).
    d, n, rng = 128, 200, np.random.default_rng(1)
    for i, j in ((8, 8), (4, 16)):
        phis = [rank.subspace_similarity(rng.standard_normal((i, d)), rng.standard_normal((j, d)), i, j) for _ in range(n)]
        bound = 5 * np.sqrt(2 * i * j) / (d * min(i, j)) / np.sqrt(n)
        assert abs(np.mean(phis) - rank.random_similarity(i, j, d)) < bound


def test_table7_and_the_amplification_factor_by_hand():
    W = np.diag([4.0, 3.0, 1.0])
    delta = 5 * np.outer([1.0, 0, 0], [1.0, 1.0, 0]) / np.sqrt(2)  # rank 1: U = e1, V = (e1 + e2) / sqrt(2)
    # U^T W V = (W[0, 0] + W[0, 1]) / sqrt(2) = 4 / sqrt(2); ||ΔW||_F = 5
    assert rank.amplification(W, delta, 1) == pytest.approx(5 / (4 / np.sqrt(2)))
    table = rank.update_table(W, delta, 1)
    assert table["delta"] == pytest.approx(2 * np.sqrt(2)) and table["W"] == pytest.approx(4.0)  # W's top direction
    assert table["norm_W"] == pytest.approx(np.sqrt(26)) and table["norm_delta"] == pytest.approx(5.0)
    assert rank.update_table(W, delta, 2)["W"] == pytest.approx(5.0)  # sqrt(4² + 3²)
    assert rank.update_table(W, W, 3)["random"] == pytest.approx(np.sqrt(26))  # a random basis of all of R^3 keeps W whole
    assert 0 < rank.update_table(W, delta, 1)["random"] < np.sqrt(26)


def test_adapter_updates_are_peft_delta_weights():
    # the toy base's B and A of a Wq+Wv adapter (PEFT's fused c_attn layout) make the layer's own ΔW
    model = get_peft_model(tiny_gpt(), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **copy.deepcopy(LORA_QV)))
    state = model.base_model.adapter_state_dict("default")
    state = {k: np.asarray(v) for k, v in state.items()}
    A, B = gpt.adapter_A(state, 4), gpt.adapter_B(state, 4)
    layer = model.base_model.model.transformer.h[1].attn.c_attn
    want = np.asarray(layer.get_delta_weight("default").data)  # (3C, C): q rows, zeros, v rows
    C = want.shape[1]
    for name, rows in (("h.1.Wq", want[:C]), ("h.1.Wv", want[2 * C:])):
        # the layer sums r = 4 float32 products and scales once: within (r + 2) eps32 of s |B| |A| per entry
        bound = 6 * np.finfo(np.float32).eps * 2.0 * (np.abs(B[name]) @ np.abs(A[name]))
        assert np.all(np.abs(rank.lora_update(B[name], A[name], 2.0) - rows) <= bound)
    assert not want[C:2 * C].any()  # k is not adapted


def test_update_figures_on_constructed_adapters():
    # two "adapters" sharing their directions: φ on ΔW is 1, and a seed compared with itself gives φ = 1
    rng = np.random.default_rng(2)
    d, W = 70, rng.standard_normal((70, 70))
    A = {"small": {"h.0.Wq": rng.standard_normal((rank.SMALL_R, d))}}
    A["large"] = {"h.0.Wq": np.vstack([A["small"]["h.0.Wq"], np.zeros((rank.LARGE_R - rank.SMALL_R, d))])}
    B = rng.standard_normal((d, rank.SMALL_R))
    delta = {"small": {"h.0.Wq": rank.lora_update(B, A["small"]["h.0.Wq"], 2.0)},
             "large": {"h.0.Wq": rank.lora_update(np.hstack([B, np.zeros((d, 56))]), A["large"]["h.0.Wq"], 0.25)}}
    f = rank.update_figures(delta, {"h.0.Wq": W}, A, {"A": A["large"], "delta": delta["large"]}, d)
    assert f["phi_delta"]["phi_1_1"] == pytest.approx(1.0) and f["phi_delta"]["phi_diag"] == pytest.approx(1.0)
    assert f["seed_phi"]["A"]["phi_1_1"] == pytest.approx(1.0) and f["seed_phi"]["delta"]["phi_1_1"] == pytest.approx(1.0)
    assert f["table7"]["8"]["amplification"] == pytest.approx(rank.amplification(W, delta["small"]["h.0.Wq"], 8))
    assert rank.update_figures(delta, {"h.0.Wq": W}, A, None, d)["seed_phi"] is None
