"""A Python exception on one rank while the other waits in a collective of moe_ep: the job must
end with a non-zero status (moe_ep's sys.excepthook aborts it), never hang."""
import torch

import moe_ep

layer = moe_ep.MoELayer(moe_ep.make_config(num_experts=2, d_model=4, d_hidden=8))
if moe_ep.world().rank == 1:
    raise ValueError("rank 1 fails outside moe-ep")
layer(torch.zeros(3, 4))  # rank 0 waits here for rank 1
