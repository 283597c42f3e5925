#!/usr/bin/python3
"""PyTorch baseline: the same expert-parallel MoE layer written the usual way in PyTorch, timed on
the same configuration and ranks as moe-bench, and the two printed side by side.

Usage (from the repository root, after building moe-bench into build/):

    mpirun --allow-run-as-root -np 2 /usr/bin/python3 apps/torch_baseline.py \
        --tokens 2048 --d-model 512 --d-hidden 1024 --experts 8 --top-k 2

Needs Debian's PyTorch (`apt-get install -y python3-torch`; it works with /usr/bin/python3 only,
not with a pyenv python that may come first on PATH). mpi4py is not needed: each process reads its
rank and the world size from OpenMPI's environment (OMPI_COMM_WORLD_RANK / _SIZE) and the ranks
meet through torch.distributed's TCP rendezvous on 127.0.0.1 (gloo backend, CPU). Run without
mpirun it is one rank.

The PyTorch layer (SPEC.md): router = Linear(d, E, bias=False), softmax, top-k (optionally
renormalised); capacity per expert C = max(min_capacity, ceil(cf * T * k / E)) decided on the
whole local batch, `position` (all first choices in token order, then the second choices, ...) or
`score` drop policy; dispatch as Megatron-core's all-to-all token dispatcher does it: sort the kept
assignments by expert, gather their rows, all_to_all_single with per-peer split sizes (counts
exchanged first), regroup by local expert; each expert is nn.Linear + activation + nn.Linear (or
SwiGLU); the outputs return with the reverse all_to_all and are combined with index_add_ weighted
by the router's probabilities. The all-to-all is an autograd Function (as in DeepSpeed and
fairscale), so autograd runs the whole backward, including the load-balancing loss (computed over
the whole group: assignment counts are all-reduced, each rank differentiates its own tokens' term)
and the z-loss when its coefficient is not 0.

Timing follows moe-bench: --warmup untimed iterations, then --iters timed ones; each iteration is
a barrier, a forward, a backward (dy and the losses' upstream gradients 1, as in moe-bench), each
timed on every rank, and the slowest rank's time counts; figures are medians. tokens/s is all
ranks' tokens over the median forward + median backward time.

torch.set_num_threads(1) on every rank (and OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=1 unless set):
OpenMPI binds each rank to one core here, as it binds moe-bench's ranks, so both sides get one core
per rank.

BLAS: Debian's torch does its fp32 matmuls through the system's libblas.so.3. With only the netlib
reference BLAS installed (the default here) that runs at ~5 GFLOP/s and the comparison says little;
the header line names the BLAS that was loaded and warns about that one. For a fair baseline use
OpenBLAS (~115 GFLOP/s per core here), either installed (`apt-get install libopenblas0-pthread`,
which becomes the system's libblas.so.3) or unpacked for this run only:

    apt-get download libopenblas0-pthread && dpkg -x libopenblas0-pthread_*.deb /tmp/openblas
    mpirun ... -x LD_LIBRARY_PATH=/tmp/openblas/usr/lib/x86_64-linux-gnu/openblas-pthread \
        /usr/bin/python3 apps/torch_baseline.py ...

After the PyTorch part, rank 0 leaves torch.distributed and runs
`mpirun -np P <moe-bench> --json` with the same settings (other ranks exit, freeing their cores;
the child gets an environment without this job's OpenMPI variables and the affinity of the whole
machine, so it lays out its ranks as a top-level mpirun would). --moe-bench none skips it.

--check additionally writes a layer case (SPEC.md section 11) with this run's parameters, inputs
and output gradients, runs moe-replay on it with the same number of ranks, and compares output,
input gradient, router gradient and aux loss with the PyTorch layer's (relative error, expected
around 1e-6: both are fp32).
"""

import argparse
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

# Read by OpenBLAS / OpenMP when torch loads them: one thread per rank.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402 (after the thread settings above)
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "swiglu")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per rank")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--d-hidden", type=int, default=1024)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--capacity-factor", type=float, default=1.25, help="<= 0: dropless")
    p.add_argument("--min-capacity", type=int, default=4)
    p.add_argument("--drop-policy", choices=("position", "score"), default="position")
    p.add_argument("--activation", choices=ACTIVATIONS, default="gelu")
    p.add_argument("--normalize-topk", action="store_true")
    p.add_argument("--aux-loss-coef", type=float, default=0.01)
    p.add_argument("--z-loss-coef", type=float, default=0.0)
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=0,
                   help="rendezvous port on 127.0.0.1 (default: derived from the OpenMPI job id)")
    p.add_argument("--moe-bench", default=os.path.join(REPO, "build", "apps", "moe-bench"),
                   help="moe-bench binary, or 'none' to time PyTorch only")
    p.add_argument("--moe-replay", default=os.path.join(REPO, "build", "apps", "moe-replay"),
                   help="moe-replay binary (for --check)")
    p.add_argument("--mpirun", default="mpirun", help="launcher of moe-bench / moe-replay")
    p.add_argument("--check", action="store_true",
                   help="also compare one forward/backward with moe-replay on the same case")
    a = p.parse_args()
    if a.experts < 1 or not 1 <= a.top_k <= a.experts:
        p.error("need experts >= 1 and 1 <= top-k <= experts")
    if a.tokens < 0 or a.iters < 1 or a.warmup < 0:
        p.error("need tokens >= 0, iters >= 1, warmup >= 0")
    return a


# ---------------------------------------------------------------------------------------------
# The layer


class AllToAll(torch.autograd.Function):
    """all_to_all_single of rows with per-peer split sizes; its backward is the reverse exchange."""

    @staticmethod
    def forward(ctx, rows, out_splits, in_splits):
        ctx.splits = (out_splits, in_splits)
        out = rows.new_empty((sum(out_splits), rows.shape[1]))
        dist.all_to_all_single(out, rows.contiguous(), out_splits, in_splits)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        grad_in = grad.new_empty((sum(in_splits), grad.shape[1]))
        dist.all_to_all_single(grad_in, grad.contiguous(), in_splits, out_splits)
        return grad_in, None, None


def exchange(rows, out_splits, in_splits, world):
    return rows if world == 1 else AllToAll.apply(rows, out_splits, in_splits)


class Expert(nn.Module):
    def __init__(self, d, h, activation):
        super().__init__()
        gated = activation == "swiglu"
        self.w1 = nn.Linear(d, h, bias=not gated)
        self.w2 = nn.Linear(h, d, bias=not gated)
        self.w3 = nn.Linear(d, h, bias=False) if gated else None
        self.activation = activation

    def forward(self, x):
        if self.activation == "swiglu":
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        a = self.w1(x)
        if self.activation == "gelu":
            a = F.gelu(a)
        elif self.activation == "gelu_tanh":
            a = F.gelu(a, approximate="tanh")
        elif self.activation == "relu":
            a = F.relu(a)
        else:
            a = F.silu(a)
        return self.w2(a)


class MoeLayer(nn.Module):
    def __init__(self, a, rank, world):
        super().__init__()
        if a.experts % world:
            raise SystemExit(f"torch_baseline: --experts {a.experts} is not a multiple of {world} ranks")
        self.a, self.rank, self.world = a, rank, world
        self.local = a.experts // world
        self.gate = nn.Linear(a.d_model, a.experts, bias=False)
        self.experts = nn.ModuleList(Expert(a.d_model, a.d_hidden, a.activation) for _ in range(self.local))

    def capacity(self, tokens):
        a = self.a
        if a.capacity_factor <= 0:
            return None
        if tokens == 0:
            return 0
        return max(a.min_capacity, math.ceil(a.capacity_factor * tokens * a.top_k / a.experts))

    def forward(self, x):
        a, E, k, T = self.a, self.a.experts, self.a.top_k, x.shape[0]
        logits = self.gate(x)
        probs = torch.softmax(logits, dim=-1)
        weights, chosen = torch.topk(probs, k, dim=-1)  # descending
        if a.normalize_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)

        # Assignments in GShard order: index j*T + t is choice j of token t.
        expert_of = chosen.t().reshape(-1)
        weight_of = weights.t().reshape(-1)
        token_of = torch.arange(T).repeat(k)
        counts = torch.bincount(expert_of, minlength=E)  # before dropping
        C = self.capacity(T)
        if C is None:
            kept = torch.arange(k * T)
        else:
            if a.drop_policy == "position":
                order = torch.arange(k * T)
            else:  # score: weight descending, ties by token, then choice
                by_token = (token_of * k + torch.arange(k * T) // max(T, 1)).argsort()
                order = by_token[weight_of.detach()[by_token].argsort(descending=True, stable=True)]
            onehot = F.one_hot(expert_of[order], E)
            slot = (onehot.cumsum(0) * onehot).sum(-1) - 1  # place in its expert's queue
            kept = order[slot < C]
        # Sorted by expert, so the rows for each peer (and each of its experts) are contiguous.
        kept = kept[expert_of[kept].argsort(stable=True)]
        rows = x[token_of[kept]]
        send_counts = torch.bincount(expert_of[kept], minlength=E)

        # Counts first: the receiver learns how many rows each peer sends to each local expert.
        if self.world > 1:
            recv_counts = torch.empty_like(send_counts)
            dist.all_to_all_single(recv_counts, send_counts)
        else:
            recv_counts = send_counts
        in_splits = send_counts.view(self.world, self.local).sum(1).tolist()
        out_splits = recv_counts.view(self.world, self.local).sum(1).tolist()
        received = exchange(rows, out_splits, in_splits, self.world)

        # Received blocks are (source rank, local expert); the experts want (local expert, source).
        blocks = torch.split(received, recv_counts.tolist())
        outputs = [None] * len(blocks)
        for e, expert in enumerate(self.experts):
            idx = [p * self.local + e for p in range(self.world)]
            sizes = [blocks[i].shape[0] for i in idx]
            if sum(sizes) == 0:
                for i in idx:
                    outputs[i] = blocks[i]
                continue
            y_e = expert(torch.cat([blocks[i] for i in idx]))
            for i, part in zip(idx, torch.split(y_e, sizes)):
                outputs[i] = part
        returned = exchange(torch.cat(outputs), in_splits, out_splits, self.world)

        y = torch.zeros_like(x).index_add_(0, token_of[kept], returned * weight_of[kept].unsqueeze(1))
        return y, self.losses(logits, probs, counts, T)

    def losses(self, logits, probs, counts, T):
        """This rank's share of the group's losses: summed over the ranks they give SPEC section 7,
        and their gradients with respect to this rank's tokens are exactly the group loss's."""
        a = self.a
        stats = torch.cat([counts.double(), torch.tensor([float(T)], dtype=torch.float64)])
        if self.world > 1:
            dist.all_reduce(stats)
        total = stats[-1].item()
        if total == 0:
            return torch.zeros(()), torch.zeros(())
        f = (stats[:-1] / (total * a.top_k)).float()
        aux = a.aux_loss_coef * a.experts * (f * probs.sum(0)).sum() / total
        z = torch.zeros(())
        if a.z_loss_coef != 0:
            z = a.z_loss_coef * torch.logsumexp(logits, dim=-1).square().sum() / total
        return aux, z


# ---------------------------------------------------------------------------------------------
# Parameters and inputs: full tensors generated from the seed on every rank, so rank 0 can write
# the whole case for --check without gathering anything.


def full_parameters(a):
    g = torch.Generator().manual_seed(a.seed)
    E, d, h = a.experts, a.d_model, a.d_hidden

    def uniform(shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=g) * 2 - 1) * bound

    params = {"gate.weight": uniform((E, d), d)}
    for e in range(E):
        params[f"experts.{e}.w1.weight"] = uniform((h, d), d)
        params[f"experts.{e}.w2.weight"] = uniform((d, h), h)
        if a.activation == "swiglu":
            params[f"experts.{e}.w3.weight"] = uniform((h, d), d)
        else:
            params[f"experts.{e}.w1.bias"] = uniform((h,), d)
            params[f"experts.{e}.w2.bias"] = uniform((d,), h)
    return params


def rank_tensors(a, r):
    g = torch.Generator().manual_seed(a.seed * 1000003 + 17 + r)
    x = torch.randn((a.tokens, a.d_model), generator=g)
    dy = torch.randn((a.tokens, a.d_model), generator=g)
    return x, dy


def load_parameters(layer, params):
    with torch.no_grad():
        layer.gate.weight.copy_(params["gate.weight"])
        for e, expert in enumerate(layer.experts):
            g = layer.rank * layer.local + e
            for name, p in expert.named_parameters():
                p.copy_(params[f"experts.{g}.{name}"])


# ---------------------------------------------------------------------------------------------
# Safetensors (SPEC section 11), for --check


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, t in tensors.items():
        data = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out, dtypes = {}, {"F32": torch.float32, "I64": torch.int64, "F64": torch.float64}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = bytearray(raw[8 + n + begin:8 + n + end])
        out[name] = torch.frombuffer(buf, dtype=dtypes[info["dtype"]]).reshape(info["shape"]) if buf else \
            torch.zeros(info["shape"], dtype=dtypes[info["dtype"]])
    return out


# ---------------------------------------------------------------------------------------------
# Running


def loaded_blas():
    """(path, is_reference) of the BLAS library this process mapped, from /proc/self/maps."""
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if "blas" in line.split()[-1].rsplit("/", 1)[-1]]
    except OSError:
        return "unknown", False
    if not paths:
        return "none found", False
    real = os.path.realpath(paths[0])
    # Debian's netlib reference BLAS lives in .../blas/ (OpenBLAS in .../openblas-*/).
    return real, os.path.basename(os.path.dirname(real)) == "blas"


def child_environment():
    """This job's environment minus its OpenMPI/PMIx variables: a nested mpirun would otherwise
    take them for its own and join (or refuse) the wrong job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "OPAL_", "ORTE_"))}
    env["OMPI_MCA_btl_vader_single_copy_mechanism"] = os.environ.get(
        "OMPI_MCA_btl_vader_single_copy_mechanism", "none")  # faster here (TOOLCHAIN.md)
    return env


def all_cpus():
    """Undo the binding of this rank to one core, for the child mpirun (it binds its own ranks)."""
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except OSError:
        pass


def run_mpi(a, world, argv):
    cmd = [a.mpirun, "-np", str(world), "--oversubscribe"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += argv
    return subprocess.run(cmd, env=child_environment(), preexec_fn=all_cpus, capture_output=True, text=True)


def layer_flags(a):
    flags = ["--tokens", a.tokens, "--d-model", a.d_model, "--d-hidden", a.d_hidden, "--experts", a.experts,
             "--top-k", a.top_k, "--capacity-factor", a.capacity_factor, "--min-capacity", a.min_capacity,
             "--drop-policy", a.drop_policy, "--activation", a.activation, "--aux-loss-coef", a.aux_loss_coef,
             "--z-loss-coef", a.z_loss_coef]
    if a.normalize_topk:
        flags.append("--normalize-topk")
    return [str(f) for f in flags]


def backward(y, aux, z, dy):
    """Autograd from dy and upstream gradient 1 for each loss that depends on the parameters (a
    loss with coefficient 0, or of a rank with no tokens anywhere, is a constant)."""
    outputs, grads = [y], [dy]
    for loss in (aux, z):
        if loss.requires_grad:
            outputs.append(loss)
            grads.append(torch.ones(()))
    torch.autograd.backward(outputs, grads)


def time_torch(a, layer, x, dy):
    fwd, bwd = [], []
    for i in range(a.warmup + a.iters):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        if layer.world > 1:
            dist.barrier()
        start = time.perf_counter()
        y, (aux, z) = layer(x)
        t_fwd = time.perf_counter() - start
        start = time.perf_counter()
        backward(y, aux, z, dy)
        t = torch.tensor([t_fwd, time.perf_counter() - start], dtype=torch.float64)
        if layer.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)  # the slowest rank's time, as moe-bench
        if i >= a.warmup:
            fwd.append(t[0].item())
            bwd.append(t[1].item())
    return 1e3 * statistics.median(fwd), 1e3 * statistics.median(bwd)


def check_against_replay(a, world, result_torch):
    """Rank 0, after torch.distributed is gone: moe-replay on the same case, then compare."""
    params = full_parameters(a)
    xs, dys = zip(*(rank_tensors(a, r) for r in range(world)))
    tmp = tempfile.mkdtemp(prefix="torch_baseline_")
    case, out = os.path.join(tmp, "case.safetensors"), os.path.join(tmp, "result.safetensors")
    meta = {"tokens_per_rank": ",".join([str(a.tokens)] * world), "top_k": str(a.top_k),
            "capacity_factor": repr(a.capacity_factor), "min_capacity": str(a.min_capacity),
            "drop_policy": a.drop_policy, "activation": a.activation,
            "normalize_topk": "true" if a.normalize_topk else "false",
            "aux_loss_coef": repr(a.aux_loss_coef), "z_loss_coef": repr(a.z_loss_coef)}
    write_safetensors(case, {**params, "input": torch.cat(xs), "grad_output": torch.cat(dys)}, meta)
    run = run_mpi(a, world, [a.moe_replay, "--case", case, "--out", out])
    if run.returncode != 0:
        print(f"check: moe-replay failed ({run.returncode}):\n{run.stderr}", file=sys.stderr)
        return False
    ref = read_safetensors(out)
    shutil.rmtree(tmp, ignore_errors=True)

    def rel(a_, b_):
        return ((a_.double() - b_.double()).norm() / max(b_.double().norm().item(), 1e-30)).item()

    rows = [("output", rel(result_torch["output"], ref["output"])),
            ("grad_input", rel(result_torch["grad_input"], ref["grad_input"])),
            ("gate.weight.grad", rel(result_torch["gate.weight.grad"], ref["gate.weight.grad"])),
            ("aux_loss", rel(result_torch["aux_loss"], ref["aux_loss"])),
            ("z_loss", rel(result_torch["z_loss"], ref["z_loss"]))]
    rows += [(f"{name}.grad (rank 0)", rel(g, ref[f"{name}.grad"])) for name, g in result_torch["expert_grads"].items()]
    ok = all(err <= 1e-4 for _, err in rows)
    print(f"check against moe-replay ({world} ranks, relative error, bound 1e-4):")
    for name, err in rows:
        print(f"  {name:<34} {err:.2e}")
    print("check:", "PASSED" if ok else "FAILED")
    return ok


def one_step_for_check(a, layer, x, dy, world, rank):
    """One forward and backward; gathers on rank 0 what moe-replay writes."""
    layer.zero_grad(set_to_none=True)
    x.grad = None
    y, (aux, z) = layer(x)
    backward(y, aux, z, dy)
    aux_total = aux.detach().clone().reshape(1)
    z_total = z.detach().clone().reshape(1)
    gate_grad = layer.gate.weight.grad.clone()
    ys, dxs = [y.detach().clone()], [x.grad.clone()]
    if world > 1:
        dist.all_reduce(aux_total)
        dist.all_reduce(z_total)
        dist.all_reduce(gate_grad)
        ys = [torch.empty_like(ys[0]) for _ in range(world)]
        dxs = [torch.empty_like(dxs[0]) for _ in range(world)]
        dist.all_gather(ys, y.detach().contiguous())
        dist.all_gather(dxs, x.grad.contiguous())
    expert_grads = {f"experts.{e}.{n}": p.grad.clone() for e, ex in enumerate(layer.experts)
                    for n, p in ex.named_parameters()} if rank == 0 else {}
    return {"output": torch.cat(ys), "grad_input": torch.cat(dxs), "gate.weight.grad": gate_grad,
            "aux_loss": aux_total, "z_loss": z_total, "expert_grads": expert_grads}


def main():
    a = parse_args()
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", 0))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", 1))
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.manual_seed(a.seed)

    if world > 1:
        port = a.port or 20000 + int(os.environ.get("OMPI_MCA_ess_base_jobid", "9500")) % 20000
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    layer = MoeLayer(a, rank, world)
    load_parameters(layer, full_parameters(a))
    x, dy = rank_tensors(a, rank)
    x.requires_grad_(True)

    check_data = one_step_for_check(a, layer, x, dy, world, rank) if a.check else None
    torch_fwd, torch_bwd = time_torch(a, layer, x, dy)
    if world > 1:
        dist.destroy_process_group()
    if rank != 0:
        return 0

    ok = check_against_replay(a, world, check_data) if a.check else True
    total_tokens = a.tokens * world
    torch_row = (torch_fwd, torch_fwd + torch_bwd)
    print(f"torch_baseline: {world} ranks x {a.tokens} tokens, d={a.d_model} h={a.d_hidden} E={a.experts} "
          f"k={a.top_k} cf={a.capacity_factor} {a.activation} {a.drop_policy}, "
          f"median of {a.iters} after {a.warmup} warm-up, 1 thread per rank, torch {torch.__version__}")
    blas, reference = loaded_blas()
    print(f"PyTorch BLAS: {blas}")
    if reference:
        print("warning: that is the netlib reference BLAS (~5 GFLOP/s): PyTorch's figures are far below what "
              "it does with OpenBLAS; see the top of this script", file=sys.stderr)

    bench = None
    if a.moe_bench != "none":
        if not os.path.exists(a.moe_bench):
            print(f"moe-bench not found at {a.moe_bench} (build it, or pass --moe-bench PATH | none)", file=sys.stderr)
            return 1
        run = run_mpi(a, world, [a.moe_bench, "--json", "--iters", str(a.iters), "--warmup", str(a.warmup),
                                 "--seed", str(a.seed)] + layer_flags(a))
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        if run.returncode != 0 or not lines:
            print(f"moe-bench failed ({run.returncode}):\n{run.stdout}{run.stderr}", file=sys.stderr)
            return 1
        bench = json.loads(lines[-1])

    def cells(fwd, fwd_bwd):
        tps = total_tokens / (fwd_bwd / 1e3) if fwd_bwd else float("nan")
        return f"{fwd:10.2f} {fwd_bwd:12.2f} {tps:14.0f}"

    print(f"\n{'':<10} {'fwd ms':>10} {'fwd+bwd ms':>12} {'tokens/s':>14}   (tokens/s over fwd+bwd, all ranks)")
    print(f"{'PyTorch':<10} {cells(*torch_row)}")
    if bench is not None:
        fwd = bench["fwd_ms"]
        bwd = bench.get("bwd_ms")  # absent in a moe-bench that times the forward only
        ep_row = (fwd, fwd + bwd if bwd is not None else float("nan"))
        print(f"{'moe-ep':<10} {cells(*ep_row)}")
        speed_fwd = torch_row[0] / ep_row[0]
        speed_all = torch_row[1] / ep_row[1] if bwd is not None else float("nan")
        print(f"{'speedup':<10} {speed_fwd:9.2f}x {speed_all:11.2f}x   (PyTorch time / moe-ep time)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
