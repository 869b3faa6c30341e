"""The ``jreg`` command line. ``jreg demo`` is the main job: Nielsen's chapter-3
overfitting experiment, with and without L2, offline on the embedded MNIST subset."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

#: what ``jreg demo`` writes into ``--out``; nothing else there is touched
OUTPUTS = ("results.json", "overfitting.png")
#: seeds from 0 to SEED_MAX: jax.random.key keeps 32 bits of a seed (2**32 gives seed 0's key again), and the
#: demo shuffles with seed + 1
SEED_MAX = 2**32 - 2


class UsageError(Exception):
    """A bad command line found after parsing (the output folder, a value training refuses): exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with every usage error as one line on stderr (``jreg demo: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _real(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _seed(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {SEED_MAX} (a 32-bit PRNG seed), got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    value = _real(text)
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _real(text)
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _folder(text: str) -> Path:
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be a folder name, got {text!r}")
    return Path(text)


def demo_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--lmbda",
        type=_nonnegative_float,
        nargs="+",
        default=[0.0, 0.1],
        help="L2 strengths λ, penalty λ/(2n)·Σw² (default: 0 0.1)",
    )
    parser.add_argument("--epochs", type=_positive_int, default=400, help="epochs (default 400)")
    parser.add_argument("--hidden", type=_positive_int, default=30, help="hidden units (default 30)")
    parser.add_argument("--eta", type=_positive_float, default=0.5, help="learning rate η (default 0.5)")
    parser.add_argument("--batch-size", type=_positive_int, default=10, help="mini-batch size (default 10)")
    parser.add_argument(
        "--init",
        choices=["large", "default"],
        default="large",
        help="weight initialization: the book's 'large' N(0,1) (default) or N(0,1/n_in)",
    )
    parser.add_argument(
        "--seed", type=_seed, default=0, help=f"random seed for init and shuffling, 0 to {SEED_MAX} (default 0)"
    )
    parser.add_argument(
        "--out",
        type=_folder,
        default=Path("jreg-demo"),
        help="output folder (default ./jreg-demo), made if missing; the demo writes results.json and "
        "overfitting.png there and refuses, before training, a folder that already holds either "
        "(unless --overwrite) or that it cannot write into",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace results.json and overfitting.png in --out if they exist (nothing else there is touched)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def check_out(out: Path, overwrite: bool = False) -> None:
    """Raise :class:`UsageError` unless the demo can write its results into the folder ``out``.

    Run before any training (it takes a few system calls): ``out`` must be a
    folder or not exist yet, inside a folder (not a file) that can be written;
    ``results.json`` and ``overfitting.png`` must not exist there unless
    ``overwrite`` (and then they must be plain files).
    """
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out: {out} is a file, not a folder; give a folder for {' and '.join(OUTPUTS)}")
        existing = out
        while not existing.exists():  # the nearest folder that exists: out itself, or the one it will be made in
            if existing.is_symlink():
                raise UsageError(f"--out: {existing} is a broken symbolic link")
            if existing.parent == existing:
                break
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            raise UsageError(f"--out: {existing} is a file, so {out} cannot be a folder inside it")
        if not os.access(existing, os.W_OK | os.X_OK):
            what = "into" if existing == out else f"the folder {out} in"
            raise UsageError(f"--out: cannot write {what} {existing} (permission denied or a read-only file system)")
        for name in OUTPUTS:
            target = out / name
            if not (target.exists() or target.is_symlink()):
                continue
            if not overwrite:
                raise UsageError(
                    f"--out: {target} already exists; jreg demo never replaces files it did not write: choose "
                    f"another --out, or pass --overwrite to replace {' and '.join(OUTPUTS)} there"
                )
            if target.is_symlink() or not target.is_file():
                raise UsageError(f"--out: {target} exists and is not a plain file, so --overwrite cannot replace it")
    except OSError as exc:  # e.g. a name too long, or a folder that cannot be listed
        raise UsageError(f"--out: {out} cannot be used ({exc.strerror or exc})") from exc


def publish(path: Path, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically; without ``overwrite`` never replace a file; return the name used.

    The data go to a new temporary file in the same folder (flushed to disk),
    which is then linked to its name: ``os.link`` fails rather than replace an
    existing file. A file that appeared at ``path`` during training keeps its
    content, and the data go to ``<stem>-2<suffix>`` (or ``-3``...) instead.
    ``overwrite`` replaces ``path`` (:func:`jreg.io.write_bytes`).
    """
    from . import io

    if overwrite:
        return io.write_bytes(path, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the mode open() would give a new file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for i in range(1, 100):
            target = path if i == 1 else path.with_name(f"{path.stem}-{i}{path.suffix}")
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links: exclusive creation (not atomic, never a replace)
                try:
                    with open(target, "xb") as f:
                        f.write(data)
                    return target
                except FileExistsError:
                    continue
        raise FileExistsError(f"{path} and 98 numbered names beside it exist")
    finally:
        tmp.unlink(missing_ok=True)


def epoch_progress(epochs: int, lmbdas: Sequence[float], quiet: bool = False, stream: Any = None) -> tuple[Any, Any]:
    """``(callback, close)`` showing the demo's progress on ``stream`` (default ``sys.stderr``).

    On a terminal a tqdm bar; elsewhere (a log file, CI) one plain line per epoch, with no carriage return,
    instead of tqdm's hundreds of redraws; nothing with ``quiet``."""
    from .io import interactive

    stream = sys.stderr if stream is None else stream

    def accuracies(metrics: dict[str, Any]) -> str:
        accs = metrics["evaluation_accuracy"]
        return "test acc " + "  ".join(f"λ={lm:g}: {100 * a:.2f}%" for lm, a in zip(lmbdas, accs))

    if quiet:
        return (lambda epoch, metrics: None), (lambda: None)
    if not interactive(stream):

        def line(epoch: int, metrics: dict[str, Any]) -> None:
            print(f"training: epoch {epoch + 1}/{epochs}: {accuracies(metrics)}", file=stream, flush=True)

        return line, (lambda: None)
    from tqdm.auto import tqdm

    bar = tqdm(total=epochs, unit="epoch", desc="training", file=stream)

    def update(epoch: int, metrics: dict[str, Any]) -> None:
        bar.set_postfix_str(accuracies(metrics))
        bar.update(1)

    return update, bar.close


def weight_norm(params: Any) -> float:
    """``sqrt(sum w^2)`` over the weight matrices (the leaves an L2 penalty touches by default)."""
    from .penalties import l2

    return float(np.sqrt(2 * l2(1.0)(params)))  # l2(1) = 1/2 sum w^2


def demo(args: argparse.Namespace) -> dict[str, Any]:
    """Train the book's network once per λ (one compiled sweep), print a table, write JSON and a PNG."""
    started = time.perf_counter()
    result, lmbdas, n = _train(args)
    elapsed = time.perf_counter() - started
    trained, history = result.params, result.history

    runs = [_run_summary(lm, history, i, trained) for i, lm in enumerate(lmbdas)]
    results = _results(args, n, runs, elapsed)
    wrote = _write(args, n, results)
    _print_table(args, n, runs, elapsed, wrote)
    return results


def _train(args: argparse.Namespace) -> tuple[Any, list[float], int]:
    """``(result, lmbdas, n)``: the sweep over λ on the embedded subset's ``n`` training images."""
    import jax
    import optax

    import jreg

    (x, y), test = jreg.data.load_mnist_small()
    n = x.shape[0]
    model = jreg.mlp([784, args.hidden, 10], init=args.init)
    params = model.init(jax.random.key(args.seed))
    lmbdas = [float(v) for v in args.lmbda]

    def build(hp):
        penalty = jreg.penalties.l2(hp["lmbda"] / n)
        return jreg.objective(model.apply, jreg.losses.cross_entropy, penalty), optax.sgd(args.eta)

    progress, done = epoch_progress(args.epochs, lmbdas, quiet=args.quiet)
    result = jreg.sweep(
        build,
        params,
        (x, y),
        hparams={"lmbda": lmbdas},
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=jax.random.key(args.seed + 1),
        evaluation=test,
        monitor=jreg.train.NETWORK2,  # the table and results.json read training_cost and training_accuracy
        callback=progress,
    )
    done()
    return result, lmbdas, n


def _results(args: argparse.Namespace, n: int, runs: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """results.json's content."""
    return {
        "experiment": f"Nielsen ch. 3: [784, {args.hidden}, 10] sigmoid, cross-entropy, "
        f"on the first {n} MNIST training images",
        "config": {
            "sizes": [784, args.hidden, 10],
            "eta": args.eta,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "n": int(n),
            "init": args.init,
            "seed": args.seed,
            "penalty": "l2(lmbda / n) = lmbda/(2n) * sum w^2",
            "evaluation": "MNIST t10k (10,000 images)",
        },
        "runs": runs,
        "seconds": round(elapsed, 2),
    }


def _write(args: argparse.Namespace, n: int, results: dict[str, Any]) -> list[Path]:
    """Publish results.json and (when a run trained) overfitting.png into ``--out``; the paths written."""
    from jreg import plotting

    runs = results["runs"]
    out, overwrite = args.out, getattr(args, "overwrite", False)
    text = json.dumps(results, indent=2, default=_json_value, allow_nan=True) + "\n"
    wrote: list[Path] = []
    wrote.append(_published(out / "results.json", text.encode(), overwrite, wrote))
    labelled = {f"λ = {r['lmbda']:g}": r["history"] for r in runs if r["history"].get("evaluation_accuracy")}
    if labelled:  # every run that trained for at least one epoch
        png = plotting.render_histories(
            labelled,
            series=("evaluation_accuracy", "training_cost"),
            title=f"[784, {args.hidden}, 10] on {n} MNIST images: L2 regularization against overfitting",
        )
        wrote.append(_published(out / "overfitting.png", png, overwrite, wrote))
    for path, name in zip(wrote, OUTPUTS):
        if path.name != name:
            print(
                f"jreg demo: {out / name} appeared during the run and was kept; wrote {path} instead", file=sys.stderr
            )
    return wrote


def _published(path: Path, data: bytes, overwrite: bool, wrote: list[Path]) -> Path:
    """:func:`publish`, an OS error (a full disk, a permission lost, the folder removed) made one
    :class:`jreg.io.WriteError` line naming the path and what was kept."""
    from .io import WriteError

    try:
        return publish(path, data, overwrite)
    except (WriteError, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc, WriteError) and isinstance(exc.__cause__, OSError) else exc
        reason = getattr(cause, "strerror", None) or str(cause)
        done = f"; {' and '.join(str(p) for p in wrote)} written" if wrote else ""
        raise WriteError(
            f"--out: cannot write {path} ({reason}); files already in {path.parent} are as they were{done}"
        ) from cause


def _print_table(args: argparse.Namespace, n: int, runs: list[dict[str, Any]], elapsed: float, wrote: list) -> None:
    """The table on stdout: per λ the final and best test accuracy, the final training cost, the weight norm."""
    print(
        f"\n[784, {args.hidden}, 10], η={args.eta}, mini-batch {args.batch_size}, {args.epochs} epochs, "
        f"n={n} training images, test on 10,000"
    )
    header = f"{'λ':>7} {'final test acc':>15} {'best test acc':>15} {'final train cost':>17} {'weight norm':>12}"
    print(header)
    print("-" * len(header))
    for r in runs:
        if "diverged" in r:
            print(f"{r['lmbda']:>7g}   diverged: {r['diverged']['message']}")
            continue
        print(
            f"{r['lmbda']:>7g} {100 * r['final_test_accuracy']:>14.2f}% "
            f"{100 * r['best_test_accuracy']:>9.2f}% (@{r['best_epoch']:>3}) "
            f"{r['final_training_cost']:>17.4f} {r['weight_norm']:>12.2f}"
        )
    print(f"\ntrained in {elapsed:.1f} s; wrote {' and '.join(map(str, wrote))}")


def _run_summary(lmbda: float, history: Any, i: int, trained: Any) -> dict[str, Any]:
    """One λ's row of results.json: final and best figures, or where its training diverged."""
    import jax

    h = history.run(i)
    row: dict[str, Any] = {"lmbda": lmbda}
    bad = history.diverged.get(i)
    if bad is not None:
        step = "" if bad["step"] is None else f", step {bad['step']}"
        row["diverged"] = {**bad, "message": f"training diverged in epoch {bad['epoch']}{step}: {bad['quantity']}"}
        row["history"] = h.to_dict()
        return row
    acc = np.asarray(h["evaluation_accuracy"])
    row.update(
        final_test_accuracy=float(acc[-1]),
        best_test_accuracy=float(acc.max()),
        best_epoch=int(acc.argmax()) + 1,
        final_training_accuracy=float(h["training_accuracy"][-1]),
        final_training_cost=float(h["training_cost"][-1]),
        weight_norm=weight_norm(jax.tree.map(lambda a: a[i], trained)),
        history=h.to_dict(),
    )
    return row


def _json_value(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def main(argv: Sequence[str] | None = None) -> int:
    """``jreg demo ...``: 0 on success, 1 when a run diverged or its results could not be written (a full disk);
    a usage error (one line on stderr) exits 2."""
    parser = _Parser(prog="jreg", description="jreg: regularized neural networks in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    demo_args = demo_parser(
        sub.add_parser(
            "demo",
            help="Nielsen's overfitting experiment with and without L2 (offline)",
            description="Nielsen's overfitting experiment with and without L2, offline on the embedded MNIST "
            "subset. Results go to --out/results.json and --out/overfitting.png; --out is checked before "
            "training, and files already there are never replaced without --overwrite.",
        )
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._errors import JregError

        try:
            check_out(args.out, args.overwrite)
            results = demo(args)
        except (UsageError, JregError) as exc:  # the user's to fix: one line, like argparse's own errors
            io = sys.modules.get("jreg.io")  # loaded by then if it raised (a refused command line loads no JAX)
            if io is not None and isinstance(exc, io.WriteError):  # the run went well, its results not written
                print(f"jreg demo: {one_line(str(exc))}", file=sys.stderr)
                return 1
            demo_args.error(str(exc))
        diverged = [r for r in results["runs"] if "diverged" in r]
        for r in diverged:
            print(f"jreg demo: λ = {r['lmbda']:g}: {r['diverged']['message']}", file=sys.stderr)
        if diverged:
            print(
                f"jreg demo: {len(diverged)} of {len(results['runs'])} runs diverged; try a smaller --eta",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
