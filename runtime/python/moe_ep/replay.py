"""python3 -m moe_ep.replay: moe-replay through the PyTorch module (SPEC.md section 11).

    mpirun -np P python3 -m moe_ep.replay --case CASE.safetensors --out RESULT.safetensors [--case ... --out ...]

The same contract as moe-replay, with its execution options: each rank loads its experts and its
tokens of the case into a moe_ep.MoELayer, runs forward, and, when the case has grad_output,
backward through autograd with loss = sum(y * grad_output) + aux_loss + z_loss; rank 0 writes the
result. --dp-size N runs N data-parallel copies of the case's group (gradients averaged).
Several --case/--out pairs run one after the other in the same job (importing torch once).
"""
import argparse
import sys

import torch

import moe_ep

PROGRAM = "moe_ep.replay"


class UsageError(Exception):
    pass


def parse_options(argv):
    parser = argparse.ArgumentParser(prog=f"mpirun -np P python3 -m {PROGRAM}",
                                     description="run a layer case on P ranks through the PyTorch module")
    parser.add_argument("--case", required=True, action="append",
                        help="layer case (safetensors, SPEC.md section 11); may be given several times")
    parser.add_argument("--out", required=True, action="append",
                        help="result file to write (safetensors), one per --case, in the same order")
    parser.add_argument("--dp-size", type=int, default=1,
                        help="data-parallel copies of the expert-parallel group (the job has dp-size x P ranks)")
    execution = [f for f in moe_ep.config_fields() if f["kind"] == "execution"]
    for field in execution:
        switch = field["default"] == "false"
        parser.add_argument("--" + field["option"].replace("_", "-"), dest=field["name"], default=field["default"],
                            nargs="?" if switch else None, const="true" if switch else None, help=field["help"])
    parser.add_argument("--watchdog-seconds", type=float, default=300.0,
                        help="abort the job when a collective has not completed after this long; 0 turns it off")
    options = parser.parse_args(argv)
    if len(options.case) != len(options.out):
        raise UsageError(f"{len(options.case)} --case but {len(options.out)} --out: give one --out per --case")
    if options.dp_size < 1:
        raise UsageError("--dp-size must be >= 1")
    if not options.watchdog_seconds >= 0 or options.watchdog_seconds == float("inf"):
        raise UsageError("--watchdog-seconds must be a finite number >= 0")
    options.execution = {f["name"]: (f["option"], getattr(options, f["name"])) for f in execution}
    return options


def apply_execution(options, config):
    for name, (option, text) in options.execution.items():
        try:
            config.set(name, text)
        except moe_ep.Error as e:  # the field's message starts with its name: say the option instead
            message = str(e)
            if message.startswith(name):
                message = "--" + option.replace("_", "-") + message[len(name):]
            raise UsageError(message) from e


def rows_of(case, name, rank):
    tokens = case["tokens_per_rank"]
    first = sum(tokens[:rank])
    return torch.from_numpy(case["tensors"][name][first:first + tokens[rank]])


def gather(ep, tensor):
    return moe_ep._moe_ep.gather_to_root(ep, tensor.detach().contiguous().reshape(-1).numpy())


def replay(options, world, case_path, out_path):
    case = moe_ep._moe_ep.read_layer_case(case_path, world, options.dp_size)
    groups = moe_ep.ParallelGroups(world, world.size // options.dp_size)
    ep = groups.ep
    config = case["config"]
    apply_execution(options, config)
    layer = moe_ep.MoELayer(config, groups)
    tensors = case["tensors"]
    layer.load_state_dict({name: torch.from_numpy(tensors[name]) for name in layer.state_dict()})

    x = rows_of(case, "input", ep.rank).clone().requires_grad_(True)
    y, aux, z = layer(x)
    stats = layer.stats()
    layer.update_selection_bias()

    out = {}
    num_experts = int(config.get("num_experts"))
    out["output"] = gather(ep, y).reshape(-1, x.shape[1])
    has_grad = "grad_output" in tensors
    if has_grad:
        loss = (y * rows_of(case, "grad_output", ep.rank)).sum() + aux + z
        loss.backward()
        layer.reduce_gradients(mean=True)
        out["grad_input"] = gather(ep, x.grad).reshape(-1, x.shape[1])
        params = dict(layer.named_parameters())
        out["gate.weight.grad"] = params["gate.weight"].grad.numpy()
        # Each expert's gradient lives on its owner: gather every parameter kind in expert order.
        kinds = sorted(n[len("experts.0."):] for n in tensors if n.startswith("experts.0."))
        for kind in kinds:
            local = [params[f"experts.{e}.{kind}"].grad.reshape(-1)
                     for e in range(layer.first_expert, layer.first_expert + layer.local_experts)]
            every = gather(ep, torch.cat(local) if local else torch.zeros(0))
            shape = tensors[f"experts.0.{kind}"].shape
            for e, piece in enumerate(every.reshape(num_experts, -1) if ep.rank == 0 else []):
                out[f"experts.{e}.{kind}.grad"] = piece.reshape(shape)
        for name, param in params.items():
            if name.startswith("shared_expert."):
                out[name + ".grad"] = param.grad.numpy()
    for name, buffer in layer.named_buffers():
        out[name] = buffer.numpy()
    out["aux_loss"] = aux.detach().reshape(1).numpy()
    out["z_loss"] = z.detach().reshape(1).numpy()
    out["expert_counts"] = torch.tensor(stats["expert_counts"], dtype=torch.int64).numpy()
    out["expert_kept"] = torch.tensor(stats["expert_kept"], dtype=torch.int64).numpy()
    moe_ep._moe_ep.write_result(world, out_path, out if world.rank == 0 else {}, case["metadata"])
    if world.rank == 0:
        total = sum(case["tokens_per_rank"])
        top_k = int(config.get("top_k"))
        copies = f" x {options.dp_size} data-parallel copies" if options.dp_size > 1 else ""
        print(f"{PROGRAM}: {total} tokens on {ep.size} ranks{copies}, {config.summary()}\n"
              f"{PROGRAM}: kept {total * top_k - stats['dropped_assignments']} assignments, dropped "
              f"{stats['dropped_assignments']} ({stats['dropped_tokens']} tokens lost every choice); "
              f"aux_loss {stats['aux_loss']}, z_loss {stats['z_loss']}\n"
              f"{PROGRAM}: wrote {out_path}"
              + (" with gradients" if has_grad else " (no grad_output: forward only)"), flush=True)


def main(argv=None):
    try:
        options = parse_options(sys.argv[1:] if argv is None else argv)
        world = moe_ep.world()
        world.set_timeout(options.watchdog_seconds)
        for case_path, out_path in zip(options.case, options.out):
            replay(options, world, case_path, out_path)
    except moe_ep.Error as e:  # agreed by every rank: each prints it and exits
        sys.stderr.write(f"{PROGRAM}: error: {e}\n")
        return 1
    except UsageError as e:  # every rank parses the same command line
        sys.stderr.write(f"{PROGRAM}: error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
