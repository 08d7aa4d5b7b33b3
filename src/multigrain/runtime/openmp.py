"""How torch's OpenMP threads wait between parallel regions: asleep, unless told otherwise.

libgomp's default has a thread that finishes its share of a parallel region spin for a
while before it sleeps. On a machine whose cores other processes also use (a shared
2-core runner, several jobs at once), the spinning threads take turns away from the
threads doing the work, and every parallel region waits for a descheduled thread: the
first forward of the built-in model on 8 small images took 0.3-0.7 s instead of 0.06-0.1 s
with passive waiting, and loading plus folding the model 0.5-1.3 s instead of 0.15 s
(2-core AMD EPYC, load average 4-7; benchmarks/embed_startup.py --env
OMP_WAIT_POLICY=PASSIVE measures both ways in one run). Waking a sleeping thread costs
microseconds per parallel region, well under a percent of a batch's forward.

The `multigrain` command sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is loaded (libgomp
reads it once, when torch loads it); a value the user set wins (``OMP_WAIT_POLICY=ACTIVE``
for a machine of one's own).
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
