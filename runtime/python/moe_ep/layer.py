"""moe_ep.MoELayer: one expert-parallel MoE layer (SPEC.md) as a torch.nn.Module."""
import torch

from . import _moe_ep


def make_config(**fields):
    """A layer configuration from field names of SPEC.md / moe-replay's metadata, e.g.
    make_config(num_experts=8, d_model=64, d_hidden=128, top_k=2, activation="gelu").
    Values are given as Python values or text; a bad one raises moe_ep.Error naming the field."""
    config = _moe_ep.Config()
    for name, value in fields.items():
        config.set(name, _as_text(value))
    return config


def _as_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _register(module, dotted_name, tensor, buffer):
    """Registers `tensor` under a dotted SPEC.md name, making the containers on the way
    ("experts.3.w1.weight": modules experts -> 3 -> w1, parameter weight), so that state_dict()
    and named_parameters() give the SPEC.md names."""
    *path, leaf = dotted_name.split(".")
    for part in path:
        child = module._modules.get(part)
        if child is None:
            child = torch.nn.Module()
            module.add_module(part, child)
        module = child
    if buffer:
        module.register_buffer(leaf, tensor)
    else:
        module.register_parameter(leaf, tensor)


class _MoEFunction(torch.autograd.Function):
    """Forward and backward of the runtime on the tensors' own memory. The parameters are inputs
    so that autograd hands their gradients to them; the runtime reads their values directly."""

    @staticmethod
    def forward(ctx, module, x, *params):
        # A context walked back already is reused: one of the same shape allocates nothing.
        context = module._spare_contexts.pop() if module._spare_contexts else _moe_ep.ForwardContext()
        y, aux, z = module._run_forward(x, context)
        ctx.module = module
        ctx.context = context
        ctx.save_for_backward(x)
        return y, aux, z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, d_aux, d_z):
        (x,) = ctx.saved_tensors
        layer = ctx.module._layer
        dx = torch.empty_like(x)
        layer.backward(x.detach().numpy(), dy.contiguous().numpy(), dx.numpy(), ctx.context,
                       float(d_aux), float(d_z))
        ctx.module._spare_contexts.append(ctx.context)
        ctx.context = None
        # The layer's gradient buffers are rewritten by the next backward: autograd gets copies.
        grads = [torch.from_numpy(grad).clone() for _, grad, _ in layer.gradients()]
        return (None, dx, *grads)


class MoELayer(torch.nn.Module):
    """One expert-parallel MoE layer (SPEC.md). Every rank of groups.ep constructs it and calls
    forward and backward together, each with its own tokens.

    Parameters are this rank's: the router (gate.weight), the shared expert if any, and the
    experts it owns under their global indices (experts.{e}.w1.weight, ...), as in SPEC.md
    section 2; the sigmoid gate's selection bias is a buffer. They are torch tensors over the
    runtime's own memory (zero copy): optimizers update them in place, and load_state_dict()
    writes into the runtime. Replacing a parameter's storage (p.data = ...) would detach it from
    the runtime; forward refuses that.

    forward(x) takes [..., d] float32 and returns (y, aux_loss, z_loss); the losses are scalars
    carrying gradient (through the router). When no gradient is needed (torch.no_grad(), or
    nothing requires grad) the forward runs on one context the layer reuses, so it keeps nothing
    for a backward.
    """

    def __init__(self, config, groups=None):
        super().__init__()
        if groups is None:
            world = _moe_ep.world()
            groups = _moe_ep.ParallelGroups(world, world.size)
        self.groups = groups
        self._layer = _moe_ep.Layer(config, groups)
        self._params = []
        for name, array, _placement in self._layer.parameters():
            param = torch.nn.Parameter(torch.from_numpy(array))
            _register(self, name, param, buffer=False)
            self._params.append(param)
        for name, array, _placement in self._layer.buffers():
            _register(self, name, torch.from_numpy(array), buffer=True)
        self._addresses = [p.data_ptr() for p in self._params]
        self._inference_context = _moe_ep.ForwardContext()
        self._spare_contexts = []
        self._versions = None
        self._last_context = None

    @property
    def config(self):
        return self._layer.config

    @property
    def local_experts(self):
        return self._layer.local_experts

    @property
    def first_expert(self):
        return self._layer.first_expert

    def forward(self, x):
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(f"moe_ep.MoELayer takes float32 CPU tensors, got {x.dtype} on {x.device}")
        for param, address in zip(self._params, self._addresses):
            if param.data_ptr() != address:
                raise RuntimeError("moe_ep.MoELayer: a parameter's storage was replaced; update "
                                   "parameters in place (the runtime computes with their memory)")
        # Every in-place write (an optimizer step, load_state_dict) moves a tensor's version.
        versions = tuple(p._version for p in self._params)
        if versions != self._versions:
            self._layer.parameters_changed()
            self._versions = versions
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).contiguous()
        wants_grad = torch.is_grad_enabled() and (rows.requires_grad or any(p.requires_grad for p in self._params))
        if wants_grad:
            y, aux, z = _MoEFunction.apply(self, rows, *self._params)
        else:
            y, aux, z = self._run_forward(rows.detach(), self._inference_context)
        return y.reshape(shape), aux, z

    def _run_forward(self, rows, context):
        y = torch.empty_like(rows)
        self._layer.forward(rows.detach().numpy(), y.numpy(), context)
        self._last_context = context
        stats = context.stats()
        aux = torch.tensor(stats["aux_loss"], dtype=rows.dtype)
        z = torch.tensor(stats["z_loss"], dtype=rows.dtype)
        return y, aux, z

    def routing(self):
        """The last forward's routing of this rank's tokens: (experts [T, k] int32, weights
        [T, k] float32, kept [T, k] bool)."""
        c = self._last_context
        return (torch.from_numpy(c.selected_experts()), torch.from_numpy(c.selected_weights()),
                torch.from_numpy(c.kept()))

    def stats(self):
        """The last forward's statistics (group-wide counts before and after dropping, drops,
        losses), a dict."""
        return self._last_context.stats()

    def reduce_gradients(self, mean=True):
        """Collective over both groups: completes the parameters' .grad. The router's and the
        shared expert's are summed over the expert-parallel group, then averaged (mean=True) or
        summed over the data-parallel replicas; each expert's over its data-parallel group."""
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._layer.reduce_gradients([p.grad.numpy() for p in self._params], mean)

    def update_selection_bias(self):
        """Auxiliary-loss-free balancing (SPEC.md section 3) from the last forward's counts, summed
        over the data-parallel replicas; collective over the data-parallel group. Nothing to do
        unless gate=sigmoid and bias_update_rate > 0."""
        self._layer.update_selection_bias(self._last_context)
