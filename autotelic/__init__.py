"""autotelic: reinforcement learning in which the agent makes its own reward."""

import os as _os

__version__ = "0.1.0"

# XLA's concurrency-optimized scheduler on the CPU can deadlock (every thread waiting, no work
# done) on programs that run independent computations side by side, e.g. jitting network init
# together with a vmapped env reset for 2 seeds x 32 envs (jaxlib 0.10.2, 2 cores). Turning it
# off costs little and only affects the CPU backend; an explicit user setting wins.
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"
if _FLAG not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_FLAG}=false".strip()
