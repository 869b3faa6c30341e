"""NumPy references used by the tests: network2.py's per-example backprop."""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def network2_backprop(weights, biases, x, y, cost="cross_entropy"):
    """Gradients of one example's cost, as network2.py computes them (column-vector form).

    ``weights[l]`` has network2's shape ``(n_out, n_in)``; ``x (n_in,)``; ``y (n_out,)`` one-hot.
    """
    activation = x.reshape(-1, 1)
    activations, zs = [activation], []
    for w, b in zip(weights, biases):
        z = w @ activation + b.reshape(-1, 1)
        zs.append(z)
        activation = sigmoid(z)
        activations.append(activation)
    yv = y.reshape(-1, 1)
    if cost == "cross_entropy":
        delta = activations[-1] - yv
    else:  # quadratic
        delta = (activations[-1] - yv) * sigmoid(zs[-1]) * (1 - sigmoid(zs[-1]))
    nabla_b = [None] * len(weights)
    nabla_w = [None] * len(weights)
    nabla_b[-1] = delta
    nabla_w[-1] = delta @ activations[-2].T
    for l in range(2, len(weights) + 1):
        sp = sigmoid(zs[-l]) * (1 - sigmoid(zs[-l]))
        delta = (weights[-l + 1].T @ delta) * sp
        nabla_b[-l] = delta
        nabla_w[-l] = delta @ activations[-l - 1].T
    return nabla_w, [nb.ravel() for nb in nabla_b]


def network2_update(weights, biases, xs, ys, eta, lmbda, n, cost="cross_entropy"):
    """network2.update_mini_batch: w <- (1 - eta*lmbda/n) w - eta/m sum grad_w; b <- b - eta/m sum grad_b."""
    nabla_w = [np.zeros_like(w) for w in weights]
    nabla_b = [np.zeros_like(b) for b in biases]
    for x, y in zip(xs, ys):
        dw, db = network2_backprop(weights, biases, x, y, cost)
        nabla_w = [a + d for a, d in zip(nabla_w, dw)]
        nabla_b = [a + d for a, d in zip(nabla_b, db)]
    m = len(xs)
    new_w = [(1 - eta * (lmbda / n)) * w - (eta / m) * nw for w, nw in zip(weights, nabla_w)]
    new_b = [b - (eta / m) * nb for b, nb in zip(biases, nabla_b)]
    return new_w, new_b


def network2_total_cost(weights, biases, xs, ys, lmbda, cost="cross_entropy"):
    """network2.Network.total_cost: ``Σ_x C(a, y)/len(data) + 0.5*(lmbda/len(data))*Σ ||w||²``.

    A transcription of network2.py (per example, column vectors, sigmoid output
    layer), with ``len(data)`` the size of the set being measured: ``xs (N, n_in)``,
    ``ys (N, n_out)`` one-hot; ``weights[l]`` in network2's shape ``(n_out, n_in)``.
    """
    n = len(xs)
    total = 0.0
    for x, y in zip(xs, ys):
        a = x.reshape(-1, 1)
        for w, b in zip(weights, biases):
            a = sigmoid(w @ a + b.reshape(-1, 1))
        yv = y.reshape(-1, 1)
        if cost == "cross_entropy":  # CrossEntropyCost.fn
            c = np.sum(np.nan_to_num(-yv * np.log(a) - (1 - yv) * np.log(1 - a)))
        else:  # QuadraticCost.fn
            c = 0.5 * np.linalg.norm(a - yv) ** 2
        total += c / n
    total += 0.5 * (lmbda / n) * sum(np.linalg.norm(w) ** 2 for w in weights)
    return total
