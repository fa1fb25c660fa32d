// The fast training ops on CUDA: BatchNorm (+ ReLU) forward and backward, a bottleneck block's
// tail (SE scale + residual add + ReLU), the SE squeeze (global average pool), and Nesterov SGD
// with weight decay fused with the EMA update.
//
// Activations are f32 or bf16 (suffix _f32 / _bf16); every statistic, sum and coefficient is
// f32 or f64, as the CPU ops in src/ops/*.rs compute them (those are the reference the GPU
// test compares against). Layouts are contiguous NCHW, viewed as [n, c, s] with s = H*W.
//
// Build: nvcc --ptx by build.rs when the `cuda` feature is on; loaded with candle's
// CudaDevice::get_or_load_custom_func.

#include <cuda_bf16.h>
#include <stdint.h>

// ---------------------------------------------------------------------------------------------
// Loads and stores: all arithmetic is f32. Element counts stay below 2^31 (the host checks), so
// indices are 32-bit: their division is a few instructions where 64-bit division is a software
// routine, and these kernels divide once per element.

__device__ __forceinline__ float ld(const float* p, unsigned i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, unsigned i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void st(float* p, unsigned i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, unsigned i, float v) {
    p[i] = __float2bfloat16_rn(v);
}
// max(v, 0) that keeps a NaN, as PyTorch's ReLU does (fmaxf returns 0 for a NaN and would hide
// a diverged run).
__device__ __forceinline__ float relu_keep_nan(float v) { return v < 0.0f ? 0.0f : v; }

// ---------------------------------------------------------------------------------------------
// Block reductions. Blocks have a multiple of 32 threads, at most 1024.

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Sum of `v` over the block; the result is valid in thread 0.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // `part` may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = (threadIdx.x < warps) ? part[threadIdx.x] : 0.0f;
    if (warp == 0) v = warp_sum(v);
    return v;
}

// Welford state: count, mean, sum of squared deviations.
struct Welford {
    float n, mean, m2;
};

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    const float n = a.n + b.n;
    if (n == 0.0f) return a;
    const float delta = b.mean - a.mean;
    const float wb = b.n / n;
    Welford r;
    r.n = n;
    r.mean = a.mean + delta * wb;
    r.m2 = a.m2 + b.m2 + delta * delta * a.n * wb;
    return r;
}

__device__ __forceinline__ Welford warp_welford(Welford w) {
    for (int o = 16; o > 0; o >>= 1) {
        Welford other;
        other.n = __shfl_down_sync(0xffffffffu, w.n, o);
        other.mean = __shfl_down_sync(0xffffffffu, w.mean, o);
        other.m2 = __shfl_down_sync(0xffffffffu, w.m2, o);
        w = welford_merge(w, other);
    }
    return w;
}

// Welford state over the block; valid in thread 0.
__device__ Welford block_welford(Welford w) {
    __shared__ float pn[32], pm[32], pq[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    w = warp_welford(w);
    __syncthreads();
    if (lane == 0) {
        pn[warp] = w.n;
        pm[warp] = w.mean;
        pq[warp] = w.m2;
    }
    __syncthreads();
    const int warps = blockDim.x >> 5;
    if (warp == 0) {
        Welford v = {0.0f, 0.0f, 0.0f};
        if (threadIdx.x < warps) {
            v.n = pn[threadIdx.x];
            v.mean = pm[threadIdx.x];
            v.m2 = pq[threadIdx.x];
        }
        w = warp_welford(v);
    }
    return w;
}

// ---------------------------------------------------------------------------------------------
// BatchNorm, training forward.
//
// 1. bn_stats_partial: grid (c, splits). Block (ch, k) folds the elements i = k*blockDim + t,
//    stepping splits*blockDim, of channel ch's n*s values into one Welford state, written to
//    partial[(ch*splits + k)*3 ..].
// 2. bn_stats_finalize: one thread per channel merges its splits in f64, then writes
//    saved[ch] = (mean, invstd), coef[ch] = (scale, shift) and updates the running statistics in
//    place as PyTorch does (momentum, unbiased running variance).
// 3. bn_apply: y = x*scale + shift (then ReLU), elementwise; eval mode uses it alone.

template <typename T>
__device__ void bn_stats_partial(const T* x, int n, int c, int s, float* partial) {
    const unsigned ch = blockIdx.x, splits = gridDim.y;
    const unsigned total = (unsigned)n * (unsigned)s, us = (unsigned)s;
    Welford w = {0.0f, 0.0f, 0.0f};
    for (unsigned i = blockIdx.y * blockDim.x + threadIdx.x; i < total;
         i += (unsigned)splits * blockDim.x) {
        const unsigned img = i / us, sp = i - img * us;
        const float v = ld(x, (img * (unsigned)c + ch) * us + sp);
        w.n += 1.0f;
        const float d = v - w.mean;
        w.mean += d / w.n;
        w.m2 += d * (v - w.mean);
    }
    w = block_welford(w);
    if (threadIdx.x == 0) {
        float* out = partial + ((int64_t)ch * splits + blockIdx.y) * 3;
        out[0] = w.n;
        out[1] = w.mean;
        out[2] = w.m2;
    }
}

extern "C" __global__ void bn_stats_partial_f32(const float* x, int n, int c, int s,
                                                float* partial) {
    bn_stats_partial(x, n, c, s, partial);
}
extern "C" __global__ void bn_stats_partial_bf16(const __nv_bfloat16* x, int n, int c, int s,
                                                 float* partial) {
    bn_stats_partial(x, n, c, s, partial);
}

extern "C" __global__ void bn_stats_finalize(const float* partial, int c, int splits, double eps,
                                             double momentum, const float* gamma,
                                             const float* beta, float* running_mean,
                                             float* running_var, float* saved, float* coef) {
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double n = 0.0, mean = 0.0, m2 = 0.0;
    for (int k = 0; k < splits; ++k) {
        const float* p = partial + ((int64_t)ch * splits + k) * 3;
        const double nb = p[0];
        if (nb == 0.0) continue;
        const double tot = n + nb, delta = (double)p[1] - mean;
        mean += delta * nb / tot;
        m2 += (double)p[2] + delta * delta * n * nb / tot;
        n = tot;
    }
    const double var = n > 0.0 ? m2 / n : 0.0;
    const double invstd = 1.0 / sqrt(var + eps);
    const double scale = (double)gamma[ch] * invstd;
    saved[2 * ch] = (float)mean;
    saved[2 * ch + 1] = (float)invstd;
    coef[2 * ch] = (float)scale;
    coef[2 * ch + 1] = (float)((double)beta[ch] - mean * scale);
    const double m = momentum;
    const double unbias = n > 1.0 ? n / (n - 1.0) : n;
    running_mean[ch] = (float)((1.0 - m) * running_mean[ch] + m * (double)(float)mean);
    running_var[ch] = (float)((1.0 - m) * running_var[ch] + m * unbias * (double)(float)var);
}

// y = x*scale[step*ch] + shift[step*ch], then ReLU when `relu`: `step` 2 reads the (scale,
// shift) pairs of bn_stats_finalize (shift = scale + 1), `step` 1 two separate [c] arrays.
template <typename T>
__device__ void bn_apply(const T* x, T* y, const float* scale, const float* shift, int step,
                         int c, int s, int64_t total, int relu) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)total;
         i += gridDim.x * blockDim.x) {
        const unsigned ch = (i / (unsigned)s) % (unsigned)c;
        float v = fmaf(ld(x, i), scale[step * ch], shift[step * ch]);
        if (relu) v = relu_keep_nan(v);
        st(y, i, v);
    }
}

extern "C" __global__ void bn_apply_f32(const float* x, float* y, const float* scale,
                                        const float* shift, int step, int c, int s,
                                        int64_t total, int relu) {
    bn_apply(x, y, scale, shift, step, c, s, total, relu);
}
extern "C" __global__ void bn_apply_bf16(const __nv_bfloat16* x, __nv_bfloat16* y,
                                         const float* scale, const float* shift, int step, int c,
                                         int s, int64_t total, int relu) {
    bn_apply(x, y, scale, shift, step, c, s, total, relu);
}

// ---------------------------------------------------------------------------------------------
// BatchNorm, training backward: with g = dy (zero where the fused ReLU's output was zero, which
// is recomputed from x with the forward's own fmaf, so the mask is the forward's exactly):
//   dbeta = Σg, dgamma = invstd·Σg(x − μ),
//   dx = a·g + b·(x − μ) + d, a = γ·invstd, b = −a·invstd·dgamma/M, d = −a·dbeta/M.
// 1. bn_bwd_partial: grid (c, splits), partial[(ch*splits + k)*2 ..] = (Σg, Σg(x − μ)).
// 2. bn_bwd_finalize: per channel, f64 sums of the splits; dgamma, dbeta and (a, b, d).
// 3. bn_bwd_dx: elementwise.

__device__ __forceinline__ float masked(float g, float xv, const float* coef, int ch, int relu) {
    if (relu && fmaf(xv, coef[2 * ch], coef[2 * ch + 1]) <= 0.0f) return 0.0f;
    return g;
}

template <typename T>
__device__ void bn_bwd_partial(const T* dy, const T* x, const float* saved, const float* coef,
                               int relu, int n, int c, int s, float* partial) {
    const unsigned ch = blockIdx.x, splits = gridDim.y;
    const unsigned total = (unsigned)n * (unsigned)s, us = (unsigned)s;
    const float mean = saved[2 * ch];
    float sg = 0.0f, sgx = 0.0f;
    for (unsigned i = blockIdx.y * blockDim.x + threadIdx.x; i < total;
         i += (unsigned)splits * blockDim.x) {
        const unsigned img = i / us, sp = i - img * us;
        const unsigned at = (img * (unsigned)c + ch) * us + sp;
        const float xv = ld(x, at);
        const float g = masked(ld(dy, at), xv, coef, ch, relu);
        sg += g;
        sgx += g * (xv - mean);
    }
    sg = block_sum(sg);
    sgx = block_sum(sgx);
    if (threadIdx.x == 0) {
        float* out = partial + ((int64_t)ch * splits + blockIdx.y) * 2;
        out[0] = sg;
        out[1] = sgx;
    }
}

extern "C" __global__ void bn_bwd_partial_f32(const float* dy, const float* x, const float* saved,
                                              const float* coef, int relu, int n, int c, int s,
                                              float* partial) {
    bn_bwd_partial(dy, x, saved, coef, relu, n, c, s, partial);
}
extern "C" __global__ void bn_bwd_partial_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* x,
                                               const float* saved, const float* coef, int relu,
                                               int n, int c, int s, float* partial) {
    bn_bwd_partial(dy, x, saved, coef, relu, n, c, s, partial);
}

// k[ch] = (a, b, d); dgamma and dbeta are f32 [c].
extern "C" __global__ void bn_bwd_finalize(const float* partial, int c, int splits, double count,
                                           const float* saved, const float* gamma, float* dgamma,
                                           float* dbeta, float* k) {
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double sg = 0.0, sgx = 0.0;
    for (int j = 0; j < splits; ++j) {
        const float* p = partial + ((int64_t)ch * splits + j) * 2;
        sg += p[0];
        sgx += p[1];
    }
    const double is = saved[2 * ch + 1];
    const double sgxh = is * sgx;
    dgamma[ch] = (float)sgxh;
    dbeta[ch] = (float)sg;
    const double a = (double)gamma[ch] * is;
    k[3 * ch] = (float)a;
    k[3 * ch + 1] = (float)(-a * is * sgxh / count);
    k[3 * ch + 2] = (float)(-a * sg / count);
}

template <typename T>
__device__ void bn_bwd_dx(const T* dy, const T* x, const float* saved, const float* coef,
                          const float* k, int relu, int c, int s, int64_t total, T* dx) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)total;
         i += gridDim.x * blockDim.x) {
        const unsigned ch = (i / (unsigned)s) % (unsigned)c;
        const float xv = ld(x, i);
        const float g = masked(ld(dy, i), xv, coef, ch, relu);
        st(dx, i, k[3 * ch] * g + k[3 * ch + 1] * (xv - saved[2 * ch]) + k[3 * ch + 2]);
    }
}

extern "C" __global__ void bn_bwd_dx_f32(const float* dy, const float* x, const float* saved,
                                         const float* coef, const float* k, int relu, int c,
                                         int s, int64_t total, float* dx) {
    bn_bwd_dx(dy, x, saved, coef, k, relu, c, s, total, dx);
}
extern "C" __global__ void bn_bwd_dx_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* x,
                                          const float* saved, const float* coef, const float* k,
                                          int relu, int c, int s, int64_t total,
                                          __nv_bfloat16* dx) {
    bn_bwd_dx(dy, x, saved, coef, k, relu, c, s, total, dx);
}

// ---------------------------------------------------------------------------------------------
// A bottleneck's tail: y = relu(x*gate[plane] + shortcut), gate per (image, channel) plane.
// Backward, one block per plane: m = dy where y > 0, dx = m*gate, dshortcut = m,
// dgate[plane] = Σ m*x (f32 sum, stored in the gate's dtype).

template <typename T>
__device__ void tail_fwd(const T* x, const T* gate, const T* shortcut, T* y, int s,
                         int64_t total) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)total;
         i += gridDim.x * blockDim.x) {
        const float v = fmaf(ld(x, i), ld(gate, i / (unsigned)s), ld(shortcut, i));
        st(y, i, relu_keep_nan(v));
    }
}

extern "C" __global__ void tail_fwd_f32(const float* x, const float* gate, const float* shortcut,
                                        float* y, int s, int64_t total) {
    tail_fwd(x, gate, shortcut, y, s, total);
}
extern "C" __global__ void tail_fwd_bf16(const __nv_bfloat16* x, const __nv_bfloat16* gate,
                                         const __nv_bfloat16* shortcut, __nv_bfloat16* y, int s,
                                         int64_t total) {
    tail_fwd(x, gate, shortcut, y, s, total);
}

template <typename T>
__device__ void tail_bwd(const T* x, const T* gate, const T* y, const T* dy, T* dx, T* dshortcut,
                         T* dgate, int s) {
    const unsigned plane = blockIdx.x, base = plane * (unsigned)s;
    const float g = ld(gate, plane);
    float acc = 0.0f;
    for (int j = threadIdx.x; j < s; j += blockDim.x) {
        const unsigned i = base + j;
        const float m = ld(y, i) > 0.0f ? ld(dy, i) : 0.0f;
        st(dx, i, m * g);
        st(dshortcut, i, m);
        acc += m * ld(x, i);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) st(dgate, plane, acc);
}

extern "C" __global__ void tail_bwd_f32(const float* x, const float* gate, const float* y,
                                        const float* dy, float* dx, float* dshortcut,
                                        float* dgate, int s) {
    tail_bwd(x, gate, y, dy, dx, dshortcut, dgate, s);
}
extern "C" __global__ void tail_bwd_bf16(const __nv_bfloat16* x, const __nv_bfloat16* gate,
                                         const __nv_bfloat16* y, const __nv_bfloat16* dy,
                                         __nv_bfloat16* dx, __nv_bfloat16* dshortcut,
                                         __nv_bfloat16* dgate, int s) {
    tail_bwd(x, gate, y, dy, dx, dshortcut, dgate, s);
}

// ---------------------------------------------------------------------------------------------
// The SE squeeze: out[plane] = mean over the plane's s values (f32 out, whatever x is), one
// block per plane; backward dx[i] = dout[plane]/s.

template <typename T>
__device__ void squeeze_fwd(const T* x, float* out, int s) {
    const unsigned plane = blockIdx.x, base = plane * (unsigned)s;
    float acc = 0.0f;
    for (int j = threadIdx.x; j < s; j += blockDim.x) acc += ld(x, base + j);
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[plane] = acc / (float)s;
}

extern "C" __global__ void squeeze_fwd_f32(const float* x, float* out, int s) {
    squeeze_fwd(x, out, s);
}
extern "C" __global__ void squeeze_fwd_bf16(const __nv_bfloat16* x, float* out, int s) {
    squeeze_fwd(x, out, s);
}

template <typename T>
__device__ void squeeze_bwd(const float* dout, T* dx, int s, int64_t total) {
    const float inv = 1.0f / (float)s;
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (unsigned)total;
         i += gridDim.x * blockDim.x) {
        st(dx, i, dout[i / (unsigned)s] * inv);
    }
}

extern "C" __global__ void squeeze_bwd_f32(const float* dout, float* dx, int s, int64_t total) {
    squeeze_bwd(dout, dx, s, total);
}
extern "C" __global__ void squeeze_bwd_bf16(const float* dout, __nv_bfloat16* dx, int s,
                                            int64_t total) {
    squeeze_bwd(dout, dx, s, total);
}

// ---------------------------------------------------------------------------------------------
// Nesterov SGD with L2 weight decay, exactly as torch.optim.SGD (dampening 0), in place, fused
// with the EMA of the updated weights, over up to FOREACH_TENSORS tensors per launch (as
// PyTorch's multi-tensor apply): block row blockIdx.y takes tensor blockIdx.y of the chunk.
//   g ← ∇ + wd·p;  b ← first ? g : μ·b + g;  g ← nesterov ? g + μ·b : b;  p ← p − lr·g;
//   e ← d·e + (1 − d)·p   (when the tensor's `ema` is not null).
// With momentum 0 the buffers are neither read nor written (and may be null).
//
// The rates and the EMA's decay d and 1 - d come from the step's scalar buffer (each tensor's
// rate_slot, decay_slot, decay_slot + 1), never as arguments: a captured graph replays with the
// values written before each launch. The chunk's pointers go by value: under a graph they are
// the addresses of persistent tensors and of graph-owned gradients, fixed from replay to replay.

// Tensors per launch: the chunk is one kernel parameter, and CUDA caps a launch's parameters
// at 4 KiB (the SGD chunk is 2,504 bytes). Must equal ops/cuda/optim.rs's FOREACH_TENSORS.
#define FOREACH_TENSORS 48

struct SgdChunk {
    float* p[FOREACH_TENSORS];
    const float* grad[FOREACH_TENSORS];
    float* buf[FOREACH_TENSORS];
    float* ema[FOREACH_TENSORS];
    int64_t len[FOREACH_TENSORS];
    float wd[FOREACH_TENSORS];
    int rate_slot[FOREACH_TENSORS];
    int first[FOREACH_TENSORS];
    int count;
};

extern "C" __global__ void sgd_multi(const SgdChunk chunk, const float* scalars, int decay_slot,
                                     float momentum, int nesterov) {
    const int t = blockIdx.y;
    if (t >= chunk.count) return;
    float* p = chunk.p[t];
    const float* grad = chunk.grad[t];
    float* buf = chunk.buf[t];
    float* ema = chunk.ema[t];
    const float wd = chunk.wd[t];
    const int first = chunk.first[t];
    const float lr = scalars[chunk.rate_slot[t]];
    const float decay = scalars[decay_slot];
    const float keep = scalars[decay_slot + 1];
    const int64_t len = chunk.len[t];
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float pv = p[i];
        float g = grad[i];
        if (wd != 0.0f) g = g + pv * wd;
        if (momentum != 0.0f && buf != nullptr) {
            const float b = first ? g : buf[i] * momentum + g;
            buf[i] = b;
            g = nesterov ? g + b * momentum : b;
        }
        const float np = pv - g * lr;
        p[i] = np;
        if (ema != nullptr) ema[i] = ema[i] * decay + np * keep;
    }
}

// e ← d·e + (1 − d)·v over up to FOREACH_TENSORS pairs per launch: the EMA of tensors an
// optimizer did not update (BatchNorm running statistics, frozen weights, Muon's banks).
struct EmaChunk {
    float* e[FOREACH_TENSORS];
    const float* v[FOREACH_TENSORS];
    int64_t len[FOREACH_TENSORS];
    int count;
};

extern "C" __global__ void ema_multi(const EmaChunk chunk, const float* scalars, int decay_slot) {
    const int t = blockIdx.y;
    if (t >= chunk.count) return;
    float* e = chunk.e[t];
    const float* v = chunk.v[t];
    const float decay = scalars[decay_slot];
    const float keep = scalars[decay_slot + 1];
    const int64_t len = chunk.len[t];
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < len;
         i += (int64_t)gridDim.x * blockDim.x) {
        e[i] = e[i] * decay + v[i] * keep;
    }
}
