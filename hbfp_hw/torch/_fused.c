/* The fused HBFP GEMM of the emulate backend's fast path: quantize A and B along K, compute
 * the block products, and add them into C in FP32, k-block after k-block, in one call.
 *
 * Bit-exact with hbfp_hw.golden.gemm (docs/numerics.md 2-3) by the same argument as the torch
 * fast path in emulate_fast.py, which this file mirrors step by step:
 *
 *   - per block, the largest magnitude is read from the bit patterns (for non-negative floats
 *     their order is the order of the values; NaN/Inf patterns lie above every finite one);
 *   - the scale 2**k, k = (w-2) - E, and its inverse are built from that exponent field by
 *     integer arithmetic (both normal floats: the caller's conditions keep |k| <= 126);
 *   - v = clamp(round(x * 2**k), -M, M) * 2**-k is exact: x * 2**k is exact unless it is below
 *     2**-126, where it rounds to 0 in either rounding mode anyway; rintf is roundTiesToEven
 *     (the default rounding mode, which Python never changes) and truncf rounds toward zero;
 *   - a block product is exact in float32 when N * M**2 <= 2**24 and the product grid stays
 *     within float32's range (every partial sum is an integer multiple of the grid below
 *     2**24 grid units, so any order and FMA contraction give the exact value); otherwise it is
 *     computed in float64, exact for any supported format, and rounded once (RNE) to float32;
 *   - stochastic rounding (numerics.md 2.4): |x * 2**k| is cut to 2**16, scaled by 2**16 and
 *     truncated to an integer q (exact: a float times a power of two), the block's 16-bit
 *     xorshift32 value r is added in 64-bit integers, and (q + r) >> 16 gets the sign of
 *     x * 2**k; hbfp_sr_bits makes the values r of every block in the contract's order;
 *   - C starts from +0.0 and each k-block's product is added with one float32 addition, in
 *     increasing k-block order;
 *   - rows of A and columns of B with a NaN block (a NaN or an infinity) give the canonical NaN
 *     0x7FC00000, and so does every NaN the accumulation makes (Inf - Inf).
 *
 * Build: cc -O3 -march=native -ffp-contract=fast -fno-math-errno (never -ffast-math: every
 * rounding above is an IEEE one). FMA contraction only fuses the exact block products.
 * IEEE subnormals are required (no flush-to-zero); the Python caller ensures it.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VW 16 /* floats per vector */
#define MR 6  /* rows of C per micro-tile */
#else
#define VW 8
#define MR 3
#endif
#define NR (2 * VW) /* columns of C per micro-tile */
#define DOT_WASTE 8 /* see hbfp_fused_gemm */
#define DW (VW / 2) /* doubles per vector */
#define ND (NR / DW)

typedef float vf __attribute__((vector_size(VW * 4)));
typedef double vd __attribute__((vector_size(VW * 4)));
typedef float vfh __attribute__((vector_size(VW * 2)));

#define ABS_MASK 0x7FFFFFFFu
#define EXP_MASK 0x7F800000u
#define INF_BITS 0x7F800000u
#define CANONICAL_NAN 0x7FC00000u
#define KMAX 126

static inline uint32_t f2u(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float u2f(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* The hot loops are written once as always-inline functions of the block size (and of the
 * rounding) and instantiated for each power-of-two block size, so that the compiler sees
 * constant trip counts and vectorizes them without run-time checks. */
#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define NB_SWITCH(CALL)                                                                 \
    switch (nb) {                                                                       \
    case 2: CALL(2); break;                                                             \
    case 4: CALL(4); break;                                                             \
    case 8: CALL(8); break;                                                             \
    case 16: CALL(16); break;                                                           \
    case 32: CALL(32); break;                                                           \
    case 64: CALL(64); break;                                                           \
    default: CALL(nb); break;                                                           \
    }

/* The largest |x| of n floats, as a bit pattern. */
ALWAYS_INLINE uint32_t max_bits(const float *restrict x, int n)
{
    uint32_t mx = 0;
    for (int t = 0; t < n; t++) {
        const uint32_t u = f2u(x[t]) & ABS_MASK;
        mx = u > mx ? u : mx;
    }
    return mx;
}

/* The block maxima of one contiguous row, block b into out[b * ostride]. */
ALWAYS_INLINE void row_maxima(const float *restrict row, int64_t kdim, int nb,
                              uint32_t *restrict out, int64_t ostride)
{
    const int64_t full = kdim / nb;
    for (int64_t b = 0; b < full; b++) out[b * ostride] = max_bits(row + b * nb, nb);
    if (full * nb < kdim) out[full * ostride] = max_bits(row + full * nb, (int)(kdim - full * nb));
}

typedef struct {
    int nb, f, emin, nearest;
    float mmax;
} fmt_t;

/* One operand X [rows, kdim] (element (r, k) at x[r * sr + k * sk]), quantized along K.
 * rnd: the stochastic-rounding values of element (r, k) at rnd[r * kpad + k], or NULL. */
typedef struct {
    const float *x;
    const int32_t *rnd;
    int64_t rows, kdim, sr, sk, kblocks;
    uint32_t *abits;   /* [kblocks * rows], block (r, b) at b * rows + r */
    uint8_t *nan_line; /* [rows]: the row holds a NaN block */
    int any_nan, e_raw, e_hi, e_lo;
} operand_t;

static void block_maxima(operand_t *o, int nb)
{
    const int64_t rows = o->rows, kdim = o->kdim, sr = o->sr, sk = o->sk;
    if (sk == 1) {
#define ROW_MAXIMA(NB)                                                                  \
    for (int64_t r = 0; r < rows; r++) row_maxima(o->x + r * sr, kdim, NB, o->abits + r, rows)
        NB_SWITCH(ROW_MAXIMA)
#undef ROW_MAXIMA
    } else {
        for (int64_t b = 0; b < o->kblocks; b++) {
            uint32_t *mx = o->abits + b * rows;
            memset(mx, 0, rows * sizeof *mx);
            int64_t k0 = b * nb, k1 = k0 + nb < kdim ? k0 + nb : kdim;
            for (int64_t k = k0; k < k1; k++) {
                const float *col = o->x + k * sk;
                if (sr == 1)
                    for (int64_t r = 0; r < rows; r++) {
                        uint32_t u = f2u(col[r]) & ABS_MASK;
                        mx[r] = u > mx[r] ? u : mx[r];
                    }
                else
                    for (int64_t r = 0; r < rows; r++) {
                        uint32_t u = f2u(col[r * sr]) & ABS_MASK;
                        mx[r] = u > mx[r] ? u : mx[r];
                    }
            }
        }
    }
    /* The statistics of emulate_fast._FastOperand: e_raw from the largest finite block
     * maximum, e_lo from the smallest nonzero one (NaN blocks included, as there). */
    uint32_t hi = 0;
    uint64_t lo_m1 = 0xFFFFFFFFu;
    o->any_nan = 0;
    memset(o->nan_line, 0, o->rows);
    for (int64_t i = 0; i < o->kblocks * rows; i++) {
        uint32_t u = o->abits[i];
        if (u >= INF_BITS) {
            o->any_nan = 1;
            o->nan_line[i % rows] = 1;
        } else if (u > hi) {
            hi = u;
        }
        uint32_t m1 = u - 1u; /* wraps to the largest value for 0 */
        if (m1 < lo_m1) lo_m1 = m1;
    }
    uint64_t lo = lo_m1 + 1;
    o->e_raw = (int)(hi >> 23) - 127;
    o->e_lo = (int)(lo >> 23) - 127; /* clamped below Emin by the caller */
}

static inline int imax(int a, int b) { return a > b ? a : b; }

/* Per block: the scale 2**k and its inverse, 0 in NaN blocks (their values are zeroed). */
static void block_scales(const operand_t *o, const fmt_t *F, float *scale, float *unscale)
{
    const int32_t k_base = (F->f + 127) * (1 << 23);
    const int32_t k_lo = -KMAX * (1 << 23);
    const int32_t k_hi = (F->f - F->emin < KMAX ? F->f - F->emin : KMAX) * (1 << 23);
    const int64_t n = o->kblocks * o->rows;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = o->abits[i];
        int32_t kbits = u >= INF_BITS ? 0 : k_base - (int32_t)(u & EXP_MASK);
        kbits = kbits < k_lo ? k_lo : (kbits > k_hi ? k_hi : kbits);
        scale[i] = u2f((uint32_t)(kbits + (127 << 23)));
        unscale[i] = u >= INF_BITS ? 0.0f : u2f((uint32_t)((127 << 23) - kbits));
    }
}

/* clamp(round(x * 2**k), -M, M) * 2**-k; gcc unswitches the loops on `nearest`. */
static inline float quant(float x, float s, float us, float mm, int nearest)
{
    float v = nearest ? rintf(x * s) : truncf(x * s);
    v = v < -mm ? -mm : (v > mm ? mm : v);
    return v * us;
}

/* Quantize n contiguous values of one block. */
ALWAYS_INLINE void quant_block(const float *restrict x, float *restrict dst, int n, float s,
                               float us, float mm, int nearest)
{
    for (int t = 0; t < n; t++) dst[t] = quant(x[t], s, us, mm, nearest);
}

/* Quantize one row with K contiguous; block b's statistics at index b * bstride. */
ALWAYS_INLINE void quantize_contiguous_row(const float *restrict row, int64_t kdim,
                                           int64_t kpad, int nb, int nearest, float mm,
                                           const uint32_t *restrict abits,
                                           const float *restrict scale,
                                           const float *restrict unscale, int64_t bstride,
                                           float *restrict dst)
{
    const int64_t kblocks = (kdim + nb - 1) / nb;
    for (int64_t b = 0; b < kblocks; b++) {
        const int n = b * nb + nb <= kdim ? nb : (int)(kdim - b * nb);
        float *restrict d = dst + b * nb;
        if (abits[b * bstride] >= INF_BITS)
            for (int t = 0; t < n; t++) d[t] = 0.0f;
        else
            quant_block(row + b * nb, d, n, scale[b * bstride], unscale[b * bstride], mm,
                        nearest);
    }
    for (int64_t k = kdim; k < kpad; k++) dst[k] = 0.0f;
}

/* Quantize rows [r0, r1) of the operand, row r into dst + (r - r0) * kpad, zero in the
 * padding (kdim <= k < kpad) and in NaN blocks. */
static void quantize_rows(const operand_t *o, const fmt_t *F, int64_t r0, int64_t r1,
                          int64_t kpad, const float *scale, const float *unscale, float *dst)
{
    const int64_t kdim = o->kdim, sk = o->sk, rows = o->rows;
    const int nb = F->nb;
    const float mm = F->mmax;
    if (sk == 1) {
#define QROWS(NB, NEAREST)                                                              \
    for (int64_t r = r0; r < r1; r++)                                                   \
    quantize_contiguous_row(o->x + r * o->sr, kdim, kpad, NB, NEAREST, mm, o->abits + r,   \
                            scale + r, unscale + r, rows, dst + (r - r0) * kpad)
#define QROWS_N(NB) QROWS(NB, 1)
#define QROWS_Z(NB) QROWS(NB, 0)
        if (F->nearest) {
            NB_SWITCH(QROWS_N)
        } else {
            NB_SWITCH(QROWS_Z)
        }
#undef QROWS
#undef QROWS_N
#undef QROWS_Z
        return;
    }
    for (int64_t r = r0; r < r1; r++) {            /* K strided: rare, plain loops */
        const float *row = o->x + r * o->sr;
        float *d = dst + (r - r0) * kpad;
        for (int64_t k = 0; k < kdim; k++) {
            const int64_t i = (k / nb) * rows + r;
            d[k] = o->abits[i] >= INF_BITS ? 0.0f
                                           : quant(row[k * sk], scale[i], unscale[i], mm,
                                                   F->nearest);
        }
        for (int64_t k = kdim; k < kpad; k++) d[k] = 0.0f;
    }
}

/* Stochastic rounding of x * 2**k to an integer, clamped to [-M, M], times 2**-k. */
static inline float quant_sr(float x, float s, float us, float mm, int32_t r)
{
    const float a = x * s;
    float mag = fabsf(a);
    mag = mag > 65536.0f ? 65536.0f : mag;
    const int64_t q = (int64_t)(mag * 65536.0f) + r;  /* mag * 2**16 is exact, >= 0 */
    float v = (float)(q >> 16);
    v = v > mm ? mm : v;
    return copysignf(v, a) * us;
}

/* quantize_rows for stochastic rounding: rows [r0, r1) into dst + (r - r0) * kpad. */
static void quantize_rows_sr(const operand_t *o, const fmt_t *F, int64_t r0, int64_t r1,
                             int64_t kpad, const float *scale, const float *unscale, float *dst)
{
    const int64_t kdim = o->kdim, sk = o->sk, sr = o->sr, rows = o->rows;
    const int nb = F->nb;
    const float mm = F->mmax;
    for (int64_t r = r0; r < r1; r++) {
        const float *row = o->x + r * sr;
        const int32_t *rnd = o->rnd + r * kpad;
        float *d = dst + (r - r0) * kpad;
        for (int64_t b = 0; b < o->kblocks; b++) {
            const int64_t i = b * rows + r, k0 = b * nb;
            const int64_t k1 = k0 + nb < kdim ? k0 + nb : kdim;
            if (o->abits[i] >= INF_BITS) {
                for (int64_t k = k0; k < k1; k++) d[k] = 0.0f;
                continue;
            }
            const float s = scale[i], us = unscale[i];
            if (sk == 1)
                for (int64_t k = k0; k < k1; k++) d[k] = quant_sr(row[k], s, us, mm, rnd[k]);
            else
                for (int64_t k = k0; k < k1; k++)
                    d[k] = quant_sr(row[k * sk], s, us, mm, rnd[k]);
        }
        for (int64_t k = kdim; k < kpad; k++) d[k] = 0.0f;
    }
}

/* The 16-bit stochastic-rounding values of rows x kblocks blocks of nb lanes (numerics.md
 * 2.4): one xorshift32 (13, 17, 5) per lane, lane l from seed ^ C_l (C_l = 0x9E3779B9 (l+1),
 * or C_l if that is 0), one step per block in row-major block order; block g uses the state
 * after g + 1 steps, top 16 bits, at out[g * nb + l] (= out[r * kpad + k]). */
void hbfp_sr_bits(uint32_t seed, int64_t nblocks, int nb, int32_t *out)
{
    uint32_t st[64];
    for (int l = 0; l < nb; l++) {
        const uint32_t c = 0x9E3779B9u * (uint32_t)(l + 1);
        st[l] = (seed ^ c) ? (seed ^ c) : c;
    }
    for (int64_t g = 0; g < nblocks; g++) {
        int32_t *o = out + g * nb;
        for (int l = 0; l < nb; l++) {
            uint32_t x = st[l];
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            st[l] = x;
            o[l] = (int32_t)(x >> 16);
        }
    }
}

/* Zero the padding of panels of P rows (k >= kdim, rows >= o->rows) and the NaN blocks,
 * whose unscale 0 zeroed every value but the NaNs themselves. */
static void zero_panel_padding(const operand_t *o, const fmt_t *F, int P, int64_t kpad,
                               float *pack)
{
    const int64_t rows = o->rows, kdim = o->kdim, panels = (rows + P - 1) / P;
    const int nb = F->nb;
    for (int64_t p = 0; p < panels; p++)
        memset(pack + p * kpad * P + kdim * P, 0, (kpad - kdim) * P * sizeof(float));
    for (int64_t r = rows; r < panels * P; r++) {
        float *dst = pack + (r / P) * kpad * P + r % P;
        for (int64_t k = 0; k < kdim; k++) dst[k * P] = 0.0f;
    }
    if (o->any_nan)
        for (int64_t b = 0; b < o->kblocks; b++)
            for (int64_t r = 0; r < rows; r++)
                if (o->abits[b * rows + r] >= INF_BITS) {
                    float *dst = pack + (r / P) * kpad * P + r % P;
                    const int64_t k0 = b * nb, k1 = k0 + nb < kdim ? k0 + nb : kdim;
                    for (int64_t k = k0; k < k1; k++) dst[k * P] = 0.0f;
                }
}

/* Quantize into panels of P rows, element (r, k) at pack[(r / P) * kpad * P + k * P + r % P],
 * reading one k at a time along the rows (the fast order when the rows are contiguous). */
ALWAYS_INLINE void quant_run(const float *restrict x, const float *restrict s,
                             const float *restrict us, float *restrict dst, int64_t n, float mm,
                             int nearest)
{
    for (int64_t r = 0; r < n; r++) dst[r] = quant(x[r], s[r], us[r], mm, nearest);
}

ALWAYS_INLINE void quantize_panels_by_k(const operand_t *o, const fmt_t *F, int P, int nearest,
                                        int64_t kpad, const float *scale,
                                        const float *unscale, float *pack)
{
    const int64_t rows = o->rows, kdim = o->kdim, sr = o->sr, sk = o->sk;
    const int nb = F->nb;
    const float mm = F->mmax;
    const int64_t panels = (rows + P - 1) / P, full = rows / P;
    for (int64_t k = 0; k < kdim; k++) {
        const float *col = o->x + k * sk;
        const int64_t b = k / nb;
        const float *s = scale + b * rows, *us = unscale + b * rows;
        float *dst = pack + k * P;
        if (sr == 1) {
            for (int64_t p = 0; p < full; p++)
                quant_run(col + p * P, s + p * P, us + p * P, dst + p * kpad * P, P, mm, nearest);
            if (full < panels)
                quant_run(col + full * P, s + full * P, us + full * P, dst + full * kpad * P,
                          rows - full * P, mm, nearest);
        } else {
            for (int64_t r = 0; r < rows; r++)
                dst[(r / P) * kpad * P + r % P] = quant(col[r * sr], s[r], us[r], mm, nearest);
        }
    }
    zero_panel_padding(o, F, P, kpad, pack);
}

/* quantize_panels_by_k for stochastic rounding (rows contiguous): element (r, k) uses
 * rnd[r * kpad + k]. NaN blocks are zeroed at the end (their values are skipped here). */
static void quantize_panels_by_k_sr(const operand_t *o, const fmt_t *F, int P, int64_t kpad,
                                    const float *scale, const float *unscale, float *pack)
{
    const int64_t rows = o->rows, kdim = o->kdim, sk = o->sk;
    const int nb = F->nb;
    const float mm = F->mmax;
    const int64_t panels = (rows + P - 1) / P;
    /* panel by panel: the rnd rows of one panel stay in cache across k (a whole column of
     * rnd at a power-of-two stride would not) */
    for (int64_t p = 0; p < panels; p++) {
        const int64_t r0 = p * P, n = rows - r0 < P ? rows - r0 : P;
        const int32_t *rnd = o->rnd + r0 * kpad;
        for (int64_t k = 0; k < kdim; k++) {
            const float *col = o->x + k * sk + r0;
            const int64_t b = k / nb;
            const float *s = scale + b * rows + r0, *us = unscale + b * rows + r0;
            float *restrict dst = pack + p * kpad * P + k * P;
            for (int64_t q = 0; q < n; q++) {
                const float x = col[q];
                dst[q] = x != x ? 0.0f : quant_sr(x, s[q], us[q], mm, rnd[q * kpad + k]);
            }
        }
    }
    zero_panel_padding(o, F, P, kpad, pack);
}

/* Quantize into panels of P rows (layout as above) row by row: each panel through a
 * row-major scratch [P][kpad], then transposed (the fast order when K is contiguous). */
static void quantize_panels_by_row(const operand_t *o, const fmt_t *F, int P, int64_t kpad,
                                   const float *scale, const float *unscale, float *scratch,
                                   float *pack)
{
    const int64_t panels = (o->rows + P - 1) / P;
    for (int64_t p = 0; p < panels; p++) {
        const int64_t r0 = p * P, r1 = r0 + P < o->rows ? r0 + P : o->rows;
        if (o->rnd)
            quantize_rows_sr(o, F, r0, r1, kpad, scale, unscale, scratch);
        else
            quantize_rows(o, F, r0, r1, kpad, scale, unscale, scratch);
        memset(scratch + (r1 - r0) * kpad, 0, (P - (r1 - r0)) * kpad * sizeof(float));
        float *dst = pack + p * kpad * P;
        for (int64_t k = 0; k < kpad; k++)
            for (int q = 0; q < P; q++) dst[k * P + q] = scratch[q * kpad + k];
    }
}

/* One MR x NR tile of C over all k-blocks, products in float32 (exact), into tile[MR][NR].
 * A element (r, k) of the tile at ap[r * ars + k * aks]; B row k at bp + k * NR. The last
 * k-block uses its first `tail` values only: the rest is padding, zeros in both operands,
 * whose products (+0 or -0) leave a sum that starts at +0 unchanged. */
static void tile_f32(const float *ap, int64_t ars, int64_t aks, const float *bp,
                     int64_t kblocks, int nb, int tail, float *tile)
{
    vf acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = (vf){0};
    for (int64_t kb = 0; kb < kblocks; kb++) {
        vf p[MR][2];
        for (int r = 0; r < MR; r++) p[r][0] = p[r][1] = (vf){0};
        const float *a = ap + kb * nb * aks, *b = bp + kb * nb * NR;
        const int tn = kb + 1 < kblocks ? nb : tail;
        for (int t = 0; t < tn; t++) {
            const vf b0 = *(const vf *)(b + t * NR), b1 = *(const vf *)(b + t * NR + VW);
            for (int r = 0; r < MR; r++) {
                const float av = a[r * ars + t * aks];
                p[r][0] += av * b0;
                p[r][1] += av * b1;
            }
        }
        for (int r = 0; r < MR; r++) {
            acc[r][0] += p[r][0];   /* the one float32 rounding per k-block */
            acc[r][1] += p[r][1];
        }
    }
    for (int r = 0; r < MR; r++) {
        memcpy(tile + r * NR, &acc[r][0], sizeof(vf));
        memcpy(tile + r * NR + VW, &acc[r][1], sizeof(vf));
    }
}

/* The same with products in float64 (exact), each rounded once to float32. */
static void tile_f64(const float *ap, int64_t ars, int64_t aks, const float *bp,
                     int64_t kblocks, int nb, int tail, float *tile)
{
    memset(tile, 0, MR * NR * sizeof(float));
    for (int64_t kb = 0; kb < kblocks; kb++) {
        vd p[MR][ND];
        for (int r = 0; r < MR; r++)
            for (int v = 0; v < ND; v++) p[r][v] = (vd){0};
        const float *a = ap + kb * nb * aks, *b = bp + kb * nb * NR;
        const int tn = kb + 1 < kblocks ? nb : tail;
        for (int t = 0; t < tn; t++) {
            vd bv[ND];
            for (int v = 0; v < ND; v++) {
                vfh h;
                memcpy(&h, b + t * NR + v * DW, sizeof h);
                bv[v] = __builtin_convertvector(h, vd);
            }
            for (int r = 0; r < MR; r++) {
                const double av = a[r * ars + t * aks];
                for (int v = 0; v < ND; v++) p[r][v] += av * bv[v];
            }
        }
        for (int r = 0; r < MR; r++)
            for (int v = 0; v < ND; v++) {
                vfh h = __builtin_convertvector(p[r][v], vfh), c;
                memcpy(&c, tile + r * NR + v * DW, sizeof c);
                c += h;
                memcpy(tile + r * NR + v * DW, &c, sizeof c);
            }
    }
}

/* The dot path, for shapes where the tiles would be mostly padding (a GEMV; the weight
 * gradient of a grouped convolution, one row of A against a few columns of B): both operands
 * quantized row by row, [rows][kpad], and each C element the float32 sum, in k-block order,
 * of its block dot products, each exact in float32 (any order of its terms) or in float64
 * and rounded once, as in the tiles. */
ALWAYS_INLINE float dot_f32(const float *restrict x, const float *restrict y, int64_t kblocks,
                            int nb)
{
    float acc = 0.0f;
    for (int64_t kb = 0; kb < kblocks; kb++) {
        const float *xb = x + kb * nb, *yb = y + kb * nb;
        float p = 0.0f;
        if (nb % VW == 0) {
            vf sum = {0};
            for (int t = 0; t < nb; t += VW) {
                vf xv, yv;
                memcpy(&xv, xb + t, sizeof xv);
                memcpy(&yv, yb + t, sizeof yv);
                sum += xv * yv;
            }
            for (int l = 0; l < VW; l++) p += sum[l];
        } else {
            for (int t = 0; t < nb; t++) p += xb[t] * yb[t];
        }
        acc += p;   /* the one float32 rounding per k-block */
    }
    return acc;
}

static float dot_f64(const float *x, const float *y, int64_t kblocks, int nb)
{
    float acc = 0.0f;
    for (int64_t kb = 0; kb < kblocks; kb++) {
        double p = 0.0;
        for (int t = 0; t < nb; t++) p += (double)x[kb * nb + t] * (double)y[kb * nb + t];
        acc += (float)p;
    }
    return acc;
}

/* C [m, n] (contiguous) from the quantized rows aq [m][kpad] and bq [n][kpad]; every NaN
 * canonical, the rows and columns of NaN blocks all NaN. */
static void dot_gemm(const operand_t *A, const operand_t *B, const float *aq, const float *bq,
                     int64_t kpad, int nb, int f64, float *c)
{
    const int64_t m = A->rows, n = B->rows, kblocks = A->kblocks;
    if (f64) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
                c[i * n + j] = dot_f64(aq + i * kpad, bq + j * kpad, kblocks, nb);
    } else {
#define DOTS(NB)                                                                        \
    for (int64_t i = 0; i < m; i++)                                                     \
        for (int64_t j = 0; j < n; j++)                                                 \
            c[i * n + j] = dot_f32(aq + i * kpad, bq + j * kpad, kblocks, NB)
        NB_SWITCH(DOTS)
#undef DOTS
    }
    const float nan = u2f(CANONICAL_NAN);
    const int any_nan = A->any_nan || B->any_nan;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            float *v = c + i * n + j;
            if (*v != *v || (any_nan && (A->nan_line[i] || B->nan_line[j]))) *v = nan;
        }
}

/* Quantize the whole operand row by row into dst [rows][kpad]. */
static void quantize_all_rows(const operand_t *o, const fmt_t *F, int64_t kpad, float *scale,
                              float *unscale, float *dst)
{
    block_scales(o, F, scale, unscale);
    if (o->rnd)
        quantize_rows_sr(o, F, 0, o->rows, kpad, scale, unscale, dst);
    else if (o->sk == 1)
        quantize_rows(o, F, 0, o->rows, kpad, scale, unscale, dst);
    else if (F->nearest)                /* panels of one row: row-major, read along the rows */
        quantize_panels_by_k(o, F, 1, 1, kpad, scale, unscale, dst);
    else
        quantize_panels_by_k(o, F, 1, 0, kpad, scale, unscale, dst);
}

typedef struct {
    const float *apack, *bpack;
    const uint8_t *nan_row, *nan_col;
    float *c;          /* tile element (row i, column j) at c[i * crs + j * ccs] */
    int64_t m, n, crs, ccs, kpad, kblocks, mpanels, ars, aks;
    int nb, tail, f64, any_nan;
    int64_t t0, t1; /* tiles [t0, t1), tile = jp * mpanels + ip */
} job_t;

/* Write tile (r, q) -> C[i0 + r, c0 + q] at c[(i0 + r) * crs + (c0 + q) * ccs], every NaN
 * canonical, the rows and columns of NaN blocks all NaN. */
static void store_tile(const job_t *j, const float *tile, int64_t i0, int64_t c0, int64_t rows,
                       int64_t cols)
{
    const float nan = u2f(CANONICAL_NAN);
    const int64_t crs = j->crs, ccs = j->ccs;
    float *restrict base = j->c + i0 * crs + c0 * ccs;
    if (ccs == 1) {
        for (int64_t r = 0; r < rows; r++) {
            float *restrict dst = base + r * crs;
            const float *restrict src = tile + r * NR;
            for (int64_t q = 0; q < cols; q++) dst[q] = src[q] != src[q] ? nan : src[q];
        }
    } else {                        /* transposed: C's rows are the tile's columns */
        for (int64_t q = 0; q < cols; q++) {
            float *restrict dst = base + q * ccs;
            for (int64_t r = 0; r < rows; r++) {
                const float v = tile[r * NR + q];
                dst[r] = v != v ? nan : v;
            }
        }
    }
    if (j->any_nan)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t q = 0; q < cols; q++)
                if (j->nan_row[i0 + r] || j->nan_col[c0 + q]) base[r * crs + q * ccs] = nan;
}

static void *run_tiles(void *arg)
{
    const job_t *j = arg;
    float tile[MR * NR] __attribute__((aligned(64)));
    for (int64_t t = j->t0; t < j->t1; t++) {
        const int64_t jp = t / j->mpanels, ip = t % j->mpanels;
        const float *ap = j->apack + ip * j->kpad * MR, *bp = j->bpack + jp * j->kpad * NR;
        if (j->f64)
            tile_f64(ap, j->ars, j->aks, bp, j->kblocks, j->nb, j->tail, tile);
        else
            tile_f32(ap, j->ars, j->aks, bp, j->kblocks, j->nb, j->tail, tile);
        const int64_t i0 = ip * MR, c0 = jp * NR;
        const int64_t rows = j->m - i0 < MR ? j->m - i0 : MR;
        const int64_t cols = j->n - c0 < NR ? j->n - c0 : NR;
        store_tile(j, tile, i0, c0, rows, cols);
    }
    return NULL;
}

/* Run fn on jobs[0..n) (each `size` bytes), jobs 1.. on threads of their own and job 0 on
 * this one; a job whose thread cannot be started runs here too. */
static void run_jobs(void *(*fn)(void *), void *jobs, size_t size, int n)
{
    pthread_t tid[64];
    int started[64] = {0};
    for (int i = 1; i < n; i++)
        started[i] = pthread_create(&tid[i], NULL, fn, (char *)jobs + i * size) == 0;
    fn(jobs);
    for (int i = 1; i < n; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            fn((char *)jobs + i * size);
    }
}

/* Per-thread scratch buffers, kept between calls up to WS_KEEP bytes each (first-touching
 * megabytes of fresh memory on every call would cost more than the arithmetic). */
#define WS_SLOTS 8
#define WS_KEEP ((size_t)64 << 20)
static __thread struct { void *p; size_t cap; } ws[WS_SLOTS];

typedef struct { void *own[WS_SLOTS]; } scratch_t;

static void *ws_get(int slot, size_t bytes, scratch_t *tmp)
{
    bytes = (bytes + 63) / 64 * 64;
    if (bytes == 0) bytes = 64;
    if (bytes <= ws[slot].cap) return ws[slot].p;
    if (bytes > WS_KEEP) return tmp->own[slot] = aligned_alloc(64, bytes);
    free(ws[slot].p);
    ws[slot].p = aligned_alloc(64, bytes);
    ws[slot].cap = ws[slot].p ? bytes : 0;
    return ws[slot].p;
}

/* C [m, n] (contiguous) = HBFP A [m, kdim] @ B [kdim, n], A quantized along its rows and B
 * along its columns. Returns 0 when done, 1 when the fast path does not apply (the caller
 * takes the general path; C is untouched), -1 when out of memory.
 *
 * f32_bound_ok: N * M**2 <= 2**24; f32_max_grid: the largest product grid exponent g with
 * N * M**2 * 2**g <= FLT_MAX (exact._f32_max_grid). rnd_a, rnd_b: stochastic rounding
 * (hbfp_sr_bits of each operand, [rows * kpad]), or NULL for nearest/toward-zero. */
int hbfp_fused_gemm(const float *a, int64_t m, int64_t kdim, int64_t a_sm, int64_t a_sk,
                    const float *b, int64_t n, int64_t b_sk, int64_t b_sn, float *c, int nb,
                    int f, float mmax, int emin, int emax, int nearest, int f32_bound_ok,
                    int f32_max_grid, int nthreads, const int32_t *rnd_a, const int32_t *rnd_b)
{
    const fmt_t F = {nb, f, emin, nearest, mmax};
    const int64_t kblocks = (kdim + nb - 1) / nb, kpad = kblocks * nb;
    const int64_t nblk = kblocks * (m > n ? m : n);
    operand_t A = {a, rnd_a, m, kdim, a_sm, a_sk, kblocks, NULL, NULL, 0, 0, 0, 0};
    operand_t B = {b, rnd_b, n, kdim, b_sn, b_sk, kblocks, NULL, NULL, 0, 0, 0, 0};
    scratch_t tmp = {{0}};
    int rc = -1;
    A.abits = ws_get(0, kblocks * m * sizeof(uint32_t), &tmp);
    B.abits = ws_get(1, kblocks * n * sizeof(uint32_t), &tmp);
    A.nan_line = ws_get(2, m, &tmp);
    B.nan_line = ws_get(3, n, &tmp);
    if (!A.abits || !B.abits || !A.nan_line || !B.nan_line) goto done;
    block_maxima(&A, nb);
    block_maxima(&B, nb);
    A.e_hi = imax(A.e_raw, emin);
    B.e_hi = imax(B.e_raw, emin);
    A.e_lo = imax(A.e_lo, emin);
    B.e_lo = imax(B.e_lo, emin);
    /* the conditions of emulate_fast._gemm_fast */
    if (imax(A.e_raw, B.e_raw) > emax || f - imax(A.e_hi, B.e_hi) < -KMAX ||
        f - (A.e_lo < B.e_lo ? A.e_lo : B.e_lo) > KMAX) {
        rc = 1;
        goto done;
    }
    const int grid_lo = A.e_lo + B.e_lo - 2 * f, grid_hi = A.e_hi + B.e_hi - 2 * f;
    const int f64 = !(f32_bound_ok && grid_lo >= -149 && grid_hi <= f32_max_grid);
    /* The kernel broadcasts the elements of one operand (X, the rows of its tiles) against
     * vectors of the other (Y, panels of NR rows). X packs fastest with K contiguous, Y with its
     * rows contiguous; when the operands are laid out the other way round, the kernel
     * computes C^T = B^T A^T instead, element for element the same sums. */
    const int swap = (B.sk == 1) + (A.sr == 1 && A.sk != 1) >
                     (A.sk == 1) + (B.sr == 1 && B.sk != 1);
    operand_t *X = swap ? &B : &A, *Y = swap ? &A : &B;
    const int64_t xpanels = (X->rows + MR - 1) / MR, ypanels = (Y->rows + NR - 1) / NR;
    /* Tiles with less than 1/DOT_WASTE of useful elements: the dot path (a block dot
     * product costs about as much as DOT_WASTE tile elements). */
    if (DOT_WASTE * m * n < xpanels * MR * ypanels * NR) {
        float *aq = ws_get(4, m * kpad * sizeof(float), &tmp);
        float *bq = ws_get(5, n * kpad * sizeof(float), &tmp);
        float *sc = ws_get(6, 2 * nblk * sizeof(float), &tmp);
        if (!aq || !bq || !sc) goto done;
        quantize_all_rows(&A, &F, kpad, sc, sc + nblk, aq);
        quantize_all_rows(&B, &F, kpad, sc, sc + nblk, bq);
        dot_gemm(&A, &B, aq, bq, kpad, nb, f64, c);
        rc = 0;
        goto done;
    }
    float *xpack = ws_get(4, xpanels * MR * kpad * sizeof(float), &tmp);
    float *ypack = ws_get(5, ypanels * NR * kpad * sizeof(float), &tmp);
    float *scale = ws_get(6, 2 * nblk * sizeof(float), &tmp), *unscale = scale + nblk;
    float *scratch = ws_get(7, NR * kpad * sizeof(float), &tmp);
    if (!xpack || !ypack || !scale || !scratch) goto done;
    int64_t xrs, xks;
    block_scales(X, &F, scale, unscale);
    if (X->rnd && X->sr == 1 && X->sk != 1) {   /* stochastic, rows contiguous: by k */
        quantize_panels_by_k_sr(X, &F, MR, kpad, scale, unscale, xpack);
        xrs = 1, xks = MR;
    } else if (X->rnd) {              /* stochastic: row-major */
        quantize_rows_sr(X, &F, 0, X->rows, kpad, scale, unscale, xpack);
        memset(xpack + X->rows * kpad, 0, (xpanels * MR - X->rows) * kpad * sizeof(float));
        xrs = kpad, xks = 1;
    } else if (X->sr == 1 && X->sk != 1) {   /* rows contiguous: MR-row panels, by k */
        if (nearest)
            quantize_panels_by_k(X, &F, MR, 1, kpad, scale, unscale, xpack);
        else
            quantize_panels_by_k(X, &F, MR, 0, kpad, scale, unscale, xpack);
        xrs = 1, xks = MR;
    } else {                          /* K contiguous (or neither): row-major */
        quantize_rows(X, &F, 0, X->rows, kpad, scale, unscale, xpack);
        memset(xpack + X->rows * kpad, 0, (xpanels * MR - X->rows) * kpad * sizeof(float));
        xrs = kpad, xks = 1;
    }
    block_scales(Y, &F, scale, unscale);
    if (Y->sr == 1 && Y->sk != 1 && Y->rnd) {
        quantize_panels_by_k_sr(Y, &F, NR, kpad, scale, unscale, ypack);
    } else if (Y->sr == 1 && Y->sk != 1) {
        if (nearest)
            quantize_panels_by_k(Y, &F, NR, 1, kpad, scale, unscale, ypack);
        else
            quantize_panels_by_k(Y, &F, NR, 0, kpad, scale, unscale, ypack);
    } else {
        quantize_panels_by_row(Y, &F, NR, kpad, scale, unscale, scratch, ypack);
    }

    const int64_t tiles = xpanels * ypanels;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > tiles) nthreads = (int)tiles;
    if (nthreads > 64) nthreads = 64;
    job_t jobs[64];
    for (int i = 0; i < nthreads; i++) {
        jobs[i] = (job_t){xpack, ypack, X->nan_line, Y->nan_line, c, X->rows, Y->rows,
                          swap ? 1 : n, swap ? n : 1, kpad, kblocks, xpanels, xrs, xks, nb,
                          (int)(kdim - (kblocks - 1) * nb), f64, A.any_nan || B.any_nan,
                          tiles * i / nthreads, tiles * (i + 1) / nthreads};
    }
    run_jobs(run_tiles, jobs, sizeof jobs[0], nthreads);
    rc = 0;
done:
    for (int i = 0; i < WS_SLOTS; i++) free(tmp.own[i]);
    return rc;
}

/* G independent GEMMs: C[g] [m, n] (contiguous, at c + g * m * n) = HBFP A[g] @ B[g], A[g]
 * at a + g * a_sg and B[g] at b + g * b_sg (strides as in hbfp_fused_gemm), each exactly as
 * hbfp_fused_gemm computes it. rnd_a, rnd_b: stochastic rounding, the values of GEMM g at
 * rnd_a + g * m * kpad (rnd_b + g * n * kpad), or NULL. status[g] gets GEMM g's return
 * value (1: the caller computes that GEMM on the general path). The batch is split across
 * up to nthreads threads, one GEMM per thread at a time. */
typedef struct {
    const float *a, *b;
    float *c;
    const int32_t *rnd_a, *rnd_b;
    int8_t *status;
    int64_t g0, g1, a_sg, b_sg, m, n, kdim, a_sm, a_sk, b_sk, b_sn;
    int nb, f, emin, emax, nearest, f32_bound_ok, f32_max_grid;
    float mmax;
} batch_t;

static void *run_batch(void *arg)
{
    const batch_t *t = arg;
    const int64_t kpad = (t->kdim + t->nb - 1) / t->nb * t->nb;
    for (int64_t g = t->g0; g < t->g1; g++)
        t->status[g] = (int8_t)hbfp_fused_gemm(
            t->a + g * t->a_sg, t->m, t->kdim, t->a_sm, t->a_sk, t->b + g * t->b_sg, t->n,
            t->b_sk, t->b_sn, t->c + g * t->m * t->n, t->nb, t->f, t->mmax, t->emin, t->emax,
            t->nearest, t->f32_bound_ok, t->f32_max_grid, 1,
            t->rnd_a ? t->rnd_a + g * t->m * kpad : NULL,
            t->rnd_b ? t->rnd_b + g * t->n * kpad : NULL);
    return NULL;
}

void hbfp_fused_gemm_batched(int64_t groups, const float *a, int64_t a_sg, int64_t m,
                             int64_t kdim, int64_t a_sm, int64_t a_sk, const float *b,
                             int64_t b_sg, int64_t n, int64_t b_sk, int64_t b_sn, float *c,
                             int nb, int f, float mmax, int emin, int emax, int nearest,
                             int f32_bound_ok, int f32_max_grid, int nthreads,
                             const int32_t *rnd_a, const int32_t *rnd_b, int8_t *status)
{
    if (nthreads < 1) nthreads = 1;
    if (nthreads > groups) nthreads = (int)groups;
    if (nthreads > 64) nthreads = 64;
    batch_t jobs[64];
    for (int i = 0; i < nthreads; i++)
        jobs[i] = (batch_t){a, b, c, rnd_a, rnd_b, status, groups * i / nthreads,
                            groups * (i + 1) / nthreads, a_sg, b_sg, m, n, kdim, a_sm, a_sk,
                            b_sk, b_sn, nb, f, emin, emax, nearest, f32_bound_ok, f32_max_grid,
                            mmax};
    run_jobs(run_batch, jobs, sizeof jobs[0], nthreads);
}

/* hbfp_sr_bits of G seeds, each for nblocks blocks, one after the other into out. */
void hbfp_sr_bits_batched(const uint32_t *seeds, int64_t groups, int64_t nblocks, int nb,
                          int32_t *out)
{
    for (int64_t g = 0; g < groups; g++)
        hbfp_sr_bits(seeds[g], nblocks, nb, out + g * nblocks * nb);
}
