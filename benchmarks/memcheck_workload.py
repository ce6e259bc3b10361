"""Every kernel variant once, on small shapes, for compute-sanitizer (GPU only):

    python benchmarks/memcheck_workload.py        # compiles and caches the kernels
    compute-sanitizer --tool memcheck python benchmarks/memcheck_workload.py

Run it plainly first: Triton then loads the compiled kernels from its cache, and the sanitized
run spends its time checking rather than compiling (a cold sanitized run took more than 110 s
on an H200)."""

import torch

from fused_swiglu import fp8, launch, swiglu, swiglu_mlp
from fused_swiglu.fp8 import recipe
from fused_swiglu.fp8.decode import weight_only_matmul
from fused_swiglu.fp8.rows_columns import quantize_rows_and_columns
from fused_swiglu.fp8.stacked import fp8_stacked_swiglu_forward, stack_weights_fp8


def gated_kernels():
    # the stacked kernel at every size, so that small shapes reach it too
    launch.TMA_MIN_WORK = 1
    for activation in ("silu", "gelu_tanh", "gelu"):
        for m in (5, 200, 700):  # decode kernel, cuBLAS + pass, stacked kernel
            for transposed in (True, False):
                x = torch.randn(m, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5
                           for n, k in ((688, 256), (688, 256), (256, 688))]
                weights = [w.T if transposed else w.T.contiguous() for w in weights]
                for w in weights:
                    w.requires_grad_()
                w_gate, w_up, w_down = weights
                for recompute in (False, True):
                    swiglu(x, w_gate, w_up, activation=activation,
                           recompute=recompute).sum().backward()
                    swiglu_mlp(x, w_gate, w_up, w_down, activation=activation,
                               recompute=recompute).sum().backward()


def float8_kernels():
    x = torch.randn(37, 200, device="cuda", dtype=torch.bfloat16)
    w_gate, w_up = (torch.randn(160, 200, device="cuda", dtype=torch.bfloat16) * 0.07
                    for _ in range(2))
    for granularity in ("rowwise", "blockwise"):
        if granularity == "rowwise":
            x_q, x_s = fp8.quantize_groups(x, group=None)
            (g_q, g_s), (u_q, u_s) = (recipe.quantize_rowwise(w) for w in (w_gate, w_up))
        else:
            x_q, x_s = fp8.quantize_groups(x, group=128)
            (g_q, g_s), (u_q, u_s) = (recipe.quantize_blockwise(w, (128, 128))
                                      for w in (w_gate, w_up))
        fp8.fp8_swiglu_forward(x_q, x_s, g_q, g_s, u_q, u_s, granularity=granularity,
                               store_preact=True)
    # the stacked kernel on ragged tiles: 300 tokens, d_model 208, d_ff 200
    x = torch.randn(300, 208, device="cuda", dtype=torch.bfloat16)
    w_gate, w_up = (torch.randn(200, 208, device="cuda", dtype=torch.bfloat16) * 0.07
                    for _ in range(2))
    x_q, x_s = fp8.quantize_groups(x, group=None)
    for store_preact in (False, True):
        fp8_stacked_swiglu_forward(x_q, x_s, *stack_weights_fp8(w_gate, w_up),
                                   store_preact=store_preact)
    # the two-way quantizer on ragged tiles, contiguous and transposed, each way alone
    for t in (x, x.t()):
        for rows, columns in ((True, True), (True, False), (False, True)):
            quantize_rows_and_columns(t, rows, columns)
    # quantize_groups in one read and in two (ragged groups, whole rows wider than one chunk)
    wide = torch.randn(37, 9000, device="cuda", dtype=torch.bfloat16)
    for t, group in ((x, None), (x, 128), (x, 100), (wide, None), (wide, 128)):
        fp8.quantize_groups(t, group=group)
    # the decode step's float8-weight products: 16- and 32-token tiles, ragged sizes
    for tokens in (1, 13, 32):
        x = torch.randn(tokens, 208, device="cuda", dtype=torch.bfloat16)
        weights, scales = stack_weights_fp8(w_gate, w_up)
        y = weight_only_matmul(x, weights, scales, gated=True)
        down, down_scales = fp8.quantize_groups(w_gate.t().contiguous(), group=None)
        weight_only_matmul(y, down[None], down_scales[None], gated=False)


if __name__ == "__main__":
    gated_kernels()
    float8_kernels()
    torch.cuda.synchronize()
    print("memcheck workload done")
