"""How torch's OpenMP threads wait between parallel regions, chosen from the machine's load.

libgomp's default has a thread that finishes its share of a parallel region spin for a
while (GOMP_SPINCOUNT 300,000) before it sleeps. Two measurements pull opposite ways on
the 2-core AMD EPYC:

- Busy machine (cores shared with other jobs): the spinning threads take turns away from
  the threads doing the work, and every parallel region waits for a descheduled thread.
  `multigrain embed` of 8 small images with the built-in model, load average 3.4-5.3 from
  other jobs (docs/benchmarks/embed_startup.json, the code before the start-up changes):
  loading and folding the model took 1.09 s and the first batch 0.67 s; with passive
  waiting (OMP_WAIT_POLICY=PASSIVE) 0.24 s and 0.07 s.
- Quiet machine: passive waiting costs a wake-up in each of the ~150 parallel regions of a
  forward. `benchmarks/embed_pipeline.py --sets small --resolutions 224` (ResNet-50, 96
  built-in photos, docs/benchmarks/embed_pipeline_wait_policy/): the default e2e ran at
  29.3 / 29.4 images/s with PASSIVE against 36.3 / 36.2 with ACTIVE and 35.5 / 37.7 with
  libgomp's default spin (two interleaved rounds), and the batch-1 fp32 baseline at 11.8 /
  11.3 against 17.8 / 17.9: a fifth of the throughput lost.

So the `multigrain` command chooses at start, before torch loads libgomp (which reads the
setting once): PASSIVE when the 1-minute load average is at least the number of cores it
may use (the machine is busy before the job adds its own threads), else libgomp's default.
A value the user set wins (``OMP_WAIT_POLICY=ACTIVE`` or ``PASSIVE``); `multigrain info`
shows what was chosen.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from multigrain.runtime.machine import usable_cores

SETTING = "OMP_WAIT_POLICY"
BUSY_POLICY = "PASSIVE"
LIBGOMP_DEFAULT = "libgomp default"


def choose_wait_policy(
    environment: MutableMapping[str, str] | None = None,
    *,
    load: float | None = None,
    cores: int | None = None,
) -> str:
    """Set OMP_WAIT_POLICY=PASSIVE in `environment` (default os.environ) when the machine is
    busy (1-minute load average >= usable cores) and the user has not set it.

    Returns the policy in effect: the user's value, "PASSIVE", or "libgomp default" (the
    variable left unset). Call it before torch is imported: a process that has loaded torch
    keeps the policy it started with (its subprocesses get the new one).
    """
    env = os.environ if environment is None else environment
    if env.get(SETTING):
        return env[SETTING]
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # unavailable: treat the machine as quiet
            load = 0.0
    if load >= (cores if cores is not None else usable_cores()):
        env[SETTING] = BUSY_POLICY
        return BUSY_POLICY
    return LIBGOMP_DEFAULT
