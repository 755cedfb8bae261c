/* Matrix products with block-quantized weights and float32 activations, for a few rows
 * (a decode step): y[M, N] = x[M, K] @ W[N, K]^T, W stored as blocks of 32 along K (below).
 *
 * The float32 product of the dense weight, with its sums rounded in another order: each
 * block's weights rebuilt exactly (q * d + m) and multiplied into x, or for one or two
 * rows, the block's integers summed against x and scaled after (d * sum(q x) + m * sum(x)). Reading 4.5
 * or 8.5 bits per weight instead of 32 is the point: a decode step reads every weight once.
 * decode.c includes this file, and sidecar/blockq.py builds that one unit with -O3
 * -march=native (AVX-512 where the CPU has it, else AVX2 with FMA, else plain C).
 * `*_mm` split outputs between OpenMP threads (the libgomp torch has loaded) when the
 * weight has at least `parallel_min` elements.
 *
 *   q4_1: w = q * d + m, q in 0..15 (two per byte: element j low nibble, j + 16 high)
 *   q8_0: w = q * d,     q in -127..127
 * d and m: one float16 per block, in arrays of their own (out, blocks). */
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BQ_BLOCK 32
#define BQ_Q4_1 0
#define BQ_Q8_0 1

typedef struct {
    const uint8_t *qs;
    const uint16_t *d; /* IEEE half bits, as the GGUF stores them: 2 bytes a block, not 4 */
    const uint16_t *m; /* q4_1 only */
    int64_t kind, n, k;
} bq_weight;

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__)) || defined(__F16C__)
#include <immintrin.h>
#endif

/* A half (IEEE binary16) as a float: exact. A decode step is bound by the bytes it reads,
 * and a Q4_1 block's scale and offset as floats were a third of them. */
static inline float half(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0x1f) {
        v.u = sign | 0x7f800000u | (man << 13); /* inf, nan */
    } else if (exp == 0) { /* zero, subnormal: man * 2^-24 */
        v.f = (float)man * 5.9604644775390625e-8f;
        v.u |= sign;
    } else {
        v.u = sign | ((exp + 112) << 23) | (man << 13);
    }
    return v.f;
#endif
}

#define CHUNK 8 /* rows summed together against one decoded block */

/* xs[r * (k / 32) + b]: the sum of block b of row r of x (rows, k) */
static void bq_block_sums(const float *x, int64_t rows, int64_t k, float *xs) {
    const int64_t blocks = k / BQ_BLOCK;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < blocks; b++) {
            const float *xb = x + r * k + b * BQ_BLOCK;
            float s = 0.0f;
            for (int j = 0; j < BQ_BLOCK; j++) s += xb[j];
            xs[r * blocks + b] = s;
        }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)

/* The 32 values of block b of output o (lo: elements 0..15, hi: 16..31). A Q4_1 block's
 * are looked up in `table` (16 floats, indexed by the 4-bit value: vpermps reads only the
 * low 4 bits of each index): the integers 0..15 themselves, or the block's weights rebuilt
 * (q * d + m, 16 products instead of 32). A Q8_0 block's are its integers as floats. */
static const float IOTA[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

static inline __attribute__((always_inline)) void decode(int64_t kind, const uint8_t *qs, int64_t at,
                                                         __m512 table, __m512 *lo, __m512 *hi) {
    if (kind == BQ_Q4_1) {
        const __m512i wide = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + at * 16)));
        *lo = _mm512_permutexvar_ps(wide, table);
        *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(wide, 4), table);
    } else {
        const int8_t *q = (const int8_t *)qs + at * 32;
        *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
        *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
    }
}

/* Outputs [o, o + NO) against R rows (both compile-time constants once inlined: the sums
 * stay in registers). One or two rows: d * sum(q x) per block, m * sum(x) added from the
 * block sums. More: each block's weights rebuilt once as the dense model holds them (q * d
 * + m: a multiply, then an add) and multiplied into every row, two products per row and
 * block instead of three. NO outputs side by side: one alone is a chain of multiply-adds per
 * row, each waiting on the one before (an attention projection's rows are only 18 blocks
 * long, so little else overlaps it); several keep the FMA units busy, and each block of x
 * serves them all. Each output's operations and their order do not depend on NO. */
#define OUTS 4
static inline __attribute__((always_inline)) void outputs(const int R, const int NO, const bq_weight *w,
                                                          const float *x, const float *xs, int64_t o, float *y,
                                                          int64_t ldy) {
    const int64_t k = w->k, blocks = k / BQ_BLOCK;
    const int64_t kind = w->kind;
    const int rebuild = R >= 3;
    const __m512 iota = _mm512_loadu_ps(IOTA);
    {
        __m512 acc[OUTS][CHUNK];
        for (int i = 0; i < NO; i++)
            for (int r = 0; r < R; r++) acc[i][r] = _mm512_setzero_ps();
        float scales[OUTS][16]; /* the next 16 blocks' scales as floats: 16 converted at once */
        for (int64_t b = 0; b < blocks; b++) {
            if (b % 16 == 0) {
                const __mmask16 live = blocks - b >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (blocks - b)) - 1);
                for (int i = 0; i < NO; i++)
                    _mm512_storeu_ps(scales[i], _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, w->d + (o + i) * blocks + b)));
            }
            for (int i = 0; i < NO; i++) {
                const int64_t at = (o + i) * blocks + b;
                const __m512 db = _mm512_set1_ps(scales[i][b % 16]);
                __m512 lo, hi;
                if (rebuild && kind == BQ_Q4_1) {
                    const __m512 table = _mm512_add_ps(_mm512_mul_ps(iota, db), _mm512_set1_ps(half(w->m[at])));
                    decode(kind, w->qs, at, table, &lo, &hi);
                } else {
                    decode(kind, w->qs, at, iota, &lo, &hi);
                    if (rebuild) {
                        lo = _mm512_mul_ps(lo, db);
                        hi = _mm512_mul_ps(hi, db);
                    }
                }
                for (int r = 0; r < R; r++) {
                    const float *xb = x + r * k + b * BQ_BLOCK;
                    if (rebuild) {
                        acc[i][r] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xb), acc[i][r]);
                        acc[i][r] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), acc[i][r]);
                    } else {
                        __m512 t = _mm512_mul_ps(lo, _mm512_loadu_ps(xb));
                        t = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), t);
                        acc[i][r] = _mm512_fmadd_ps(db, t, acc[i][r]);
                    }
                }
            }
        }
        for (int i = 0; i < NO; i++) {
            if (!rebuild && kind == BQ_Q4_1) { /* + sum_b m_b * xs_b */
                const uint16_t *m = w->m + (o + i) * blocks;
                for (int64_t b = 0; b < blocks; b += 16) {
                    const __mmask16 live = blocks - b >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (blocks - b)) - 1);
                    const __m512 mb = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, m + b));
                    for (int r = 0; r < R; r++)
                        acc[i][r] = _mm512_fmadd_ps(mb, _mm512_maskz_loadu_ps(live, xs + r * blocks + b), acc[i][r]);
                }
            }
            for (int r = 0; r < R; r++) y[r * ldy + o + i] = _mm512_reduce_add_ps(acc[i][r]);
        }
    }
}

static inline __attribute__((always_inline)) void rows_kernel(const int R, const bq_weight *w, const float *x,
                                                              const float *xs, int64_t o0, int64_t o1,
                                                              float *y, int64_t ldy) {
    const int NO = R <= 2 ? 4 : 2;
    int64_t o = o0;
    for (; o + NO <= o1; o += NO) outputs(R, NO, w, x, xs, o, y, ldy);
    for (; o < o1; o++) outputs(R, 1, w, x, xs, o, y, ldy);
}

#elif defined(__AVX2__) && defined(__FMA__)

/* AVX2 (CPUs without AVX-512, AMD's before Zen 4 among them): the same two forms as above,
 * a block as four vectors of 8 */
static inline __attribute__((always_inline)) void decode(int64_t kind, const uint8_t *qs, int64_t at, __m256 v[4]) {
    if (kind == BQ_Q4_1) {
        const __m128i raw = _mm_loadu_si128((const __m128i *)(qs + at * 16));
        const __m128i low = _mm_and_si128(raw, _mm_set1_epi8(15));
        const __m128i high = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(15));
        v[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(low));
        v[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(low, 8)));
        v[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(high));
        v[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(high, 8)));
    } else {
        const int8_t *q = (const int8_t *)qs + at * 32;
        for (int i = 0; i < 4; i++) v[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * i))));
    }
}

static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* outputs() as above, in 8-wide vectors: a block is four of them. */
static inline __attribute__((always_inline)) void outputs(const int R, const int NO, const bq_weight *w,
                                                          const float *x, const float *xs, int64_t o, float *y,
                                                          int64_t ldy) {
    const int64_t k = w->k, blocks = k / BQ_BLOCK;
    const int64_t kind = w->kind;
    const int rebuild = R >= 3;
    {
        __m256 acc[4][CHUNK];
        for (int i = 0; i < NO; i++)
            for (int r = 0; r < R; r++) acc[i][r] = _mm256_setzero_ps();
        for (int64_t b = 0; b < blocks; b++) {
            for (int i = 0; i < NO; i++) {
                const int64_t at = (o + i) * blocks + b;
                __m256 v[4];
                decode(kind, w->qs, at, v);
                const __m256 db = _mm256_set1_ps(half(w->d[at]));
                if (rebuild) {
                    const __m256 mb = _mm256_set1_ps(kind == BQ_Q4_1 ? half(w->m[at]) : 0.0f);
                    for (int j = 0; j < 4; j++) v[j] = _mm256_add_ps(_mm256_mul_ps(v[j], db), mb);
                }
                for (int r = 0; r < R; r++) {
                    const float *xb = x + r * k + b * BQ_BLOCK;
                    if (rebuild) {
                        for (int j = 0; j < 4; j++) acc[i][r] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xb + 8 * j), acc[i][r]);
                    } else {
                        __m256 t = _mm256_mul_ps(v[0], _mm256_loadu_ps(xb));
                        for (int j = 1; j < 4; j++) t = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xb + 8 * j), t);
                        acc[i][r] = _mm256_fmadd_ps(db, t, acc[i][r]);
                    }
                }
            }
        }
        for (int i = 0; i < NO; i++)
            for (int r = 0; r < R; r++) {
                float total = sum8(acc[i][r]);
                if (!rebuild && kind == BQ_Q4_1) { /* + sum_b m_b * xs_b */
                    const uint16_t *m = w->m + (o + i) * blocks;
                    const float *sb = xs + r * blocks;
                    for (int64_t b = 0; b < blocks; b++) total += half(m[b]) * sb[b];
                }
                y[r * ldy + o + i] = total;
            }
    }
}

/* four outputs side by side for one row, two for two to four rows, one for more: their
 * accumulators would not fit the 16 registers */
static inline __attribute__((always_inline)) void rows_kernel(const int R, const bq_weight *w, const float *x,
                                                              const float *xs, int64_t o0, int64_t o1,
                                                              float *y, int64_t ldy) {
    const int NO = R == 1 ? 4 : R <= 4 ? 2 : 1;
    int64_t o = o0;
    for (; o + NO <= o1; o += NO) outputs(R, NO, w, x, xs, o, y, ldy);
    for (; o < o1; o++) outputs(R, 1, w, x, xs, o, y, ldy);
}

#else

static inline void rows_kernel(const int R, const bq_weight *w, const float *x, const float *xs, int64_t o0,
                               int64_t o1, float *y, int64_t ldy) {
    const int64_t k = w->k, blocks = k / BQ_BLOCK;
    for (int64_t o = o0; o < o1; o++) {
        float acc[CHUNK] = {0};
        for (int64_t b = 0; b < blocks; b++) {
            float q[BQ_BLOCK];
            const int64_t at = o * blocks + b;
            if (w->kind == BQ_Q4_1) {
                const uint8_t *p = w->qs + at * 16;
                for (int j = 0; j < 16; j++) {
                    q[j] = (float)(p[j] & 15);
                    q[j + 16] = (float)(p[j] >> 4);
                }
            } else {
                const int8_t *p = (const int8_t *)w->qs + at * 32;
                for (int j = 0; j < BQ_BLOCK; j++) q[j] = (float)p[j];
            }
            for (int r = 0; r < R; r++) {
                const float *xb = x + r * k + b * BQ_BLOCK;
                float t = 0.0f;
                for (int j = 0; j < BQ_BLOCK; j++) t += q[j] * xb[j];
                acc[r] += half(w->d[at]) * t;
                if (w->kind == BQ_Q4_1) acc[r] += half(w->m[at]) * xs[r * blocks + b];
            }
        }
        for (int r = 0; r < R; r++) y[r * ldy + o] = acc[r];
    }
}

#endif

/* y[r * ldy + o] = x[r] . W[o] for r < rows and o0 <= o < o1, on the calling thread;
 * xs from bq_block_sums(x) */
static void bq_range(const bq_weight *w, const float *x, int64_t rows, const float *xs, int64_t o0, int64_t o1,
                     float *y, int64_t ldy) {
    const int64_t blocks = w->k / BQ_BLOCK;
    for (int64_t r = 0; r < rows; r += CHUNK) {
        const float *xr = x + r * w->k, *sr = xs + r * blocks;
        float *yr = y + r * ldy;
        switch (rows - r >= CHUNK ? CHUNK : rows - r) {
            case 1: rows_kernel(1, w, xr, sr, o0, o1, yr, ldy); break;
            case 2: rows_kernel(2, w, xr, sr, o0, o1, yr, ldy); break;
            case 3: rows_kernel(3, w, xr, sr, o0, o1, yr, ldy); break;
            case 4: rows_kernel(4, w, xr, sr, o0, o1, yr, ldy); break;
            case 5: rows_kernel(5, w, xr, sr, o0, o1, yr, ldy); break;
            case 6: rows_kernel(6, w, xr, sr, o0, o1, yr, ldy); break;
            case 7: rows_kernel(7, w, xr, sr, o0, o1, yr, ldy); break;
            default: rows_kernel(8, w, xr, sr, o0, o1, yr, ldy); break;
        }
    }
}

static void mm(int64_t kind, const float *x, int64_t rows, int64_t k, const uint8_t *qs, const uint16_t *d,
               const uint16_t *m, int64_t n, float *y, int64_t parallel_min) {
    const bq_weight w = {qs, d, m, kind, n, k};
    float *xs = malloc(sizeof(float) * (size_t)(rows * (k / BQ_BLOCK) + 1));
    if (xs == NULL) abort();
    bq_block_sums(x, rows, k, xs);
#pragma omp parallel if (n * k >= parallel_min)
    {
        int64_t threads = 1, me = 0;
#ifdef _OPENMP
        threads = omp_get_num_threads();
        me = omp_get_thread_num();
#endif
        bq_range(&w, x, rows, xs, n * me / threads, n * (me + 1) / threads, y, n);
    }
    free(xs);
}

void q4_1_mm(const float *x, int64_t rows, int64_t k, const uint8_t *qs, const uint16_t *d, const uint16_t *m,
             int64_t n, float *y, int64_t parallel_min) {
    mm(BQ_Q4_1, x, rows, k, qs, d, m, n, y, parallel_min);
}

void q8_0_mm(const float *x, int64_t rows, int64_t k, const uint8_t *qs, const uint16_t *d, const uint16_t *m,
             int64_t n, float *y, int64_t parallel_min) {
    mm(BQ_Q8_0, x, rows, k, qs, d, m, n, y, parallel_min);
}
