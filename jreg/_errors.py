"""Errors raised by jreg for bad input.

Every error jreg raises on purpose is a :class:`JregError`, so a caller can
catch them all at once; each also derives from the matching built-in
(``ValueError`` or ``TypeError``) so ordinary ``except ValueError`` code keeps
working.
"""

from __future__ import annotations


class JregError(ValueError):
    """Bad input to a jreg function: the message names the argument and what was expected."""


class JregTypeError(JregError, TypeError):
    """An argument of the wrong type or dtype."""


class JregWarning(UserWarning):
    """Something jreg worked around and wants seen: a damaged checkpoint skipped, a temporary file left alone."""
