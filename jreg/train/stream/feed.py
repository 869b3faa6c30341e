"""A stream fed to the device: opening epochs, reading and checking batches, copying them into reused chunk buffers
(the last chunk padded), placing the chunks, and the prefetching thread that does all that ahead of training (the
rules in :mod:`jreg.train.stream`'s docstring, "Epochs" and "Chunks and prefetch")."""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from ..._errors import JregError, JregTypeError
from ...checkpoint.common import CheckpointError
from ..state import TrainState
from . import position as positions
from .batches import Spec, cast, check_finite, convert, first_batch, quick
from .source import Stream, _arity

_JOIN_TIMEOUT = 5.0


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
        # mid-epoch checkpoints (Checkpointing(every_steps=...)): each full chunk carries the iterator's state after
        # its last batch when ``capture``; ``saver(state, alive, position)`` writes one every ``every_steps`` steps
        self.capture, self.every_steps = False, 0
        self.saver: Callable[[TrainState, Any, dict[str, Any]], None] | None = None
        self._resumed: tuple[int, Any, Iterator, int] | None = None  # (epoch, its next batch, iterator, step)
        self.totals: tuple[int, Any, int] | None = None  # a resumed epoch's (epoch, loss sum, rows) so far
        opened = self._open(0)
        self.one_shot = opened is self.source
        self.first, self.spec = self._peek(opened, 0)
        # host buffers for the chunks, reused: enough for the queue, the one being filled, the one training and
        # the previous one kept for the guard, so that a steady epoch allocates nothing
        self.pool = _Pool(self.spec, self.chunk, self.prefetch + 3)
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
        return first_batch(batch, self.rows, self.processes, epoch)

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

    def _epoch_iterator(self, epoch: int) -> tuple[Iterator, Any, int]:
        """``(batches, the source's iterator, first step)`` of epoch ``epoch``: the peeked first batch put back in
        front when it belongs to this epoch; a mid-epoch resume's iterator (:meth:`resume_at`) from its step."""
        resumed, self._resumed = self._resumed, None
        if resumed is not None and resumed[0] == epoch:
            _, first, it, step = resumed
            return _chain(first, it), it, step
        pending, self._pending = self._pending, None
        if pending is not None and (self.one_shot or epoch == 0 or not self.callable):
            first, it = pending
            return _chain(first, it), it, 0
        if pending is not None:
            _close(pending[1])
        if self.one_shot:
            return iter(()), None, 0  # exhausted: reported as an empty epoch
        it = self._open(epoch)
        return it, it, 0

    # -- mid-epoch checkpoints -------------------------------------------------------------------------------------

    def check_stateful(self, where: str) -> None:
        """Refuse, before any work, mid-epoch checkpoints of a source whose iterator cannot save its position (and
        with several processes, whose iterators would each need saving)."""
        if self.processes > 1:
            raise JregError(
                f"{where}: mid-epoch checkpoints of a stream with several processes are not supported (each process "
                "reads its own iterator); drop every_steps"
            )
        it = self._pending[1] if self._pending is not None else None
        if not positions.stateful(it):
            raise positions.not_stateful(it, where)
        positions.encode(it.get_state(), where)  # storable: bytes or JSON

    def _state(self, it: Any, epoch: int, index: int) -> dict[str, Any]:
        """The iterator's state after batch ``index`` of ``epoch``, as a checkpoint stores it."""
        where = f"train (epoch {epoch + 1}, after batch index {index})"
        try:
            state = it.get_state()
        except Exception as exc:  # noqa: BLE001 - a user's iterator failing
            raise JregError(f"{where}: the stream's iterator's get_state() raised {type(exc).__name__}: {exc}") from exc
        return positions.encode(state, where)

    def resume_at(self, epoch: int, position: dict[str, Any], where: Any, models: int | None = None) -> None:
        """Open epoch ``epoch`` where a mid-epoch checkpoint (read from ``where``, its ``position`` checked by
        :func:`jreg.checkpoint.meta.check_stream_position`) left it, and read its next batch now: a state the
        iterator refuses, or after which it yields nothing or fails, is a :class:`CheckpointError` before any work.
        ``models``: a sweep's K (its ``loss_sum`` holds one value a model), None for fit."""
        step, sums = position["step"], position["loss_sum"]
        if isinstance(sums, list) != (models is not None) or (models is not None and len(sums) != models):
            kind = "a number (one model)" if models is None else f"a list of {models} numbers, one a model"
            raise CheckpointError(
                f"{where}: meta 'stream_position.loss_sum' must be {kind} for this run, got {sums!r:.80}"
            )
        what = f"resume: {where} is a mid-epoch checkpoint (epoch {epoch + 1}, after step {step})"
        if self.processes > 1:
            raise CheckpointError(f"{what}, which a run of several processes cannot resume")
        pending, self._pending = self._pending, None
        if self.one_shot:
            it = pending[1] if pending is not None else self.source
        else:
            if pending is not None:
                _close(pending[1])
            it = self._open(epoch)
        if not positions.stateful(it):
            raise positions.not_stateful(it, what)
        positions.restore(it, position, str(where))
        try:
            first = self._next(it, epoch, step)
        except StopIteration:
            raise CheckpointError(
                f"{where}: meta 'stream_position.iterator' leaves the stream with no batch of epoch {epoch + 1} after "
                f"step {step}, but the checkpoint was written before that epoch's end: a damaged or forged state, or "
                "another source than the run's"
            ) from None
        except JregError as exc:
            raise CheckpointError(
                f"{where}: meta 'stream_position.iterator': the stream failed right after its state was restored "
                f"({exc})"
            ) from exc.__cause__
        self._resumed = (epoch, first, it, step)
        self.totals = (epoch, position["loss_sum"], position["rows"])

    # -- batches and chunks --------------------------------------------------------------------------------------

    def place(self, sharding: Any) -> None:
        """Put chunks split along the batch axis of ``sharding`` (the data-parallel batch sharding)."""
        from jax.sharding import NamedSharding, PartitionSpec

        self.sharding = None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
        self.whole = None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())
        self.ways = 1 if sharding is None else sharding.mesh.shape[sharding.spec[0]]
        self.by_process = None if sharding is None or self.processes == 1 else _by_process(sharding.mesh)

    def _put(self, arrays: list[np.ndarray]) -> list[jax.Array]:
        """The chunk on the device. On CPU the device arrays may alias the host arrays (no copy: the pool's buffers
        are aligned for that), which is why a slot is reused only once the training loop gives it back."""
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
            return jax.device_put(arrays, self.whole)
        return jax.device_put(arrays, self.sharding)

    def _produce(self, epoch: int, emit: Callable[[Any], bool]) -> None:
        """Read epoch ``epoch``, emitting ``Chunk``s, then ``None``; a JregError instead when something is wrong.

        Each full batch is copied, as soon as it is read, into row ``filled`` of a chunk's host buffers taken from
        :attr:`pool` (so a source may reuse or mutate the arrays it yielded once it is asked for the next batch)."""
        it, source_it, start = self._epoch_iterator(epoch)
        capture = self.capture and source_it is not None
        if capture and not positions.stateful(source_it):  # epoch 0's could; this epoch's cannot
            _close(it)
            raise positions.not_stateful(source_it, f"train (epoch {epoch + 1}): Checkpointing(every_steps=...)")
        spec, chunk, pool = self.spec, self.chunk, self.pool
        try:
            slot: _Slot | None = None
            filled = 0
            small: tuple[int, list[np.ndarray]] | None = None
            index = start
            while True:
                try:
                    batch = self._next(it, epoch, index)
                except StopIteration:
                    break
                if small is not None:
                    raise JregError(
                        f"train (epoch {epoch + 1}, batch index {small[0]}): the batch holds "
                        f"{small[1][0].shape[0]} examples, fewer than batch_size = {spec.rows}, but is not the "
                        "epoch's last; only the last batch may be smaller"
                    )
                arrays = quick(batch, spec) or convert(batch, spec, epoch, index)
                if arrays[0].shape[0] < spec.rows:
                    small = (index, [np.array(a) for a in arrays])  # a copy: the source may reuse its arrays
                else:
                    if slot is None:
                        slot = pool.take()
                    slot.fill(filled, arrays)
                    filled += 1
                    if filled == chunk:  # the iterator's state now is the one after the chunk's last batch
                        state = self._state(source_it, epoch, index) if capture else None
                        if not emit(self._chunk(slot, filled, epoch, index + 1 - filled, position=state)):
                            return
                        slot, filled = None, 0
                index += 1
            if index == start:
                raise JregError(self._empty(epoch))
            if filled and not emit(self._chunk(slot, filled, epoch, index - filled - (small is not None))):
                return
            if small is not None and self.partial_batch == "include":
                if not emit(self._lone(small[1], epoch, small[0])):
                    return
            emit(None)
        finally:
            _close(it)

    def _chunk(self, slot: _Slot, count: int, epoch: int, first: int, position: Any = None) -> Chunk:
        """The ``count`` batches filled into ``slot``, checked, padded and put on the device."""
        check_finite([a[:count] for a in slot.arrays], self.spec, epoch, first)
        # a short chunk is padded to the next power of two (at most ``chunk``): log2(chunk) + 1 programs at most,
        # and no more than ``count - 1`` wasted steps (padding to ``chunk`` ran 64 steps for a 5-batch epoch)
        size = min(self.chunk, 1 << (count - 1).bit_length())
        for a in slot.arrays:  # padded with copies of the last batch: masked no-op steps
            a[count:size] = a[count - 1]
        arrays = self._put([a[:size] for a in slot.arrays])
        return Chunk(jax.tree.unflatten(self.spec.treedef, arrays), first, count, size, self.batch_size, position, slot)

    def _lone(self, arrays: list[np.ndarray], epoch: int, first: int) -> Chunk:
        """An epoch's smaller last batch as a chunk of one step (fresh host arrays: its shape is its own)."""
        stacked = cast([a[None] for a in arrays], self.spec)
        check_finite(stacked, self.spec, epoch, first)
        put = self._put(stacked)
        return Chunk(jax.tree.unflatten(self.spec.treedef, put), first, 1, 1, arrays[0].shape[0] * self.processes)

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


_ALIGN = 64  # bytes: XLA's CPU client takes a host array this aligned without copying it


def _aligned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialized C-contiguous array whose data start at a multiple of ``_ALIGN`` bytes."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    offset = -raw.ctypes.data % _ALIGN
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


class _Slot:
    """One chunk's host buffers (one array ``(chunk, rows, ...)`` a leaf, in the training dtypes), lent by a
    :class:`_Pool` until :meth:`release`."""

    def __init__(self, pool: _Pool, arrays: list[np.ndarray]):
        self.pool, self.arrays = pool, arrays
        self.lent = True

    def fill(self, row: int, batch: list[np.ndarray]) -> None:
        """Copy one batch's leaves into row ``row`` (cast to the training dtypes as ``astype`` would)."""
        for buffer, leaf in zip(self.arrays, batch):
            if leaf.dtype == buffer.dtype:
                buffer[row] = leaf
            else:  # e.g. float64 into float32 (x64 off): an overflow is an infinity, refused per chunk
                with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    buffer[row] = leaf

    def release(self) -> None:
        """Give the buffers back: the device has finished with every array put from them (idempotent)."""
        if self.lent:
            self.lent = False
            self.pool.give(self)


class _Pool:
    """Reused chunk buffers. The reader takes a slot (a new one when none is free: it never waits); the training
    loop releases a chunk's slot once the device has finished the compiled call that read it (it has read that
    call's divergence flag). A chunk not released (an epoch that stopped early) is never reused, so a buffer the
    device may still read, or a CPU device array still aliases, is never overwritten."""

    def __init__(self, spec: Spec, chunk: int, keep: int):
        self.shapes = [(chunk, *full) for full in spec.full]
        self.dtypes = spec.dtypes
        self.keep = keep
        self.free: collections.deque[_Slot] = collections.deque()  # append and pop are atomic across threads
        self.made = 0  # slots allocated (a steady epoch: at most ``keep``)

    def take(self) -> _Slot:
        try:
            slot = self.free.pop()
        except IndexError:
            self.made += 1
            return _Slot(self, [_aligned(s, np.dtype(d)) for s, d in zip(self.shapes, self.dtypes)])
        slot.lent = True
        return slot

    def give(self, slot: _Slot) -> None:
        if len(self.free) < self.keep:
            self.free.append(slot)


@dataclasses.dataclass
class Chunk:
    batches: Any  # the batch pytree with leaves (size, rows, ...) on the device
    first: int  # the epoch's step index of its first batch
    count: int  # real steps (the rest are padding)
    size: int  # steps in the arrays
    rows: int  # examples per step (global)
    position: Any = None  # the iterator's state after its last batch (a full chunk, mid-epoch checkpoints on)
    slot: _Slot | None = None  # the host buffers it was put from (None: its own fresh arrays)

    def release(self) -> None:
        """The device has finished with this chunk (the compiled call that read it is done): its host buffers may
        be reused. Call it only then; never calling it is safe (the buffers are then not reused)."""
        if self.slot is not None:
            self.slot.release()
            self.slot = None


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
