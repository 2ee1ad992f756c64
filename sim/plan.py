"""The plan: a scenario resolved into a deployment of pools, each of placed GPU groups, per-stage layers, memory
and KV capacity; the engine reads the plan and never the scenario.

A pool is a set of identical replicas with one layout, scheduler and KV cache, on its own ordered list of the
cluster's GPUs; an aggregated deployment (`parallel`, or `deployment: {kind: aggregated}`) is one pool of role
`both`, on GPUs 0…tp·pp·dp−1. Within a pool, GPUs are placed in the order `order` names, TP innermost, so a TP
group takes adjacent GPUs of one node whenever it fits in one. The replicas of every pool are numbered in one
sequence (`Plan.replicas`), which is how the engine's records key them.

Layout and memory checks live here (the schema's are in `splitsim.scenario`); each raises one `ScenarioError`
line with the numbers, naming the pool's field as the user wrote it (`parallel.tp` or `deployment.tp`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from splitsim.errors import ActivationsDoNotFit, ScenarioError
from splitsim.files import shown
from splitsim.hardware.catalog import cluster_files, load_cluster
from splitsim.hardware.cluster import ClusterSpec
from splitsim.hardware.profile import HardwareProfile, apply_profile, load_profile
from splitsim.models.ops import Sharding
from splitsim.models.precision import ACTIVATION_BYTES, BYTES_PER_ELEMENT, compute_dtype
from splitsim.models.spec import ModelSpec, load_model, pp_layer_counts
from splitsim.scenario import (
    Memory,
    Moe,
    Parallel,
    Precision,
    RouterPolicy,
    Scenario,
    Scheduler,
    describe_validation_error,
    overridden,
)
from splitsim.sim.batching import BatchPolicy
from splitsim.sim.defaults import ENGINES, ServingEngine, resolve_memory, resolve_scheduler
from splitsim.sim.kv_cache import KvManager, PagedKvManager, WindowedKvManager, stage_kv_tokens
from splitsim.sim.workload import RequestStream

GIB = 2.0**30
MAX_REQUESTS = 10_000_000  # measured: 10^6 requests take ~140 s and 430 MiB (benchmarks/bench_engine.py)
MAX_ARRIVAL_S = 1e9  # beyond it, float64 seconds resolve no better than ~0.1 µs: kernel times would blur


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


@dataclass(frozen=True)
class Stage:
    index: int
    first_layer: int
    num_layers: int
    weight_bytes_per_gpu: float
    kv_bytes_per_token_per_gpu: float

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.first_layer + self.num_layers)


Granularity = Literal["stage", "layer"]
PoolRole = Literal["both"]  # prefill and decode pools come with disaggregated serving (issue 24)


class Pool:
    """One pool's replicas, resolved: layout, GPUs, scheduler, memory, sharding and KV capacity. Everything the
    engine needs of it that does not change during a run."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, engine: ServingEngine, layout: Parallel,
                 gpus: tuple[int, ...], scheduler: Scheduler, memory: Memory, precision: Precision, moe: Moe,
                 index: int = 0, role: PoolRole = "both", field: str = "parallel") -> None:
        self.index, self.role, self.field = index, role, field
        self.model = model
        self.cluster = cluster
        self.tp, self.pp, self.dp, self.ep = layout.tp, layout.pp, layout.dp, layout.ep
        self.order = layout.order
        self.gpus = gpus  # the cluster's GPUs this pool occupies, in placement order
        self.engine = engine
        self.scheduler = resolve_scheduler(scheduler, memory, cluster.gpu, engine)
        self.batch_policy = BatchPolicy(self.scheduler.policy)
        sizes = engine.graph_sizes(self.scheduler.max_num_seqs, self.scheduler.max_batched_tokens)
        # padded_tokens[t]: the token count a batch of t runs as (its CUDA graph's); beyond the list, t itself
        self.padded_tokens: tuple[int, ...] = tuple(
            next(size for size in sizes if size >= t) for t in range(sizes[-1] + 1)) if sizes else ()
        resolved_memory = resolve_memory(memory, engine)
        self.gpu_utilization = resolved_memory.gpu_utilization
        self.block_size = resolved_memory.block_size
        weights = precision.weights or model.default_weight_dtype
        kv = precision.kv_cache or ("fp16" if weights == "fp16" else "bf16")
        # The experts span the replicas (attention data-parallel, lockstep) when EP is wider than one TP group.
        self.attention_dp = self.dp > 1 and self.ep > 1 and self.tp % self.ep != 0
        # an explicit precision.weights overrides the checkpoint's, experts' own format included
        experts = model.expert_weight_dtype if precision.weights is None else None
        gpu = cluster.gpu
        self.sharding = Sharding(self.tp, weights, kv, compute_dtype(weights, gpu.has_fp8, gpu.has_fp4),
                                 self.ep, self.dp if self.attention_dp else 1, moe.imbalance,
                                 moe.redundant_experts, experts,
                                 compute_dtype(experts, gpu.has_fp8, gpu.has_fp4) if experts else None)

    # -- placement -------------------------------------------------------------------------------
    def gpu(self, replica: int, stage: int, rank: int) -> int:
        """The cluster GPU of `rank` in `replica`'s TP group of `stage`."""
        if self.order == "tp-pp-dp":
            return self.gpus[(replica * self.pp + stage) * self.tp + rank]
        return self.gpus[(stage * self.dp + replica) * self.tp + rank]

    def tp_group(self, replica: int, stage: int) -> list[int]:
        return [self.gpu(replica, stage, rank) for rank in range(self.tp)]

    def moe_group(self, replica: int, stage: int) -> list[int]:
        """The GPUs a stage's experts spread over: every replica's TP group under attention-DP, else its own."""
        if not self.attention_dp:
            return self.tp_group(replica, stage)
        return [gpu for r in range(self.dp) for gpu in self.tp_group(r, stage)]

    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp * self.dp

    # -- stages and memory -----------------------------------------------------------------------
    @cached_property
    def stages(self) -> list[Stage]:
        model, sharding, w = self.model, self.sharding, BYTES_PER_ELEMENT[self.sharding.weights]
        # the routed experts in their own format, where the checkpoint quantises them alone: counted as that many
        # parameters of the other weights' size
        expert_scale = (BYTES_PER_ELEMENT[sharding.expert_weights] / w - 1.0) if sharding.expert_weights else 0.0
        stages, first = [], 0
        for index, count in enumerate(pp_layer_counts(model.num_layers, self.pp)):
            params: float = 0.0
            for kind in model.layer_kinds[first:first + count]:
                params += model.layer_params_per_rank(self.tp, kind, ep=self.ep, moe_tp=sharding.moe_tp,
                                                      redundant=sharding.redundant_experts)
                if kind == "moe" and expert_scale:
                    params += expert_scale * model.expert_params_per_rank(self.tp, self.ep, sharding.moe_tp,
                                                                          sharding.redundant_experts)
            if index == 0:
                params += model.vocab_params_per_rank(self.tp)
            if index == self.pp - 1:
                params += model.hidden_size + (0 if model.tie_word_embeddings else model.vocab_params_per_rank(self.tp))
            kv = model.kv_bytes_per_token(self.sharding.kv_cache, self.tp, count)
            stages.append(Stage(index, first, count, params * w, kv))
            first += count
        return stages

    @property
    def usable_bytes_per_gpu(self) -> float:
        return self.cluster.gpu.memory_bytes * self.gpu_utilization

    @property
    def activation_bytes_per_gpu(self) -> float:
        """Peak activation workspace of the largest batch (vLLM profiles a dummy forward pass for it):
        a few hidden-size buffers, the QKV and gate/up outputs of max_batched_tokens tokens, and
        fp32 logits for max_num_seqs sequences."""
        model, tp = self.model, self.tp
        tokens = self.scheduler.max_batched_tokens
        mlp = 2 * model.intermediate_size // tp if "dense" in model.layer_kinds else 0
        if model.moe is not None:  # each token's experts' gate/up outputs, and the router's logits
            mlp = max(mlp, 2 * model.moe.top_k * model.moe.intermediate_size // self.sharding.moe_tp
                      + model.moe.num_experts)
        qkv = (model.num_heads // tp + 2 * model.kv_heads_per_rank(tp)) * model.head_dim
        if model.mla is not None:  # queries, the latent and RoPE key, the keys and values decompressed per head
            m = model.mla
            qkv = model.num_heads // tp * (2 * m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim) + m.latent
        per_token = 4 * model.hidden_size + mlp + qkv
        logits = self.scheduler.max_num_seqs * model.vocab_size / tp * 4
        return tokens * per_token * ACTIVATION_BYTES + logits

    @property
    def weights_bytes_per_gpu(self) -> float:
        return max(stage.weight_bytes_per_gpu for stage in self.stages)

    @cached_property
    def kv_cache_tokens(self) -> int:
        """Tokens of KV cache one replica holds: the tightest stage decides, in whole blocks."""
        block = self.block_size
        free = [self.usable_bytes_per_gpu - s.weight_bytes_per_gpu - self.activation_bytes_per_gpu
                for s in self.stages]
        tokens = min(int(f // s.kv_bytes_per_token_per_gpu) for f, s in zip(free, self.stages))
        return max(0, tokens // block * block)

    @property
    def kv_layers(self) -> tuple[tuple[tuple[int, int], ...], int] | None:
        """((full, sliding or chunked) layers of each stage, positions a local layer keeps) when some layer attends
        locally: its window or chunk plus the partly filled block it starts in."""
        span = self.model.local_span
        if span is None or not self.model.local_layers:
            return None
        local = set(self.model.local_layers)
        stages = tuple((sum(1 for i in stage.layers if i not in local), sum(1 for i in stage.layers if i in local))
                       for stage in self.stages)
        return stages, span + self.block_size - 1

    def kv_tokens_needed(self, tokens: int) -> int:
        """KV cache a request of `tokens` tokens holds, in tokens of every layer (fewer with local layers)."""
        layers = self.kv_layers
        return tokens if layers is None else stage_kv_tokens(tokens, *layers)

    def kv_manager(self) -> KvManager:
        """One PP slot's KV cache, as the engine's scheduler holds it."""
        layers = self.kv_layers
        if layers is None:
            return PagedKvManager(self.kv_blocks_per_slot, self.block_size)
        return WindowedKvManager(self.kv_blocks_per_slot, self.block_size, *layers)

    @property
    def kv_blocks_per_slot(self) -> int:
        """KV blocks of one PP slot: vLLM V0 gives each of its PP virtual engines its own scheduler and
        `num_gpu_blocks // pipeline_parallel_size` blocks (`core/scheduler.py`); with PP = 1, the whole cache."""
        return self.kv_cache_tokens // self.block_size // self.pp

    def max_concurrency(self, tokens_per_request: int) -> float:
        """Requests of `tokens_per_request` tokens one replica's KV cache holds at once, as vLLM logs it at
        start-up (`kv_cache_utils.py`: blocks / ceil(tokens / block_size)), over all PP slots."""
        return self.pp * self.kv_blocks_per_slot / -(-self.kv_tokens_needed(tokens_per_request) // self.block_size)

    # -- checks ----------------------------------------------------------------------------------
    def check_layout(self) -> None:
        model, cluster, tp, pp = self.model, self.cluster, self.tp, self.pp
        if self.num_gpus > cluster.num_gpus:
            raise ScenarioError(
                f"{self.field}: tp×pp×dp = {tp}×{pp}×{self.dp} = {self.num_gpus} GPUs, but cluster "
                f"{cluster.name} has {cluster.num_gpus} GPUs (use at most {cluster.num_gpus})"
            )
        problem = model.tp_problem(tp, self.ep, 1 if self.attention_dp else None)  # spread experts: checked below
        if problem:
            valid = ", ".join(map(str, model.valid_tp()))
            raise ScenarioError(f"{self.field}.tp = {tp}: {model.name}'s {problem} (valid: {valid})")
        if pp > model.num_layers:
            raise ScenarioError(f"{self.field}.pp = {pp} exceeds {model.name}'s {model.num_layers} layers")
        ep = self.ep
        if ep > 1:
            if model.moe is None or "moe" not in model.layer_kinds:
                raise ScenarioError(f"{self.field}.ep = {ep}: {model.name} has no experts (valid: 1)")
            if (tp * self.dp) % ep:
                raise ScenarioError(f"{self.field}.ep = {ep}: the experts spread over a divisor of tp × dp = "
                                    f"{tp * self.dp} GPUs (valid: {_divisors(tp * self.dp)})")
            if self.attention_dp and pp > 1:
                raise ScenarioError(f"{self.field}.pp = {pp}: experts spread over the replicas (ep = {ep}, not a "
                                    f"divisor of tp = {tp}) are modelled without pipeline stages (valid: pp = 1, "
                                    "or ep dividing tp)")
            if model.moe.num_experts % ep:
                raise ScenarioError(f"{self.field}.ep = {ep}: {model.name}'s {model.moe.num_experts} experts do not "
                                    f"spread evenly over {ep} GPUs")
            split = self.sharding.moe_tp
            if model.moe.intermediate_size % split:
                splits = {d: tp // d if tp % d == 0 else tp * self.dp // d for d in range(1, tp * self.dp + 1)
                          if (tp * self.dp) % d == 0 and (tp % d == 0 or pp == 1)}  # ep: each expert's split
                eps = [d for d, ways in splits.items()
                       if model.moe.num_experts % d == 0 and model.moe.intermediate_size % ways == 0]
                raise ScenarioError(f"{self.field}.ep = {ep}: each expert would be split over {split} GPUs, but "
                                    f"{model.name}'s expert intermediate size {model.moe.intermediate_size} does "
                                    f"not split {split} ways (valid: {', '.join(map(str, eps))})")
            if self.attention_dp:
                per_node = sorted({sum(1 for gpu in self.moe_group(0, 0) if cluster.node_of(gpu) == node)
                                   for node in {cluster.node_of(gpu) for gpu in self.moe_group(0, 0)}})
                if len(per_node) > 1:
                    g = cluster.gpus_per_node
                    raise ScenarioError(
                        f"{self.field}.dp = {self.dp}: the experts' tp × dp = {tp * self.dp} GPUs would sit "
                        f"{' and '.join(map(str, per_node))} to a node; an all-to-all needs as many on each "
                        f"(valid: tp × dp a divisor of {g} or a multiple of it)")
        self._check_moe()
        g = cluster.gpus_per_node
        if g % tp and tp % g:
            raise ScenarioError(
                f"{self.field}.tp = {tp}: a TP group must fill whole nodes or fit evenly in one "
                f"({cluster.name} has {g} GPUs per node; valid: {_divisors(g)} or multiples of {g})"
            )

    def _check_moe(self) -> None:
        """The scenario's `moe` section against the model and layout."""
        moe, ep = self.model.moe, self.ep
        extra, imbalance = self.sharding.redundant_experts, self.sharding.expert_imbalance
        if extra and (moe is None or ep == 1 or (moe.num_experts + extra) % ep):
            experts = f"{moe.num_experts} experts" if moe is not None else "experts (the model has none)"
            raise ScenarioError(f"moe.redundant_experts = {extra}: EPLB spreads the {experts} and their copies "
                                f"evenly over {self.field}.ep = {ep} ranks (valid: 0, or with ep > 1 a count making "
                                "experts + copies a multiple of ep)")
        if imbalance is not None and moe is not None and imbalance > moe.num_experts / moe.top_k:
            raise ScenarioError(f"moe.imbalance = {imbalance:g}: an expert gets at most every token, "
                                f"{moe.num_experts}/{moe.top_k} = {moe.num_experts / moe.top_k:g} times the mean "
                                f"(valid: 1 to {moe.num_experts / moe.top_k:g})")

    def check_memory(self) -> None:
        usable = self.usable_bytes_per_gpu
        gpu = self.cluster.gpu
        for stage in self.stages:
            need = stage.weight_bytes_per_gpu + self.activation_bytes_per_gpu
            if need > usable and stage.weight_bytes_per_gpu <= usable:  # the batch's activations, not the model
                sched = self.scheduler
                raise ActivationsDoNotFit(
                    f"memory: activations for scheduler.max_batched_tokens = {sched.max_batched_tokens} and "
                    f"max_num_seqs = {sched.max_num_seqs} take {self.activation_bytes_per_gpu / GIB:.1f} GiB per "
                    f"GPU; with {stage.weight_bytes_per_gpu / GIB:.1f} GiB of weights that exceeds the "
                    f"{usable / GIB:.1f} GiB usable on {gpu.name}: lower max_batched_tokens or max_num_seqs",
                    sched.max_batched_tokens, sched.max_num_seqs)
            if need > usable:
                raise ScenarioError(
                    f"memory: {self.model.name} needs {need / GIB:.1f} GiB per GPU on stage {stage.index} "
                    f"(weights {stage.weight_bytes_per_gpu / GIB:.1f} GiB in {self.sharding.weights} at "
                    f"tp={self.tp} pp={self.pp}, plus activations) but {gpu.name} has {usable / GIB:.1f} GiB "
                    f"usable ({gpu.memory_bytes / GIB:.1f} GiB × gpu_utilization "
                    f"{self.gpu_utilization}); raise tp×pp or use smaller weights"
                )

    def check_requests(self, longest: int, longest_prompt: int) -> None:
        """The longest request (`longest` tokens, prompt and output) must fit one replica's KV cache; without
        chunking, a whole prompt (after a preemption: prompt and output so far) must fit one batch."""
        slot_tokens = self.kv_blocks_per_slot * self.block_size
        needed = self.kv_tokens_needed(longest)  # fewer than `longest` where layers keep a window only
        if slot_tokens < needed and self.block_size > longest:
            raise ScenarioError(
                f"memory.block_size = {self.block_size}: a block is larger than the longest request ({longest} "
                f"tokens) and leaves {slot_tokens} tokens of KV cache per slot (vLLM on CUDA uses 16)")
        if slot_tokens < needed:
            split = f" ({slot_tokens} per pipeline slot: vLLM splits it between its {self.pp} PP virtual engines)" \
                if self.pp > 1 else ""
            windowed = ", its local layers keeping a window" if needed < longest else ""
            raise ScenarioError(
                f"memory: the KV cache holds {self.kv_cache_tokens} tokens per replica after weights{split}, "
                f"but one request needs up to {needed} (prompt + output{windowed}); raise tp×pp or shorten requests"
            )
        self.batch_policy.check_fit(self.scheduler, longest, longest_prompt)


class Plan:
    """A deployment, resolved: the model, the cluster, its pools and how the run is simulated. The engine reads
    these attributes and never the scenario."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, pools: tuple[Pool, ...],
                 granularity: Granularity = "stage", fast_forward: bool = True, contention: bool = True,
                 router: RouterPolicy = "least_outstanding") -> None:
        self.model = model
        self.cluster = cluster
        self.pools = pools
        self.router = router  # which replica a new request goes to (sim/router.py)
        self.granularity = granularity
        self.fast_forward = fast_forward  # fold runs of identical decode steps (exact)
        self.contention = contention  # stage mode: transfers share links fairly where some link has two users
        # every pool's replicas in one sequence: the engine's and its records' replica numbers
        self.replicas: tuple[tuple[Pool, int], ...] = tuple((pool, r) for pool in pools for r in range(pool.dp))

    @property
    def pool(self) -> Pool:
        """The pool of an aggregated deployment (its only one)."""
        assert len(self.pools) == 1, "a deployment of several pools has no single pool"
        return self.pools[0]

    @property
    def num_gpus(self) -> int:
        return sum(pool.num_gpus for pool in self.pools)

    def check_layout(self) -> None:
        for pool in self.pools:
            pool.check_layout()

    def check_memory(self) -> None:
        for pool in self.pools:
            pool.check_memory()

    def check_requests(self, stream: RequestStream) -> None:
        """The longest request must fit the model's context and every pool's KV cache; without chunking, a
        whole prompt (after a preemption: prompt and output so far) must fit one batch."""
        if stream.num_requests > MAX_REQUESTS:
            raise ScenarioError(f"workload: {stream.num_requests} requests, more than the {MAX_REQUESTS:,} one run "
                                f"holds (about 4 GB and an hour here); split the workload")
        if stream.arrival_s is not None and not stream.arrival_s[-1] <= MAX_ARRIVAL_S:
            raise ScenarioError(
                f"workload: the last request would arrive at {stream.arrival_s[-1]:.3g} s, beyond "
                f"{MAX_ARRIVAL_S:.0e} s (about 30 years), where simulated time loses its precision "
                "(raise workload.rate or lower workload.time_scale)")
        total = stream.prompt_tokens + stream.output_tokens
        longest = int(total.max())
        if longest > self.model.max_position_embeddings:
            i = int(total.argmax())
            raise ScenarioError(
                f"workload: request {i} has {longest} tokens (prompt {stream.prompt_tokens[i]} + output "
                f"{stream.output_tokens[i]}), beyond {self.model.name}'s max_position_embeddings = "
                f"{self.model.max_position_embeddings} (workload.overlong: refuse | truncate | skip)")
        for pool in self.pools:
            pool.check_requests(longest, int(stream.prompt_tokens.max()))


def read_profile(path: str | Path) -> HardwareProfile:
    """A hardware profile file, or one line naming the file and the field that is wrong."""
    try:
        return load_profile(path)
    except ValidationError as err:
        raise ScenarioError(f"hardware_profile: {shown(path)}: {describe_validation_error(err, HardwareProfile)}"
                            ) from None


def with_profile(cluster: ClusterSpec, profile: HardwareProfile, path: str | Path) -> ClusterSpec:
    """The cluster with the profile applied, or one line naming the profile file and why it does not apply."""
    try:
        return apply_profile(cluster, profile)
    except ValueError as err:
        message, where = str(err), shown(path)
        if where not in message:
            message = f"hardware_profile: {where}: {message.removeprefix('hardware_profile: ')}"
        raise ScenarioError(message) from None


def resolve_inputs(scenario: Scenario) -> Scenario:
    """The scenario with its model and cluster specs in place of their names or paths (a hardware profile
    applied to the cluster): what a worker on another machine needs, with no file of ours to read. A trace
    stays a path."""
    model, cluster = _inputs(scenario)
    return scenario.model_copy(update={"model": model, "cluster": cluster, "hardware_profile": None})


def build_plan(scenario: Scenario) -> Plan:
    """Resolve the model, cluster and pools, then check layout and memory (in that order)."""
    model, cluster = _inputs(scenario)
    engine = ENGINES[scenario.engine]
    given = scenario.deployment
    layout: Parallel = scenario.parallel if given is None else given
    pool = Pool(model, cluster, engine, layout, tuple(range(layout.num_gpus)),
                overridden(scenario.scheduler, given and given.scheduler),
                overridden(scenario.memory, given and given.memory),
                overridden(scenario.precision, given and given.precision), scenario.moe,
                field="parallel" if given is None else "deployment")
    options = scenario.sim
    plan = Plan(model, cluster, (pool,), options.granularity, options.fast_forward, options.contention,
                scenario.router.policy)
    plan.check_layout()
    plan.check_memory()
    return plan


def _inputs(scenario: Scenario) -> tuple[ModelSpec, ClusterSpec]:
    """The scenario's model and cluster (with its hardware profile), or one line saying why not."""
    try:
        model = load_model(scenario.model)
    except ValueError as err:
        raise ScenarioError(f"model: {err}") from None
    try:
        cluster = load_cluster(scenario.cluster)
    except ValidationError as err:
        message = describe_validation_error(err, ClusterSpec)
        assert not isinstance(scenario.cluster, ClusterSpec)  # a spec given as such is not validated again
        files = cluster_files(scenario.cluster)
        part = str(err.errors()[0]["loc"][0]) if err.errors()[0]["loc"] else ""
        if part in files:  # a field of a GPU or fabric file: name the file, and the field inside it
            raise ScenarioError(f"cluster: {shown(files[part])}: {message.removeprefix(part + '.')}") from None
        if "" in files:
            raise ScenarioError(f"cluster: {shown(files[''])}: {message}") from None
        raise ScenarioError("cluster." + message) from None
    except ValueError as err:
        raise ScenarioError(f"cluster: {err}") from None
    if scenario.hardware_profile is not None:
        cluster = with_profile(cluster, read_profile(scenario.hardware_profile), scenario.hardware_profile)
    return model, cluster
