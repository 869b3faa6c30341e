"""Checkpoints that cannot execute code on load, and network2.py's JSON model format.

One module per concern (each imports only those above it)::

    common     the format's name, CheckpointError, Checkpoint (what load returns), the header's limits, and the
               field checks every format shares (Fields, read_json: the .npz header, meta, network2, orbax's record)
    tree       a pytree as plain JSON and back
    header     the checks on a file's JSON header, field by field
    archive    the zip read as foreign bytes: members only when named, sizes checked first
    format     save, load, read_header, verify: the ``.npz`` format (see its docstring for why this format)
    orbax_format  the same fields in an orbax-checkpoint folder (format="orbax"), and users' own orbax pytrees
    dispatch   the public save, load, read_header, verify: the format by ``format=``, or by what the path is
    meta       the run state jreg.fit keeps in ``meta``, checked on resume
    network2   network2.py's JSON model format: save_network2, load_network2
"""

from __future__ import annotations

from .common import (
    FORMAT,
    FORMAT_VERSION,
    KEY_MAX_BYTES,
    MAX_DIMS,
    MAX_HEADER_BYTES,
    MAX_META_DEPTH,
    MAX_TREE_DEPTH,
    Checkpoint,
    CheckpointError,
)
from .dispatch import FORMATS, load, read_header, save, verify
from .meta import STOPPING_FIELDS, check_history, check_run_meta, check_stopping_state
from .network2 import NETWORK2_MAX_BYTES, load_network2, save_network2

__all__ = [
    "FORMAT",
    "FORMATS",
    "FORMAT_VERSION",
    "KEY_MAX_BYTES",
    "MAX_DIMS",
    "MAX_HEADER_BYTES",
    "MAX_META_DEPTH",
    "MAX_TREE_DEPTH",
    "NETWORK2_MAX_BYTES",
    "STOPPING_FIELDS",
    "Checkpoint",
    "CheckpointError",
    "check_history",
    "check_run_meta",
    "check_stopping_state",
    "load",
    "load_network2",
    "read_header",
    "save",
    "save_network2",
    "verify",
]
