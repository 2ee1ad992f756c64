"""The serving engine: what it does beyond the kernels, and what it decides when a scenario leaves a knob unset.

`engine:` in a scenario names one of `ENGINES` (default `vllm`). Precedence for every knob: an explicit
scenario key, then the engine's value for the GPU, then the global default; summary.json shows them resolved.

vLLM (v0.11.0 as `vllm serve` starts, usage context OPENAI_API_SERVER): `EngineArgs._set_default_args` in
`vllm/engine/arg_utils.py` gives GPUs with at least 70 GiB of memory, A100s excepted, `max_num_batched_tokens`
8192 and `max_num_seqs` 1024, and every other GPU 2048 and 256, capping `max_num_seqs` at
`max_num_batched_tokens`; V1 always chunks prefills; `gpu_memory_utilization` 0.9 (`config/cache.py`);
`block_size` 16 on CUDA (`platforms/cuda.py`); the KV cache is paged and allocated on demand, with
preemption by recompute. Its all-reduce is its own where its rules allow (`hardware.collectives.engine_allreduce`);
a pipeline hand-off sends the hidden state and the residual (`model_executor/models/llama.py`:
`IntermediateTensors({"hidden_states": ..., "residual": ...})` on every stage but the last).

SGLang (0.5.x, `python/sglang/srt/server_args.py`, `ServerArgs` GPU-memory settings): `chunked_prefill_size`
2048 below 35 GiB of GPU memory, 4096 below 60 GiB, 8192 below 160 GiB, 16384 above; `max_running_requests`
at least 2048 (`model_runner`: clamp(KV tokens / context × 512, 2048, 4096); splitsim takes the floor);
`page_size` 1; the KV cache on demand. Its custom all-reduce is derived from vLLM's
(`srt/distributed/device_communicators/custom_all_reduce.py`); a hand-off sends `PPProxyTensors` of the
hidden state and the residual (`srt/models/llama.py`). SGLang runs a prefill batch apart from the decodes
unless `--enable-mixed-chunk`; splitsim's `chunked` policy mixes them: an approximation (docs/model.md).

TRT-LLM (1.x, `tensorrt_llm/llmapi/llm_args.py`): `max_batch_size` 2048, `max_num_tokens` 8192,
`KvCacheConfig.free_gpu_memory_fraction` 0.9 (of the memory free after the weights; splitsim reads it as a
fraction of the whole), `tokens_per_block` 32, the capacity scheduler `GUARANTEED_NO_EVICT` (reserves a
request's whole KV at admission). Its own all-reduce strategies are not modelled: NCCL's figures; its hand-off
is assumed to carry the residual as vLLM's and SGLang's do. Chunked
prefill is off by default there; splitsim's `chunked` policy with TRT-LLM's budget stands in (docs/model.md).

The LM head is vocab-parallel: each TP rank computes its slice of the logits, and every engine all-gathers them
over the TP group before sampling, `tokens sampled × vocab × 2` bytes per step on the last stage (vLLM
`model_executor/layers/logits_processor.py` `_gather_logits`, all-gather since `Platform.use_all_gather` is true
under V1, `platforms/interface.py`; SGLang `srt/layers/logits_processor.py`, `do_tensor_parallel_all_gather`;
TRT-LLM's `LMHead(gather_output=True)`, taken to be the same). `ideal` leaves it out.

vLLM pads a batch of up to 512 tokens to its next CUDA-graph size (`ServingEngine.graph_sizes`): the GEMMs,
element-wise kernels and all-reduces run on the padded token count (attention and the LM head on the real
sequences). SGLang's graphs and every engine's host time per step are not modelled yet.

`ideal`: the physics alone — NCCL for every all-reduce, a hand-off of the hidden state only, no logits gather — with
vLLM's knobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from splitsim.hardware.gpu import GpuSpec
from splitsim.scenario import Memory, Scheduler
from splitsim.sim.scheduler import KvAllocation, Policy, SchedulerConfig

GIB = 2.0**30
LARGE_GPU_BYTES = 70 * GIB  # vLLM: `device_memory >= 70 * GiB_bytes and "a100" not in device_name`
EngineName = Literal["vllm", "sglang", "trtllm", "ideal"]


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    gpu_utilization: float
    block_size: int
    kv_allocation: KvAllocation


@dataclass(frozen=True, slots=True)
class ServingEngine:
    """One engine's behaviour beyond the kernels and its default knobs (the module docstring cites each)."""

    name: EngineName
    custom_allreduce: bool  # its own all-reduce where its rules allow; NCCL otherwise
    handoff_tensors: int  # hidden-size tensors a pipeline hand-off sends per token
    policy: Policy
    gpu_utilization: float
    block_size: int
    kv_allocation: KvAllocation
    cuda_graphs: bool = False  # batches padded up to the next captured size (`graph_sizes`)
    logits_gather: bool = False  # the LM head's vocab-parallel logits all-gathered over the TP group each step

    def graph_sizes(self, max_num_seqs: int, max_batched_tokens: int) -> tuple[int, ...]:
        """The token counts the engine captures CUDA graphs for; a batch of at most the largest runs padded
        up to the next one, a larger one eagerly. vLLM (`VllmConfig._set_cudagraph_sizes`, vllm/config/vllm.py;
        padding in `v1/cudagraph_dispatcher.py`): [1, 2, 4] + multiples of 8 below 256 + multiples of 16 up to
        min(2 × max_num_seqs, 512, max_num_batched_tokens), for decode batches (full graphs) and mixed ones
        (piecewise, the default FULL_AND_PIECEWISE mode) alike. Other engines: none modelled."""
        if not self.cuda_graphs:
            return ()
        largest = min(2 * max_num_seqs, 512, max_batched_tokens)
        sizes = [1, 2, 4, *range(8, 256, 8), *range(256, largest + 1, 16)]
        return tuple(size for size in sizes if size <= largest)

    def budget(self, gpu: GpuSpec) -> tuple[int, int]:
        """(max_batched_tokens, max_num_seqs) the engine picks for this GPU."""
        if self.name == "sglang":
            memory = gpu.memory_bytes
            tokens = 2048 if memory < 35 * GIB else 4096 if memory < 60 * GIB else 8192 if memory < 160 * GIB \
                else 16384
            return tokens, 2048
        if self.name == "trtllm":
            return 8192, 2048
        large = gpu.memory_bytes >= LARGE_GPU_BYTES and "a100" not in gpu.name.lower()
        return (8192, 1024) if large else (2048, 256)


ENGINES: dict[str, ServingEngine] = {
    "vllm": ServingEngine("vllm", True, 2, "chunked", 0.9, 16, "on_demand", cuda_graphs=True, logits_gather=True),
    "sglang": ServingEngine("sglang", True, 2, "chunked", 0.9, 1, "on_demand", logits_gather=True),
    "trtllm": ServingEngine("trtllm", False, 2, "chunked", 0.9, 32, "reserve", logits_gather=True),
    "ideal": ServingEngine("ideal", False, 1, "chunked", 0.9, 16, "on_demand"),
}


def resolve_scheduler(scheduler: Scheduler, memory: Memory, gpu: GpuSpec, engine: ServingEngine) -> SchedulerConfig:
    default_tokens, default_seqs = engine.budget(gpu)
    tokens = scheduler.max_batched_tokens if scheduler.max_batched_tokens is not None else default_tokens
    seqs = scheduler.max_num_seqs if scheduler.max_num_seqs is not None else min(default_seqs, tokens)
    policy = scheduler.chosen_policy or engine.policy
    return SchedulerConfig(policy, seqs, tokens, resolve_memory(memory, engine).kv_allocation)


def resolve_memory(memory: Memory, engine: ServingEngine) -> MemoryConfig:
    return MemoryConfig(
        engine.gpu_utilization if memory.gpu_utilization is None else memory.gpu_utilization,
        engine.block_size if memory.block_size is None else memory.block_size,
        engine.kv_allocation if memory.kv_allocation is None else memory.kv_allocation,
    )
