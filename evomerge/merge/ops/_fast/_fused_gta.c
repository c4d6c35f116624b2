/* CPU kernels of evomerge's merge operators, loaded by evomerge/merge/ops/_fast/fused_gta.py:
 *   gta_fused       one-pass generalized task arithmetic (TIES, DARE, task arithmetic) on
 *                   float32 tensors; ops/task_arithmetic.py is the reference;
 *   abs_delta_*     the exact top-k threshold of |src - base| (radix selection);
 *   tie_*           which entries equal to that threshold mergekit's argsort keeps;
 *   abs_l1_bins*    exact L1 norms (per-exponent integer sums) for the L1 rescale;
 *   u_bucket_members  the entries of one bucket of DARE's packed uniforms (dare_l1.py);
 *   linear_bf16     linear straight from bfloat16 checkpoints;
 *   mt_uniform24    torch.rand's float32 uniforms (DARE's draws) from torch's generator state,
 *                   as floats or packed (packed_uniform.py).
 *
 * Every element goes through exactly the float32 operations of the eager torch path, in the
 * same order (see combine / _agreeing_sum in ops/task_arithmetic.py), so the result is
 * the same bits: IEEE add, mul, div, fabs and copysign are correctly rounded whichever unit
 * runs them. Build with -ffp-contract=off (no fused multiply-add: a*b+c must round twice, as
 * torch's separate kernels do), without -ffast-math, and with -fno-trapping-math (the
 * compiler may then evaluate both sides of a comparison and vectorize; no result changes).
 *
 * Per model j (m <= 4, the length for which torch's stacked sum adds rows in order):
 *   d_j = src_j[i] - base[i]              (src_j is the task vector itself when is_tau)
 *   d_j = d_j * keep                      keep = |d_j| >= thr_j below split_j, > thr_j from it
 *                                         on (magnitude top-k), or u_j[i] < p_j (DARE's draw,
 *                                         read packed: see "DARE's uniforms, packed" below)
 *   x_j = (d_j * scale_j) * w_j           scale_j: the L1 rescale (1 without it: exact)
 * then, without consensus:   mixed = x_0 + x_1 + ...
 *       with consensus:      votes = x_0 + ... (sum)  or  sign(x_0) + ... (count)
 *                            e = copysign(1, votes);  k_j = max(x_j * e, 0)
 *                            mixed = (k_0 + k_1 + ...) * e
 *                            divisor = [k_0 > 0] w_0 + ... ; 0 -> 1   (normalize only)
 *       mixed = mixed / divisor   (normalize; without consensus divisor is a scalar)
 *       mixed = mixed * lambda    (always: x * 1 is exact, so lambda = 1 needs no branch)
 *       out[i] = base[i] + mixed
 */
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c99 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>

#define MAXM 4

enum { CONSENSUS_NONE = 0, CONSENSUS_SUM = 1, CONSENSUS_COUNT = 2 };

#define INLINE static inline __attribute__((always_inline))

/* The top-k rule "|d| >= v below split, |d| > v from split on" is one comparison |d| >= t per
 * range: for floats a > v <=> a >= nextafter(v, +inf), and a > +inf is never true, which
 * a >= NaN expresses (every comparison with NaN is false). */
static float strict_threshold(float v) { return isinf(v) && v > 0 ? NAN : nextafterf(v, INFINITY); }

INLINE float sign_of(float x) { return (x > 0.0f ? 1.0f : 0.0f) - (x < 0.0f ? 1.0f : 0.0f); }

/* DARE's uniforms, packed. torch.rand's float32 uniform is u = k * 2^-24 for a 24-bit integer
 * k (mt_uniform24 below), and u < p <=> k < K with K = ceil(p * 2^24) (packed_uniform.py). The
 * kernel reads k's high 16 bits h (one uint16 stream per model instead of a float32 one): the
 * rule k < K is h < K >> 8 unless h == K >> 8, which ~1 entry in 65,536 meets; those entries
 * (the "ties") are done again with k's low 8 bits from their own array. */
typedef struct {
    const uint16_t *const *high; /* per model: k >> 8 */
    const uint8_t *const *low;   /* per model: k & 255 */
    const int32_t *below;        /* per model: K, the keep rule k < K (2^24: keep all) */
} packed_rule;

/* Entry i's k from its two halves. */
INLINE int32_t packed_key(const uint16_t *restrict uh, const uint8_t *restrict ul, int64_t i) {
    return ((int32_t)uh[i] << 8) | ul[i];
}

/* The elected, summed and normalized update from the per-model terms x_j (see the header). */
INLINE float combine(const int M, const int MODE, const int NORM, const float *x, const float *ww,
                     float scalar_divisor) {
    float mixed = x[0];
    if (MODE == CONSENSUS_NONE) {
#pragma GCC unroll 4
        for (int j = 1; j < M; j++) mixed = mixed + x[j];
        return mixed / scalar_divisor;
    }
    float k[MAXM];
    float votes = MODE == CONSENSUS_SUM ? x[0] : sign_of(x[0]);
#pragma GCC unroll 4
    for (int j = 1; j < M; j++) votes = votes + (MODE == CONSENSUS_SUM ? x[j] : sign_of(x[j]));
    const float e = copysignf(1.0f, votes); /* the elected sign */
#pragma GCC unroll 4
    for (int j = 0; j < M; j++) {
        const float f = x[j] * e;
        k[j] = f > 0.0f ? f : 0.0f; /* the agreeing entries, flipped to >= 0 */
    }
    mixed = k[0];
#pragma GCC unroll 4
    for (int j = 1; j < M; j++) mixed = mixed + k[j];
    mixed = mixed * e;
    if (NORM) {
        float div = (k[0] > 0.0f ? 1.0f : 0.0f) * ww[0];
#pragma GCC unroll 4
        for (int j = 1; j < M; j++) div = div + (k[j] > 0.0f ? 1.0f : 0.0f) * ww[j];
        mixed = mixed / (div + (div == 0.0f ? 1.0f : 0.0f));
    }
    return mixed;
}

/* Elements [lo, hi) on which every model's threshold is one value. M, MODE, NORM, TAU and RAND
 * are constants at each call site (see DISPATCH), so the model loops unroll away and the
 * element loop vectorizes: every input is read once, the output written once. Multiplying by
 * λ = 1 or dividing by a scalar divisor of 1 is exact, so those steps need no flag. With RAND
 * the keep rule reads only the high halves, an entry on a tie is dropped, and the ties are
 * counted: the return value (the caller redoes them, ``redo_ties``). */
INLINE int64_t range(const int M, const int MODE, const int NORM, const int TAU, const int RAND,
                     int64_t lo, int64_t hi, const float *restrict base, const float *const *src,
                     const packed_rule *rule, const float *t, const float *scale, const float *w,
                     float scalar_divisor, float lambda, float *restrict out) {
    const float *restrict s[MAXM];
    const uint16_t *restrict r[MAXM];
    float tt[MAXM], sc[MAXM], ww[MAXM];
    int32_t hh[MAXM];
    for (int j = 0; j < M; j++) {
        s[j] = src[j], r[j] = RAND ? rule->high[j] : 0;
        tt[j] = t[j], sc[j] = scale[j], ww[j] = w[j];
        hh[j] = RAND ? rule->below[j] >> 8 : 0;
    }
    int32_t ties = 0; /* (RAND spans are TIE_SPAN long: 32 bits vectorize better) */
    for (int64_t i = lo; i < hi; i++) {
        const float b = base[i];
        float x[MAXM];
#pragma GCC unroll 4
        for (int j = 0; j < M; j++) {
            const float d = TAU ? s[j][i] : s[j][i] - b;
            float keep;
            if (RAND) {
                const int32_t h = r[j][i];
                ties += h == hh[j];
                keep = h < hh[j] ? 1.0f : 0.0f;
            } else
                keep = fabsf(d) >= tt[j] ? 1.0f : 0.0f;
            x[j] = ((d * keep) * sc[j]) * ww[j];
        }
        out[i] = b + combine(M, MODE, NORM, x, ww, scalar_divisor) * lambda;
    }
    return ties;
}

/* The entries of [lo, hi) where some model's high half ties its rule, again with the exact
 * rule k < K: the same operations as range, element by element. */
INLINE void redo_ties(const int M, const int MODE, const int NORM, int64_t lo, int64_t hi,
                      const float *restrict base, const float *const *src,
                      const packed_rule *rule, const float *scale, const float *w,
                      float scalar_divisor, float lambda, float *restrict out) {
    for (int64_t i = lo; i < hi; i++) {
        int tie = 0;
        for (int j = 0; j < M; j++) tie |= (int32_t)rule->high[j][i] == rule->below[j] >> 8;
        if (!tie) continue;
        const float b = base[i];
        float x[MAXM];
        for (int j = 0; j < M; j++) {
            const float keep =
                packed_key(rule->high[j], rule->low[j], i) < rule->below[j] ? 1.0f : 0.0f;
            x[j] = (((src[j][i] - b) * keep) * scale[j]) * w[j];
        }
        out[i] = b + combine(M, MODE, NORM, x, w, scalar_divisor) * lambda;
    }
}

#define TIE_SPAN 4096 /* DARE elements per range call: a span with a tie is re-read from L1 */

INLINE void dare_range(const int M, const int MODE, const int NORM, int64_t lo, int64_t hi,
                       const float *restrict base, const float *const *src,
                       const packed_rule *rule, const float *t, const float *scale,
                       const float *w, float scalar_divisor, float lambda, float *restrict out) {
    for (int64_t a = lo; a < hi; a += TIE_SPAN) {
        const int64_t e = a + TIE_SPAN < hi ? a + TIE_SPAN : hi;
        if (range(M, MODE, NORM, 0, 1, a, e, base, src, rule, t, scale, w, scalar_divisor,
                  lambda, out))
            redo_ties(M, MODE, NORM, a, e, base, src, rule, scale, w, scalar_divisor, lambda, out);
    }
}

#define CALL(M, MODE, NORM, TAU) \
    range(M, MODE, NORM, TAU, 0, lo, hi, base, src, rule, t, scale, w, scalar_divisor, lambda, out)
#define BY_TAU(M, MODE, NORM)                                                                 \
    if (is_tau) CALL(M, MODE, NORM, 1);                                                       \
    else if (rule) dare_range(M, MODE, NORM, lo, hi, base, src, rule, t, scale, w,            \
                              scalar_divisor, lambda, out);                                   \
    else CALL(M, MODE, NORM, 0);
#define BY_MODE(M)                                             \
    if (consensus == CONSENSUS_NONE) { BY_TAU(M, 0, 0) }       \
    else if (consensus == CONSENSUS_SUM && normalize) { BY_TAU(M, 1, 1) }  \
    else if (consensus == CONSENSUS_SUM) { BY_TAU(M, 1, 0) }   \
    else if (normalize) { BY_TAU(M, 2, 1) }                    \
    else { BY_TAU(M, 2, 0) }

/* Elements [start, stop) of the flat tensors; ``split`` and the element index are global so a
 * caller may cut the work into chunks (threads) anywhere. ``has_thr[j] == 0``: keep all.
 * ``u_high`` NULL: magnitude (or no) trim; else every model's packed uniforms (``u_high``,
 * ``u_low``), kept where k < below_j. ``scalar_divisor``: Σ weights without consensus when
 * normalizing, else 1. */
#if defined(__x86_64__) && defined(__GNUC__)
/* one build for every node of a cluster: the loader picks the widest vectors the CPU has */
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void gta_fused(int64_t start, int64_t stop, int m, const float *restrict base,
               const float *const *src, int is_tau, const int *has_thr, const float *thr,
               const int64_t *split, const uint16_t *const *u_high, const uint8_t *const *u_low,
               const int32_t *below, const float *scale, const float *w, int consensus,
               int normalize, float scalar_divisor, float lambda, float *restrict out) {
    const packed_rule packed = {u_high, u_low, below};
    const packed_rule *rule = u_high ? &packed : 0;
    for (int64_t lo = start; lo < stop;) {
        /* the next range, cut where a model's comparison switches from >= to > */
        int64_t hi = stop;
        float t[MAXM];
        for (int j = 0; j < m; j++) {
            if (!has_thr[j]) { t[j] = -1.0f; continue; } /* |d| >= -1: keep all */
            if (lo < split[j] && split[j] < hi) hi = split[j];
            t[j] = lo < split[j] ? thr[j] : strict_threshold(thr[j]);
        }
        switch (m) {
            case 1: BY_MODE(1) break;
            case 2: BY_MODE(2) break;
            case 3: BY_MODE(3) break;
            default: BY_MODE(4) break;
        }
        lo = hi;
    }
}

/* gta_fused shared between threads by blocks: the calling thread and the pool's threads
 * each claim the next `block` elements (share[0]) until none are left, and count what they
 * finished into share[1]. The caller (wait = 1) returns once all n are done: it never waits
 * for a pool thread to wake up (one that starts late finds nothing left to claim and touches
 * nothing else), only for the last block another thread is finishing. Static halves made the
 * caller wait ~0.15 ms per tensor for the thread that had started later. */
void gta_fused_shared(int64_t n, int64_t block, int64_t *share, int wait, int m,
                      const float *restrict base, const float *const *src, int is_tau,
                      const int *has_thr, const float *thr, const int64_t *split,
                      const uint16_t *const *u_high, const uint8_t *const *u_low,
                      const int32_t *below, const float *scale, const float *w, int consensus,
                      int normalize, float scalar_divisor, float lambda, float *restrict out) {
    for (;;) {
        const int64_t lo = __atomic_fetch_add(&share[0], block, __ATOMIC_RELAXED);
        if (lo >= n) break;
        const int64_t hi = lo + block < n ? lo + block : n;
        gta_fused(lo, hi, m, base, src, is_tau, has_thr, thr, split, u_high, u_low, below,
                  scale, w, consensus, normalize, scalar_divisor, lambda, out);
        __atomic_fetch_add(&share[1], hi - lo, __ATOMIC_RELEASE); /* (publishes the writes) */
    }
    if (wait)
        while (__atomic_load_n(&share[1], __ATOMIC_ACQUIRE) < n) sched_yield();
}

/* ---- the helper threads of gta_fused_shared, in C ----
 * A candidate's tensors are handed to the helpers one at a time (fused_gta.py: the call is
 * posted, the caller's Python prepares the next tensor, then the caller joins). Python's thread
 * pool woke its thread through the GIL: that thread could start only once the caller's Python
 * let go of it (~0.13 ms a call, up to the 5 ms switch interval), the second core idle
 * meanwhile. These threads never touch the GIL. One call is open at a time: gta_fused_post
 * returns 0 when one is (another Python thread's), and the caller runs its own way. */
typedef struct {
    int64_t n, block;
    int m;
    const float *base;
    const float *const *src;
    int is_tau;
    const int *has_thr;
    const float *thr;
    const int64_t *split;
    const uint16_t *const *u_high;
    const uint8_t *const *u_low;
    const int32_t *below;
    const float *scale, *w;
    int consensus, normalize;
    float scalar_divisor, lambda;
    float *out;
} gta_call;

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_wake = PTHREAD_COND_INITIALIZER, pool_idle = PTHREAD_COND_INITIALIZER;
static gta_call pool_call;
static int64_t pool_share[2];    /* gta_fused_shared's block counter and done count */
static uint64_t pool_generation; /* bumped by each post: a helper joins each call once */
static int pool_open;            /* a posted call not yet joined */
static int pool_busy;            /* helpers inside the open call */
static int pool_threads;         /* helpers started */
static int pool_slots;           /* helpers the open call still takes (it woke that many) */

static void run_call(const gta_call *c, int wait) {
    gta_fused_shared(c->n, c->block, pool_share, wait, c->m, c->base, c->src, c->is_tau,
                     c->has_thr, c->thr, c->split, c->u_high, c->u_low, c->below, c->scale, c->w,
                     c->consensus, c->normalize, c->scalar_divisor, c->lambda, c->out);
}

static void *pool_helper(void *unused) {
    (void)unused;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool_mu);
    for (;;) {
        while (!pool_open || pool_generation == seen) pthread_cond_wait(&pool_wake, &pool_mu);
        seen = pool_generation;
        if (pool_slots == 0) continue; /* (a spurious or surplus wake: the call has its helpers) */
        pool_slots--;
        const gta_call c = pool_call;
        pool_busy++;
        pthread_mutex_unlock(&pool_mu);
        run_call(&c, 0);
        pthread_mutex_lock(&pool_mu);
        if (--pool_busy == 0) pthread_cond_broadcast(&pool_idle);
    }
    return 0;
}

/* A forked child has none of the helpers (and may hold the lock mid-call): start afresh. */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool_mu, 0);
    pthread_cond_init(&pool_wake, 0);
    pthread_cond_init(&pool_idle, 0);
    pool_open = pool_busy = pool_threads = pool_slots = 0;
}

/* Opens the call (gta_fused_shared's arguments, without its counter) to `helpers` threads,
 * started on first use; returns 1, or 0 (nothing started) when a call is open or no thread
 * could start. The arguments' memory must stay valid until gta_fused_join returns. */
int gta_fused_post(int helpers, int64_t n, int64_t block, int m, const float *base,
                   const float *const *src, int is_tau, const int *has_thr, const float *thr,
                   const int64_t *split, const uint16_t *const *u_high,
                   const uint8_t *const *u_low, const int32_t *below, const float *scale,
                   const float *w, int consensus, int normalize, float scalar_divisor,
                   float lambda, float *out) {
    static int registered;
    pthread_mutex_lock(&pool_mu);
    if (!registered) registered = !pthread_atfork(0, 0, pool_after_fork);
    while (pool_threads < helpers) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&t, &attr, pool_helper, 0);
        pthread_attr_destroy(&attr);
        if (failed) break;
        pool_threads++;
    }
    if (pool_open || pool_busy || pool_threads == 0) {
        pthread_mutex_unlock(&pool_mu);
        return 0;
    }
    const gta_call c = {n, block, m, base, src, is_tau, has_thr, thr, split, u_high, u_low,
                        below, scale, w, consensus, normalize, scalar_divisor, lambda, out};
    pool_call = c;
    pool_share[0] = pool_share[1] = 0;
    pool_slots = helpers < pool_threads ? helpers : pool_threads;
    pool_generation++;
    pool_open = 1;
    for (int h = 0; h < pool_slots; h++) /* wake only as many as the call wants: on a */
        pthread_cond_signal(&pool_wake);  /* many-core node the rest sleep on */
    pthread_mutex_unlock(&pool_mu);
    return 1;
}

/* Completes the open call: the caller claims the blocks left, waits for the last ones, and
 * closes the call once no helper is inside it (a helper that wakes later finds it closed). */
void gta_fused_join(void) {
    pthread_mutex_lock(&pool_mu);
    if (!pool_open) {
        pthread_mutex_unlock(&pool_mu);
        return;
    }
    const gta_call c = pool_call;
    pthread_mutex_unlock(&pool_mu);
    run_call(&c, 1);
    pthread_mutex_lock(&pool_mu);
    pool_open = 0;
    while (pool_busy) pthread_cond_wait(&pool_idle, &pool_mu);
    pthread_mutex_unlock(&pool_mu);
}

/* ---- exact top-k threshold of |src - base| (TIES's magnitude trim) by radix selection ----
 * For non-negative floats the IEEE bit pattern orders like the value (fabsf maps -0 to +0, as
 * torch.abs does). A 4,096-bin histogram of the top 12 bits (exponent and 4 mantissa bits; it
 * stays in L1) finds the bin holding the k-th largest |d|; a second read gathers that bin's
 * entries (bits and flat index, in index order), among which the caller selects exactly.
 * Usually one read does (abs_delta_bracket, around a sample's estimate); the histogram is its
 * fallback. Either replaces kthvalue's copies and sorts. */

union f32bits { float f; uint32_t u; };

INLINE uint32_t abs_bits(float d) {
    union f32bits x;
    x.f = fabsf(d);
    return x.u;
}

#define HIGH_SHIFT 19 /* 31 bits of a non-negative float, the top 12 of them */

/* hist[bits >> 19] += 1 over [start, stop); ``base`` NULL: src is the task vector itself. */
void abs_delta_hist(int64_t start, int64_t stop, const float *restrict base,
                    const float *restrict src, uint32_t *restrict hist) {
    if (base)
        for (int64_t i = start; i < stop; i++) hist[abs_bits(src[i] - base[i]) >> HIGH_SHIFT]++;
    else
        for (int64_t i = start; i < stop; i++) hist[abs_bits(src[i]) >> HIGH_SHIFT]++;
}

/* The entries of [start, stop) in bin ``high``: their bits and flat indices, in index order;
 * returns how many. The buffers need one slot more than that (the histogram gives the count). */
int64_t abs_delta_gather(int64_t start, int64_t stop, const float *restrict base,
                         const float *restrict src, uint32_t high, uint32_t *restrict bits,
                         int64_t *restrict index) {
    /* branch-free: every entry is written at the next free slot, which advances only for the
     * bin's entries (a data-dependent branch mispredicts on every few-percent hit) */
    int64_t c = 0;
    for (int64_t i = start; i < stop; i++) {
        const uint32_t u = abs_bits(base ? src[i] - base[i] : src[i]);
        bits[c] = u;
        index[c] = i;
        c += (u >> HIGH_SHIFT) == high;
    }
    return c;
}

/* One read for the common case: the entries whose |d| bits lie in [lo, hi] (a bracket a strided
 * sample puts around the k-th largest) are gathered in index order and those above hi counted.
 * Branch-free (every entry is written at the next free slot, which advances only for bracket
 * entries), block by block so the buffer never overflows: returns the number gathered, or -1
 * when more than ``cap`` would not fit (the caller then runs the histogram path). */
int64_t abs_delta_bracket(int64_t start, int64_t stop, const float *restrict base,
                          const float *restrict src, uint32_t lo, uint32_t hi,
                          uint32_t *restrict bits, int64_t *restrict index, int64_t cap,
                          int64_t *restrict above) {
    const uint32_t width = hi - lo;
    int64_t c = 0, a = 0;
    for (int64_t s = start; s < stop; s += 4096) {
        const int64_t e = s + 4096 < stop ? s + 4096 : stop;
        if (c + (e - s) + 1 > cap) return -1;
        for (int64_t i = s; i < e; i++) {
            const uint32_t u = abs_bits(base ? src[i] - base[i] : src[i]);
            a += u > hi;
            bits[c] = u;
            index[c] = i;
            c += u - lo <= width;
        }
    }
    *above = a;
    return c;
}

/* ---- mergekit's kept ties: which entries equal to the k-th largest |d| torch.argsort keeps ----
 * mergekit keeps torch.argsort(|d|, descending=True)[:k]. torch's CPU sort of a 1-D float32
 * tensor is libstdc++'s std::sort (an introsort, not stable) of (value, index) pairs under
 * "a before b iff value(a) > value(b)", so which of the entries equal to v (the k-th largest)
 * land in the first k depends on every comparison the sort makes. std::sort only ever permutes
 * within the range it is working on, so the set in the first k positions is decided by the
 * ranges that contain the boundary at k: this is std::sort's own work on those ranges only
 * (its pivots, its partition, its depth limit and heap sort, its final insertion sort), about
 * 2-3 reads of the tensor instead of ~log2(n) (tie_select: ~10x less than the argsort).
 * fused_gta.py checks once per process that torch's argsort is this algorithm (another
 * standard library or torch build: it falls back to the argsort itself). libstdc++'s
 * bits/stl_algo.h and bits/stl_heap.h are the reference for every step below. */

typedef uint64_t tie_kv; /* |d|'s bits << 32 | flat index: |d| >= 0 orders as its bits */
#define KV_KEY(a) ((uint32_t)((a) >> 32))
#define KV_BEFORE(a, b) (KV_KEY(a) > KV_KEY(b)) /* the sort's comparator (descending) */
#define SORT_THRESHOLD 16                       /* libstdc++'s _S_threshold */

INLINE void kv_swap(tie_kv *a, tie_kv *b) {
    const tie_kv t = *a;
    *a = *b, *b = t;
}

/* std::__move_median_to_first */
static void kv_median_to_first(tie_kv *result, tie_kv *a, tie_kv *b, tie_kv *c) {
    if (KV_BEFORE(*a, *b)) {
        if (KV_BEFORE(*b, *c)) kv_swap(result, b);
        else if (KV_BEFORE(*a, *c)) kv_swap(result, c);
        else kv_swap(result, a);
    } else if (KV_BEFORE(*a, *c)) kv_swap(result, a);
    else if (KV_BEFORE(*b, *c)) kv_swap(result, c);
    else kv_swap(result, b);
}

#define PART_BLOCK 128

/* std::__unguarded_partition(first, last, pivot) with the pivot's key pk: the same swaps, so the
 * same arrangement and cut. Hoare's loop swaps the i-th entry from the left that may not pass
 * the pivot (!(key > pk), an "L-stop") with the i-th from the right that may not (!(pk > key),
 * an "R-stop") while the first lies left of the second. Where the two scanned regions cannot
 * meet, those pairs are gathered block by block without branches (BlockQuicksort, Edelkamp &
 * Weiss 2016: the random outcome of each comparison otherwise mispredicts); Hoare's own loop
 * then continues from its state after the last pair swapped (f just past its left entry, l on
 * its right entry) over the last few blocks. */
static tie_kv *kv_partition(tie_kv *first, tie_kv *last, const uint32_t pk) {
    tie_kv *f = first, *l = last;   /* Hoare's state */
    tie_kv *lo = first, *hi = last; /* not yet scanned: [lo, hi) */
    tie_kv *bl = first, *br = last; /* the current left block's start, right block's end */
    uint8_t offl[PART_BLOCK], offr[PART_BLOCK];
    int nl = 0, nr = 0, sl = 0, sr = 0; /* stops gathered and not yet paired: [s, s + n) */
    while (hi - lo >= 2 * PART_BLOCK) {
        if (nl == 0) {
            sl = 0, bl = lo;
            for (int j = 0; j < PART_BLOCK; j++) {
                offl[nl] = (uint8_t)j;
                nl += !(KV_KEY(lo[j]) > pk);
            }
            lo += PART_BLOCK;
        }
        if (nr == 0) {
            sr = 0, br = hi;
            for (int j = 0; j < PART_BLOCK; j++) {
                offr[nr] = (uint8_t)j;
                nr += !(pk > KV_KEY(hi[-1 - j]));
            }
            hi -= PART_BLOCK;
        }
        const int c = nl < nr ? nl : nr;
        for (int j = 0; j < c; j++) kv_swap(bl + offl[sl + j], br - 1 - offr[sr + j]);
        if (c) f = bl + offl[sl + c - 1] + 1, l = br - 1 - offr[sr + c - 1];
        nl -= c, nr -= c, sl += c, sr += c;
    }
    for (;;) {
        while (KV_KEY(*f) > pk) ++f;
        --l;
        while (pk > KV_KEY(*l)) --l;
        if (!(f < l)) return f;
        kv_swap(f, l);
        ++f;
    }
}

/* std::__adjust_heap with std::__push_heap */
static void kv_adjust_heap(tie_kv *first, int64_t hole, int64_t len, tie_kv value) {
    const int64_t top = hole;
    int64_t child = hole;
    while (child < (len - 1) / 2) {
        child = 2 * (child + 1);
        if (KV_BEFORE(first[child], first[child - 1])) child--;
        first[hole] = first[child];
        hole = child;
    }
    if ((len & 1) == 0 && child == (len - 2) / 2) {
        child = 2 * (child + 1);
        first[hole] = first[child - 1];
        hole = child - 1;
    }
    int64_t parent = (hole - 1) / 2;
    while (hole > top && KV_BEFORE(first[parent], value)) {
        first[hole] = first[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    first[hole] = value;
}

/* std::__partial_sort(first, last, last): std::__make_heap, then std::__sort_heap */
static void kv_heap_sort(tie_kv *first, tie_kv *last) {
    const int64_t len = last - first;
    if (len >= 2)
        for (int64_t parent = (len - 2) / 2;; parent--) {
            kv_adjust_heap(first, parent, len, first[parent]);
            if (parent == 0) break;
        }
    while (last - first > 1) {
        --last;
        const tie_kv value = *last;
        *last = *first;
        kv_adjust_heap(first, 0, last - first, value);
    }
}

/* std::__introsort_loop on [first, last) followed only into the part that holds position
 * `kth` (the boundary: position kth is the first one not kept), then the final insertion sort
 * on what is left of it. (std::__final_insertion_sort moves an entry only past entries it
 * sorts before, so never out of the range a partition gave it: on that range it is this
 * insertion sort, which keeps equal entries in their order.) */
static void kv_select(tie_kv *first, tie_kv *last, tie_kv *kth) {
    int depth = 2 * (63 - __builtin_clzll((uint64_t)(last - first))); /* 2 * std::__lg(n) */
    while (last - first > SORT_THRESHOLD) {
        if (depth == 0) {
            kv_heap_sort(first, last);
            return;
        }
        --depth;
        kv_median_to_first(first, first + 1, first + (last - first) / 2, last - 1);
        tie_kv *cut = kv_partition(first + 1, last, KV_KEY(*first));
        if (kth == cut) return; /* the boundary falls between the parts: the set is decided */
        if (kth < cut) last = cut;
        else first = cut;
    }
    for (tie_kv *i = first + 1; i < last; i++) { /* std::__insertion_sort */
        const tie_kv value = *i;
        tie_kv *j = i;
        for (; j > first && KV_BEFORE(value, j[-1]); j--) *j = j[-1];
        *j = value;
    }
}

/* The pairs of [start, stop): |src - base|'s bits and the flat index (threads fill parts). */
void tie_pairs(int64_t start, int64_t stop, const float *restrict base, const float *restrict src,
               tie_kv *restrict pairs) {
    for (int64_t i = start; i < stop; i++)
        pairs[i] = (tie_kv)abs_bits(base ? src[i] - base[i] : src[i]) << 32 | (uint64_t)i;
}

/* The flat indices (in sort order, not index order) of the entries with bits `vbits` that
 * torch.argsort(|d|, descending=True)[:k] holds, from tie_pairs' n pairs (0 < k < n < 2^32),
 * which it permutes; returns their count (at most `room` are written to out). */
int64_t tie_select(int64_t n, tie_kv *pairs, int64_t k, uint32_t vbits, int64_t *out,
                   int64_t room) {
    kv_select(pairs, pairs + n, pairs + k);
    int64_t c = 0;
    for (int64_t i = 0; i < k; i++)
        if (KV_KEY(pairs[i]) == vbits) {
            if (c < room) out[c] = (int64_t)(uint32_t)pairs[i];
            c++;
        }
    return c;
}

/* ---- exact L1 norm Σ|d| (DARE's rescale), d = src - base, kept where k < K (packed uniforms,
 * see packed_rule; u_high NULL: all) ----
 * Each |d| is mantissa x 2^(exponent - 150); the mantissas are summed per exponent in integers
 * (exact in any order), and the caller rounds the total once. So the rescale factor does not
 * depend on the summation order: threads, chunking, machine, or this kernel vs. torch
 * (exact_l1.l1_norm computes the same 256 sums with bincount). */

/* The mantissa of a non-negative float's bits with its implicit bit (none for a subnormal):
 * the float is l1_mantissa(a) x 2^(max(a >> 23, 1) - 150). */
INLINE uint32_t l1_mantissa(uint32_t a) {
    return (a & 0x7fffffu) | ((uint32_t)((a >> 23) != 0) << 23);
}

/* Adds entry i's mantissa (with the implicit bit) to bins[its exponent]; a dropped entry adds
 * 0 to bin 0. No branch: the keep test k < K is random and would mispredict half the time. */
INLINE void l1_part(const float *restrict base, const float *restrict src,
                    const uint16_t *restrict uh, const uint8_t *restrict ul, int32_t below,
                    int64_t i, int64_t *restrict bins) {
    uint32_t a = abs_bits(base ? src[i] - base[i] : src[i]);
    if (uh) a &= -(uint32_t)(packed_key(uh, ul, i) < below); /* |d * 0| = +0 */
    bins[a >> 23] += l1_mantissa(a);
}

void abs_l1_bins(int64_t start, int64_t stop, const float *restrict base,
                 const float *restrict src, const uint16_t *restrict uh,
                 const uint8_t *restrict ul, int32_t below, int64_t *restrict bins) {
    /* 8 interleaved sub-histograms: consecutive entries mostly share an exponent, and adding
     * into one bin each time would chain every add on the previous one's store */
    int64_t sub[8][256] = {{0}};
    int64_t i = start;
    for (; i + 8 <= stop; i += 8)
        for (int k = 0; k < 8; k++) l1_part(base, src, uh, ul, below, i + k, sub[k]);
    for (; i < stop; i++) l1_part(base, src, uh, ul, below, i, sub[0]);
    for (int k = 0; k < 8; k++)
        for (int e = 0; e < 256; e++) bins[e] += sub[k][e];
}

/* exact_l1.l1_from_bins in C: Σ bins[e] · 2^(max(e,1) − 150), rounded once to float32 (to
 * nearest, ties to even), returned as that float32's double. bins: 256 non-negative sums.
 * The sum must fit 128 bits: every bin < 2^56 and the used exponents spanning ≤ 64 give
 * < 2^56 · 2^64 · 256 = 2^128. NaN otherwise: the caller takes the Python version (a DARE
 * search rounds ~200 of these per candidate, where Python's big integers took ~17 us each). */
double l1_round(const int64_t *bins) {
    if (bins[255]) return INFINITY; /* an Inf/NaN entry */
    int lo = -1, hi = -1;
    for (int e = 0; e < 255; e++)
        if (bins[e]) {
            if ((uint64_t)bins[e] >> 56) return NAN;
            if (lo < 0) lo = e;
            hi = e;
        }
    if (lo < 0) return 0.0;
    const int s0 = lo ? lo - 1 : 0, s1 = hi ? hi - 1 : 0; /* × 2^(s − 149) */
    if (s1 - s0 > 64) return NAN;
    unsigned __int128 total = 0;
    for (int e = lo; e <= hi; e++)
        total += (unsigned __int128)(uint64_t)bins[e] << ((e ? e - 1 : 0) - s0);
    const uint64_t top = (uint64_t)(total >> 64);
    const int bits = top ? 128 - __builtin_clzll(top) : 64 - __builtin_clzll((uint64_t)total);
    const int shift = bits - 24; /* keep 24 significant bits */
    uint64_t q = (uint64_t)total;
    int exp = s0 - 149;
    if (shift > 0) {
        const unsigned __int128 rem = total & ((((unsigned __int128)1) << shift) - 1);
        const unsigned __int128 half = ((unsigned __int128)1) << (shift - 1);
        q = (uint64_t)(total >> shift);
        if (rem > half || (rem == half && (q & 1))) q++;
        exp += shift;
    }
    const double v = ldexp((double)q, exp);
    return v <= 3.4028234663852886e38 ? v : INFINITY;
}

/* Both sums of DARE's rescale in one read: over all entries (all) and over those with k < K
 * (kept). 4 interleaved sub-histograms each (two sets of 8 would not stay in L1). The body is
 * l1_part's, written out once for both sums: two l1_part calls measured 1.6x slower. */
void abs_l1_bins2(int64_t start, int64_t stop, const float *restrict base,
                  const float *restrict src, const uint16_t *restrict uh,
                  const uint8_t *restrict ul, int32_t below, int64_t *restrict all,
                  int64_t *restrict kept) {
    int64_t sa[4][256] = {{0}}, sk[4][256] = {{0}};
    int64_t i = start;
    for (; i + 4 <= stop; i += 4)
        for (int k = 0; k < 4; k++) {
            uint32_t a = abs_bits(src[i + k] - base[i + k]);
            const uint32_t e = a >> 23, m = l1_mantissa(a);
            sa[k][e] += m;
            sk[k][e] += m & -(uint32_t)(packed_key(uh, ul, i + k) < below); /* dropped: 0 */
        }
    for (; i < stop; i++) {
        l1_part(base, src, 0, 0, 0, i, sa[0]);
        l1_part(base, src, uh, ul, below, i, sk[0]);
    }
    for (int k = 0; k < 4; k++)
        for (int e = 0; e < 256; e++) all[e] += sa[k][e], kept[e] += sk[k][e];
}

/* ---- one bucket of DARE's uniforms (evomerge/merge/ops/dare_l1.py): the entries with k >> 16 == q,
 * i.e. q/256 <= u < (q+1)/256, found from the high halves (h >> 8 == q). The hits (~1/256 of
 * the entries) are scattered: reading src and base as each is found would put two cache misses
 * behind every rarely taken, so mispredicted, branch, one miss at a time. Their indices are
 * gathered first (a vectorized test per 64 entries, a branch-free append inside the 64s that
 * hit), then read in a loop whose loads are independent, so the misses overlap. */
#define IN_BATCH 512
#define PREFETCH 16 /* members ahead */

/* Appends to idx the entries of [i, i + 64) in bucket q; returns the new count. Most 64s hold
 * no hit: one vectorized test skips them; in a 64 that holds one, the same test per 16 leaves
 * the branch-free append (one step per entry) to the 16s with a hit (~1 in 16 of them). */
INLINE int hit_in(const uint16_t *restrict uh, int64_t i, int width, uint32_t q) {
    uint32_t any = 0;
    for (int k = 0; k < width; k++) any |= (uint32_t)(uh[i + k] >> 8) == q;
    return any != 0;
}

INLINE int64_t gather64(const uint16_t *restrict uh, int64_t i, uint32_t q,
                        int64_t *restrict idx, int64_t c) {
    if (!hit_in(uh, i, 64, q)) return c;
    for (int64_t s = i; s < i + 64; s += 16) {
        if (!hit_in(uh, s, 16, q)) continue;
        for (int k = 0; k < 16; k++) {
            idx[c] = s + k;
            c += (uint32_t)(uh[s + k] >> 8) == q;
        }
    }
    return c;
}

/* The members of bucket q, in index order: their k and their |src - base| (as bits), written
 * to kb and ab (room for stop - start entries each); returns their count. A search worker
 * keeps them (dare_l1.py), so a later candidate whose keep rate falls in this bucket reads
 * these few pairs in order (abs_l1_bins_listed) instead of every uniform, or scattered src and
 * base entries. */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx2", "default"))) /* (16-bit compares: avx512f has none) */
#endif
int64_t u_bucket_members(int64_t start, int64_t stop, const float *restrict base,
                         const float *restrict src, const uint16_t *restrict uh,
                         const uint8_t *restrict ul, int32_t q, uint32_t *restrict kb,
                         uint32_t *restrict ab) {
    int64_t idx[IN_BATCH + 64], c = 0, n = 0, i = start;
    for (;;) {
        const int tail = i + 64 > stop;
        if (!tail) {
            c = gather64(uh, i, (uint32_t)q, idx, c);
            i += 64;
        } else
            for (; i < stop; i++) {
                idx[c] = i;
                c += (uh[i] >> 8) == q; /* (at most 63 more: idx has room) */
            }
        if (c >= IN_BATCH || tail) {
            for (int64_t k = 0; k < c; k++) {
                if (k + PREFETCH < c) { /* three misses per member: have the next ones coming */
                    const int64_t ahead = idx[k + PREFETCH];
                    __builtin_prefetch(src + ahead), __builtin_prefetch(base + ahead);
                    __builtin_prefetch(ul + ahead);
                }
                kb[n + k] = (uint32_t)packed_key(uh, ul, idx[k]);
                ab[n + k] = abs_bits(src[idx[k]] - base[idx[k]]);
            }
            n += c, c = 0;
        }
        if (tail) return n;
    }
}

/* DARE's bucketed L1 table (dare_l1.build): sums[q * 256 + e] += the mantissa of |src - base|
 * (with its implicit bit, as l1_part) over the entries in bucket q (k >> 16 == q, read from the
 * high halves) whose |src - base| has biased exponent e. sums: 256 x 256 int64, zeroed by the
 * caller (512 KiB: stays in L2). One read of src, base and the high halves; the torch version
 * (sub, abs, two shifts, a bincount in float64) took ~13 ns an entry. */
void dare_bucket_sums(int64_t start, int64_t stop, const float *restrict base,
                      const float *restrict src, const uint16_t *restrict uh,
                      int64_t *restrict sums) {
    for (int64_t i = start; i < stop; i++) {
        const uint32_t a = abs_bits(src[i] - base[i]);
        sums[((uint32_t)(uh[i] >> 8) << 8) | (a >> 23)] += l1_mantissa(a);
    }
}

/* abs_l1_bins's sums over listed entries (u_bucket_members' pairs), kept where k < K. */
void abs_l1_bins_listed(const uint32_t *restrict kb, const uint32_t *restrict ab, int64_t c,
                        int32_t below, int64_t *restrict bins) {
    for (int64_t k = 0; k < c; k++) {
        const uint32_t a = ab[k] & -(uint32_t)((int32_t)kb[k] < below);
        bins[a >> 23] += l1_mantissa(a);
    }
}

/* DARE's kept L1 from its bucket table (dare_l1.py) in one call: the table's row for the
 * buckets wholly below K (width sums from exponent e_lo) plus the listed members of K's
 * bucket that have k < K (c of them; none when K is on a bucket edge), rounded by l1_round
 * (NaN when it declines: the caller then rounds in Python). */
double dare_kept_l1(const int64_t *row, int e_lo, int width, const uint32_t *kb,
                    const uint32_t *ab, int64_t c, int32_t below) {
    int64_t bins[256] = {0};
    for (int e = 0; e < width; e++) bins[e_lo + e] = row[e];
    abs_l1_bins_listed(kb, ab, c, below, bins);
    return l1_round(bins);
}

/* ---- linear (model soup) straight from bfloat16 checkpoints ----
 * out = w_0 s_0 (+ w_j s_j ...) [/ divisor] in float32, each bf16 input widened exactly as it
 * is read (its bits are the float's high half), so a merge of bf16 models skips the float32
 * copy of every input. torch's ``out.add_(s, alpha=w)`` is a fused multiply-add (one
 * rounding), hence fmaf: the bits of evomerge.merge.ops.linear on the widened inputs. */
INLINE float widen(uint16_t h) {
    union f32bits x;
    x.u = (uint32_t)h << 16;
    return x.f;
}

/* float32 -> bfloat16 as torch rounds (c10::BFloat16): to nearest, ties to even. A NaN (only
 * from non-finite inputs, which the engine refuses) becomes the quiet NaN 0x7FC0. */
INLINE uint16_t narrow(float f) {
    union f32bits x;
    x.f = f;
    if (f != f) return 0x7FC0;
    return (uint16_t)((x.u + 0x7FFFu + ((x.u >> 16) & 1u)) >> 16);
}

/* bf16 exponent all ones: Inf or NaN. */
INLINE int64_t nonfinite(uint16_t h) { return (h & 0x7F80u) == 0x7F80u; }

#define LINEAR_BLOCK 2048 /* floats: the running sum stays in L1 across the models */

/* Returns the number of non-finite inputs seen (the engine's NaN/Inf check, done in the same
 * read). Writes float32 to out, or bfloat16 to out16 when it is not NULL (the merged file's
 * dtype: no float32 result is stored and read back to be narrowed). */
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("fma", "default"))) /* (avx512f does not imply fma) */
#endif
int64_t linear_bf16(int64_t start, int64_t stop, int m, const uint16_t *const *src,
                    const float *w, int normalize, float divisor, float *restrict out,
                    uint16_t *restrict out16) {
    float acc[LINEAR_BLOCK];
    int64_t bad = 0;
    for (int64_t lo = start; lo < stop; lo += LINEAR_BLOCK) {
        const int64_t n = stop - lo < LINEAR_BLOCK ? stop - lo : LINEAR_BLOCK;
        const uint16_t *restrict s0 = src[0] + lo;
        const float w0 = w[0];
        for (int64_t i = 0; i < n; i++) {
            acc[i] = widen(s0[i]) * w0;
            bad += nonfinite(s0[i]);
        }
        for (int j = 1; j < m; j++) {
            const uint16_t *restrict s = src[j] + lo;
            const float wj = w[j];
            for (int64_t i = 0; i < n; i++) {
                acc[i] = fmaf(widen(s[i]), wj, acc[i]);
                bad += nonfinite(s[i]);
            }
        }
        if (normalize)
            for (int64_t i = 0; i < n; i++) acc[i] = acc[i] / divisor;
        if (out16)
            for (int64_t i = 0; i < n; i++) out16[lo + i] = narrow(acc[i]);
        else
            for (int64_t i = 0; i < n; i++) out[lo + i] = acc[i];
    }
    return bad;
}

/* ---- DARE's uniforms: torch.rand(float32) on torch's CPU generator, ~8x faster ----
 * torch's CPU generator is the standard 32-bit Mersenne twister; torch.rand keeps the low 24
 * bits of each output, times 2^-24 (exact). ``left``/``next`` follow torch's own bookkeeping
 * (at::mt19937: an output first decrements left and regenerates the state when it reaches 0), so
 * the state written back continues the stream exactly where torch would. mt_uniform.py reads
 * and writes the state through Generator.get_state / set_state. */
#define MT_N 624
#define MT_M 397

INLINE uint32_t mt_twist(uint32_t u, uint32_t v) {
    return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void mt_regenerate(uint32_t *s) {
    int k = 0;
    for (; k < MT_N - MT_M; k++) s[k] = s[k + MT_M] ^ mt_twist(s[k], s[k + 1]);
    for (; k < MT_N - 1; k++) s[k] = s[k + MT_M - MT_N] ^ mt_twist(s[k], s[k + 1]);
    s[MT_N - 1] = s[MT_M - 1] ^ mt_twist(s[MT_N - 1], s[0]);
}

/* The next min(want, outputs left before a regeneration) uniforms into out, or packed into
 * high and low (out NULL: k >> 8 and k & 255 of u = k * 2^-24); returns how many. */
INLINE int64_t mt_block(int32_t *l, uint32_t *k, uint32_t *s, int64_t want, float *restrict out,
                        uint16_t *restrict high, uint8_t *restrict low) {
    if (*l == 1) { /* the next output regenerates: left becomes MT_N after it */
        mt_regenerate(s);
        *l = MT_N + 1;
        *k = 0;
    }
    const int64_t take = *l - 1 < want ? *l - 1 : want;
    const uint32_t *restrict src = s + *k;
    for (int64_t t = 0; t < take; t++) {
        uint32_t y = src[t];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        y ^= y >> 18;
        y &= 0xFFFFFFu;
        if (out)
            out[t] = (float)y * (1.0f / 16777216.0f);
        else
            high[t] = (uint16_t)(y >> 8), low[t] = (uint8_t)y;
    }
    *k += (uint32_t)take;
    *l -= (int32_t)take;
    return take;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void mt_uniform24(int32_t *left, uint32_t *next, uint32_t *s, int64_t n, float *restrict out,
                  uint16_t *restrict high, uint8_t *restrict low) {
    if (out)
        for (int64_t i = 0; i < n;) i += mt_block(left, next, s, n - i, out + i, 0, 0);
    else
        for (int64_t i = 0; i < n;) i += mt_block(left, next, s, n - i, 0, high + i, low + i);
}
