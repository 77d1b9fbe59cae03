#!/usr/bin/env python3
"""PyTorch reference for bench/gpu: the TopK SAE training step as EleutherAI sparsify does it.

Encoder (sparsify's FusedEncoder): x - b_dec, dense Linear under bf16 autocast, ReLU, torch.topk;
its backward touches only the selected latents (input gradient by embedding_bag over W_enc, W_enc
and b_enc gradients by index_add). Decoder: sparsify's eager decoder (its fallback without Triton),
F.embedding_bag over W_dec with the codes as per-sample weights, whose native backward touches only
the selected rows (grouped by latent for W_dec's gradient, one gathered row per code for the code
gradients) without materialising [batch, k, dIn], as sparsify's Triton kernel. Loss: FVU. Optimizer: torch.optim.Adam. Before the step the decoder gradient loses its
component along each decoder row; after it, rows are renormalised. The batch is already on the
device (saekit's step also uploads it from host memory). Eager mode (no torch.compile).

First checks its sparse backward passes against autograd through the dense step (float64, CPU;
`--check` does only that, and runs without a GPU). Prints machine-readable lines per shape: impl=torch is sparsify's step; impl=torch-dense lets
autograd run the encoder's backward densely (two more dense GEMMs), for comparison.
  BENCH impl=torch dIn=.. numLatents=.. k=.. batch=.. tokens_per_s=.. step_ms=.. topk_ms=.. topk_f32_ms=..
    [topk_same_ms=..] gemm_ms=.. linear_ms=..
"""
import argparse
import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F


def bf16_autocast(t):
    """bf16 autocast for CUDA tensors; nothing on the CPU (--check), where torch may lack CUDA."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if t.is_cuda else contextlib.nullcontext()


def decode(idx, acts, W_dec):
    """out[n] = sum_j acts[n, j] * W_dec[idx[n, j]]: sparsify's eager_decode. Autograd's own backward
    of embedding_bag is sparse; a hand-written one that gathers [rows, k, dIn] blocks of rows and
    contributions (as this script had) moves several times the bytes of sparsify's decoder."""
    return F.embedding_bag(idx, W_dec, per_sample_weights=acts, mode="sum")


class SparseEncode(torch.autograd.Function):
    """sparsify's FusedEncoder: a dense bf16 forward, then a backward over the selected latents only."""

    @staticmethod
    def forward(ctx, inp, W, b, k):
        with bf16_autocast(inp):
            pre = F.linear(inp, W, b)
        vals, idx = F.relu(pre).topk(k, sorted=False)
        vals = vals.to(inp.dtype)  # float32 on the GPU (pre is bf16 under autocast)
        ctx.save_for_backward(inp, W, vals, idx)
        ctx.mark_non_differentiable(idx)
        return vals, idx

    @staticmethod
    def backward(ctx, grad_vals, grad_idx):
        inp, W, vals, idx = ctx.saved_tensors
        # ReLU: no gradient through a zero code (saekit's exact gradient; sparsify's own backward
        # passes it through a selected zero code, which changes no timing worth measuring).
        g = grad_vals.to(inp.dtype) * (vals > 0)
        grad_in = F.embedding_bag(idx, W, per_sample_weights=g, mode="sum")
        grad_W = torch.zeros_like(W)
        d = W.shape[1]
        block = max(1, (1 << 28) // (idx.shape[1] * d))
        for r0 in range(0, idx.shape[0], block):
            i, gg, xx = idx[r0:r0 + block], g[r0:r0 + block], inp[r0:r0 + block]
            grad_W.index_add_(0, i.reshape(-1), (gg.unsqueeze(-1) * xx.unsqueeze(1)).reshape(-1, d))
        grad_b = torch.zeros(W.shape[0], device=W.device, dtype=W.dtype).index_add_(0, idx.reshape(-1), g.reshape(-1))
        return grad_in, grad_W, grad_b, None


def load_matrix(path, dtype, rows, cols):
    """A raw [rows, cols] matrix of `dtype` (torch.float32 or torch.bfloat16) from `path`, on the CPU;
    a file of another size is refused."""
    want = rows * cols * torch.tensor([], dtype=dtype).element_size()
    have = os.path.getsize(path)
    if have != want:
        raise ValueError(f"{path}: expected {want} bytes ([{rows}, {cols}] {dtype}) but the file has {have}")
    return torch.from_file(path, shared=False, size=rows * cols, dtype=dtype).view(rows, cols)


def run(d_in, m, k, batch, reps, device, sparse_encoder=True, report=True, topk_matrix=None):
    """Times the step (and its TopK and GEMM alone); topk_matrix: (path, dtype) of a raw [batch, m]
    matrix to time torch.topk on too (topk_same_ms)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    W_enc = torch.nn.Parameter(torch.randn(m, d_in, device=device) / d_in**0.5)
    b_enc = torch.nn.Parameter(torch.zeros(m, device=device))
    W_dec = torch.nn.Parameter(W_enc.data.clone())
    b_dec = torch.nn.Parameter(torch.zeros(d_in, device=device))
    with torch.no_grad():
        W_dec /= W_dec.norm(dim=1, keepdim=True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4)
    x = torch.randn(batch, d_in, device=device)

    def step():
        if sparse_encoder:
            top_acts, top_idx = SparseEncode.apply(x - b_dec, W_enc, b_enc, k)
        else:
            with bf16_autocast(x):
                pre = F.linear(x - b_dec, W_enc, b_enc)
            top_acts, top_idx = F.relu(pre).topk(k, sorted=False)
        out = decode(top_idx, top_acts.float(), W_dec) + b_dec
        e = x - out
        total_variance = (x - x.mean(0)).pow(2).sum()
        fvu = e.pow(2).sum() / total_variance
        opt.zero_grad(set_to_none=True)
        fvu.backward()
        with torch.no_grad():
            parallel = (W_dec.grad * W_dec).sum(dim=1, keepdim=True)
            W_dec.grad.sub_(parallel * W_dec)
        opt.step()
        with torch.no_grad():
            # In place (div_): an augmented assignment would make W_dec local to step().
            W_dec.div_(W_dec.norm(dim=1, keepdim=True).clamp_min(torch.finfo(W_dec.dtype).eps))
        return fvu

    def time_median(fn, warmup=2):
        """The median seconds of `reps` calls of fn after `warmup` untimed ones, the device synced around each."""
        ts = []
        for r in range(reps + warmup):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if r >= warmup:
                ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    step_s = time_median(step, warmup=3)

    with torch.no_grad(), bf16_autocast(x):
        pre = F.relu(F.linear(x - b_dec, W_enc, b_enc))
    pre32 = pre.float()

    def time_topk(t):
        return time_median(lambda: t.topk(k, sorted=False))

    topk_s, topk32_s = time_topk(pre), time_topk(pre32)
    # torch.topk on the caller's matrix (ReLU'd, as pre is), so both sides select from the same
    # values: bench/torch-cpu.ts writes the pre-activations saekit's first step selects from (float32),
    # bench/gpu/run.sh the bf16 matrix bench_step.cu times TopK alone on.
    same = ""
    if topk_matrix is not None:
        shared = load_matrix(*topk_matrix, batch, m).to(device).relu_()
        same = f" topk_same_ms={time_topk(shared) * 1e3:.3f}"
        del shared

    # The encoder-shaped GEMM alone, as saekit's 'gemm ms' is timed: [batch, dIn] x [dIn, m] into a
    # preallocated output, no bias, in the step's GEMM dtype (bf16 on CUDA, as autocast runs it;
    # float32 on the CPU). F.linear as the step calls it (a fresh output, the bias added) beside it.
    with torch.no_grad():
        gemm_dtype = torch.bfloat16 if device == "cuda" else torch.float32
        xg, Wg = x.to(gemm_dtype), W_enc.detach().to(gemm_dtype)
        out = torch.empty(batch, m, device=device, dtype=gemm_dtype)
        gemm_s = time_median(lambda: torch.mm(xg, Wg.t(), out=out))
        with bf16_autocast(x):
            linear_s = time_median(lambda: F.linear(x, W_enc, b_enc))
        del xg, Wg, out
    if report:
        print(
            f"BENCH impl={'torch' if sparse_encoder else 'torch-dense'} dIn={d_in} numLatents={m} k={k} batch={batch} "
            f"precision={'bf16-autocast' if device == 'cuda' else 'fp32'} device={device} threads={torch.get_num_threads()} "
            f"tokens_per_s={batch / step_s:.0f} step_ms={step_s * 1e3:.3f} topk_ms={topk_s * 1e3:.3f} "
            f"topk_f32_ms={topk32_s * 1e3:.3f}{same} gemm_ms={gemm_s * 1e3:.3f} linear_ms={linear_s * 1e3:.3f}",
            flush=True,
        )
    del W_enc, b_enc, W_dec, b_dec, opt, x, pre, pre32
    if device == "cuda":
        torch.cuda.empty_cache()


def check():
    """The sparse backward passes against autograd through the dense step, in float64 on the CPU,
    at odd sizes (fewer positive pre-activations than k in some rows included)."""
    worst = 0.0
    for seed, (d_in, m, k, n) in enumerate(((13, 37, 5, 23), (7, 64, 9, 31), (24, 11, 11, 5))):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
        params = [
            torch.randn(m, d_in, generator=g, dtype=torch.float64) / d_in**0.5,
            torch.randn(m, generator=g, dtype=torch.float64) - 0.5,  # negative biases: some rows have < k positive
            torch.randn(m, d_in, generator=g, dtype=torch.float64),
            torch.randn(d_in, generator=g, dtype=torch.float64) * 0.1,
        ]

        def grads(sparse):
            W_enc, b_enc, W_dec, b_dec = [p.clone().requires_grad_() for p in params]
            if sparse:
                vals, idx = SparseEncode.apply(x - b_dec, W_enc, b_enc, k)
                out = decode(idx, vals, W_dec) + b_dec
            else:
                vals, idx = F.relu(F.linear(x - b_dec, W_enc, b_enc)).topk(k, sorted=False)
                codes = torch.zeros(n, m, dtype=x.dtype).scatter(1, idx, vals)
                out = codes @ W_dec + b_dec
            fvu = (x - out).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
            fvu.backward()
            return fvu.item(), [t.grad for t in (W_enc, b_enc, W_dec, b_dec)]

        f_s, g_s = grads(True)
        f_d, g_d = grads(False)
        assert abs(f_s - f_d) <= 1e-12 * abs(f_d), (f_s, f_d)
        for name, a, b in zip(("W_enc", "b_enc", "W_dec", "b_dec"), g_s, g_d):
            scale = float(b.abs().max()) or 1.0
            err = float((a - b).abs().max()) / scale
            worst = max(worst, err)
            assert err < 1e-10, f"{name} gradient differs at {(d_in, m, k, n)}: relative {err:.3g}"
    # The decoder's backward allocates nothing of [rows, k, dIn] (sparsify's kernel does not either):
    # a reference that does times more memory traffic than the step it stands for.
    n, m, d_in, k = 256, 512, 64, 16
    W_dec = torch.randn(m, d_in, requires_grad=True)
    acts = torch.rand(n, k, requires_grad=True)
    idx, grad = torch.randint(0, m, (n, k)), torch.randn(n, d_in)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        decode(idx, acts, W_dec).backward(grad)
    largest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    assert largest < n * k * d_in * 4 // 2, f"the decoder backward allocates {largest} bytes at once: [rows, k, dIn] is {n * k * d_in * 4}"
    # The matrices saekit hands over load as written (bf16 as bench_step.cu writes them, float32
    # as bench/torch-cpu.ts does), and a file of another size is refused.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for dtype in (torch.bfloat16, torch.float32):
            want = torch.randn(7, 13).to(dtype)
            path = f"{tmp}/m.raw"
            bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
            want.view(bits).numpy().tofile(path)
            assert torch.equal(load_matrix(path, dtype, 7, 13), want), dtype
            try:
                load_matrix(path, dtype, 7, 12)
                raise AssertionError("a file of another size was read")
            except ValueError as e:
                assert "expected" in str(e), e
    # The timed step itself runs (both variants, a tiny shape on the CPU, nothing printed): a
    # Python error there would otherwise first show on the GPU machine.
    for sparse in (True, False):
        run(16, 64, 4, 32, 1, "cpu", sparse_encoder=sparse, report=False)
    print(f"CHECK ok: sparse encoder and decoder backward match dense autograd (worst relative error {worst:.2g}); the decoder backward materialises no [rows, k, dIn]; the step runs")


def parse_shapes(text):
    """'dIn,numLatents,k,batch;...' -> [(dIn, numLatents, k, batch), ...], each a positive integer."""
    shapes = []
    for part in text.split(";"):
        fields = part.split(",")
        if len(fields) != 4 or not all(f.strip().isdigit() and int(f) > 0 for f in fields):
            raise argparse.ArgumentTypeError(f"--shapes wants 'dIn,numLatents,k,batch' groups joined by ';', but received '{part}'")
        shapes.append(tuple(int(f) for f in fields))
    if any(k > m for _, m, k, _ in shapes):
        raise argparse.ArgumentTypeError(f"--shapes: k must be at most numLatents, but received '{text}'")
    return shapes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check", action="store_true", help="check the sparse backward passes on the CPU and exit")
    ap.add_argument("--cpu", action="store_true", help="time the steps on the CPU (bench/torch-cpu.ts): fp32, no autocast")
    ap.add_argument("--shapes", type=parse_shapes, default=None, help="with --cpu: 'dIn,numLatents,k,batch;...'")
    ap.add_argument("--threads", type=int, default=0, help="with --cpu: torch's intra-op threads (0: torch's default)")
    ap.add_argument("--reps", type=int, default=0, help="timed steps per variant (0: 3 with --quick, else 10)")
    ap.add_argument("--select-dir", default=None,
                    help="on CUDA: a folder holding select-8192-<numLatents>.bf16 (bench_step.cu's TopK-alone matrices); torch.topk is timed on each too (topk_same_ms)")
    ap.add_argument("--topk-matrices", default=None,
                    help="with --cpu: files of raw float32 [batch, numLatents] matrices, one per --shapes group, joined by ';'; torch.topk is timed on each too (topk_same_ms)")
    args = ap.parse_args()
    # The backward passes are checked first (on the CPU, about a second): a wrong reference would
    # time less work than the step it stands for.
    check()
    if args.check:
        return
    reps = args.reps or (3 if args.quick else 10)
    if args.cpu:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads", flush=True)
        shapes = args.shapes or ((768, 24576, 32, 4096),)
        matrices = args.topk_matrices.split(";") if args.topk_matrices else [None] * len(shapes)
        if len(matrices) != len(shapes):
            ap.error(f"--topk-matrices names {len(matrices)} files for {len(shapes)} shapes")
        for (d_in, m, k, batch), matrix in zip(shapes, matrices):
            same = (matrix, torch.float32) if matrix else None
            run(d_in, m, k, batch, reps, "cpu", topk_matrix=same)
            run(d_in, m, k, batch, reps, "cpu", sparse_encoder=False, topk_matrix=same)
        return
    if not torch.cuda.is_available():
        print("SKIP: torch sees no CUDA device")
        return
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    torch.set_float32_matmul_precision("high")  # as sparsify sets it
    for shape in ((768, 24576, 32), (4096, 65536, 64)):
        # The bf16 matrix saekit's TopK alone ran on (bench_step.cu), where run.sh kept it.
        select = f"{args.select_dir}/select-8192-{shape[1]}.bf16" if args.select_dir else None
        same = (select, torch.bfloat16) if select and os.path.exists(select) else None
        try:
            run(*shape, 8192, reps, "cuda", topk_matrix=same)
        except Exception as e:  # the headline line must not cost the dense one
            print(f"torch sparse-encoder step failed at {shape}: {type(e).__name__}: {e}", flush=True)
        run(*shape, 8192, reps, "cuda", sparse_encoder=False, topk_matrix=same)


if __name__ == "__main__":
    main()
