"""How torch's OpenMP threads wait between parallel regions: asleep, unless told otherwise.

libgomp's default has a thread that finishes its share of a parallel region spin for a
while before it sleeps. On a machine whose cores other processes also use (a shared
2-core runner, several jobs at once), the spinning threads take turns away from the
threads doing the work, and every parallel region waits for a descheduled thread. In
`multigrain embed` of 8 small images with the built-in model (2-core AMD EPYC, load
average 3.4-5.3 from other jobs, docs/benchmarks/embed_startup.json, the code before
these start-up changes), loading and folding the model took 1.09 s and the first batch
0.67 s; with passive waiting 0.24 s and 0.07 s. Waking a sleeping thread costs a few
microseconds per parallel region (an estimate, not measured on an idle machine: about
150 regions in a ResNet-50 forward that takes 0.4 s at batch 16).

The `multigrain` command sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is loaded (libgomp
reads it once, when torch loads it); a value the user set wins (``OMP_WAIT_POLICY=ACTIVE``
to have the threads spin).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SETTING = "OMP_WAIT_POLICY"
DEFAULT_POLICY = "PASSIVE"


def prefer_passive_waiting(environment: MutableMapping[str, str] | None = None) -> str:
    """Set OMP_WAIT_POLICY to PASSIVE in `environment` (default os.environ) unless it is set.

    Returns the policy now set. Call it before torch is imported: a process that has
    loaded torch keeps the policy it started with (its subprocesses get the new one).
    """
    env = os.environ if environment is None else environment
    return env.setdefault(SETTING, DEFAULT_POLICY)
