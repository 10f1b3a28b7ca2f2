"""Convert a profile store to another reference normalisation scheme, from the raw windows it keeps.

    latpred db renormalise latpred-out/profiles.sqlite --scheme working-set-v1

Unloaded CPU samples keep every raw window and the reference reading after it, so a store profiled
with one scheme (:mod:`latpred.profiling.reference`) can be re-expressed in another exactly, and back;
a predictor trained afterwards records the store's scheme and whole models measured for it use the same.
"""

from __future__ import annotations

from ..errors import SpecError
from ..ops import get_op
from ..spec import ModuleSpec
from .devices import STATISTICS, TimingProtocol, robust_stat
from .reference import check_scheme, reference_exponent
from .store import ProfileStore

__all__ = ["renormalise_store"]


def renormalise_store(store: ProfileStore, scheme: str, statistic: str = TimingProtocol.normalised_statistic) -> dict[int, int]:
    """Re-express every device's normalised samples of ``store`` under ``scheme``; returns samples rewritten per device id.

    ``statistic`` reduces a sample's normalised windows (the profiler's: the median).
    """
    check_scheme(scheme)
    if statistic not in STATISTICS:
        raise SpecError(f"unknown statistic {statistic!r}; expected one of {STATISTICS}")

    def exponent_of(spec: ModuleSpec) -> float:
        return reference_exponent(get_op(spec.op).costs(spec).bytes_moved(spec.dtype), scheme)

    ids = [dev["id"] for dev in store.devices()]
    return {d: store.renormalise(d, scheme, exponent_of, lambda w: robust_stat(w, statistic)) for d in ids}
