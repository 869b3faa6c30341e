"""Weight and bias initializers for :func:`jreg.mlp`.

Every initializer has the ``jax.nn.initializers`` signature
``init(key, shape, dtype) -> array``, so any of JAX's own
(``jax.nn.initializers.glorot_normal()``, ``he_normal()``, ``lecun_normal()``,
``zeros``...) can be passed to :func:`jreg.mlp` as well.

Weight matrices have shape ``(n_in, n_out)``, so the fan-in is ``shape[0]``.

Nielsen's two schemes (*Neural Networks and Deep Learning*, chapter 3):

* ``default``: weights ``w ~ N(0, 1/n_in)`` (:data:`nielsen_weight`),
  biases ``b ~ N(0, 1)`` (:data:`standard_normal`). This is jreg's default.
* ``large``: weights and biases ``~ N(0, 1)`` (:data:`standard_normal` for
  both); the saturating scheme the book starts from.
"""

from __future__ import annotations

import jax

#: ``w ~ N(0, 1/n_in)``: Gaussian with standard deviation ``1/sqrt(fan_in)``, untruncated.
nielsen_weight = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=-2, out_axis=-1)

#: ``N(0, 1)`` for every entry: Nielsen's biases, and his "large" weights.
standard_normal = jax.nn.initializers.normal(1.0)

#: Glorot/Xavier normal, ``Var = 2 / (n_in + n_out)`` (truncated normal, as in JAX).
glorot_normal = jax.nn.initializers.glorot_normal()

#: He/Kaiming normal, ``Var = 2 / n_in`` (truncated normal, as in JAX), for ReLU layers.
he_normal = jax.nn.initializers.he_normal()

#: All zeros (e.g. for biases with Glorot/He weights).
zeros = jax.nn.initializers.zeros

#: Nielsen's schemes by name, as ``(w_init, b_init)`` pairs: ``mlp(sizes, init="large")``.
SCHEMES = {
    "default": (nielsen_weight, standard_normal),
    "large": (standard_normal, standard_normal),
    "glorot": (glorot_normal, zeros),
    "he": (he_normal, zeros),
}
