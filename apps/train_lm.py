#!/usr/bin/python3
"""Example trainer in PyTorch: a small transformer language model whose FFNs are moe-ep layers.

    PYTHONPATH=build/python mpirun --allow-run-as-root -np 2 /usr/bin/python3 apps/train_lm.py

Each rank trains on its own batches of a character-level corpus the script generates (words made
of syllables, each word followed mostly by one of a few others: structure a model of more
capacity learns better). Every FFN is a moe_ep.MoELayer (expert-parallel over the ranks); the
attention, embeddings and head are replicated and their gradients all-reduced with
torch.distributed (gloo), next to moe-ep's own MPI communicators: the two coexist, each with its
own transport.

Phase 1 (--compare-steps, default 50): the same model built on the PyTorch MoE layer of
apps/torch_baseline.py trains beside it from the same initial weights on the same batches with
the same optimizer; their losses must agree within --tolerance (relative, default 1e-4) at every
step, or the program exits with status 1. Both models' training throughput is printed.
Phase 2 (up to --steps): the moe-ep model trains on, and a dense model with the same active
parameters per token (FFN hidden size k*h) trains on the same batches; their held-out losses and
tokens/s are printed.
"""

import argparse
import os
import random
import statistics
import sys
import time
import types

# One thread per rank (read by OpenBLAS / OpenMP when torch loads them): each rank has one core.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

import moe_ep  # noqa: E402 (build/python on PYTHONPATH)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_baseline  # noqa: E402 (the PyTorch MoE layer)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600, help="training steps of the moe-ep and dense models")
    p.add_argument("--compare-steps", type=int, default=50, help="steps trained beside the PyTorch MoE model")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest relative loss difference allowed")
    p.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                   help="train the dense baseline in phase 2")
    p.add_argument("--seq", type=int, default=64, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=16, help="sequences per rank and step")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--d-hidden", type=int, default=128, help="hidden size of each expert")
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--capacity-factor", type=float, default=0.0,
                   help="<= 0: dropless (the default; see README for runs with dropping)")
    p.add_argument("--aux-loss-coef", type=float, default=0.01)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--corpus-chars", type=int, default=400000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=0,
                   help="torch.distributed rendezvous port on 127.0.0.1 (default: from the OpenMPI job id)")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# Data


def make_corpus(seed, num_chars):
    """Text of made-up words: 600 words of 1-3 syllables; after a word comes one of its 3 usual
    successors (90%) or any word."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(600)]
    successors = [rng.sample(range(len(words)), 3) for _ in words]
    out, length, w = [], 0, 0
    while length < num_chars:
        w = rng.choice(successors[w]) if rng.random() < 0.9 else rng.randrange(len(words))
        out.append(words[w])
        length += len(words[w]) + 1
    text = " ".join(out)[:num_chars]
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.int64)
    return ids, len(vocab)


def batch(ids, a, seed, step, rank):
    """Sequences of seq+1 tokens at positions drawn from (seed, step, rank): the same on every run
    and for every model."""
    g = torch.Generator().manual_seed(seed * 1000003 + step * 101 + rank)
    starts = torch.randint(0, ids.numel() - a.seq - 1, (a.batch,), generator=g)
    rows = torch.stack([ids[s:s + a.seq + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


# ---------------------------------------------------------------------------------------------
# The model


class TorchMoE(nn.Module):
    """apps/torch_baseline.py's PyTorch MoE layer with moe_ep.MoELayer's interface."""

    def __init__(self, a, rank, world):
        super().__init__()
        self.layer = torch_baseline.MoeLayer(baseline_options(a), rank, world)

    def forward(self, x):
        y, (aux, z) = self.layer(x.reshape(-1, x.shape[-1]))
        return y.reshape(x.shape), aux, z


class DenseFFN(nn.Module):
    """The dense baseline: one FFN with the active hidden units of a token in the MoE layer."""

    def __init__(self, a):
        super().__init__()
        self.w1 = nn.Linear(a.d_model, a.top_k * a.d_hidden)
        self.w2 = nn.Linear(a.top_k * a.d_hidden, a.d_model)

    def forward(self, x):
        zero = torch.zeros(())
        return self.w2(nn.functional.gelu(self.w1(x))), zero, zero


class Block(nn.Module):
    def __init__(self, a, ffn):
        super().__init__()
        self.ln1 = nn.LayerNorm(a.d_model)
        self.attn = nn.MultiheadAttention(a.d_model, a.heads, batch_first=True)
        self.ln2 = nn.LayerNorm(a.d_model)
        self.ffn = ffn

    def forward(self, h, mask):
        n = self.ln1(h)
        h = h + self.attn(n, n, n, attn_mask=mask, need_weights=False)[0]
        y, aux, z = self.ffn(self.ln2(h))
        return h + y, aux + z


class LanguageModel(nn.Module):
    def __init__(self, a, vocab, make_ffn):
        super().__init__()
        self.embed = nn.Embedding(vocab, a.d_model)
        self.position = nn.Embedding(a.seq, a.d_model)
        self.blocks = nn.ModuleList(Block(a, make_ffn()) for _ in range(a.layers))
        self.norm = nn.LayerNorm(a.d_model)
        self.head = nn.Linear(a.d_model, vocab)
        self.register_buffer("mask", torch.triu(torch.ones(a.seq, a.seq, dtype=torch.bool), diagonal=1))

    def forward(self, tokens):
        h = self.embed(tokens) + self.position.weight[: tokens.shape[1]]
        extra = torch.zeros(())
        for block in self.blocks:
            h, losses = block(h, self.mask)
            extra = extra + losses
        return self.head(self.norm(h)), extra


def baseline_options(a):
    return types.SimpleNamespace(experts=a.experts, d_model=a.d_model, d_hidden=a.d_hidden, top_k=a.top_k,
                                 capacity_factor=a.capacity_factor, min_capacity=4, drop_policy="position",
                                 activation="gelu", normalize_topk=False, aux_loss_coef=a.aux_loss_coef,
                                 z_loss_coef=0.0)


def moe_config(a):
    return moe_ep.make_config(num_experts=a.experts, d_model=a.d_model, d_hidden=a.d_hidden, top_k=a.top_k,
                              capacity_factor=a.capacity_factor, aux_loss_coef=a.aux_loss_coef)


def full_expert_parameters(a, layer_index):
    """Every expert's and the router's initial values of one layer, the same on every rank."""
    options = baseline_options(a)
    options.seed = a.seed * 7919 + layer_index
    return torch_baseline.full_parameters(options)


def build_models(a, vocab, rank, world):
    """The moe-ep model and the PyTorch-MoE model with the same initial weights."""
    torch.manual_seed(a.seed)
    moe = LanguageModel(a, vocab, lambda: moe_ep.MoELayer(moe_config(a)))
    torch.manual_seed(a.seed)
    reference = LanguageModel(a, vocab, lambda: TorchMoE(a, rank, world))
    reference.load_state_dict({k: v for k, v in moe.state_dict().items() if ".ffn." not in k}, strict=False)
    for i, (mine, theirs) in enumerate(zip(moe.blocks, reference.blocks)):
        params = full_expert_parameters(a, i)
        with torch.no_grad():
            for name, p in mine.ffn.named_parameters():
                p.copy_(params[name])  # written into moe-ep's memory
        torch_baseline.load_parameters(theirs.ffn.layer, params)
    return moe, reference


# ---------------------------------------------------------------------------------------------
# Training


def reduce_gradients(model, world):
    """Replicated parameters: gradients summed over the ranks (each rank's loss is its share of
    the mean). moe-ep's layers reduce their own over the expert-parallel groups; the PyTorch MoE
    layer's experts are local (their gradient came through the all-to-all), its router is
    replicated."""
    moe_layers = [m for m in model.modules() if isinstance(m, moe_ep.MoELayer)]
    owned = {id(p) for m in moe_layers for p in m.parameters()}
    owned |= {id(p) for m in model.modules() if isinstance(m, TorchMoE) for p in m.layer.experts.parameters()}
    for p in model.parameters():
        if id(p) not in owned and p.grad is not None and world > 1:
            dist.all_reduce(p.grad)
    for m in moe_layers:
        m.reduce_gradients()


def train_step(model, optimizer, tokens, targets, world):
    """One step; returns (cross-entropy, cross-entropy + auxiliary losses) over all ranks' tokens."""
    optimizer.zero_grad()
    logits, extra = model(tokens)
    ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)) / world
    (ce + extra).backward()
    reduce_gradients(model, world)
    optimizer.step()
    return all_ranks(ce.detach(), extra.detach(), model, world)


def all_ranks(ce, extra, model, world):
    """moe-ep's auxiliary loss is the group's on every rank; the PyTorch layer's is each rank's
    share of it: the objective counts each once."""
    shared = any(isinstance(m, moe_ep.MoELayer) for m in model.modules())
    values = torch.stack([ce, torch.zeros(()) if shared else extra]).double()
    if world > 1:
        dist.all_reduce(values)
    total_extra = extra.double() if shared else values[1]
    return values[0].item(), (values[0] + total_extra).item()


@torch.no_grad()
def evaluate(model, held_out, a, rank, world):
    """Mean cross-entropy over a fixed set of held-out sequences (inference forward: moe-ep keeps
    nothing for a backward)."""
    ce = torch.zeros((), dtype=torch.float64)
    for i in range(4):
        tokens, targets = batch(held_out, a, a.seed + 99, i, rank)
        logits, _ = model(tokens)
        ce += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).double()
    ce /= 4 * world
    if world > 1:
        dist.all_reduce(ce)
    return ce.item()


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def compare(a, moe, reference, ids, rank, world, say):
    opt_moe = torch.optim.Adam(moe.parameters(), lr=a.lr)
    opt_ref = torch.optim.Adam(reference.parameters(), lr=a.lr)
    worst, times_moe, times_ref = 0.0, [], []
    for step in range(a.compare_steps):
        tokens, targets = batch(ids, a, a.seed, step, rank)
        (_, loss_moe), t_moe = timed(lambda: train_step(moe, opt_moe, tokens, targets, world))
        (_, loss_ref), t_ref = timed(lambda: train_step(reference, opt_ref, tokens, targets, world))
        times_moe.append(t_moe)
        times_ref.append(t_ref)
        rel = abs(loss_moe - loss_ref) / abs(loss_ref)
        worst = max(worst, rel)
        if step % 10 == 0 or step == a.compare_steps - 1:
            say(f"step {step:4d}  loss moe-ep {loss_moe:.7f}  PyTorch MoE {loss_ref:.7f}  relative difference {rel:.2e}")
    tokens_per_step = a.batch * a.seq * world
    say(f"phase 1: {a.compare_steps} steps, largest relative loss difference {worst:.2e} (limit {a.tolerance:g})")
    say(f"phase 1: training tokens/s (median step): moe-ep {tokens_per_step / statistics.median(times_moe):.0f}, "
        f"PyTorch MoE {tokens_per_step / statistics.median(times_ref):.0f}")
    return worst <= a.tolerance, opt_moe


def train_on(a, moe, opt_moe, ids, held_out, vocab, rank, world, say):
    dense = None
    if a.dense:
        torch.manual_seed(a.seed)
        dense = LanguageModel(a, vocab, lambda: DenseFFN(a))
        opt_dense = torch.optim.Adam(dense.parameters(), lr=a.lr)
        # The dense model catches up on phase 1's batches first, so both see the same data.
        for step in range(a.compare_steps):
            train_step(dense, opt_dense, *batch(ids, a, a.seed, step, rank), world)
    times_moe, times_dense = [], []
    for step in range(a.compare_steps, a.steps):
        tokens, targets = batch(ids, a, a.seed, step, rank)
        (ce_moe, _), t = timed(lambda: train_step(moe, opt_moe, tokens, targets, world))
        times_moe.append(t)
        line = f"step {step:4d}  cross-entropy moe-ep {ce_moe:.4f}"
        if dense is not None:
            (ce_dense, _), t = timed(lambda: train_step(dense, opt_dense, tokens, targets, world))
            times_dense.append(t)
            line += f"  dense {ce_dense:.4f}"
        if (step + 1) % a.eval_every == 0 or step == a.steps - 1:
            line += f"  held-out moe-ep {evaluate(moe, held_out, a, rank, world):.4f}"
            if dense is not None:
                line += f"  dense {evaluate(dense, held_out, a, rank, world):.4f}"
            say(line)
    if not times_moe:
        return
    tokens_per_step = a.batch * a.seq * world
    final_moe = evaluate(moe, held_out, a, rank, world)
    summary = f"phase 2: after {a.steps} steps held-out cross-entropy moe-ep {final_moe:.4f}"
    if dense is not None:
        final_dense = evaluate(dense, held_out, a, rank, world)
        summary += (f", dense (same active parameters) {final_dense:.4f}: moe-ep is "
                    f"{'below' if final_moe < final_dense else 'NOT below'} dense")
    say(summary)
    speed = f"phase 2: training tokens/s (median step): moe-ep {tokens_per_step / statistics.median(times_moe):.0f}"
    if times_dense:
        speed += f", dense {tokens_per_step / statistics.median(times_dense):.0f}"
    say(speed)


def main():
    a = parse_args()
    world_comm = moe_ep.world()
    rank, world = world_comm.rank, world_comm.size
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    if world > 1:
        port = a.port or 20000 + int(os.environ.get("OMPI_MCA_ess_base_jobid", "9500")) % 20000
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)

    def say(text):
        if rank == 0:
            print(text, flush=True)

    ids, vocab = make_corpus(a.seed, a.corpus_chars)
    split = ids.numel() * 9 // 10
    train_ids, held_out = ids[:split], ids[split:]
    blas, reference_blas = torch_baseline.loaded_blas()
    say(f"train_lm: {world} ranks, vocabulary {vocab}, {train_ids.numel()} training characters; "
        f"{a.layers} layers, d={a.d_model}, {a.experts} experts of h={a.d_hidden}, top-{a.top_k}; "
        f"{a.batch}x{a.seq} tokens per rank and step; BLAS {blas}"
        + (" (the reference BLAS: slow)" if reference_blas else ""))

    try:
        moe, reference = build_models(a, vocab, rank, world)
        agree, opt_moe = compare(a, moe, reference, train_ids, rank, world, say)
        if not agree:
            say("train_lm: error: the moe-ep model's losses differ from the PyTorch MoE model's")
            return 1
        del reference
        train_on(a, moe, opt_moe, train_ids, held_out, vocab, rank, world, say)
        return 0
    finally:
        # Gloo's worker threads must be joined while the interpreter is alive: left to exit, one of
        # them may free the last reference to a tensor during finalisation and abort the process.
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
