"""The choices a TDoA job names: where its emitter is expected and how its signal travelled.

Kept apart from the search and the skywave path that act on them (numpy and scipy) so that the
job contract, the shim and the command line read them without loading either.
"""

from __future__ import annotations

from typing import Literal, get_args

Expectation = Literal["anywhere", "among_receivers"]
"""Where the emitter is expected: ``anywhere`` (the likelihood alone decides between places
that explain the delays alike), or ``among_receivers`` (inside their hull: of such places, the
one among the receivers is taken when exactly one lies there)."""
EXPECTATIONS: tuple[str, ...] = get_args(Expectation)

Propagation = Literal["ground", "skywave"]
"""How the signal reached the receivers: along the ground (ground wave), or by one hop off an
ionospheric layer whose height is not known (skywave, as at HF beyond ~100 km)."""
PROPAGATIONS: tuple[str, ...] = get_args(Propagation)
