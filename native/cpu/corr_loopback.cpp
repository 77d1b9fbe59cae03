#include "corr_loopback.h"

#include <algorithm>
#include <cstring>

#include "../core/error.h"
#include "cpu_backend.h"
#include "sparse_corr.h"

namespace sk::cpu {

namespace {

// Copies the caller's codes into a store (the kernel consumes its store) and runs the CPU kernel.
int run(sk_status* st, int device, const sk_corr_codes* c, const sk_corr_opts* o, sk_corr_out* out) {
  SK_SLOT(st, {
    SK_CHECK(device == 0, ErrorCode::Device, "loopback has one device (0) but ", device, " was asked for");
    SparseCorrStore store(c->nA, c->nB, 0, 0, 0);
    const int64_t T = c->tokens, EA = c->ptr_a[T], EB = c->ptr_b[T];
    store.rows = T;
    store.pa.assign(c->ptr_a, c->ptr_a + T + 1);
    store.pb.assign(c->ptr_b, c->ptr_b + T + 1);
    store.ia.assign(c->idx_a, c->idx_a + EA);
    store.va.assign(c->val_a, c->val_a + EA);
    store.ib.assign(c->idx_b, c->idx_b + EB);
    store.vb.assign(c->val_b, c->val_b + EB);
    store.sa.assign(c->sum_a, c->sum_a + c->nA);
    store.saa.assign(c->sumsq_a, c->sumsq_a + c->nA);
    store.sb.assign(c->sum_b, c->sum_b + c->nB);
    store.sbb.assign(c->sumsq_b, c->sumsq_b + c->nB);
    SparseCorrOptions opt;
    opt.full = o->full != 0;
    opt.top = o->top;
    opt.reverse = o->reverse != 0;
    opt.scale = o->scale;
    SparseCorrResult res;
    res.r = out->r;
    res.topIndex = out->top_index;
    res.topR = out->top_r;
    res.revIndex = out->rev_index;
    res.revR = out->rev_r;
    sparse_correlation(store, opt, res, cpu_pool());
    std::copy(res.constantA.begin(), res.constantA.end(), out->constant_a);
    std::copy(res.constantB.begin(), res.constantB.end(), out->constant_b);
  });
}

const sk_corr_i kLoopbackCorr = {
    /* .api_version = */ SK_CORR_API_VERSION,
    /* .run         = */ run,
};

}  // namespace

const sk_corr_i* loopback_corr_api() { return &kLoopbackCorr; }

}  // namespace sk::cpu
