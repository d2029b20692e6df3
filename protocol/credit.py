"""The credit rule, shared so that the node's estimates use the coordinator's own formula.

Credit is BOINC's cobblestone: 1 credit = 4.32e11 FLOPs (200 credits a day for a sustained 1 GFLOPS).
A report's credit is its accepted samples × the task's measured FLOPs per sample (forward + backward).
Only the coordinator grants credit; a node may only estimate what its unacknowledged reports should earn.
"""

FLOPS_PER_CREDIT = 4.32e11  # one BOINC cobblestone: 200 credits/day for a sustained 1 GFLOPS
CREDIT_RULE = "flops-v1"  # the name every grant row records: samples × flops_per_sample ÷ FLOPS_PER_CREDIT


def credit_for(samples: int, flops_per_sample: int) -> float:
    """Rule CREDIT_RULE ("flops-v1"). A new rule gets a new name, so old grants keep explaining themselves."""
    return samples * flops_per_sample / FLOPS_PER_CREDIT
