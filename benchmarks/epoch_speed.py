"""Seconds per epoch for Nielsen's [784, 30, 10] network, jreg beside its peers, in one run.

Workload (issue 5): sigmoid, cross-entropy, L2 (λ = 5, n = 50,000), η = 0.5,
mini-batch 10, one epoch over 50,000 MNIST images (the real training set when
$JREG_DATA_DIR or the cache has it, else the embedded 1,000 images tiled to 50,000:
speed does not depend on pixel values).

    python benchmarks/epoch_speed.py [--epochs 7] [--network2-epochs 2] [--skip-network2]

Implementations, all doing the same update w <- (1 - ηλ/n) w - (η/m) Σ ∇C:
  network2    the book's algorithm in NumPy: per-example backprop in Python loops
  numpy       vectorized NumPy: one matrix backprop per mini-batch
  jax-hand    hand-written JAX: whole epoch in one jit, lax.scan, gather once per epoch, donated params
  jreg-epoch  jreg.make_epoch(objective, optax.sgd(0.5), 10, donate=True, metrics=False)
  jreg-fit    jreg.fit(..., monitor=()): (time of a 1+E epoch call - a 1 epoch call) / E, validation,
              copies and compile cancel out; its "first" column is a whole 1-epoch fit call
  torch       PyTorch CPU, an idiomatic loop (only if torch is installed)
Each is timed for several epochs after a warm-up epoch (compile time reported apart);
medians, min-max, and ratios to the hand-written JAX scan are printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jreg

N, ETA, LMBDA, BATCH = 50_000, 0.5, 5.0, 10
SIZES = [784, 30, 10]


def load() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        train, _, _ = jreg.data.load_mnist(download=False)
        return np.asarray(train.x), np.asarray(train.y), "MNIST training set"
    except jreg.JregError:
        train, _ = jreg.data.load_mnist_small()
        reps = N // train.x.shape[0]
        return np.tile(np.asarray(train.x), (reps, 1)), np.tile(np.asarray(train.y), reps), "embedded 1,000 tiled"


def init_numpy(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    params = jreg.mlp(SIZES).init(jax.random.key(seed))
    return [np.asarray(p["w"], np.float64) for p in params], [np.asarray(p["b"], np.float64) for p in params]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def network2_epoch(ws, bs, x, y, rng):
    """network2.py's SGD epoch: shuffle, then per mini-batch a Python loop of per-example backprop."""
    order = rng.permutation(len(x))
    onehot = np.eye(10)
    for k in range(0, len(x), BATCH):
        nw = [np.zeros_like(w) for w in ws]
        nb = [np.zeros_like(b) for b in bs]
        for i in order[k : k + BATCH]:
            a0 = x[i].reshape(-1, 1)
            z1 = ws[0].T @ a0 + bs[0].reshape(-1, 1)
            a1 = sigmoid(z1)
            z2 = ws[1].T @ a1 + bs[1].reshape(-1, 1)
            delta = sigmoid(z2) - onehot[y[i]].reshape(-1, 1)
            nb[1] += delta.ravel()
            nw[1] += (delta @ a1.T).T
            delta = (ws[1] @ delta) * a1 * (1 - a1)
            nb[0] += delta.ravel()
            nw[0] += (delta @ a0.T).T
        m = len(order[k : k + BATCH])
        ws = [(1 - ETA * LMBDA / N) * w - ETA / m * g for w, g in zip(ws, nw)]
        bs = [b - ETA / m * g for b, g in zip(bs, nb)]
    return ws, bs


def numpy_epoch(ws, bs, x, y, rng):
    """Vectorized NumPy: one matrix backprop per mini-batch (float32)."""
    order = rng.permutation(len(x))
    xs, ys = x[order], y[order]
    eye = np.eye(10, dtype=np.float32)
    for k in range(0, len(x), BATCH):
        a0, t = xs[k : k + BATCH], eye[ys[k : k + BATCH]]
        a1 = sigmoid(a0 @ ws[0] + bs[0])
        delta2 = sigmoid(a1 @ ws[1] + bs[1]) - t
        delta1 = (delta2 @ ws[1].T) * a1 * (1 - a1)
        m = len(a0)
        ws = [
            (1 - ETA * LMBDA / N) * ws[0] - ETA / m * (a0.T @ delta1),
            (1 - ETA * LMBDA / N) * ws[1] - ETA / m * (a1.T @ delta2),
        ]
        bs = [bs[0] - ETA / m * delta1.sum(0), bs[1] - ETA / m * delta2.sum(0)]
    return ws, bs


def hand_jax_epoch_fn():
    def loss(p, xb, yb):
        a1 = jax.nn.sigmoid(xb @ p[0]["w"] + p[0]["b"])
        z = a1 @ p[1]["w"] + p[1]["b"]
        t = jax.nn.one_hot(yb, 10)
        data = jnp.mean(jnp.sum(jax.nn.softplus(z) - t * z, axis=-1))
        return data + 0.5 * LMBDA / N * (jnp.sum(p[0]["w"] ** 2) + jnp.sum(p[1]["w"] ** 2))

    def epoch(p, x, y, key):
        perm = jax.random.permutation(key, x.shape[0])
        xb = x[perm].reshape(-1, BATCH, x.shape[1])
        yb = y[perm].reshape(-1, BATCH)

        def body(p, b):
            g = jax.grad(loss)(p, *b)
            return jax.tree.map(lambda w, d: w - ETA * d, p, g), None

        return jax.lax.scan(body, p, (xb, yb))[0]

    return jax.jit(epoch, donate_argnums=0)


def timed(run, epochs: int) -> tuple[float, list[float]]:
    """(first call incl. compile, [seconds per later epoch])."""
    t = time.perf_counter()
    run(0)
    first = time.perf_counter() - t
    times = []
    for e in range(1, epochs + 1):
        t = time.perf_counter()
        run(e)
        times.append(time.perf_counter() - t)
    return first, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=7, help="timed epochs per implementation (after warm-up)")
    ap.add_argument("--network2-epochs", type=int, default=2)
    ap.add_argument("--skip-network2", action="store_true")
    ap.add_argument("--ablations", action="store_true", help="time variants of jreg's epoch instead (see ablations())")
    args = ap.parse_args()
    x_np, y_np, source = load()
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    if args.ablations:
        ablations(x, y, args.epochs, source)
        return
    results: dict[str, tuple[float, list[float]]] = {}

    if not args.skip_network2:
        state = list(init_numpy())
        x64 = x_np.astype(np.float64)
        rng = np.random.default_rng(0)

        def run_network2(e):
            state[:] = network2_epoch(*state, x64, y_np, rng)

        results["network2"] = timed(run_network2, args.network2_epochs)

    ws, bs = init_numpy()
    state32 = [[w.astype(np.float32) for w in ws], [b.astype(np.float32) for b in bs]]
    rng = np.random.default_rng(0)

    def run_numpy(e):
        state32[:] = numpy_epoch(*state32, x_np, y_np, rng)

    results["numpy"] = timed(run_numpy, args.epochs)

    model = jreg.mlp(SIZES)
    hand = hand_jax_epoch_fn()
    hp = [model.init(jax.random.key(0))]

    def run_hand(e):
        hp[0] = hand(hp[0], x, y, jax.random.key(e))
        jax.block_until_ready(hp[0])

    obj = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(LMBDA / N))
    opt = optax.sgd(ETA)
    epoch = jreg.make_epoch(obj, opt, BATCH, donate=True, metrics=False)
    p0 = model.init(jax.random.key(0))
    js = [p0, opt.init(p0)]

    def run_jreg(e):
        js[0], js[1], m = epoch(js[0], js[1], (x, y), jax.random.key(e))
        jax.block_until_ready(js[0])

    # interleave the two epoch functions so machine noise hits them alike
    firsts = {}
    series: dict[str, list[float]] = {"jax-hand": [], "jreg-epoch": []}
    runs = {"jax-hand": run_hand, "jreg-epoch": run_jreg}
    for name, run in runs.items():
        t = time.perf_counter()
        run(0)
        firsts[name] = time.perf_counter() - t
    for e in range(1, args.epochs + 1):
        for name, run in runs.items():
            t = time.perf_counter()
            run(e)
            series[name].append(time.perf_counter() - t)
    for name in runs:
        results[name] = (firsts[name], series[name])

    # jreg.fit as a user calls it (no monitoring): a (1 + E)-epoch call minus a 1-epoch call, over E
    def fit_seconds(epochs: int) -> float:
        t = time.perf_counter()
        trained = jreg.fit(
            obj,
            opt,
            model.init(jax.random.key(0)),
            (x, y),
            epochs=epochs,
            batch_size=BATCH,
            key=jax.random.key(0),
            monitor=(),
        ).params
        jax.block_until_ready(trained)
        return time.perf_counter() - t

    one = [fit_seconds(1) for _ in range(3)]
    per_epoch = [(fit_seconds(1 + args.epochs) - statistics.median(one)) / args.epochs for _ in range(2)]
    results["jreg-fit"] = (one[0], per_epoch)  # two figures, each the mean over E epochs

    try:
        import torch  # noqa: F401

        results["torch"] = torch_epochs(x_np, y_np, args.epochs)
    except ImportError:
        print("torch not installed: skipped (pip install torch for the PyTorch column)")

    base = statistics.median(results["jax-hand"][1])
    print(
        f"\n[784, 30, 10], batch {BATCH}, {N} images ({source}); jax {jax.__version__} {jax.default_backend()}, "
        f"{os.cpu_count()} cores, {platform.machine()}"
    )
    head = f"{'implementation':<12} {'median s/epoch':>15} {'min-max':>17} {'first (compile)':>16}"
    print(head + f" {'ratio to jax-hand':>18}")
    for name, (first, times) in results.items():
        med = statistics.median(times)
        print(f"{name:<12} {med:>15.4f} {min(times):>8.4f}-{max(times):<8.4f} {first:>16.3f} {med / base:>18.2f}")


def ablations(x, y, epochs: int, source: str) -> None:
    """jreg's epoch beside variants that undo one design choice each, built from the public API, interleaved."""
    model = jreg.mlp(SIZES)
    opt = optax.sgd(ETA)

    def objective(loss=jreg.losses.cross_entropy, penalty=None):
        return jreg.objective(model.apply, loss, penalty or jreg.penalties.l2(LMBDA / N))

    def gather_once(obj, metrics):
        """The whole set gathered once per epoch (jreg.data.batches), then lax.scan over stacked batches."""
        step = jreg.make_step(obj, opt)

        def epoch(p, s, data, key):
            b = jreg.data.batches(data, BATCH, key)

            def body(c, batch):
                p, s, m = step(*c, batch)
                return (p, s), (m if metrics else None)

            (p, s), _ = jax.lax.scan(body, (p, s), (b.x, b.y))
            return p, s, {}

        return jax.jit(epoch, donate_argnums=(0, 1))

    def no_guard(z, t):  # cross-entropy without the NaN guard for out-of-range labels
        onehot = jax.nn.one_hot(t, z.shape[-1], dtype=z.dtype)
        return jnp.sum(jax.nn.softplus(z) - onehot * z, axis=-1)

    keyless = objective()  # called through a function without a key parameter: no per-step keys are made
    elementwise_l2 = jreg.penalties.term(lambda w, c: 0.5 * jnp.sum(c * jnp.square(w)), LMBDA / N, name="l2")
    variants = {
        "jreg (metrics=False)": jreg.make_epoch(objective(), opt, BATCH, donate=True, metrics=False),
        "per-step metrics (metrics=True)": jreg.make_epoch(objective(), opt, BATCH, donate=True, metrics=True),
        "gather the whole set once per epoch": gather_once(objective(), False),
        "l2 as sum(c * w^2) (elementwise c)": jreg.make_epoch(
            objective(penalty=elementwise_l2), opt, BATCH, donate=True, metrics=False
        ),
        "no NaN guard on labels": jreg.make_epoch(objective(loss=no_guard), opt, BATCH, donate=True, metrics=False),
        "no donation": jreg.make_epoch(objective(), opt, BATCH, donate=False, metrics=False),
        "no per-step keys (objective without key)": jreg.make_epoch(
            lambda p, b: keyless(p, b), opt, BATCH, donate=True, metrics=False
        ),
    }
    states = {}
    for name in variants:
        p = model.init(jax.random.key(0))
        states[name] = (p, opt.init(p))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for e in range(epochs + 1):
        for name, fn in variants.items():
            t = time.perf_counter()
            p, s, _ = fn(*states[name], (x, y), jax.random.key(e))
            jax.block_until_ready(p)
            states[name] = (p, s)
            if e:
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["jreg (metrics=False)"])
    print(f"\nablations, [784, 30, 10], batch {BATCH}, {N} images ({source}), {epochs} epochs each, interleaved")
    print(f"{'variant':<40} {'median s/epoch':>15} {'min-max':>17} {'vs jreg':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<40} {med:>15.4f} {min(ts):>8.4f}-{max(ts):<8.4f} {med / base:>8.2f}")


def torch_epochs(x_np, y_np, epochs):  # pragma: no cover - optional peer
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 30), torch.nn.Sigmoid(), torch.nn.Linear(30, 10))
    opt = torch.optim.SGD(model.parameters(), lr=ETA)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np.astype(np.int64))
    eye = torch.eye(10)

    def run(e):
        order = torch.randperm(len(x))
        for k in range(0, len(x), BATCH):
            idx = order[k : k + BATCH]
            z = model(x[idx])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z, eye[y[idx]], reduction="sum") / len(idx)
            loss = loss + 0.5 * LMBDA / N * sum((m.weight**2).sum() for m in model if hasattr(m, "weight"))
            opt.zero_grad()
            loss.backward()
            opt.step()

    return timed(run, epochs)


if __name__ == "__main__":
    main()
