"""Experiment 13: k-fold cross-validation of λ in one compiled program, the one-SE rule, and a bagged ensemble.

Nielsen's [784, 30, 10] sigmoid network, cross-entropy, l2(λ/n) (the book's convention), SGD η = 0.5, mini-batch
10, on MNIST's 50,000 training images; the test set (10,000) reports. One seed: the init is key(0), the
shuffles key(1000).

* **Cross-validation.** ``jreg.cross_validate`` over 8 values of λ × 5 folds (stratified by class): 40 members
  of one compiled sweep, each training on 40,000 images and measured on its held-out fold after every epoch.
  λ_min is the setting with the best mean held-out accuracy at the last epoch, λ_1se the largest λ within one
  standard error of it (cv.glmnet's rule). Each of λ_min, λ_1se and the book's λ = 5.0 is then refitted on all
  50,000 images (``jreg.fit``, the same epochs) and measured on the test set.
* **Wall time.** The cross-validation (compilation included) against the S x k separate ``jreg.fit`` calls of
  a hand-written loop (each fit on its fold's training set, its fold as evaluation data, compiling its own
  program as a user's loop does). ``--loop-sample N`` times N of those fits (evenly spread over the settings
  and folds) and scales their mean to all S x k; ``--loop-sample 0`` times them all.
* **Bagging.** ``jreg.sweep(..., data_order="per_member", resample="bootstrap", evaluation="out_of_bag")``:
  16 members at λ_1se, each on its own bootstrap resample of the 50,000 images with its own data order;
  ``jreg.ensemble`` averages their probabilities. Reported: the ensemble's test accuracy against its best
  single member (chosen by out-of-bag accuracy, the only held-out data a member has) and the members' mean.

    python experiments/e13_cross_validation.py [--epochs 10] [--folds 5] [--loop-sample 8] [--bag 16]
        [--out results/e13]
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
from _common import epochs, full_data, parser, save

import jreg

LMBDAS = [0.1, 0.3, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
BOOK_LMBDA = 5.0
ETA = 0.5


def main() -> None:
    p = parser(__doc__.splitlines()[0], "e13")
    p.add_argument("--folds", type=int, default=5, help="folds (default 5)")
    p.add_argument("--bag", type=int, default=None, help="members of the bagged ensemble (default 16; --quick 4)")
    p.add_argument(
        "--loop-sample", type=int, default=None, help="fit calls of the loop timed (0: all; default 8; --quick 2)"
    )
    args = p.parse_args()
    args.bag = args.bag if args.bag is not None else 4 if args.quick else 16
    args.loop_sample = args.loop_sample if args.loop_sample is not None else 2 if args.quick else 8
    train, _, test = full_data(args)
    n = len(train.x)
    n_epochs = epochs(args, 10)
    model = jreg.mlp([784, 30, 10])

    def build(hp):
        objective = jreg.objective(model.apply, jreg.losses.cross_entropy, jreg.penalties.l2(hp["lmbda"] / n))
        return objective, optax.sgd(ETA)

    params, key = model.init(jax.random.key(0)), jax.random.key(1000)
    common = dict(epochs=n_epochs, batch_size=10, key=key)
    _warm_up(model, train)

    started = time.perf_counter()
    cv = jreg.cross_validate(
        build, params, train, hparams={"lmbda": LMBDAS}, folds=args.folds, monitor="evaluation_accuracy", **common
    )
    jax.block_until_ready(cv.params)
    cv_seconds = time.perf_counter() - started
    print(cv.table())
    print(f"cross_validate: {len(LMBDAS)} x {args.folds} members, {n_epochs} epochs, in {cv_seconds:.1f} s")

    chosen = {"lambda_min": float(cv.best["lmbda"]), "lambda_1se": float(cv.one_se["lmbda"]), "book": BOOK_LMBDA}
    refits = {}
    for name, lmbda in chosen.items():
        result = jreg.fit(*build({"lmbda": lmbda}), params, train, **common)
        refits[name] = {"lmbda": lmbda, "test_accuracy": float(jreg.accuracy(model.apply, result.params, test))}
        index = LMBDAS.index(lmbda)
        refits[name]["cv_accuracy"] = _mean_se(cv, index)
        print(f"{name:>10}: λ = {lmbda:g}, CV accuracy {_shown(refits[name]['cv_accuracy'])}, "
              f"refitted on {n:,} images: test accuracy {refits[name]['test_accuracy']:.2%}")  # fmt: skip

    loop = _loop(build, params, train, cv, args.loop_sample, common)
    ratio = cv_seconds / loop["estimated_seconds"]
    print(f"hand-written loop of {loop['fits']} fit calls: {loop['estimated_seconds']:.1f} s "
          f"({loop['timed']} timed, {loop['mean_seconds']:.2f} s each)")  # fmt: skip
    print(f"cross_validate / loop: {ratio:.2f}")

    bagging = _bagging(build, params, train, test, model, chosen["lambda_1se"], args.bag, common)
    print(f"bagged ensemble of {args.bag} at λ = {chosen['lambda_1se']:g}: test accuracy "
          f"{bagging['ensemble_test_accuracy']:.2%}; its best member by out-of-bag accuracy "
          f"{bagging['best_member_test_accuracy']:.2%}, "
          f"the members' mean {bagging['mean_member_test_accuracy']:.2%}")  # fmt: skip

    jreg.plotting.path(cv, args.out / "curves.png", title=f"{args.folds}-fold CV of λ: [784, 30, 10], {n:,} images")
    save(args.out, {
        "experiment": "e13_cross_validation", "epochs": n_epochs, "train_size": n, "folds": args.folds,
        "lmbdas": LMBDAS, "eta": ETA,
        "cv": {"mean": cv.mean.tolist(), "se": cv.se.tolist(), "measured_epochs": cv.measured_epochs.tolist(),
               "best": chosen["lambda_min"], "one_se": chosen["lambda_1se"], "seconds": cv_seconds},
        "refits": refits, "loop": loop, "cv_over_loop": ratio, "bagging": bagging,
        "summary": {
            "lambda_min": chosen["lambda_min"], "lambda_1se": chosen["lambda_1se"],
            "test_accuracy": {name: r["test_accuracy"] for name, r in refits.items()},
            "cv_over_loop": ratio, "ensemble_test_accuracy": bagging["ensemble_test_accuracy"],
            "best_member_test_accuracy": bagging["best_member_test_accuracy"],
        },
    })  # fmt: skip


def _mean_se(cv, index: int) -> dict[str, float]:
    return {"mean": float(cv.mean_at_stop[index]), "se": float(cv.se_at_stop[index])}


def _shown(value: dict[str, float]) -> str:
    return f"{100 * value['mean']:.2f} ± {100 * value['se']:.2f} %"


def _loop(build, params, train, cv, sample: int, common) -> dict:
    """The hand-written loop's wall time: ``sample`` of its S x k fit calls timed (all with 0), scaled to all."""
    pairs = [(s, f) for s in range(cv.n_settings) for f in range(cv.n_folds)]
    if 0 < sample < len(pairs):
        pairs = [pairs[i] for i in np.linspace(0, len(pairs) - 1, sample).round().astype(int)]
    seconds = []
    for s, f in pairs:
        rest, held = cv.train_indices(f), cv.folds[f]
        started = time.perf_counter()
        result = jreg.fit(
            *build({"lmbda": float(cv.settings["lmbda"][s])}), params, (train.x[rest], train.y[rest]),
            evaluation=(train.x[held], train.y[held]), **common,
        )  # fmt: skip
        jax.block_until_ready(result.params)
        seconds.append(time.perf_counter() - started)
    fits = cv.n_settings * cv.n_folds
    mean = float(np.mean(seconds))
    return {"fits": fits, "timed": len(seconds), "seconds": seconds, "mean_seconds": mean,
            "estimated_seconds": mean * fits}  # fmt: skip


def _bagging(build, params, train, test, model, lmbda: float, members: int, common) -> dict:
    result = jreg.sweep(
        build, params, train, hparams={"lmbda": [lmbda] * members}, data_order="per_member", resample="bootstrap",
        evaluation="out_of_bag", monitor=("evaluation_accuracy",), **common,
    )  # fmt: skip
    ensemble = jreg.ensemble(result, build)
    tests = [float(jreg.accuracy(model.apply, result.select(i).params, test)) for i in range(members)]
    out_of_bag = np.asarray(result.history["evaluation_accuracy"])[:, -1]
    best = int(np.nanargmax(out_of_bag))
    return {
        "members": members,
        "lmbda": lmbda,
        "ensemble_test_accuracy": ensemble.evaluate(test)["accuracy"],
        "best_member": best,
        "best_member_out_of_bag_accuracy": float(out_of_bag[best]),
        "best_member_test_accuracy": tests[best],
        "mean_member_test_accuracy": float(np.mean(tests)),
        "member_test_accuracies": tests,
    }


def _warm_up(model, train) -> None:
    """One untimed tiny fit: JAX's one-time start-up costs stay out of the timings."""
    small = jreg.data.Split(train.x[:100], train.y[:100])
    objective = jreg.objective(model.apply, jreg.losses.cross_entropy)
    jreg.fit(objective, optax.sgd(0.1), model.init(jax.random.key(99)), small, epochs=1, batch_size=10,
             key=jax.random.key(99))  # fmt: skip


if __name__ == "__main__":
    main()
