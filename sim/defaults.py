"""What the serving engine decides when a scenario leaves a scheduler or memory knob unset.

The values follow vLLM v0.11.0 as `vllm serve` starts (usage context OPENAI_API_SERVER):
`EngineArgs._set_default_args` in `vllm/engine/arg_utils.py` gives GPUs with at least 70 GiB of memory,
A100s excepted, `max_num_batched_tokens` 8192 and `max_num_seqs` 1024, and every other GPU 2048 and 256,
capping `max_num_seqs` at `max_num_batched_tokens`; V1 always chunks prefills; `gpu_memory_utilization`
0.9 (`config/cache.py`); `block_size` 16 on CUDA (`platforms/cuda.py`); the KV cache is paged and
allocated on demand, with preemption by recompute.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitsim.hardware.gpu import GpuSpec
from splitsim.scenario import Memory, Scheduler
from splitsim.sim.scheduler import KvAllocation, SchedulerConfig

GIB = 2.0**30
LARGE_GPU_BYTES = 70 * GIB  # vLLM: `device_memory >= 70 * GiB_bytes and "a100" not in device_name`


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    gpu_utilization: float
    block_size: int
    kv_allocation: KvAllocation


def resolve_scheduler(scheduler: Scheduler, memory: Memory, gpu: GpuSpec) -> SchedulerConfig:
    large = gpu.memory_bytes >= LARGE_GPU_BYTES and "a100" not in gpu.name.lower()
    tokens = scheduler.max_batched_tokens if scheduler.max_batched_tokens is not None else (8192 if large else 2048)
    seqs = scheduler.max_num_seqs if scheduler.max_num_seqs is not None else min(1024 if large else 256, tokens)
    policy = scheduler.chosen_policy or "chunked"
    return SchedulerConfig(policy, seqs, tokens, resolve_memory(memory).kv_allocation)


def resolve_memory(memory: Memory) -> MemoryConfig:
    return MemoryConfig(
        0.9 if memory.gpu_utilization is None else memory.gpu_utilization,
        16 if memory.block_size is None else memory.block_size,
        "on_demand" if memory.kv_allocation is None else memory.kv_allocation,
    )
