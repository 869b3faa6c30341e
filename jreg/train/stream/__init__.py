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

**Chunks and prefetch.** A background thread reads the source, copies each
batch as it is read into its chunk's host buffers (one NumPy array per leaf,
``chunk`` batches; reused from a pool once the training loop has read the flag
of the compiled call that trained on them: on CPU the device array aliases the
buffer) and puts each chunk on the device (``jax.device_put``; with
:class:`jreg.DataParallel` split along the batch axis; with several processes each process's source yields its own
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

**Mid-epoch checkpoints.** With ``Checkpointing(every_steps=n)`` and a source
whose iterator has ``get_state()`` and ``set_state()`` (grain's dataset and
``DataLoader`` iterators), the reader records the iterator's state after the
last batch of every full chunk (:attr:`Chunk.position`); at the first chunk
boundary at or after each multiple of ``n`` steps of an epoch that is not the
epoch's end, the training loop writes ``ckpt-<epochs done>-<step>.npz``
(the state after that chunk, the epoch's running loss and example count, the
iterator's state: :mod:`.position`). A resumed run opens the epoch, restores
the iterator's state, reads its next batch before any work (a state the
iterator refuses, or after which it yields nothing, is a ``CheckpointError``
naming the field) and continues at that step with the same keys and chunk
boundaries: bit for bit the uninterrupted run on CPU. One process only.
"""

from __future__ import annotations

# every name the single module (stream.py) had stays importable from here, the private ones included
from .batches import Spec
from .batches import _as_numpy as _as_numpy
from .compiled import program
from .feed import _JOIN_TIMEOUT as _JOIN_TIMEOUT
from .feed import Chunk, Feed, Opened
from .feed import _by_process as _by_process
from .feed import _chain as _chain
from .feed import _close as _close
from .feed import _Failure as _Failure
from .feed import _Prefetch as _Prefetch
from .source import CHUNK, PREFETCH, Stream, as_stream, is_stream
from .source import _arity as _arity
from .source import _is_container as _is_container

__all__ = [
    "CHUNK",
    "PREFETCH",
    "Chunk",
    "Feed",
    "Opened",
    "Spec",
    "Stream",
    "as_stream",
    "is_stream",
    "program",
]
