"""Fitting embeddings: exactness where the optimum is known, bounds, and the paper's recipe."""

import torch

from nembed_compress.convert import rank1_separable, to_embedding, to_separable
from nembed_compress.fit import FitProblem, Target, eckart_young_bound, fit_embeddings, fit_loss
from nembed_compress.models import build_model
from nembed_compress.spec import ArchSpec


def mlp_problem(dim: int, seed: int = 0) -> FitProblem:
    g = torch.Generator().manual_seed(seed)
    # Low rank plus noise, like trained weights: a few strong directions.
    w1 = torch.randn(60, 12, generator=g) @ torch.randn(12, 100, generator=g) * 0.05
    w1 += torch.randn(60, 100, generator=g) * 0.01
    w2 = torch.randn(10, 60, generator=g) * 0.1
    sets = {"input": 100, "fc1": 60, "fc2": 10}
    return FitProblem(
        sets, [Target("fc1", "input", "fc1", w1), Target("fc2", "fc1", "fc2", w2)], dim
    )


def stacked_optimum(problem: FitProblem) -> float:
    """One hidden set joining two matrices: the optimum is a rank-d SVD of both, stacked."""
    w1, w2 = (t.weight.double() for t in problem.targets)
    stacked = torch.cat([w1 / w1.numel() ** 0.5, w2.T / w2.numel() ** 0.5], dim=1)
    s = torch.linalg.svdvals(stacked)
    return float(s[problem.dim :].pow(2).sum())


def test_als_reaches_the_closed_form_optimum_of_a_one_hidden_layer_net():
    for dim in (2, 4, 8, 16):
        problem = mlp_problem(dim)
        result = fit_embeddings(problem)
        optimum = stacked_optimum(problem)
        assert abs(result.loss - optimum) <= 1e-5 * optimum + 1e-9, (dim, result.loss, optimum)


def test_als_is_never_worse_than_the_papers_adam_recipe():
    problem = mlp_problem(8)
    als = fit_embeddings(problem)
    adam = fit_embeddings(problem, "adam", steps=300)
    assert als.loss <= adam.loss * 1.0001, (als.loss, adam.loss)


def test_the_eckart_young_bound_is_below_every_fit():
    problem = mlp_problem(4)
    bound = eckart_young_bound(problem)
    result = fit_embeddings(problem)
    assert 0 < bound <= result.loss
    assert result.bound == bound


def test_reported_loss_matches_the_embeddings():
    problem = mlp_problem(4)
    result = fit_embeddings(problem)
    assert abs(float(fit_loss(problem, result.embeddings)) - result.loss) < 1e-9


def test_fixed_sets_are_not_changed_by_the_fit():
    problem = mlp_problem(4)
    fixed = torch.randn(100, 4)
    problem.fixed = {"input": fixed}
    result = fit_embeddings(problem)
    assert torch.equal(result.embeddings["input"], fixed)
    free = fit_embeddings(mlp_problem(4))
    assert result.loss >= free.loss - 1e-9


def test_scaled_dot_and_tanh_kernels_fit_too():
    for kernel in ("scaled-dot", "tanh"):
        problem = mlp_problem(8)
        problem.kernel = kernel
        result = fit_embeddings(problem, steps=50)
        baseline = sum(float(t.weight.pow(2).mean()) for t in problem.targets)
        assert result.loss < 0.5 * baseline, (kernel, result.loss, baseline)


def test_rank1_split_is_exact_for_separable_filters():
    pw, dw = torch.randn(4, 3), torch.randn(4, 3, 3)
    weight = pw[:, :, None, None] * dw[:, None]
    pointwise, depthwise, error = rank1_separable(weight)
    rebuilt = pointwise[:, :, None, None] * depthwise[:, None]
    assert error < 1e-5
    assert torch.allclose(rebuilt, weight, atol=1e-5)
    norms = depthwise.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(4), atol=1e-5)


def test_direct_to_separable_keeps_a_separable_network_exact():
    spec = ArchSpec("resnet9", (3, 16, 16), (4, 8, 8, 8, 8, 8, 8, 8, 10))
    sep_ref = build_model(spec.replace(repr="sep")).eval()
    direct = build_model(spec).eval()
    state = direct.state_dict()
    for name, layer in sep_ref.layers.items():
        if hasattr(layer, "dense_weight"):
            state[f"layers.{name}.weight"] = layer.dense_weight().detach()
        else:
            state[f"layers.{name}.weight"] = layer.weight.detach()
            state[f"layers.{name}.bias"] = layer.bias.detach()
    direct.load_state_dict(state)
    sep, errors = to_separable(direct)
    x = torch.randn(2, 3, 16, 16)
    assert max(errors.values()) < 1e-5
    assert torch.allclose(sep.eval()(x), direct(x), atol=1e-4)


def test_embedding_model_at_full_rank_reproduces_an_mlp():
    direct = build_model(ArchSpec("fc", (1, 6, 6), (8, 5))).eval()
    conversion = to_embedding(direct, 8)
    x = torch.randn(5, 1, 6, 6)
    assert conversion.fit.loss < 1e-8
    assert torch.allclose(conversion.model.eval()(x), direct(x), atol=1e-4)


def test_with_another_models_input_embeddings_als_still_beats_adam():
    # The crossover protocol: the source is fitted in the target's input basis.
    target_inputs = fit_embeddings(mlp_problem(8, seed=0)).embeddings["input"]
    problem = mlp_problem(8, seed=1)
    problem.fixed = {"input": target_inputs}
    als = fit_embeddings(problem)
    adam = fit_embeddings(problem, "adam", steps=500)
    assert als.loss <= adam.loss * 1.0001, (als.loss, adam.loss)


def test_batch_norm_statistics_are_measured_again_from_data():
    from nembed_compress.convert import reestimate_batch_norm

    spec = ArchSpec("resnet9", (3, 16, 16), (4, 8, 8, 8, 8, 8, 8, 8, 10), repr="emb", dim=4)
    model = build_model(spec)
    prep = model.norms["prep"]
    prep.running_mean.fill_(5.0)
    batches = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    assert reestimate_batch_norm(model, batches, max_batches=2) == 2
    with torch.no_grad():
        z = model.embeddings
        pre = torch.cat([model.layers["prep"](x, z["input"], z["prep"]) for x in batches[:2]])
    assert torch.allclose(prep.running_mean, pre.mean(dim=(0, 2, 3)), atol=1e-4)
    assert not model.training
