"""Per-member data for K-model runs: each member's training examples, its shuffle and its evaluation examples.

One mechanism serves per-member data orders, bootstrap resamples (bagging) and k-fold cross-validation:

* **training index sets** into the shared training arrays: member ``i`` trains on ``train[index_i]``, its
  mini-batches gathered inside each step (``train[index_i[perm]]``: no copy of the data set per member).
  ``jax.random.permutation(key, m)`` depends on the static size ``m``, so members whose sets differ in size
  are grouped by size: each group has its own :class:`~jreg.train.plan.EpochPlan`, and every group runs
  inside the one compiled epoch (k-fold with ``n % k != 0`` has two sizes);
* **evaluation index sets** (a held-out fold, a member's out-of-bag examples), gathered chunk by chunk inside
  the program (memory O(K x evaluation batch), not O(K x fold)). Members whose sets have at most two sizes
  (k-fold) are measured in groups of one size, with :func:`jreg.fit`'s own arithmetic; sets of many sizes
  (out-of-bag sets) are padded to the largest with weight 0, each example evaluated on its own, so that every
  mean is exact;
* **the data order**: ``"shared"`` (every member shuffles with the run's epoch key ``fold_in(key, e)``, as
  :func:`jreg.fit` does), or ``"per_member"``: member ``i`` shuffles epoch ``e`` with
  ``fold_in(member_keys(key, K)[i], e)``, exactly as ``fit(..., key=member_keys(key, K)[i])`` would.

The key rules (documented, stable for a given jreg version):

* member keys: ``jreg.member_keys(key, K) = jax.random.split(key, K)``;
* bootstrap: member ``i`` draws its ``n`` training indices with replacement as
  ``jax.random.randint(fold_in(member_key_i, BOOTSTRAP_SALT), (n,), 0, n)`` (:func:`bootstrap_indices`);
  its out-of-bag examples are those never drawn, in increasing order.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_key, check_positive_int
from .._errors import JregError
from . import stream
from .config import Evaluation, as_evaluation
from .inputs import check_data, data_size
from .plan import EpochPlan, make_plan

DATA_ORDER = ("shared", "per_member")
RESAMPLE = (None, "bootstrap")
OUT_OF_BAG = "out_of_bag"
#: the private keyword through which jreg.cross_validate gives sweep its folds: ``{"train": sets, "evaluation":
#: sets, "kind": "folds", "series": the series that must be measured}``
MEMBER_SETS = "_member_sets"
#: what a checkpoint of a sweep without per-member data records
SHARED = {"order": "shared", "resample": None, "kind": "shared", "digest": None}
#: the most groups of equal-sized views measured each with fit's own arithmetic (else padded: see Members.exact)
EXACT_GROUPS = 2
#: salt of the bootstrap draw: member ``i``'s indices come from ``fold_in(member_key_i, BOOTSTRAP_SALT)``
BOOTSTRAP_SALT = 0x626F6F74


def member_keys(key: jax.Array, models: int) -> jax.Array:
    """The K members' own keys, ``jax.random.split(key, K)``: with ``sweep(..., data_order="per_member")`` member
    ``i`` shuffles as ``fit(..., key=member_keys(key, K)[i])`` does, and its bootstrap sample derives from it."""
    key = check_key(key)
    return jax.random.split(key, check_positive_int(models, "models"))


def bootstrap_indices(member_key: jax.Array, n: int) -> np.ndarray:
    """The ``n`` training indices (drawn with replacement, in drawing order) of the member whose key is
    ``member_key`` (``jreg.member_keys(key, K)[i]``): ``randint(fold_in(member_key, BOOTSTRAP_SALT), (n,), 0, n)``."""
    member_key = check_key(member_key, "member_key")
    n = check_positive_int(n, "n")
    drawn = jax.random.randint(jax.random.fold_in(member_key, BOOTSTRAP_SALT), (n,), 0, n, dtype=jnp.int32)
    return np.asarray(drawn)


def out_of_bag(indices: Any, n: int) -> np.ndarray:
    """The examples of ``range(n)`` that ``indices`` never names, in increasing order."""
    seen = np.zeros((n,), bool)
    seen[np.asarray(indices)] = True
    return np.flatnonzero(~seen).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Group:
    """Members training on index sets of one size: ``members`` (G,) numbers, ``index`` (G, m) into the shared
    training arrays (None: every member trains on the whole set, as it is), their epoch ``plan``."""

    members: np.ndarray
    index: np.ndarray | None
    plan: EpochPlan


@dataclasses.dataclass(frozen=True)
class View:
    """Per-member examples for measuring: ``index`` (K, M) into the shared training arrays, padded to the largest
    set with index 0 and ``weight`` 0; ``counts`` (K,) the true sizes."""

    index: np.ndarray
    weight: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        return self.weight.sum(axis=1)

    @staticmethod
    def of(sets: Sequence[np.ndarray]) -> View:
        width = max(len(s) for s in sets)
        index = np.zeros((len(sets), width), np.int32)
        weight = np.zeros((len(sets), width), np.float32)
        for i, s in enumerate(sets):
            index[i, : len(s)] = s
            weight[i, : len(s)] = 1.0
        return View(index, weight)


@dataclasses.dataclass(frozen=True)
class Members:
    """What a K-model run with per-member data needs: the order rule, the member keys, the training groups,
    and the per-member views for measuring (``training``: each member's training set, for the training-set
    series; ``evaluation``: its held-out examples, or None when the run's evaluation data are shared)."""

    order: str
    resample: str | None
    keys: jax.Array
    groups: tuple[Group, ...]
    training: View | None
    evaluation: View | None
    kind: str  # "order", "bootstrap", "folds", "indices": what made the sets (recorded in checkpoints)
    digest: str  # of the index sets: a resume with other sets is refused

    @property
    def models(self) -> int:
        return int(sum(len(g.members) for g in self.groups))

    @property
    def single(self) -> bool:
        """One group holding every member in order (no gather of the members' states)."""
        return len(self.groups) == 1 and np.array_equal(self.groups[0].members, np.arange(self.models))

    @property
    def sizes(self) -> np.ndarray:
        """Each member's training-set size."""
        out = np.zeros((self.models,), np.int64)
        for g in self.groups:
            out[g.members] = g.plan.n
        return out

    @property
    def exact(self) -> bool:
        """Whether the members are measured in groups of equal-sized sets (at most :data:`EXACT_GROUPS` groups,
        as k-fold gives: the arithmetic of ``fit`` on each set, no padding), rather than padded to the largest
        (bootstrap's out-of-bag sets, of many sizes: each example evaluated on its own, weighted)."""
        return len(self.view_groups()) <= EXACT_GROUPS

    def view_groups(self) -> tuple[np.ndarray, ...]:
        """The members grouped by the sizes of their views (training set, evaluation set)."""
        sizes = [tuple(int(v.counts[i]) if v is not None else -1 for v in (self.training, self.evaluation))
                 for i in range(self.models)]  # fmt: skip
        return tuple(np.asarray([i for i, s in enumerate(sizes) if s == size]) for size in dict.fromkeys(sizes))

    def arrays(self, put: Callable[[np.ndarray, bool], Any] | None = None) -> dict[str, Any]:
        """The index sets as device arrays, the compiled epoch's ``index`` argument: ``groups`` (the training
        groups' index sets) and ``views`` (per measuring group: each view as ``(G, m)`` indices when
        :attr:`exact`, else as the padded ``(index, weight)`` with each member's training-set size).

        ``put(array, split)`` places each one (default: on the default device); ``split`` is True when its leading
        axis holds every member in order, so that it may be split over a mesh's model axis as the stacked state
        is (``parallel=ModelParallel(...)``), False for a group of some members only (replicated there: the
        group's members are gathered from wherever they live)."""
        put = put or (lambda a, split: jnp.asarray(a))
        everyone = lambda ids: np.array_equal(ids, np.arange(self.models))  # noqa: E731
        out: dict[str, Any] = {
            "groups": tuple(None if g.index is None else put(g.index, everyone(g.members)) for g in self.groups)
        }
        if not self.exact:
            padded = {n: None if v is None else (put(v.index, True), put(v.weight, True)) for n, v in self._views()}
            out["views"] = ({**padded, "n_train": put(self.sizes.astype(np.float32), True)},)
            return out
        views = []
        for ids in self.view_groups():
            group = {}
            for name, v in self._views():
                group[name] = None if v is None else put(v.index[ids, : int(v.counts[ids[0]])], everyone(ids))
            views.append(group)
        out["views"] = tuple(views)
        return out

    def _views(self) -> list[tuple[str, View | None]]:
        return [("training", self.training), ("evaluation", self.evaluation)]

    def epoch_keys(self, key: jax.Array, epoch: int) -> jax.Array:
        """The epoch's shuffle key(s): the run's ``fold_in(key, e)`` (shared), or each member's (K,)."""
        if self.order == "shared":
            return jax.random.fold_in(key, epoch)
        return jax.vmap(lambda k: jax.random.fold_in(k, epoch))(self.keys)

    def shared_sets(self) -> tuple[tuple[int, np.ndarray, int], ...] | None:
        """The members that see the same mini-batches, for ``vectorize="wide"``: ``(group, members, row)`` per
        distinct training set of each group (``row``: the set's row in the group's ``index``), when every member
        shuffles with the run's key (``"shared"`` order); None otherwise. With k-fold cross-validation: one
        entry per fold, holding that fold's settings."""
        if self.order != "shared":
            return None
        out = []
        for g, group in enumerate(self.groups):
            if group.index is None:
                out.append((g, group.members, -1))
                continue
            _, first, inverse = np.unique(group.index, axis=0, return_index=True, return_inverse=True)
            inverse = np.asarray(inverse).reshape(-1)
            for u in np.argsort(first):  # in order of first appearance
                out.append((g, group.members[inverse == u], int(first[u])))
        return tuple(out)

    def wide(self) -> bool:
        """Whether ``vectorize="wide"`` applies: the members share their sets in groups of two or more."""
        sets = self.shared_sets()
        return sets is not None and min(len(m) for _, m, _ in sets) >= 2

    def member_epoch_key(self, key: jax.Array, i: int, epoch: int) -> jax.Array:
        """Member ``i``'s shuffle key of epoch ``epoch`` (for the step-by-step replay of a diverged member)."""
        return jax.random.fold_in(key if self.order == "shared" else self.keys[i], epoch)

    def member_index(self, i: int) -> np.ndarray | None:
        """Member ``i``'s training indices into the shared arrays (None: the whole set, as it is)."""
        for g in self.groups:
            hit = np.flatnonzero(g.members == i)
            if hit.size:
                return None if g.index is None else g.index[hit[0]]
        raise JregError(f"no member {i}")

    def member_plan(self, i: int) -> EpochPlan:
        """The epoch plan of member ``i``'s group (its training set's size)."""
        return next(g.plan for g in self.groups if np.any(g.members == i))

    def meta(self) -> dict[str, Any]:
        """What a checkpoint records (a resume with other settings is refused)."""
        return {"order": self.order, "resample": self.resample, "kind": self.kind, "digest": self.digest}


def check_order(data_order: Any, resample: Any) -> None:
    if data_order not in DATA_ORDER:
        raise JregError(f"data_order must be one of {DATA_ORDER}, got {data_order!r}")
    if resample not in RESAMPLE:
        raise JregError(f"resample must be None or 'bootstrap', got {resample!r}")


def _digest(sets: Sequence[np.ndarray | None], views: Sequence[View | None]) -> str:
    h = hashlib.sha256()
    for s in sets:
        h.update(b"-" if s is None else np.ascontiguousarray(s, np.int64).tobytes() + b"|")
    for v in views:
        h.update(b"-" if v is None else np.ascontiguousarray(v.index[v.weight > 0], np.int64).tobytes() + b"|")
    return h.hexdigest()[:32]


def make_members(
    *,
    key: jax.Array,
    models: int,
    n: int,
    batch_size: int,
    partial_batch: str,
    data_order: str = "shared",
    resample: str | None = None,
    train_sets: Sequence[np.ndarray] | None = None,
    evaluation_sets: Sequence[np.ndarray] | None = None,
    out_of_bag_evaluation: bool = False,
    kind: str | None = None,
) -> Members | None:
    """The run's :class:`Members`, or None when every member shares data and order (the plain sweep).

    ``train_sets``/``evaluation_sets``: explicit index sets, one per member (cross-validation); else the
    bootstrap draws (``resample="bootstrap"``) or the whole set. ``out_of_bag_evaluation``: each member
    measures the examples its bootstrap sample left out."""
    check_order(data_order, resample)
    if resample is not None and train_sets is not None:
        raise JregError("resample='bootstrap' draws each member's training set; it cannot be combined with folds")
    if out_of_bag_evaluation and resample != "bootstrap":
        raise JregError(
            f"evaluation={OUT_OF_BAG!r} measures each member on the examples its bootstrap sample left out: "
            "it needs resample='bootstrap'"
        )
    if data_order == "shared" and resample is None and train_sets is None and evaluation_sets is None:
        return None
    keys = member_keys(key, models)
    if resample == "bootstrap":
        train_sets = [bootstrap_indices(keys[i], n) for i in range(models)]
        if out_of_bag_evaluation:
            evaluation_sets = [out_of_bag(s, n) for s in train_sets]
            empty = [i for i, s in enumerate(evaluation_sets) if not len(s)]
            if empty:
                raise JregError(
                    f"evaluation={OUT_OF_BAG!r}: the bootstrap samples of members {empty} hold every one of the "
                    f"{n} training examples, leaving nothing out of bag to measure; use more examples or held-out data"
                )
    groups = _groups(train_sets, models, n, batch_size, partial_batch)
    training = View.of(train_sets) if train_sets is not None else None
    evaluation = View.of(evaluation_sets) if evaluation_sets is not None else None
    kind = kind or ("bootstrap" if resample else "indices" if train_sets is not None else "order")
    digest = _digest(list(train_sets or [None]), [evaluation])
    return Members(data_order, resample, keys, groups, training, evaluation, kind, digest)


def _groups(train_sets, models: int, n: int, batch_size: int, partial_batch: str) -> tuple[Group, ...]:
    """The members grouped by training-set size (in order of first appearance), each with its plan."""
    if train_sets is None:
        return (Group(np.arange(models), None, make_plan(n, batch_size, partial_batch)),)
    sizes = [len(s) for s in train_sets]
    groups = []
    for size in dict.fromkeys(sizes):
        members = np.asarray([i for i, s in enumerate(sizes) if s == size], np.int64)
        if batch_size > size:
            raise JregError(
                f"batch_size must be at most the smallest member's number of training examples ({size}), "
                f"got {batch_size}"
            )
        index = np.stack([np.asarray(train_sets[i], np.int32) for i in members])
        groups.append(Group(members, index, make_plan(size, batch_size, partial_batch)))
    return tuple(groups)


def _out_of_bag(evaluation: Any) -> tuple[Any, bool]:
    """``(evaluation, out_of_bag)``: ``"out_of_bag"`` (or an :class:`Evaluation` of it) recognized."""
    if isinstance(evaluation, str) and evaluation == OUT_OF_BAG:
        return Evaluation(None), True
    if isinstance(evaluation, Evaluation) and isinstance(evaluation.data, str) and evaluation.data == OUT_OF_BAG:
        return dataclasses.replace(evaluation, data=None), True
    if isinstance(evaluation, str):
        raise JregError(f"evaluation must be held-out data, a jreg.Evaluation or {OUT_OF_BAG!r}, got {evaluation!r}")
    return evaluation, False


def prepare(train, evaluation, key, models, batch_size, partial_batch, data_order, resample, sets,
            vectorize) -> tuple[Any, Any, Members | None]:  # fmt: skip
    """A sweep's per-member data checked and made before any work: ``(train, evaluation, members)``.

    ``train`` comes back checked (device arrays) when members have their own data; ``evaluation`` is what
    :func:`jreg.train.setup.prepare` checks (a member's own evaluation examples: a few training examples stand
    for them, to probe the shapes and choose the series; :func:`attach` drops them)."""
    evaluation, oob = _out_of_bag(evaluation)
    check_order(data_order, resample)
    if data_order == "shared" and resample is None and sets is None and not oob:
        return train, evaluation, None
    if stream.is_stream(train):
        raise JregError(
            "per-member data (data_order='per_member', resample=, cross-validation folds) needs in-memory "
            "training data: each member gathers its own examples from the shared arrays; a stream is not held"
        )
    train = check_data(train, "train")
    n = data_size(train)
    sets = sets or {}
    train_sets, evaluation_sets, kind = sets.get("train"), sets.get("evaluation"), sets.get("kind")
    members = make_members(
        key=key,
        models=models,
        n=n,
        batch_size=batch_size,
        partial_batch=partial_batch,
        data_order=data_order,
        resample=resample,
        train_sets=train_sets,
        evaluation_sets=evaluation_sets,
        out_of_bag_evaluation=oob,
        kind=kind,
    )
    if vectorize == "wide" and members is not None and not members.wide():
        raise JregError(
            "vectorize='wide' needs mini-batches shared by the members: with per-member data only members that "
            "train on the same set in the same order share them (cross-validation's settings of one fold); "
            f"data_order={data_order!r}, resample={resample!r} gives each member its own; use vectorize='vmap', "
            "'map' or 'auto'"
        )
    if members is not None and members.evaluation is not None:
        schedule = as_evaluation(evaluation)
        if schedule.data is not None:
            raise JregError(
                "evaluation: each member measures its own held-out examples here (out of bag or its fold); "
                "pass no evaluation data, or a jreg.Evaluation without data for metrics and batch size"
            )
        evaluation = dataclasses.replace(schedule, data=jax.tree.map(lambda a: a[: min(n, 2)], train))
    return train, evaluation, members


def attach(setup: Any, members: Members | None, sets: dict[str, Any] | None = None) -> Any:
    """The run's :class:`jreg.train.setup.Setup` with its members (their own evaluation sets replace the
    stand-in evaluation data); the series ``sets["series"]`` names checked to be measured, before any work."""
    series = (sets or {}).get("series")
    if series is not None and series not in setup.monitor.wanted:
        raise JregError(f"monitor={series!r} is not measured in this run: {setup.monitor.fix(series)}")
    if members is None:
        return setup
    held_out = None if members.evaluation is not None else setup.evaluation
    return dataclasses.replace(setup, evaluation=held_out, members=members)


def meta(members: Members | None) -> dict[str, Any]:
    """What a sweep checkpoint records of its data (the shared default without per-member data)."""
    return dict(SHARED) if members is None else members.meta()
