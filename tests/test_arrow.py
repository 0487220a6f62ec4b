"""Arrow routing (minilora/peft/arrow.py) against PEFT's ``create_arrow_model``, the exact SVD and
a token-by-token reference.

Prototypes. minilora runs PEFT's power iterations (float32, 15 steps); started from PEFT's own
start vector (torch's seeded ``randn``), its iterates follow the same exact sequence v_0, v_1, ...
and each float32 step adds a rounding error. Step k computes w = A^T (C (A v)) with dot products
of at most n = 2 in + 2 r terms and normalises; by the dot-product bound (Higham, eq. 3.5) its
relative error is at most delta_k = 2 gamma_n |||A|^T |C| |A| |v_k||| / ||w_k|| (the factor 2 for
the normalisation), and an error e already in v_k grows by at most L_k = ||A^T C A||_2 / ||w_k||
through the step. So each implementation lies within E = sum_k delta_k prod_{j>k} L_j of the
exact iterate, and the two within 2 E of each other (``power_bound``). Against the exact SVD,
where σ₂/σ₁ <= 0.5, the iterate also carries the truncation tan(θ_0) (σ₂/σ₁)^30 of the start's
angle θ_0 to the singular vector. Signs are arbitrary: compared up to sign.

Outputs. With PEFT's prototypes copied in, the routed logits are float64 products in another
order: within 1e-12 relative (measured ~1e-16).
"""

import copy

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
from peft.tuners.lora.arrow import create_arrow_model as peft_create_arrow_model  # noqa: E402

from minilora.models import to_transformers  # noqa: E402
from minilora.peft import LoraConfig, get_peft_model  # noqa: E402
from minilora.peft import arrow  # noqa: E402
from minilora.peft.arrow import ArrowConfig, create_arrow_model  # noqa: E402
from minilora.tensor import Tensor  # noqa: E402
from peft_helpers import assert_unchanged, ids, perturb_trainable, rel_err, snapshot, tiny_gpt  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

EXPERTS = 3
TARGETS = ["c_attn", "c_fc"]
X = ids(3, 9, seed=4)


def gamma(n: int, dtype=np.float32) -> float:
    u = np.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


def power_bound(A, Bm, start, iters=15):
    """E of the module docstring: how far a float32 run of the iterations may be from the exact one."""
    A, Bm = A.astype(np.float64), Bm.astype(np.float64)
    C = Bm.T @ Bm
    norm_M = np.linalg.norm(A.T @ C @ A, 2)
    n = 2 * A.shape[1] + 2 * A.shape[0]
    v = start / np.linalg.norm(start)
    E = 0.0
    for _ in range(iters):
        w = A.T @ (C @ (A @ v))
        delta = 2 * gamma(n) * np.linalg.norm(np.abs(A).T @ (np.abs(C) @ (np.abs(A) @ np.abs(v)))) / np.linalg.norm(w)
        E = E * norm_M / np.linalg.norm(w) + delta
        v = w / np.linalg.norm(w)
    return E


def same_up_to_sign(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return min(np.max(np.abs(a - b)), np.max(np.abs(a + b)))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    paths = []
    for e in range(EXPERTS + 1):  # three task experts, then one "general" adapter for GenKnowSub
        model = get_peft_model(tiny_gpt(), LoraConfig(r=4, lora_alpha=6, target_modules=TARGETS, init_lora_weights=False))
        perturb_trainable(model, seed=10 + e)
        model.save_pretrained(root / f"e{e}")
        paths.append(root / f"e{e}")
    return paths


def peft_arrow(folders, config, general=None):
    """PEFT's Arrow model over the transformers twin, after one forward (which builds its prototypes)."""
    model = peft_create_arrow_model(to_transformers(tiny_gpt()), [str(p) for p in folders[:EXPERTS]], config,
                                    general_adapter_paths=general).eval()
    with torch.no_grad():
        logits = model(torch.tensor(X)).logits.numpy()
    return model, logits


def routers(model):
    """``{layer name: (layer, its ArrowLoraLinearLayer or ArrowRouter)}`` of a PEFT or minilora model."""
    return {n.removeprefix("base_model.model."): (m, m.lora_arrow["arrow_router"])
            for n, m in model.named_modules() if hasattr(m, "lora_arrow") and "arrow_router" in m.lora_arrow}


@pytest.mark.parametrize("use_gks", [False, True])
def test_prototypes_and_routed_logits_equal_peft_s(folders, use_gks):
    config = dict(top_k=2, router_temperature=0.7, rng_seed=7, use_gks=use_gks)
    general = [str(folders[EXPERTS])] if use_gks else None
    theirs, expected = peft_arrow(folders, peft.ArrowConfig(**config), general)
    ours = create_arrow_model(tiny_gpt(), folders[:EXPERTS], ArrowConfig(**config), general_adapter_paths=general)
    assert ours.active_adapter == "arrow_router" and ours.peft_config["arrow_router"].r == 4
    ours_routers, their_routers = routers(ours), routers(theirs)
    assert sorted(ours_routers) == sorted(their_routers) and len(ours_routers) == 4  # c_attn, c_fc in 2 blocks
    start = torch.randn(16, generator=torch.Generator().manual_seed(7)).numpy()  # PEFT's start, in = 16 everywhere
    for name, (layer, router) in ours_routers.items():
        their_layer, their_router = their_routers[name]
        assert router.experts == their_router.task_adapter_names == ["task_0", "task_1", "task_2"]
        for e, expert in enumerate(router.experts):
            A, Bm = layer.lora_A[expert].weight.data, layer.lora_B[expert].weight.data
            # GenKnowSub changed the experts' weights as PEFT's did
            assert rel_err(A, their_layer.lora_A[expert].weight.detach().numpy()) < 1e-12
            assert rel_err(Bm, their_layer.lora_B[expert].weight.detach().numpy()) < 1e-12
            ours_proto = arrow.top_right_singular_vector(A, Bm, start=start)
            bound = 2 * power_bound(A, Bm, start)
            assert same_up_to_sign(ours_proto, their_router.prototypes[e].numpy()) <= bound, (name, expert)
        router.prototypes = their_router.prototypes.numpy()  # then the routing itself, in float64
    assert rel_err(ours(X)[0].numpy(), expected) < 1e-12


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), n_in=st.integers(2, 12), n_out=st.integers(2, 12), r=st.integers(1, 4))
def test_a_prototype_is_the_top_right_singular_vector_where_the_gap_is_wide(seed, n_in, n_out, r):
    rng = np.random.default_rng(seed)
    A, Bm = rng.standard_normal((r, n_in)), rng.standard_normal((n_out, r))
    _, S, Vh = np.linalg.svd(Bm @ A)
    ratio = S[1] / S[0] if len(S) > 1 else 0.0
    assume(ratio <= 0.5)  # only there do 15 steps converge; elsewhere the iterate is PEFT's, not the SVD's
    start = arrow.power_iteration_start(n_in, seed)
    cos = min(abs(start @ Vh[0]) / np.linalg.norm(start), 1.0)
    assume(cos > 1e-3)
    truncation = np.sqrt(1 - cos**2) / cos * ratio ** 30
    v = arrow.top_right_singular_vector(A, Bm, start=start)
    assert same_up_to_sign(v, Vh[0]) <= power_bound(A, Bm, start) + truncation


@settings(max_examples=30)
@given(seed=st.integers(0, 2**16), experts=st.integers(1, 4), tokens=st.integers(1, 6), data=st.data())
def test_the_routed_update_equals_the_token_by_token_reference(seed, experts, tokens, data):
    rng = np.random.default_rng(seed)
    n_in, n_out, r = 5, 4, 3
    top_k = data.draw(st.integers(1, experts))
    temperature = data.draw(st.sampled_from([0.3, 1.0, 2.5]))
    As = [rng.standard_normal((r, n_in)) for _ in range(experts)]
    Bs = [rng.standard_normal((n_out, r)) for _ in range(experts)]
    scalings = list(rng.uniform(0.5, 2, experts))
    prototypes = rng.standard_normal((experts, n_in))
    x = rng.standard_normal((tokens, n_in))
    adapters = arrow.gathered.stack_adapters([Tensor(a) for a in As], [Tensor(b) for b in Bs], scalings)
    got = arrow.arrow_delta(Tensor(x), prototypes, adapters, top_k, temperature).numpy()
    expected = arrow.arrow_delta_reference(x, prototypes, As, Bs, scalings, top_k, temperature)
    assert rel_err(got, expected) < 1e-12


def test_arrow_s_refusals_name_the_problem(folders, tmp_path):
    with pytest.raises(ValueError, match=r"ArrowConfig.top_k=4 exceeds the 3 task adapters to route among"):
        create_arrow_model(tiny_gpt(), folders[:EXPERTS], ArrowConfig(top_k=4))
    with pytest.raises(ValueError, match=r"You should provide general LoRA paths if you want to use GenKnowSub"):
        create_arrow_model(tiny_gpt(), folders[:EXPERTS], ArrowConfig(use_gks=True))
    with pytest.raises(ValueError, match=r"ArrowConfig.router_temperature must be greater than 0, got 0"):
        ArrowConfig(router_temperature=0)
    other = get_peft_model(tiny_gpt(), LoraConfig(r=2, target_modules=TARGETS))
    other.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"\[task_1\] rank mismatch: 2 != 4"):
        create_arrow_model(tiny_gpt(), [folders[0], tmp_path], ArrowConfig(top_k=1))
    model = create_arrow_model(tiny_gpt(), folders[:EXPERTS], ArrowConfig(top_k=1, rng_seed=0))
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r"cannot merge 'arrow_router' into transformer\.h\.0\.attn\.c_attn: an Arrow "
                                           r"router weighs its experts token by token"):
        model.merge_adapter()
    assert_unchanged(model, before)


def test_routing_comparison_gives_every_variant_and_leaves_the_model_as_it_was(folders):
    from minilora.peft import PeftModel

    model = PeftModel.from_pretrained(tiny_gpt(), folders[0], adapter_name="a")
    model.load_adapter(folders[1], "b")
    targets = np.roll(X, -1, axis=1)
    before = snapshot(model)

    def evaluate(m):
        return {"loss": float(m(X, targets)[1].item())}

    result = arrow.routing_comparison(model, ["a", "b"], evaluate)
    assert_unchanged(model, before)
    figures = result["figures"]
    assert list(figures) == ["base", "a", "b", "merged", "routed_top1", "routed_top2"]
    model.set_adapter("a")
    assert figures["a"] == evaluate(model)
    merged = copy.deepcopy(model)
    merged.add_weighted_adapter(["a", "b"], [0.5, 0.5], "half", combination_type="cat")
    merged.set_adapter("half")
    assert figures["merged"] == evaluate(merged)
    assert len({f["loss"] for f in figures.values()}) == 6  # six different models
