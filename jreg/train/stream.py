"""Streamed epochs: ``fit`` and ``sweep`` on a source of mini-batches instead of in-memory arrays.

**What is a stream.** ``train`` is a stream (not in-memory data) when it is

- a :class:`Stream` (the source with its options: ``chunk``, ``prefetch``);
- a callable: ``source(epoch)`` (or ``source()`` when it takes no argument)
  returns that epoch's iterable of batches;
- a ``list`` whose every element is a container (a tuple, list or dict: one
  batch each), e.g. ``[(x0, y0), (x1, y1), ...]``;
- any other iterable that is not an array and not a tuple or mapping: a
  generator, an object whose ``__iter__`` makes a fresh generator (a
  "generator factory"), a PyTorch ``DataLoader``, a grain or tf.data pipeline
  yielding arrays (anything with ``__array__``: NumPy, JAX, CPU torch or tf
  tensors).

Everything else is in-memory data as before: an array, a tuple ``(x, y)`` of
arrays, a mapping, a list of arrays ``[x, y]``. (A tuple is always in-memory
data: pass batches as a list.)

**Epochs.** Epoch ``e`` (0-based) is ``source(e)`` for a callable and a fresh
``iter(source)`` otherwise. An object whose ``iter()`` returns itself (a
generator, a one-shot iterator) can give only one epoch: it is refused before
any work when more than one epoch is to run. A source that yields no batch for
an epoch (an exhausted iterator included) is a :class:`jreg.JregError`.

**Batches.** The first batch fixes the structure, the trailing shapes and the
dtypes (checked as in-memory data is: real numbers, finite floats, every leaf
with the same leading size); its leading size must be ``batch_size``. Every
later batch must match, except that the *last* batch of an epoch may be
smaller: ``partial_batch="include"`` trains on it as one smaller step
(compiled once, then cached), ``"drop"`` skips it. Any departure (a shape, a
dtype, a structure, a non-array leaf, a NaN or infinity, a smaller batch that
is not the last, a source that raises) is a :class:`jreg.JregError` naming the
epoch (1-based), the batch index (0-based) and the leaf; a source's own
exception is its ``__cause__``.

**Chunks and prefetch.** A background thread reads the source, stacks ``chunk``
consecutive batches into one host array per leaf (NumPy) and puts it on the
device (``jax.device_put``; with :class:`jreg.DataParallel` split along the
batch axis; with several processes each process's source yields its own
``batch_size // process_count`` rows of every global batch, the rows its
devices hold (process ``i``'s contiguous block ``i`` for a ``jax.make_mesh``
mesh), assembled by ``jax.make_array_from_process_local_data``), keeping up to ``prefetch``
chunks ready. The steps of a chunk run as one compiled ``lax.scan`` of the
same update :func:`jreg.train.step.make_update` builds for in-memory epochs.
The last chunk of an epoch, when fewer than ``chunk`` steps remain, is padded
to the next power of two (at most ``chunk``) with copies of its last batch that
a validity mask turns into no-op steps, so epochs of the same length compile
nothing new (and no run more than log2(chunk) + 1 chunk programs). The thread is a daemon, stops when training
stops (or raises), and is joined with a timeout: it cannot hang a run.

**Keys and steps.** Streams are not shuffled (the source decides the order).
Step ``i`` of epoch ``e`` (counting from 0 over the epoch's steps) gets the
key ``fold_in(fold_in(fold_in(key, e), NOISE_SALT), i)``; the global step
count carried in the training state continues across epochs (it feeds
penalty schedules).

**Monitoring.** The default series are those of in-memory training data:
``epoch_loss`` (the mean of the training objective over the epoch's examples,
measured at every step anyway) and the evaluation series when held-out data
are given. A stream is not held, so the series measured on the whole training
set (``training_cost``, ``training_<metric>``), which in-memory data measure
when ``monitor=`` asks for them, are refused with a clear error.

**Divergence.** The finiteness check runs after every chunk inside the
compiled program (a model that goes non-finite keeps its state from the start
of that chunk); the host reads the flag one chunk late, so the device never
waits for it. On divergence the failing chunk is replayed step by step (the
same gradient and update functions) to name the step.

**Resume.** A resumed run restarts at the beginning of epoch ``start`` (the
first epoch not completed in the checkpoint) by opening the source for that
epoch: ``source(start)`` for a callable, a fresh ``iter(source)`` otherwise.
For a deterministic source (a callable of the epoch, or a re-iterable whose
every ``iter()`` yields the same batches) the result equals the uninterrupted
run bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import inspect
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_positive_int
from .._errors import JregError, JregTypeError
from .._signature import checked_init
from .._tree import all_finite
from . import calls, guard
from .inputs import leaf_labels
from .monitor import EPOCH_LOSS
from .plan import NOISE_SALT
from .state import TrainState
from .step import make_update

#: Default steps per compiled chunk (benchmarks/stream_speed.py: per-step host overhead is amortized by 64).
CHUNK = 64
#: Default chunks kept ready on the device ahead of the one training (double buffering).
PREFETCH = 2
_JOIN_TIMEOUT = 5.0


@checked_init
@dataclasses.dataclass(frozen=True)
class Stream:
    """A source of mini-batches for :func:`jreg.fit` / :func:`jreg.sweep`, with how it is fed.

    ``fit(..., train=jreg.Stream(loader, chunk=128))``; a bare source
    (``train=loader``) gets the defaults. See :mod:`jreg.train.stream` and
    docs/streaming.md for what a source may be.

    Attributes:
        source: a callable ``epoch -> iterable of batches``, or a re-iterable
            (each ``iter()`` is one epoch).
        chunk: steps per compiled call (the batches stacked into one device
            array); larger amortizes the host's per-call cost, costs
            ``chunk`` batches of device memory per buffered chunk.
        prefetch: chunks kept ready on the device (at least 1; 2 is double buffering).
    """

    source: Any
    chunk: int = CHUNK
    prefetch: int = PREFETCH

    def __post_init__(self) -> None:
        if self.source is None or isinstance(self.source, Stream):
            raise JregTypeError(f"Stream.source must be a source of batches, got {self.source!r}")
        check_positive_int(self.chunk, "Stream.chunk")
        check_positive_int(self.prefetch, "Stream.prefetch")


def _is_container(value: Any) -> bool:
    return isinstance(value, (tuple, list, Mapping))


def is_stream(train: Any) -> bool:
    """Whether ``train`` is a stream of batches rather than in-memory data (the rule in the module docstring)."""
    if isinstance(train, Stream):
        return True
    if train is None or isinstance(train, (str, bytes, tuple, Mapping)):
        return False
    if hasattr(train, "shape") and hasattr(train, "dtype"):
        return False
    if isinstance(train, list):
        return all(_is_container(b) for b in train)
    return callable(train) or hasattr(train, "__iter__")


def as_stream(train: Any) -> Stream:
    return train if isinstance(train, Stream) else Stream(train)


def _arity(fn: Callable[..., Any]) -> int:
    """1 when ``fn`` can take the epoch, 0 when it takes nothing."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return 1 if positional else 0


def _as_numpy(leaf: Any) -> np.ndarray | None:
    if isinstance(leaf, np.ndarray):
        return leaf
    if isinstance(leaf, jax.Array) or hasattr(leaf, "__array__"):
        return np.asarray(leaf)
    return None


@dataclasses.dataclass
class Spec:
    """What the first batch fixed: the structure, each leaf's label, trailing shape and dtype."""

    treedef: Any
    labels: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[np.dtype]  # as training sees them (canonical: float64 -> float32 unless x64)
    rows: int  # the full batch's leading size (per process)
    raw: list[np.dtype] = dataclasses.field(default_factory=list)  # the first batch's own dtypes (fast check)


class Feed:
    """The host side of a stream: opening epochs, checking batches, the prefetching thread."""

    def __init__(self, stream: Stream, batch_size: int, partial_batch: str):
        self.stream, self.source = stream, stream.source
        self.chunk, self.prefetch = stream.chunk, stream.prefetch
        self.partial_batch = partial_batch
        self.processes = jax.process_count()
        if batch_size % self.processes:
            raise JregError(
                f"batch_size must be a multiple of the number of processes ({self.processes}) when streaming: "
                f"each process feeds batch_size // {self.processes} rows per batch; got {batch_size}"
            )
        self.batch_size, self.rows = batch_size, batch_size // self.processes
        self.callable = callable(self.source) and not hasattr(self.source, "__iter__")
        self.sharding = self.whole = self.by_process = None  # the chunk sharding, a replicated one: place()
        self.ways = 1  # devices along the data axis
        self.found: dict[Any, tuple[int, str, TrainState]] = {}  # a diverged model's replay: None for fit's one
        opened = self._open(0)
        self.one_shot = opened is self.source
        self.first, self.spec = self._peek(opened, 0)
        self._pending: tuple[Any, Iterator] | None = (self.first, opened)

    # -- epochs -------------------------------------------------------------------------------------------------

    def _open(self, epoch: int) -> Iterator:
        made = self.source
        if self.callable:
            call = "source(epoch)" if _arity(self.source) else "source()"
            try:
                made = self.source(epoch) if _arity(self.source) else self.source()
            except JregError:
                raise
            except TypeError as exc:  # most often a signature that is neither (epoch) nor ()
                raise JregTypeError(
                    f"train: calling {call} for epoch {epoch + 1} raised TypeError: {exc} (a callable source takes "
                    "the epoch, or nothing, and returns that epoch's iterable of batches)"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - a user's source failing to open
                raise JregError(
                    f"train: calling {call} for epoch {epoch + 1} raised {type(exc).__name__}: {exc}"
                ) from exc
        try:
            return iter(made)
        except JregError:
            raise
        except TypeError as exc:
            what = f"source(epoch) returned {type(made).__name__}, which is" if self.callable else "the source is"
            raise JregTypeError(
                f"train: {what} not an iterable of batches (epoch {epoch + 1}): {type(exc).__name__}: {exc}"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - a user's source failing to open
            raise JregError(
                f"train: opening the source for epoch {epoch + 1} raised {type(exc).__name__}: {exc}"
            ) from exc

    def _next(self, it: Iterator, epoch: int, index: int) -> Any:
        """The next batch, ``StopIteration`` at the end; a source's own error as a JregError naming where."""
        try:
            return next(it)
        except StopIteration:
            raise
        except Exception as exc:  # noqa: BLE001
            raise JregError(
                f"train: the source raised {type(exc).__name__}: {exc} (epoch {epoch + 1}, batch index {index})"
            ) from exc

    def _peek(self, it: Iterator, epoch: int) -> tuple[Any, Spec]:
        """The first batch (as NumPy, checked) and the spec it fixes."""
        try:
            batch = self._next(it, epoch, 0)
        except StopIteration:
            raise JregError(self._empty(epoch)) from None
        leaves, treedef = jax.tree.flatten(batch)
        labels = leaf_labels(batch)
        where = f"train (epoch {epoch + 1}, batch index 0)"
        if not leaves:
            raise JregTypeError(f"{where}: a batch must hold arrays, got {type(batch).__name__}")
        arrays = []
        for label, leaf in zip(labels, leaves):
            arr = _as_numpy(leaf)
            if arr is None:
                raise JregTypeError(f"{where}: {label} must be an array, got {type(leaf).__name__}")
            if arr.ndim == 0:
                raise JregError(f"{where}: {label} must have a leading batch axis, got a scalar")
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.issubdtype(
                arr.dtype, np.complexfloating
            ):
                raise JregTypeError(f"{where}: {label} must hold real numbers, got dtype {arr.dtype}")
            arrays.append(arr)
        sizes = {a.shape[0] for a in arrays}
        if len(sizes) > 1:
            shapes = {label: tuple(a.shape) for label, a in zip(labels, arrays)}
            raise JregError(f"{where}: every array must have the same leading (example) axis, got {shapes}")
        rows = sizes.pop()
        if rows != self.rows:
            per = "" if self.processes == 1 else f" (batch_size // {self.processes} processes)"
            raise JregError(
                f"{where}: the first batch must hold batch_size{per} = {self.rows} examples, got {rows}; "
                "pass the source's batch size as batch_size"
            )
        dtypes = [jax.dtypes.canonicalize_dtype(a.dtype) for a in arrays]
        spec = Spec(treedef, labels, [a.shape[1:] for a in arrays], dtypes, rows, [a.dtype for a in arrays])
        arrays = self._cast(arrays, spec)
        self._check_finite([a[None] for a in arrays], spec, epoch, 0)
        return jax.tree.unflatten(treedef, arrays), spec

    def _empty(self, epoch: int) -> str:
        hint = (
            " (an iterator exhausted by an earlier epoch? pass a list, a factory whose __iter__ starts anew, "
            "or a callable epoch -> batches)"
            if epoch
            else ""
        )
        return f"train: the source yielded no batch for epoch {epoch + 1}{hint}"

    def check_epochs(self, count: int) -> None:
        """Refuse a one-shot iterator when more than one epoch is to run."""
        if self.one_shot and count > 1:
            raise JregError(
                f"train: the source is a one-shot iterator (iter() returns itself: a generator?), which gives one "
                f"epoch, but {count} epochs are to run; pass a list of batches, an object whose __iter__ makes a "
                "fresh generator, or a callable epoch -> iterable of batches"
            )

    def _epoch_iterator(self, epoch: int) -> Iterator:
        """Epoch ``epoch``'s batches (the peeked first batch put back in front when it belongs to this epoch)."""
        pending, self._pending = self._pending, None
        if pending is not None and (self.one_shot or epoch == 0 or not self.callable):
            first, it = pending
            return _chain(first, it)
        if pending is not None:
            _close(pending[1])
        if self.one_shot:
            return iter(())  # exhausted: reported as an empty epoch
        return self._open(epoch)

    # -- batches and chunks --------------------------------------------------------------------------------------

    def _cast(self, arrays: list[np.ndarray], spec: Spec) -> list[np.ndarray]:
        with np.errstate(over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return [a if a.dtype == d else a.astype(d) for a, d in zip(arrays, spec.dtypes)]

    def _convert(self, batch: Any, epoch: int, index: int) -> list[np.ndarray]:
        """A later batch's leaves as NumPy, after checking them against the spec."""
        spec = self.spec
        where = f"train (epoch {epoch + 1}, batch index {index})"
        leaves, treedef = jax.tree.flatten(batch)
        if treedef != spec.treedef:
            raise JregError(f"{where}: the batch's structure {treedef} differs from the first batch's {spec.treedef}")
        out = []
        for label, leaf, shape, dtype, raw in zip(spec.labels, leaves, spec.shapes, spec.dtypes, spec.raw):
            arr = _as_numpy(leaf)
            if arr is None:
                raise JregTypeError(f"{where}: {label} must be an array, got {type(leaf).__name__}")
            if arr.ndim == 0 or arr.shape[1:] != shape:
                expected = "(n, " + ", ".join(map(str, shape)) + ")" if shape else "(n,)"
                raise JregError(f"{where}: {label} has shape {tuple(arr.shape)}, the first batch's has {expected}")
            if arr.dtype != raw and jax.dtypes.canonicalize_dtype(arr.dtype) != dtype:
                raise JregTypeError(f"{where}: {label} has dtype {arr.dtype}, the first batch's has {dtype}")
            out.append(arr)
        sizes = {a.shape[0] for a in out}
        if len(sizes) > 1:
            shapes = {label: tuple(a.shape) for label, a in zip(spec.labels, out)}
            raise JregError(f"{where}: every array must have the same leading (example) axis, got {shapes}")
        rows = sizes.pop()
        if rows > spec.rows or rows == 0:
            raise JregError(f"{where}: the batch holds {rows} examples; batches hold batch_size = {spec.rows}")
        return out  # cast to the training dtypes per chunk (:meth:`_chunk`)

    def _check_finite(self, stacked: list[np.ndarray], spec: Spec, epoch: int, first: int) -> None:
        for label, arr in zip(spec.labels, stacked):
            if np.issubdtype(arr.dtype, np.floating):
                bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise JregError(
                        f"train (epoch {epoch + 1}, batch index {first + i}): {label} holds NaN or infinity"
                    )

    def place(self, sharding: Any) -> None:
        """Put chunks split along the batch axis of ``sharding`` (the data-parallel batch sharding)."""
        from jax.sharding import NamedSharding, PartitionSpec

        self.sharding = None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
        self.whole = None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())
        self.ways = 1 if sharding is None else sharding.mesh.shape[sharding.spec[0]]
        self.by_process = None if sharding is None or self.processes == 1 else _by_process(sharding.mesh)

    def _put(self, arrays: list[np.ndarray]) -> list[jax.Array]:
        """The chunk on the device. The host arrays are fresh (stacked here) and never touched again, so they
        are donated: on CPU the device array may then alias them instead of copying."""
        if self.processes > 1 and self.sharding is not None:
            if arrays[0].shape[1] * self.processes % self.ways == 0:
                return [jax.make_array_from_process_local_data(self.sharding, a) for a in arrays]
            # a last batch the mesh cannot split evenly: each process's rows on its own devices (the same devices
            # in the same order, so the compiled step takes it); the step's sharding constraint splits it
            if self.by_process is None:
                raise JregError(
                    f"train: a last batch of {arrays[0].shape[1]} rows per process cannot be split over the mesh's "
                    f"{self.ways} devices along the data axis, and the mesh's devices are not grouped by process; "
                    "pass partial_batch='drop' or make the last batch's rows a multiple of the devices"
                )
            return [jax.make_array_from_process_local_data(self.by_process, a) for a in arrays]
        if self.sharding is not None and arrays[0].shape[1] % self.ways:
            # a last batch the mesh cannot split evenly: put it whole; the step's sharding constraint splits it
            return jax.device_put(arrays, self.whole, donate=True)
        return jax.device_put(arrays, self.sharding, donate=True)

    def _produce(self, epoch: int, emit: Callable[[Any], bool]) -> None:
        """Read epoch ``epoch``, emitting ``Chunk``s, then ``None``; a JregError instead when something is wrong."""
        it = self._epoch_iterator(epoch)
        try:
            buffer: list[list[np.ndarray]] = []
            small: tuple[int, list[np.ndarray]] | None = None
            index = 0
            while True:
                try:
                    batch = self._next(it, epoch, index)
                except StopIteration:
                    break
                if small is not None:
                    raise JregError(
                        f"train (epoch {epoch + 1}, batch index {small[0]}): the batch holds "
                        f"{small[1][0].shape[0]} examples, fewer than batch_size = {self.spec.rows}, but is not the "
                        "epoch's last; only the last batch may be smaller"
                    )
                arrays = self._convert(batch, epoch, index)
                if arrays[0].shape[0] < self.spec.rows:
                    small = (index, arrays)
                else:
                    buffer.append(arrays)
                    if len(buffer) == self.chunk:
                        if not emit(self._chunk(buffer, epoch, index + 1 - len(buffer))):
                            return
                        buffer = []
                index += 1
            if index == 0:
                raise JregError(self._empty(epoch))
            if buffer and not emit(self._chunk(buffer, epoch, index - len(buffer) - (small is not None))):
                return
            if small is not None and self.partial_batch == "include":
                if not emit(self._chunk([small[1]], epoch, small[0], pad=False)):
                    return
            emit(None)
        finally:
            _close(it)

    def _chunk(self, batches: list[list[np.ndarray]], epoch: int, first: int, pad: bool = True) -> Chunk:
        count = len(batches)
        stacked = self._cast([np.stack(leaves) for leaves in zip(*batches)], self.spec)
        self._check_finite(stacked, self.spec, epoch, first)
        # a short chunk is padded to the next power of two (at most ``chunk``): log2(chunk) + 1 programs at most,
        # and no more than ``count - 1`` wasted steps (padding to ``chunk`` ran 64 steps for a 5-batch epoch)
        size = min(self.chunk, 1 << (count - 1).bit_length()) if pad else count
        if size > count:  # padded with copies of the last batch: masked no-op steps
            stacked = [np.concatenate([a, np.repeat(a[-1:], size - count, axis=0)]) for a in stacked]
        arrays = self._put(stacked)
        return Chunk(
            jax.tree.unflatten(self.spec.treedef, arrays), first, count, size, batches[0][0].shape[0] * self.processes
        )

    def epoch(self, epoch: int) -> Opened:
        """Epoch ``epoch``, ready to be read chunk by chunk (:meth:`Opened.chunks`)."""
        return Opened(self, epoch)


def _by_process(mesh: Any) -> Any:
    """A sharding over ``mesh``'s devices, in its order, splitting axis 1 by process (replicated within one), or
    None when the devices, in that order, are not grouped by process."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.asarray(mesh.devices).reshape(jax.process_count(), -1)
    if any(len({d.process_index for d in row}) != 1 for row in devices):
        return None
    return NamedSharding(Mesh(devices, ("process", "local")), PartitionSpec(None, "process"))


def _chain(first: Any, it: Iterator) -> Iterator:
    yield first
    yield from it


def _close(it: Any) -> None:
    close = getattr(it, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # noqa: BLE001, S110 - closing a user's generator is best effort
            pass


@dataclasses.dataclass
class Chunk:
    batches: Any  # the batch pytree with leaves (size, rows, ...) on the device
    first: int  # the epoch's step index of its first batch
    count: int  # real steps (the rest are padding)
    size: int  # steps in the arrays
    rows: int  # examples per step (global)


class Opened:
    """One epoch of a stream: ``with opened.chunks() as chunks: for chunk in chunks: ...``."""

    def __init__(self, feed: Feed, epoch: int):
        self.feed, self.epoch = feed, epoch

    def chunks(self) -> _Prefetch:
        return _Prefetch(self.feed, self.epoch)


class _Prefetch:
    """The background thread reading the source; iterate it for the chunks, in a ``with`` block."""

    def __init__(self, feed: Feed, epoch: int):
        self.queue: queue.Queue = queue.Queue(maxsize=feed.prefetch)
        self.stop = threading.Event()
        self.feed, self.epoch = feed, epoch
        self.thread = threading.Thread(target=self._run, name=f"jreg-stream-epoch-{epoch + 1}", daemon=True)

    def _emit(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            self.feed._produce(self.epoch, self._emit)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            if not isinstance(exc, JregError):
                wrapped = JregError(
                    f"train: reading the stream failed at epoch {self.epoch + 1}: {type(exc).__name__}: {exc}"
                )
                wrapped.__cause__ = exc
                exc = wrapped
            self._emit(_Failure(exc))

    def __enter__(self) -> _Prefetch:
        self.thread.start()
        return self

    def __iter__(self) -> Iterator[Chunk]:
        while True:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise JregError(
                        f"train: the stream's reader stopped without finishing epoch {self.epoch + 1}"
                    ) from None
                continue
            if item is None:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(_JOIN_TIMEOUT)


@dataclasses.dataclass
class _Failure:
    error: BaseException


# -- the compiled programs ---------------------------------------------------------------------------------------


def program(
    build: Callable[[Any], Any],
    feed: Feed,
    monitor: Any,
    *,
    models: int | None,
    vectorize: str = "vmap",
    sharding: Any = None,
    ema: Any = None,
    unroll: int | None = None,
) -> Callable[..., Any]:
    """``epoch(hp, state, alive, opened, evaluation, key, *, evaluate) -> (state, alive, metrics, ok)``.

    The streamed counterpart of :func:`jreg.train.engine.program`: ``opened`` is
    :meth:`Feed.epoch`'s result for the epoch. Chunks run as compiled scans;
    ``feed.found`` receives the replay of each model that diverged (key
    ``None`` for fit's one model, the model's index in a sweep).
    """
    feed.place(sharding)

    def train_one(hp, state: TrainState, alive, acc, batches, valid, key, first, masked: bool):
        objective, optimizer = build(hp)
        decay = None if ema is None else ema.decay_of(hp)
        update = make_update(objective, optimizer, with_metrics=True, ema_decay=decay)
        keyed = calls.takes_key(objective)
        base = jax.random.fold_in(key, NOISE_SALT)
        size = valid.shape[0]
        rows = jax.tree.leaves(batches)[0].shape[1]
        if state.model_state is not None:  # a scan carry: its type may not change
            one = jax.tree.map(lambda a: a[0], batches)
            after, _ = jax.eval_shape(update, state, one, base if keyed else None)
            calls.check_state_roundtrip(state.model_state, after.model_state)

        def body(carry, xs):
            batch, ok, i = xs
            if sharding is not None:
                batch = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), batch)
            new, metrics = update(carry, batch, jax.random.fold_in(base, first + i) if keyed else None)
            loss = metrics["loss"]
            if masked:
                new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, carry)
                loss = jnp.where(ok, loss, 0.0)
            return new, loss

        xs = (batches, valid, jnp.arange(size, dtype=jnp.int32))
        # a streamed epoch is bound by the host feeding it; its loop is unrolled only when asked
        new, losses = jax.lax.scan(body, state, xs, unroll=1 if unroll is None else unroll)
        loss_sum = jnp.sum(losses) * rows
        state, ok, alive = guard.check(state, new, [loss_sum], alive)
        acc = acc + jnp.where(alive, loss_sum, 0.0)
        return state, alive, acc

    def chunk(hp, state, alive, acc, batches, valid, key, first, *, masked: bool):
        if models is None:
            return train_one(hp, state, alive, acc, batches, valid, key, first, masked)
        one = lambda h, s, a, c: train_one(h, s, a, c, batches, valid, key, first, masked)  # noqa: E731
        if vectorize == "vmap":
            return jax.vmap(one)(hp, state, alive, acc)
        return jax.lax.map(lambda t: one(*t), (hp, state, alive, acc))

    def measure_one(hp, state: TrainState, evaluation):
        objective, _ = build(hp)
        params = state.ema if ema is not None and ema.evaluate else state.params
        return monitor.measure(objective, params, state.model_state, None, evaluation, state.step)

    def finish(hp, state, alive, evaluation, acc, rows, *, evaluate: bool):
        metrics = {EPOCH_LOSS: acc / rows} if monitor.epoch_loss else {}
        if evaluate:
            measure = measure_one if models is None else jax.vmap(measure_one, in_axes=(0, 0, None))
            metrics.update(measure(hp, state, evaluation))
        guarded = [v for k, v in metrics.items() if monitor.guarded(k)]
        if models is None:
            ok = alive & all_finite(guarded)
        else:
            ok = alive & jax.vmap(lambda *g: all_finite(list(g)))(*guarded) if guarded else alive
        return metrics, ok

    compiled = jax.jit(chunk, static_argnames=("masked",), donate_argnames=("state", "acc"))
    finished = jax.jit(finish, static_argnames=("evaluate",))
    ema_decay = (lambda hp: None) if ema is None else ema.decay_of

    def replay(hp, state, chunk_: Chunk, key, model):
        """Step by step through the chunk from the state it started with (frozen there by the check)."""
        values = hp if model is None else {k: v[model] for k, v in hp.items()}
        objective, optimizer = build(values)
        keyed = calls.takes_key(objective)
        start = state if model is None else jax.tree.map(lambda a: a[model], state)
        base = jax.random.fold_in(key, NOISE_SALT)
        steps = (
            (
                jax.tree.map(lambda a, j=j: a[j], chunk_.batches),
                jax.random.fold_in(base, chunk_.first + j) if keyed else None,
            )
            for j in range(chunk_.count)
        )
        found = guard.locate_steps(objective, optimizer, start, steps, ema_decay(values), first=chunk_.first)
        if found is not None:
            feed.found[model] = found

    def epoch(hp, state, alive, opened: Opened, evaluation, key, *, evaluate: bool):
        feed.found = {}
        alive = jnp.asarray(True) if models is None else alive
        acc = jnp.zeros(() if models is None else (models,), jnp.float32)
        rows, dead, stopped = 0, set(), False
        full = np.ones((feed.chunk,), bool)
        previous: tuple[Chunk, Any] | None = None

        def check(item: Chunk, flags: Any) -> bool:
            """Replay the models that ``item`` made non-finite; True when training should stop (fit)."""
            now = np.atleast_1d(np.asarray(jax.device_get(flags)))
            newly = [i for i in np.flatnonzero(~now) if i not in dead]
            for i in newly:
                dead.add(i)
                replay(hp, state, item, key, None if models is None else int(i))
            return models is None and bool(newly) or len(dead) == (models or 1)

        with opened.chunks() as chunks:
            for item in chunks:
                masked = item.count < item.size
                valid = np.arange(item.size) < item.count if masked else full[: item.size]
                first = np.int32(item.first)
                state, alive, acc = compiled(hp, state, alive, acc, item.batches, valid, key, first, masked=masked)
                rows += item.count * item.rows
                if previous is not None and check(*previous):
                    stopped = True
                    break
                previous = (item, alive)
        if not stopped and previous is not None:
            check(*previous)
        metrics, ok = finished(hp, state, alive, evaluation, acc, jnp.float32(max(rows, 1)), evaluate=evaluate)
        return state, (None if models is None else alive), metrics, ok

    return epoch
