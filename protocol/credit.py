"""The credit rule, shared so that the node's estimates use the coordinator's own formula.

Credit is BOINC's cobblestone: 1 credit = 4.32e11 FLOPs (200 credits a day for a sustained 1 GFLOPS).
A report's credit is its accepted samples × the task's measured FLOPs per sample (forward + backward).
Only the coordinator grants credit; a node may only estimate what its unacknowledged reports should earn.

Recent average credit (RAC) is BOINC's too: credits per day, an exponentially decaying average with a 7-day
half-life, `avg = avg·w + (1−w)·credit/Δdays`, `w = exp(−Δt·ln2/T½)`; see `recent_average`.
"""

import math
from typing import Optional

SECONDS_PER_DAY = 86400.0
RAC_HALF_LIFE_SECONDS = 7 * SECONDS_PER_DAY
FLOPS_PER_CREDIT = 4.32e11  # one BOINC cobblestone: 200 credits/day for a sustained 1 GFLOPS
CREDIT_RULE = "flops-v1"  # the name every grant row records: samples × flops_per_sample ÷ FLOPS_PER_CREDIT


def credit_for(samples: int, flops_per_sample: int) -> float:
    """Rule CREDIT_RULE ("flops-v1"). A new rule gets a new name, so old grants keep explaining themselves."""
    return samples * flops_per_sample / FLOPS_PER_CREDIT


def recent_average(average: float, updated_at: Optional[float], credit: float, now: float,
                   half_life: float = RAC_HALF_LIFE_SECONDS) -> float:  # fmt: skip
    """The recent average credit (credits/day) once `credit` arrives at `now` (POSIX seconds), given the average
    last updated at `updated_at` (None: never). With credit=0 it is the decayed value to show an idle volunteer.

    BOINC's `update_average`: when Δt is so short that 1−w vanishes, (1−w)/Δdays tends to ln2/T½ (in days), which
    is also how the first credit (no previous update) counts.
    """
    elapsed = 0.0 if updated_at is None else max(now - updated_at, 0.0)
    weight = math.exp(-elapsed * math.log(2) / half_life)
    average = 0.0 if updated_at is None else average * weight
    if 1.0 - weight > 1e-6:
        return average + (1.0 - weight) * credit / (elapsed / SECONDS_PER_DAY)
    return average + credit * math.log(2) * SECONDS_PER_DAY / half_life
