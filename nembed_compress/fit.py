"""Fitting neuron embeddings to given weight matrices.

The problem (paper, equation 4): find an embedding Z_s (n_s, d) for every neuron
set s that minimises

    L = sum over matrices W (n_out, n_in) joining sets a -> b of
        ||W - kernel(Z_b, Z_a)||_F^2 / (n_out * n_in).

Two solvers:

- ``als`` (default): for linear kernels the loss is quadratic in any one set's
  embeddings with the others fixed, so each set has an exact least-squares update
  (one d x d solve). The neuron-set graph of the zoo is bipartite, so the sets
  split into two colours whose members never meet in one matrix; a whole colour
  is then updated exactly at once. The first colour starts from the top-d
  singular vectors of its matrices stacked side by side with their loss weights;
  where one hidden set joins two matrices (a 784-400-10 MLP) that start is
  already the global optimum, and the alternation only confirms it.
- ``adam``: the paper's recipe: Adam, lr 0.002, 2000 full-batch steps from
  z ~ N(0, 1/d).

A lower bound on the loss is the sum over matrices of the best rank-d error
(Eckart-Young); it ignores that neighbouring matrices share embeddings, so it
is not reached in general.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .kernels import generate, init_embeddings, is_linear, kernel_scale

log = logging.getLogger(__name__)

SOLVERS = ("als", "adam")


@dataclass(frozen=True)
class Target:
    """A weight matrix (n_out, n_in) to reproduce between neuron sets ``in_set`` -> ``out_set``."""

    name: str
    in_set: str
    out_set: str
    weight: torch.Tensor


@dataclass
class FitProblem:
    """Neuron sets (name -> size), the matrices joining them, and sets held fixed."""

    sets: dict[str, int]
    targets: list[Target]
    dim: int
    kernel: str = "dot"
    fixed: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        for t in self.targets:
            for s in (t.in_set, t.out_set):
                if s not in self.sets:
                    raise ValueError(f"matrix {t.name} joins unknown neuron set {s!r}")
            expected = (self.sets[t.out_set], self.sets[t.in_set])
            if tuple(t.weight.shape) != expected:
                raise ValueError(
                    f"matrix {t.name} has shape {tuple(t.weight.shape)}, expected {expected} "
                    f"for sets {t.out_set} x {t.in_set}"
                )
        for s, z in self.fixed.items():
            if s not in self.sets or tuple(z.shape) != (self.sets[s], self.dim):
                raise ValueError(
                    f"fixed embeddings for set {s!r} have shape {tuple(z.shape)}, expected "
                    f"({self.sets.get(s)}, {self.dim})"
                )

    @property
    def free_sets(self) -> list[str]:
        used = {s for t in self.targets for s in (t.in_set, t.out_set)}
        return [s for s in self.sets if s in used and s not in self.fixed]


@dataclass
class FitResult:
    """Fitted embeddings and how well they reproduce the targets."""

    embeddings: dict[str, torch.Tensor]
    loss: float
    bound: float
    per_matrix: list[dict]
    seconds: float
    solver: str
    steps: int
    history: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "solver": self.solver,
            "loss": self.loss,
            "bound": self.bound,
            "steps": self.steps,
            "seconds": round(self.seconds, 4),
            "per_matrix": self.per_matrix,
        }


# -- losses ---------------------------------------------------------------------------


def _weights(problem: FitProblem) -> dict[str, float]:
    return {t.name: 1.0 / t.weight.numel() for t in problem.targets}


def fit_loss(problem: FitProblem, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
    """The normalised Frobenius loss of equation 4 (differentiable)."""
    total = 0.0
    for t in problem.targets:
        generated = generate(embeddings[t.out_set], embeddings[t.in_set], problem.kernel)
        total = total + (t.weight - generated).pow(2).sum() / t.weight.numel()
    return total


def per_matrix_report(problem: FitProblem, embeddings: dict[str, torch.Tensor]) -> list[dict]:
    """Loss, Eckart-Young bound and relative error for every matrix."""
    rows = []
    with torch.no_grad():
        for t in problem.targets:
            w = t.weight
            generated = generate(embeddings[t.out_set], embeddings[t.in_set], problem.kernel)
            err = (w - generated).pow(2).sum()
            rows.append(
                {
                    "name": t.name,
                    "shape": list(w.shape),
                    "mse": float(err / w.numel()),
                    "bound": float(_rank_d_error(w, problem.dim) / w.numel()),
                    "relative_error": float(err.sqrt() / w.norm().clamp_min(1e-30)),
                }
            )
    return rows


def _rank_d_error(w: torch.Tensor, dim: int) -> torch.Tensor:
    s = torch.linalg.svdvals(w.double())
    return s[dim:].pow(2).sum()


def eckart_young_bound(problem: FitProblem) -> float:
    """Sum over matrices of the best rank-d squared error, normalised like the loss."""
    return float(
        sum(_rank_d_error(t.weight, problem.dim) / t.weight.numel() for t in problem.targets)
    )


# -- solvers --------------------------------------------------------------------------


def fit_embeddings(
    problem: FitProblem,
    solver: str = "als",
    *,
    steps: int | None = None,
    lr: float = 0.002,
    polish_steps: int = 0,
    tol: float = 1e-7,
    seed: int = 0,
    device: str | torch.device = "cpu",
    init: dict[str, torch.Tensor] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> FitResult:
    """Fit embeddings for every free neuron set of ``problem``.

    Args:
        solver: ``als`` (exact alternating least squares) or ``adam`` (the paper's recipe).
        steps: sweeps for ``als`` (default 200, stopping early at ``tol``) or Adam steps
            (default 2000).
        lr: Adam learning rate (the paper: 0.002), also used for polishing.
        polish_steps: Adam steps after ALS; kept only if they lower the loss.
        init: starting embeddings for some sets (Adam), instead of N(0, 1/d).
        progress: called as ``progress(step, total, loss)``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
    device = torch.device(device)
    start = time.perf_counter()
    problem = _to_device(problem, device)
    if solver == "als":
        z, history, done = _fit_als(problem, steps or 200, tol, progress)
        if polish_steps > 0 or not is_linear(problem.kernel):
            z, more = _fit_adam(problem, z, polish_steps or 300, lr, progress, keep_best=True)
            history += more
            done += len(more)
    else:
        generator = torch.Generator().manual_seed(seed)
        z = {
            s: init_embeddings(n, problem.dim, generator).to(device)
            for s, n in problem.sets.items()
        }
        z.update({s: v.to(device) for s, v in (init or {}).items()})
        z.update(problem.fixed)
        z, history = _fit_adam(problem, z, steps or 2000, lr, progress, keep_best=False)
        done = len(history)
    seconds = time.perf_counter() - start
    z = {s: v.detach().float().cpu() for s, v in z.items()}
    cpu_problem = _to_device(problem, torch.device("cpu"))
    with torch.no_grad():
        loss = float(fit_loss(cpu_problem, z))
    return FitResult(
        embeddings=z,
        loss=loss,
        bound=eckart_young_bound(cpu_problem),
        per_matrix=per_matrix_report(cpu_problem, z),
        seconds=seconds,
        solver=solver,
        steps=done,
        history=history,
    )


def _to_device(problem: FitProblem, device: torch.device) -> FitProblem:
    return FitProblem(
        sets=problem.sets,
        targets=[
            Target(t.name, t.in_set, t.out_set, t.weight.detach().to(device, torch.float32))
            for t in problem.targets
        ],
        dim=problem.dim,
        kernel=problem.kernel,
        fixed={s: z.detach().to(device, torch.float32) for s, z in problem.fixed.items()},
    )


def _fit_adam(problem, z, steps, lr, progress, *, keep_best):
    free = problem.free_sets
    params = {s: z[s].detach().clone().requires_grad_(True) for s in free}
    opt = torch.optim.Adam(params.values(), lr=lr)
    current = {**z, **params}
    history, best, best_loss = [], None, math.inf
    if keep_best:
        with torch.no_grad():
            best_loss = float(fit_loss(problem, current))
        best = {s: v.detach().clone() for s, v in current.items()}
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = fit_loss(problem, current)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        history.append(value)
        if keep_best and value < best_loss:
            best_loss, best = value, {s: v.detach().clone() for s, v in current.items()}
        if progress is not None and (step % 50 == 0 or step == steps - 1):
            progress(step + 1, steps, value)
    if keep_best:
        with torch.no_grad():
            if float(fit_loss(problem, current)) < best_loss:
                best = current
        return {s: v.detach() for s, v in best.items()}, history
    return {s: v.detach() for s, v in current.items()}, history


def _colours(problem: FitProblem) -> list[list[str]] | None:
    """Two-colour the free sets so no matrix joins two sets of one colour; None if impossible."""
    neighbours: dict[str, set[str]] = {s: set() for s in problem.sets}
    for t in problem.targets:
        neighbours[t.in_set].add(t.out_set)
        neighbours[t.out_set].add(t.in_set)
    colour: dict[str, int] = {}
    for root in problem.sets:
        if root in colour:
            continue
        colour[root], queue = 0, [root]
        while queue:
            s = queue.pop()
            for nb in neighbours[s]:
                if nb not in colour:
                    colour[nb] = 1 - colour[s]
                    queue.append(nb)
                elif colour[nb] == colour[s]:
                    return None
    free = problem.free_sets
    # Start from the colour that is not the input's, so the spectral start covers hidden sets.
    first = 1 - colour.get(next(iter(problem.sets)), 0)
    return [[s for s in free if colour[s] == first], [s for s in free if colour[s] != first]]


def _fit_als(problem, sweeps, tol, progress):
    # A scaled dot product is a dot product of embeddings scaled by d^(-1/4).
    scale = math.sqrt(kernel_scale(problem.kernel, problem.dim)) if is_linear(problem.kernel) else 1
    targets = problem.targets
    if problem.kernel == "tanh":
        # tanh(s) ~ s for small weights: start from a linear fit of atanh(W).
        targets = [
            Target(t.name, t.in_set, t.out_set, torch.atanh(t.weight.clamp(-0.999, 0.999)))
            for t in targets
        ]
    weights = {t.name: 1.0 / t.weight.numel() for t in targets}
    z = {s: v * scale for s, v in problem.fixed.items()}
    groups = _colours(problem) or [[s] for s in problem.free_sets]
    for s in groups[0]:
        if any(nb in problem.fixed for _, nb, _ in _incident(s, targets)):
            # A set next to fixed embeddings starts in their basis (least squares against
            # them), not in its own singular vectors: otherwise the alternation has to
            # rotate one basis into the other, slowly, and may stop in a poor optimum.
            z[s] = _least_squares(s, targets, weights, z, problem.dim)
        else:
            z[s] = _spectral_start(s, targets, weights, problem.dim)
    for later in groups[1:]:
        for s in later:
            z[s] = _least_squares(s, targets, weights, z, problem.dim)
    lin = FitProblem(problem.sets, targets, problem.dim, "dot", {})
    history = [float(fit_loss(lin, z))]
    done = 0
    for sweep in range(sweeps):
        for group in groups:
            updates = {s: _least_squares(s, targets, weights, z, problem.dim) for s in group}
            z.update(updates)
        history.append(float(fit_loss(lin, z)))
        done = sweep + 1
        if progress is not None:
            progress(done, sweeps, history[-1])
        if history[-2] - history[-1] <= tol * max(history[-2], 1e-30):
            break
    if progress is not None:
        progress(done, done, history[-1])  # ALS stops early: show the bar complete
    log.debug("als: %d sweeps, loss %.3e", done, history[-1])
    if not problem.fixed and len(groups) == 2:
        z = _balance(z, groups)
    return {s: v / scale for s, v in z.items()}, history, done


def _balance(z: dict, groups: list[list[str]]) -> dict:
    """Spread the scale evenly between the two colours without changing any generated weight.

    Every matrix joins one set of each colour, so Z_A -> Z_A M and Z_B -> Z_B M^-T leaves
    every product Z_B Z_A^T unchanged. ALS ends with arbitrary scales (hidden embeddings
    of norm 0.03 against input embeddings of norm 7 are typical), which makes later
    gradient steps (calibration, training) ill-conditioned. Choosing M M^T as the
    geometric mean of G_A^-1 and G_B (G = sum of Z^T Z over a colour) makes both colours'
    Gram matrices equal, as the SVD's U S^1/2, V S^1/2 split does for one matrix.
    """
    gram_a = sum(z[s].double().T @ z[s].double() for s in groups[0])
    gram_b = sum(z[s].double().T @ z[s].double() for s in groups[1])
    eye = torch.eye(gram_a.shape[0], dtype=gram_a.dtype, device=gram_a.device)
    # Embedding dimensions no neuron uses (d above a set's rank) stay as they are.
    ridge = 1e-12 * max(float(gram_a.diagonal().mean()), float(gram_b.diagonal().mean()), 1e-30)
    a_half, a_inv_half = (
        _sym_power(gram_a + ridge * eye, 0.5),
        _sym_power(gram_a + ridge * eye, -0.5),
    )
    middle = _sym_power(a_half @ (gram_b + ridge * eye) @ a_half, 0.5)
    m = _sym_power(a_inv_half @ middle @ a_inv_half, 0.5)
    m_inv_t = torch.linalg.inv(m).T
    out = dict(z)
    for s in groups[0]:
        out[s] = (z[s].double() @ m).float()
    for s in groups[1]:
        out[s] = (z[s].double() @ m_inv_t).float()
    return out


def _sym_power(a: torch.Tensor, power: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((a + a.T) / 2)
    return vectors @ torch.diag(values.clamp_min(1e-300) ** power) @ vectors.T


def _incident(s, targets):
    """(matrix oriented with set s as rows, neighbour set, matrix name) for matrices touching s."""
    for t in targets:
        if t.out_set == s:
            yield t.weight, t.in_set, t.name
        if t.in_set == s:
            yield t.weight.T, t.out_set, t.name


def _spectral_start(s, targets, weights, dim):
    # Stack every matrix touching s (as rows of s) with its loss weight; its top-d
    # left singular vectors span the best d-dimensional space for Z_s.
    blocks = [w * math.sqrt(weights[name]) for w, _, name in _incident(s, targets)]
    u, sv, _ = torch.linalg.svd(torch.cat(blocks, dim=1).double(), full_matrices=False)
    k = min(dim, sv.numel())
    z = torch.zeros(u.shape[0], dim, dtype=torch.float64, device=u.device)
    z[:, :k] = u[:, :k] * sv[:k].sqrt()
    return z.float()


def _least_squares(s, targets, weights, z, dim):
    """Exact minimiser of the loss over Z_s with every neighbour held at its current value."""
    gram = torch.zeros(dim, dim, dtype=torch.float64, device=next(iter(z.values())).device)
    rhs = None
    for w, nb, name in _incident(s, targets):
        if nb not in z:
            continue
        zn = z[nb].double()
        gram += weights[name] * zn.T @ zn
        part = weights[name] * (w.double() @ zn)  # (n_s, d)
        rhs = part if rhs is None else rhs + part
    if rhs is None:
        raise ValueError(f"neuron set {s!r} has no fitted neighbour to solve against")
    # A tiny ridge keeps the solve defined when d exceeds a neighbour's size.
    ridge = 1e-10 * gram.diagonal().mean().clamp_min(1e-30)
    gram = gram + ridge * torch.eye(dim, dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, rhs.T).T.float()
