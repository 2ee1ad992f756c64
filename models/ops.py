"""The work one decoder layer does for one batch, sharded over a TP group: ops with FLOPs and bytes.

Megatron-style sharding: QKV and gate/up are column-parallel (heads and FFN width split by TP), O and
down are row-parallel and each ends in an all-reduce of the layer's activations over the TP group.
Around them run memory-bound element-wise kernels, fused as vLLM fuses them (residual add + RMSNorm,
SiLU-and-mul): the norms work on the full hidden size on every rank (they are replicated, TP does not
shrink them), RoPE and the activation on this rank's heads and FFN slice:

    input_norm → qkv → rope → attention → o_proj → attn_allreduce
    → post_norm → gate_up → act → down → mlp_allreduce

A batch mixes prefill chunks (s new tokens after c cached ones) and decodes (one new token attending to
its context). Shapes only: no time, no hardware. Activations are always 16-bit.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from splitsim.models.precision import ACTIVATION_BYTES, BYTES_PER_ELEMENT, ComputeDtype, KvDtype, WeightDtype
from splitsim.models.spec import AttentionKind, LayerKind, ModelSpec, MoeSpec

OpKind = Literal["gemm", "attention", "memory", "allreduce", "allgather", "alltoall"]


@dataclass(frozen=True, slots=True)
class Op:
    """One kernel or collective on one GPU. For GEMMs, `[m×k]·[k×n]` with the k×n weight."""

    name: str
    kind: OpKind
    flops: float = 0.0
    nbytes: float = 0.0
    m: int = 0
    n: int = 0
    k: int = 0
    weight_bytes: float = 0.0  # bytes per weight element (GEMMs)
    dtype: ComputeDtype = "bf16"
    groups: float = 1.0  # GEMMs: this many of that shape in one grouped kernel (the experts a batch reaches)
    grouped: bool = False  # a mixture of experts' fused kernel (even when it reaches one expert)


@dataclass(frozen=True, slots=True)
class BatchShape:
    """What one iteration computes: prefill chunks and decodes.

    `prefill` holds (new_tokens, cached_prefix) per prefilling sequence; `decode_context` is the sum over
    decoding sequences of the positions each attends to (its context, the new token included), and
    `decode_context_local` what a sliding or chunked layer lets each see (`local_positions`).

    The chunks' sums, Python ints taken when the batch is formed (`BatchShape.of`), are what prefill attention is
    priced from (`PrefillAttention`): the new tokens, the cached positions and the (query, key) pairs under full
    attention, and under the model's sliding or chunked attention the cached positions still in view and the pairs
    (0 without such layers). Build a batch with chunks through `of`, which takes them from the chunks.
    """

    prefill: tuple[tuple[int, int], ...] = ()
    num_decode: int = 0
    decode_context: int = 0
    decode_context_local: int = 0  # the same sum for the model's sliding or chunked layers (0 without them)
    prefill_tokens: int = 0  # Σ new tokens over the chunks
    prefill_cached: int = 0  # Σ cached positions
    prefill_pairs: int = 0  # Σ (query, key) pairs under full attention: s·c + s(s+1)/2 a chunk
    local_cached: int = 0  # Σ cached positions a sliding or chunked layer still sees
    local_pairs: int = 0  # Σ (query, key) pairs under it (`_prefill_pairs`)

    def __post_init__(self) -> None:
        if self.prefill and self.prefill_tokens <= 0:
            raise ValueError("a BatchShape with prefill chunks is built by BatchShape.of (it takes their sums)")

    @classmethod
    def of(cls, prefill: tuple[tuple[int, int], ...] = (), num_decode: int = 0, decode_context: int = 0,
           decode_context_local: int = 0, local: tuple[AttentionKind, int] | None = None) -> BatchShape:
        """A batch of these chunks and decodes, with the chunks' sums; `local`: the model's sliding or chunked
        attention and its span (`ModelSpec.local_attention`), None without local layers."""
        tokens = cached_sum = pairs = 0
        for new, cached in prefill:
            tokens += new
            cached_sum += cached
            pairs += new * cached + new * (new + 1) // 2
        seen_sum = local_pairs = 0
        if local is not None and prefill:
            kind, span = local
            for new, cached in prefill:
                seen_sum += min(cached, span) if kind == "sliding" else cached % span
                local_pairs += _prefill_pairs(new, cached, kind, span)
        return cls(prefill, num_decode, decode_context, decode_context_local, tokens, cached_sum, pairs, seen_sum,
                   local_pairs)

    @property
    def num_tokens(self) -> int:
        return self.num_decode + self.prefill_tokens


@dataclass(frozen=True, slots=True)
class Sharding:
    """How a model's layer is cut and stored: TP degree and number formats; for mixture-of-experts layers, the EP
    ranks the experts spread over and the replicas whose GPUs they span (`dp_attention` > 1: attention runs
    data-parallel on each replica's tokens, the experts on all `tp × dp_attention` GPUs)."""

    tp: int
    weights: WeightDtype
    kv_cache: KvDtype
    compute: ComputeDtype
    ep: int = 1  # experts spread over this many ranks (whole experts each); 1: every expert split by TP
    dp_attention: int = 1  # replicas sharing the experts; 1: a replica holds all of them
    expert_imbalance: float | None = None  # the hottest expert's tokens over the mean (scenario moe.imbalance)
    redundant_experts: int = 0  # EPLB's extra copies: they even out the ranks' systematic load
    expert_weights: WeightDtype | None = None  # the routed experts' own format (gpt-oss's MXFP4); None: `weights`
    expert_compute: ComputeDtype | None = None  # and the tensor-core format their GEMMs run in

    @property
    def moe_tp(self) -> int:
        """The GPUs each expert's FFN is split over: the MoE group's `tp × dp_attention` GPUs over `ep` ranks
        (TRT-LLM's moe_tp; vLLM's is 1 under expert parallelism and TP without it)."""
        return self.tp * self.dp_attention // self.ep


def gemm(name: str, m: int, n: int, k: int, sharding: Sharding, groups: float | None = None) -> Op:
    """A GEMM; with `groups`, that many in one grouped (mixture-of-experts) kernel."""
    w = BYTES_PER_ELEMENT[sharding.weights]
    nbytes = (m * k + m * n) * ACTIVATION_BYTES + k * n * w
    if groups is None:
        return Op(name, "gemm", 2.0 * m * n * k, nbytes, m, n, k, w, sharding.compute)
    return Op(name, "gemm", 2.0 * m * n * k * groups, nbytes * groups, m, n, k, w, sharding.compute, groups, True)


def expert_load(num_experts: int, top_k: int, ranks: int, tokens: int) -> float:
    """The busiest of `ranks` expert-parallel ranks' routed tokens over the mean, expected under uniform top-k
    routing (deterministic: never drawn). A token sends a hypergeometric count to a rank holding E/r of the E
    experts (mean k/r, variance k·(1/r)(1−1/r)(E−k)/(E−1)); over T tokens the load is about normal, and the
    expected maximum of r such loads is the mean plus σ times the expected maximum of r standard normals
    (`_max_of_normals`), at most every routed token on one rank."""
    if ranks == 1 or tokens == 0:
        return 1.0
    mean = tokens * top_k / ranks
    variance = tokens * top_k / ranks * (1 - 1 / ranks) * (num_experts - top_k) / (num_experts - 1)
    return min(1.0 + math.sqrt(variance) / mean * _max_of_normals(ranks), float(ranks))


def rank_load(moe: MoeSpec, sharding: Sharding, tokens: int) -> float:
    """The busiest EP rank's routed tokens over the mean: random top-k routing's spread (`expert_load`), or a hot
    expert's (`expert_imbalance` I: its rank holds it and E/ep − 1 mean ones, (I + E/ep − 1)/(E/ep)) if larger.
    EPLB's redundant copies even out the systematic skew, not the batch's random spread."""
    load = expert_load(moe.num_experts, moe.top_k, sharding.ep, tokens)
    if sharding.expert_imbalance is None or sharding.redundant_experts:
        return load
    local = moe.num_experts // sharding.ep
    return max(load, min((sharding.expert_imbalance + local - 1) / local, float(sharding.ep)))


@functools.cache
def _max_of_normals(n: int) -> float:
    """E[max of n independent standard normals] = ∫ x·n·φ(x)·Φ(x)^(n−1) dx, by quadrature (0.564 for 2, 1.029
    for 4, 1.424 for 8, 1.766 for 16)."""
    x = np.linspace(-8.0, 8.0, 16001)
    # The C library's exp, erf and pow point by point, not numpy's: on AVX-512 hosts numpy's vectorised exp and
    # power differ in the last bit, and a cost must not depend on the CPU that prices it.
    integrand = [t * n * math.exp(-t * t / 2) / math.sqrt(2 * math.pi) * (0.5 * (1 + math.erf(t / math.sqrt(2))))
                 ** (n - 1) for t in x.tolist()]
    return float(np.trapezoid(integrand, x))


def expected_experts(num_experts: int, top_k: int, tokens: int) -> float:
    """Distinct experts `tokens` tokens reach, each routed to `top_k` distinct experts uniformly at random: an
    expert escapes one token with probability 1 − k/E, all of them with (1 − k/E)^T, so E·(1 − (1 − k/E)^T)."""
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def attention(model: ModelSpec, batch: BatchShape, sharding: Sharding,
              kind: AttentionKind = "full") -> tuple[Op, Op]:
    """Prefill and decode attention (separate kernels, as vLLM runs them) on one TP rank.

    Prefill chunk of s tokens after c cached: token i attends to c+i+1 positions, so
    FLOPs = 2·h_q·(d_qk + d_v)·(s·c + s(s+1)/2); it reads Q and the K/V of c+s positions, writes O and the new K/V.
    Summed over the chunks, both are linear in the batch's sums (`PrefillAttention`).
    Decode: FLOPs = 2·h_q·(d_qk + d_v)·ctx; it reads the K/V of ctx positions (memory-bound). Under MLA
    (`_attention_dims`) prefill runs on keys and values decompressed per head, decode on the cached latent.
    A sliding or chunked layer (`kind`) counts only the positions its window or chunk lets a token see
    (`_prefill_pairs`, the batch's `decode_context_local`), and reads only their K/V.
    """
    q_heads = model.num_heads // sharding.tp
    pf_flops, pf_bytes = PrefillAttention.of(model, sharding).work(model, batch, sharding, kind)
    qk, v, kv_row = _attention_dims(model, sharding)[1]
    n, ctx = batch.num_decode, batch.decode_context if kind == "full" else batch.decode_context_local
    dec_flops = 2.0 * q_heads * (qk + v) * ctx
    dec_bytes = n * q_heads * (qk + v) * ACTIVATION_BYTES + (ctx + n) * kv_row
    return (
        Op("attention", "attention", pf_flops, pf_bytes),
        Op("attention", "attention", dec_flops, dec_bytes),
    )


EXACT_INTS = 2 ** 53  # every integer below it is a float, and a float sum or product of such is exact


@dataclass(frozen=True, slots=True)
class PrefillAttention:
    """Prefill attention on one TP rank as linear in a batch's integer sums (`BatchShape`): FLOPs =
    `flops_per_pair`·pairs, bytes = `bytes_per_token`·Σs + `bytes_per_position`·(Σ cached in view + 2·Σs).

    Summed chunk by chunk in floats (`_prefill_by_chunk`), every term and partial sum is a whole number; below
    2^53 each is exact, so the loop's float equals the exact integer, which this computes in Python ints and
    converts once: the same bits. Past 2^53 (or for a fractional byte count, which no format has) it prices the
    chunks one by one as before."""

    flops_per_pair: int  # 2·h_q·(d_qk + d_v)
    bytes_per_token: int  # Q read and O written: h_q·(d_qk + d_v)·2 bytes
    bytes_per_position: int  # the K/V of one position (read, or written for a new token)
    whole: bool  # the byte counts are whole numbers (else every batch is priced by chunk)

    @classmethod
    def of(cls, model: ModelSpec, sharding: Sharding) -> PrefillAttention:
        q_heads = model.num_heads // sharding.tp
        qk, v, kv_row = _attention_dims(model, sharding)[0]
        token = q_heads * (qk + v) * ACTIVATION_BYTES
        whole = float(token).is_integer() and float(kv_row).is_integer()
        return cls(2 * q_heads * (qk + v), int(token), int(kv_row), whole)

    def exact(self, batch: BatchShape, kind: AttentionKind) -> tuple[float, float] | None:
        """(FLOPs, bytes) of `batch`'s prefill chunks in a layer of attention `kind`, from its sums; None where
        an integer reaches 2^53 (`work` then sums the chunks)."""
        if kind == "full":
            pairs, cached = batch.prefill_pairs, batch.prefill_cached
        else:
            pairs, cached = batch.local_pairs, batch.local_cached
            if batch.prefill and not pairs:  # each new token sees itself at least
                raise ValueError("a local layer's batch needs its local sums: BatchShape.of(..., local=...)")
        new = batch.prefill_tokens
        flops = self.flops_per_pair * pairs
        nbytes = self.bytes_per_token * new + self.bytes_per_position * (cached + 2 * new)
        if flops >= EXACT_INTS or nbytes >= EXACT_INTS or not self.whole:
            return None
        return float(flops), float(nbytes)

    def work(self, model: ModelSpec, batch: BatchShape, sharding: Sharding,
             kind: AttentionKind) -> tuple[float, float]:
        """(FLOPs, bytes) of `batch`'s prefill chunks: from the sums, or chunk by chunk past 2^53."""
        exact = self.exact(batch, kind)
        return exact if exact is not None else _prefill_by_chunk(model, batch, sharding, kind)


def _prefill_by_chunk(model: ModelSpec, batch: BatchShape, sharding: Sharding,
                      kind: AttentionKind) -> tuple[float, float]:
    """Prefill attention's (FLOPs, bytes) summed chunk by chunk in floats: what `PrefillAttention` equals bit for
    bit below 2^53, and what prices a batch past it."""
    q_heads = model.num_heads // sharding.tp
    qk, v, kv_row = _attention_dims(model, sharding)[0]
    pf_flops = pf_bytes = 0.0
    for new, cached in batch.prefill:
        if kind == "full":
            pf_flops += 2.0 * q_heads * (qk + v) * (new * cached + new * (new + 1) / 2)
            pf_bytes += new * q_heads * (qk + v) * ACTIVATION_BYTES + (cached + 2 * new) * kv_row
            continue
        span = model.local_span
        assert span is not None, "a local attention layer needs the model's window or chunk"
        seen = min(cached, span) if kind == "sliding" else cached % span  # cached positions still in view
        pf_flops += 2.0 * q_heads * (qk + v) * _prefill_pairs(new, cached, kind, span)
        pf_bytes += new * q_heads * (qk + v) * ACTIVATION_BYTES + (seen + 2 * new) * kv_row
    return pf_flops, pf_bytes


def _prefill_pairs(new: int, cached: int, kind: AttentionKind, span: int) -> int:
    """(query, key) pairs of a prefill chunk of `new` tokens after `cached` under local attention. Sliding window
    w: the token at position p (from 0) sees min(p + 1, w) positions; the first j = clamp(w − c, 0, s) see c + i,
    the rest w. Chunks of C: it sees p mod C + 1, and Σ_{p<n} (p mod C + 1) = ⌊n/C⌋·C(C+1)/2 + r(r+1)/2
    (r = n mod C)."""
    if kind == "sliding":
        j = max(0, min(new, span - cached))
        return j * cached + j * (j + 1) // 2 + (new - j) * span

    def upto(n: int) -> int:
        whole, rest = divmod(n, span)
        return whole * span * (span + 1) // 2 + rest * (rest + 1) // 2

    return upto(cached + new) - upto(cached)


def local_positions(context: int, kind: AttentionKind, span: int) -> int:
    """Positions a decoding token with `context` positions (itself included) sees in a sliding or chunked layer."""
    return min(context, span) if kind == "sliding" else (context - 1) % span + 1


def _attention_dims(model: ModelSpec, sharding: Sharding) -> tuple[tuple[int, int, float], tuple[int, int, float]]:
    """(query/key size, value size, bytes of K/V read per position) of one head's attention, for prefill and
    decode. GQA: d, d and this rank's K and V heads. MLA as vLLM runs it: prefill on keys of qk_nope + qk_rope and
    values of v_head_dim, decompressed for this rank's heads (16-bit); decode absorbed, every head attending to the
    cached latent (kv_lora_rank + qk_rope_head_dim as keys, kv_lora_rank as values), read whole by every rank."""
    kv_b = BYTES_PER_ELEMENT[sharding.kv_cache]
    mla = model.mla
    if mla is None:
        d = model.head_dim
        dims = (d, d, 2 * model.kv_heads_per_rank(sharding.tp) * d * kv_b)
        return dims, dims
    q_heads = model.num_heads // sharding.tp
    qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    prefill = (qk, mla.v_head_dim, q_heads * (qk + mla.v_head_dim) * ACTIVATION_BYTES)
    return prefill, (mla.latent, mla.kv_lora_rank, mla.latent * kv_b)


def allreduce(name: str, tokens: int, model: ModelSpec) -> Op:
    """A TP all-reduce of the layer's activations: tokens · hidden · 2 bytes."""
    return Op(name, "allreduce", nbytes=tokens * model.hidden_size * ACTIVATION_BYTES)


ATTENTION = Op("attention", "attention")  # a layer's attention kernels: sized per batch by `attention`


def _attention_block(model: ModelSpec, tokens: int, sharding: Sharding) -> list[Op]:
    """A decoder layer up to its MLP: norm, QKV, RoPE, attention, O (and its all-reduce when TP > 1), and the
    norm ahead of the MLP. Fused residual add + RMSNorm reads the input and the residual and writes both
    (4·T·h values); RoPE reads and writes this rank's Q and K (2·T·(h_q + h_kv)·d); at 16 bits."""
    tp, d, h, b = sharding.tp, model.head_dim, model.hidden_size, ACTIVATION_BYTES
    q_heads, kv_heads = model.num_heads // tp, model.kv_heads_per_rank(tp)
    norm = 4 * tokens * h * b + h * b
    ops = [Op("input_norm", "memory", nbytes=norm)]
    if model.mla is None:
        ops += [gemm("qkv", tokens, (q_heads + 2 * kv_heads) * d, h, sharding),
                Op("rope", "memory", nbytes=2 * tokens * (q_heads + kv_heads) * d * b),
                ATTENTION,
                gemm("o_proj", tokens, h, q_heads * d, sharding)]
    else:
        ops += _mla_projections(model, tokens, sharding)
    if tp > 1:
        ops.append(allreduce("attn_allreduce", tokens, model))
    ops.append(Op("post_norm", "memory", nbytes=norm))
    return ops


def _mla_projections(model: ModelSpec, tokens: int, sharding: Sharding) -> list[Op]:
    """MLA's projections around its attention, as vLLM shards them: the low-rank down-projections (q_a, kv_a with
    the RoPE key) replicated on every rank, each followed by its RMSNorm; q_b and kv_b column-parallel over the
    heads, O row-parallel. kv_b stands for decode's absorbed products too (q_nope·W_UK before the attention, W_UV
    after it): the same weights, the same FLOPs per token. RoPE on this rank's query heads and the shared key."""
    mla = model.mla
    assert mla is not None
    h, b = model.hidden_size, ACTIVATION_BYTES
    q_heads = model.num_heads // sharding.tp
    qk = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    ops: list[Op] = []
    if mla.q_lora_rank is None:
        ops.append(gemm("q_proj", tokens, q_heads * qk, h, sharding))
    else:
        ops += [gemm("q_a_proj", tokens, mla.q_lora_rank, h, sharding),
                Op("q_a_norm", "memory", nbytes=2 * tokens * mla.q_lora_rank * b),
                gemm("q_b_proj", tokens, q_heads * qk, mla.q_lora_rank, sharding)]
    return ops + [gemm("kv_a_proj", tokens, mla.latent, h, sharding),
                  Op("kv_a_norm", "memory", nbytes=2 * tokens * mla.kv_lora_rank * b),
                  gemm("kv_b_proj", tokens, q_heads * (mla.qk_nope_head_dim + mla.v_head_dim), mla.kv_lora_rank,
                       sharding),
                  Op("rope", "memory", nbytes=2 * tokens * (q_heads + 1) * mla.qk_rope_head_dim * b),
                  ATTENTION,
                  gemm("o_proj", tokens, h, q_heads * mla.v_head_dim, sharding)]


def dense_layer(model: ModelSpec, tokens: int, sharding: Sharding) -> tuple[Op, ...]:
    """A dense decoder layer for `tokens` tokens, in execution order (the module docstring's sequence; the
    all-reduces only when TP > 1). `ATTENTION` stands for the batch's attention kernels, which depend on
    the contexts, not on the token count alone. GEMMs: QKV and gate/up column-parallel, O and down
    row-parallel; SiLU-and-mul reads gate and up and writes their product (3·T·ffn/TP values, 16 bits).
    """
    tp, h, b = sharding.tp, model.hidden_size, ACTIVATION_BYTES
    ffn = model.intermediate_size // tp
    ops = _attention_block(model, tokens, sharding)
    ops += [gemm("gate_up", tokens, 2 * ffn, h, sharding),
            Op("act", "memory", nbytes=3 * tokens * ffn * b),
            gemm("down", tokens, h, ffn, sharding)]
    if tp > 1:
        ops.append(allreduce("mlp_allreduce", tokens, model))
    return tuple(ops)


def moe_layer(model: ModelSpec, tokens: int, sharding: Sharding) -> tuple[Op, ...]:
    """A mixture-of-experts decoder layer: the dense layer's attention half, then the router (a replicated
    [T×h]·[h×E] GEMM in 16 bits, as vLLM keeps the gate unquantised) and the experts: the routed tokens reach
    some distinct experts, each a GEMM of its tokens on its gate/up and down slices (a grouped kernel: only the
    experts reached read their weights), SiLU-and-mul between them.

    Split by TP (ep = 1): the T·k routed tokens reach `expected_experts`, then the TP all-reduce. Under EP the
    busiest rank decides (`expert_load`), over its E/ep experts. Within one TP group the tokens are already on
    every rank (no all-to-all; the all-reduce after). Across replicas (`dp_attention` > 1) `tokens` is what each
    replica holds (sim/costs.py `lockstep_tokens`), each GPU sends its share to the GPUs holding their experts
    (`moe_dispatch`) and gets the results back (`moe_combine`), and with TP > 1 the replica's ranks all-gather
    the tokens they dispatched apart."""
    moe = model.moe
    assert moe is not None, "a moe layer needs the model's experts"
    tp, h, b = sharding.tp, model.hidden_size, ACTIVATION_BYTES
    ops = _attention_block(model, tokens, sharding)
    ep, replicas = sharding.ep, sharding.dp_attention
    ffn = moe.intermediate_size // sharding.moe_tp
    group_tokens = tokens * replicas
    load = 1.0
    if ep == 1:
        routed = tokens * moe.top_k
        reached = expected_experts(moe.num_experts, moe.top_k, tokens)
    else:  # the busiest rank decides: its share of the routed tokens (`rank_load`) over its E/ep experts
        load = rank_load(moe, sharding, group_tokens)
        routed = math.ceil(group_tokens * moe.top_k / ep * load)
        local = moe.num_experts // ep
        reached = local * (1.0 - (1.0 - 1.0 / local) ** routed)  # distinct experts its routed tokens reach
    per_expert = -(-routed // max(1, round(reached))) if tokens else 0
    router = Sharding(sharding.tp, "bf16", sharding.kv_cache, "bf16")
    ops.append(gemm("router", tokens, moe.num_experts, h, router))
    if moe.shared_experts:  # every token's shared expert(s): a dense SwiGLU MLP split by the replica's TP
        shared = moe.shared_experts * moe.intermediate_size // tp
        ops += [gemm("shared_gate_up", tokens, 2 * shared, h, sharding),
                Op("shared_act", "memory", nbytes=3 * tokens * shared * b),
                gemm("shared_down", tokens, h, shared, sharding)]
    if replicas > 1:
        sent = dispatch_copies(moe, sharding) * -(-tokens // tp) * load
        fp8 = (sharding.expert_compute or sharding.compute) in ("fp8", "fp4")  # the format the experts take
        value = DISPATCH_BYTES["fp8"] if fp8 else DISPATCH_BYTES["bf16"]
        ops.append(Op("moe_dispatch", "alltoall", nbytes=sent * h * value))
    experts = sharding if sharding.expert_weights is None else Sharding(
        sharding.tp, sharding.expert_weights, sharding.kv_cache, sharding.expert_compute or sharding.compute)
    ops += [gemm("experts_gate_up", per_expert, 2 * ffn, h, experts, groups=reached),
            Op("experts_act", "memory", nbytes=3 * routed * ffn * b),
            gemm("experts_down", per_expert, h, ffn, experts, groups=reached)]
    if replicas > 1:
        ops.append(Op("moe_combine", "alltoall", nbytes=sent * h * b))
        if tp > 1:
            ops.append(Op("moe_allgather", "allgather", nbytes=tokens * h * b))
    elif tp > 1:
        ops.append(allreduce("mlp_allreduce", tokens, model))
    return tuple(ops)


# Bytes per hidden value a dispatch sends: 16-bit activations, or fp8 with one fp32 scale per 128 values (DeepEP's
# fp8 dispatch, used by vLLM, SGLang and TRT-LLM when the experts compute in fp8). The combine sends 16 bits.
DISPATCH_BYTES = {"bf16": float(ACTIVATION_BYTES), "fp8": 1.0 + 4.0 / 128}


def dispatch_copies(moe: MoeSpec, sharding: Sharding) -> float:
    """Other GPUs of the MoE group one token is sent to: every GPU of each EP rank holding one of its top-k
    experts, once per GPU however many of its experts live there (DeepEP). Each of the other G − 1 GPUs gets the
    token with the probability that its rank holds one of the token's experts (`_rank_reached`)."""
    group = sharding.tp * sharding.dp_attention
    return _rank_reached(moe, sharding.ep) * (group - 1)


@functools.cache
def _rank_reached(moe: MoeSpec, ep: int) -> float:
    """The chance that an EP rank (E/ep consecutive experts) holds one of a token's k experts under uniform
    routing, averaged over the ranks. Without groups: 1 − C(E − E/ep, k)/C(E, k). With DeepSeek's groups (the k
    experts among those of `groups_per_token` of the `groups` groups, picked first): a rank holding m of the
    picked groups' n experts escapes with C(n − m, k)/C(n, k); m's distribution over the C(G, t) picks of groups
    is counted group by group (a rank may hold part of a group, or several)."""
    experts, k = moe.num_experts, moe.top_k
    local = experts // ep
    if moe.groups == 1:
        return 1.0 - math.comb(experts - local, k) / math.comb(experts, k)
    per_group, picked = experts // moe.groups, moe.groups_per_token
    candidates = picked * per_group
    reached = 0.0
    for rank in range(ep):
        first, last = rank * local, (rank + 1) * local
        held = [max(0, min(last, (g + 1) * per_group) - max(first, g * per_group)) for g in range(moe.groups)]
        ways: dict[tuple[int, int], int] = {(0, 0): 1}  # (groups picked so far, this rank's experts in them)
        for count in held:
            for (j, m), w in list(ways.items()):
                if j < picked:
                    ways[(j + 1, m + count)] = ways.get((j + 1, m + count), 0) + w
        escape = sum(w * math.comb(candidates - m, k) for (j, m), w in ways.items() if j == picked)
        reached += 1.0 - escape / (math.comb(moe.groups, picked) * math.comb(candidates, k))
    return reached / ep


LAYERS: dict[LayerKind, Callable[[ModelSpec, int, Sharding], tuple[Op, ...]]] = {"dense": dense_layer,
                                                                                  "moe": moe_layer}


def layer_graph(model: ModelSpec, kind: str, tokens: int, sharding: Sharding) -> tuple[Op, ...]:
    """The ops of one layer of `kind` (a `ModelSpec.layer_types` entry: its MLP kind, and its attention when
    local, which shapes only the `ATTENTION` kernels) for `tokens` tokens, in execution order, `ATTENTION` in its
    place: the one description of a layer's work that stage mode sums and layer mode walks (sim/costs.py)."""
    return LAYERS[layer_kind(kind)](model, tokens, sharding)


def layer_kind(layer_type: str) -> LayerKind:
    """The MLP kind of a layer type (`moe/sliding` → `moe`)."""
    kind = layer_type.split("/", 1)[0]
    assert kind in LAYERS, f"unknown layer kind {kind!r}"
    return kind  # type: ignore[return-value]


def layer_attention(layer_type: str) -> AttentionKind:
    """The attention of a layer type (`moe/sliding` → `sliding`; no suffix: full)."""
    return layer_type.split("/", 1)[1] if "/" in layer_type else "full"  # type: ignore[return-value]


def layer_ops(model: ModelSpec, batch: BatchShape, sharding: Sharding, kind: str = "dense") -> list[Op]:
    """One layer's ops on `batch`, in execution order, with its prefill and decode attention in place."""
    prefill_attn, decode_attn = attention(model, batch, sharding, layer_attention(kind))
    ops: list[Op] = []
    for op in layer_graph(model, kind, batch.num_tokens, sharding):
        if op is ATTENTION:
            ops += [op for op, part in ((prefill_attn, batch.prefill), (decode_attn, batch.num_decode)) if part]
        else:
            ops.append(op)
    return ops


def embedding(model: ModelSpec, tokens: int, sharding: Sharding) -> Op:
    """Vocab-parallel embedding lookup on the first stage: a gather of `tokens` rows (memory-bound)."""
    nbytes = tokens * model.hidden_size * (BYTES_PER_ELEMENT[sharding.weights] + ACTIVATION_BYTES)
    return Op("embedding", "memory", nbytes=nbytes)


def lm_head(model: ModelSpec, num_logits: int, sharding: Sharding) -> Op:
    """The output projection on the last stage, for the sequences that sample a token this step."""
    return gemm("lm_head", num_logits, model.vocab_size // sharding.tp, model.hidden_size, sharding)
