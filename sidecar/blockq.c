/* Matrix products with block-quantized weights and float32 activations, for a few rows
 * (a decode step): y[M, N] = x[M, K] @ W[N, K]^T, where W is stored as blocks of 32 along K.
 *
 *   q4_1: w = q * d + m, q in 0..15 (two per byte: element j low nibble, j + 16 high)
 *   q8_0: w = q * d,     q in -127..127
 *
 * Each weight is rebuilt as a float exactly as the dense model holds it (a multiply, then
 * an add: built with -ffp-contract=off), so results differ from a float32 matmul only in
 * the order of the sums. Reading 4.5 or 8.5 bits per weight instead of 32 is the point:
 * a decode step reads every weight once and is bound by memory bandwidth.
 * Built by sidecar/blockq.py with -O3 -march=native; outputs are split between OpenMP threads
 * (the libgomp torch has loaded) when the weight has at least `parallel_min` elements. */
#include <math.h>
#include <stdint.h>

#define BLOCK 32
#define MAX_ROWS 8

static inline float hsum(const float *acc) {
    float s = 0.0f;
    for (int j = 0; j < BLOCK; j++) s += acc[j];
    return s;
}

#define KERNEL(NAME, REBUILD)                                                                   \
void NAME(const float *x, int64_t rows, int64_t k, const uint8_t *qs, const float *d,         \
          const float *m, int64_t n, float *y, int64_t parallel_min) {                          \
    const int64_t blocks = k / BLOCK;                                                           \
    if (rows == 1) { /* a single sequence: the sums stay in registers */                        \
        _Pragma("omp parallel for schedule(static) if (n * k >= parallel_min)")                \
        for (int64_t o = 0; o < n; o++) {                                                       \
            float acc[BLOCK] = {0};                                                             \
            for (int64_t b = 0; b < blocks; b++) {                                              \
                float w[BLOCK];                                                                 \
                const float db = d[o * blocks + b];                                             \
                REBUILD                                                                         \
                const float *xb = x + b * BLOCK;                                                \
                for (int j = 0; j < BLOCK; j++) acc[j] = fmaf(w[j], xb[j], acc[j]);             \
            }                                                                                   \
            y[o] = hsum(acc);                                                                   \
        }                                                                                       \
        return;                                                                                 \
    }                                                                                           \
    _Pragma("omp parallel for schedule(static) if (n * k >= parallel_min)")                    \
    for (int64_t o = 0; o < n; o++) {                                                           \
        float acc[MAX_ROWS][BLOCK] = {{0}};                                                     \
        for (int64_t b = 0; b < blocks; b++) {                                                  \
            float w[BLOCK];                                                                     \
            const float db = d[o * blocks + b];                                                 \
            REBUILD                                                                             \
            for (int64_t r = 0; r < rows; r++) {                                                \
                const float *xr = x + r * k + b * BLOCK;                                        \
                for (int j = 0; j < BLOCK; j++) acc[r][j] = fmaf(w[j], xr[j], acc[r][j]);       \
            }                                                                                   \
        }                                                                                       \
        for (int64_t r = 0; r < rows; r++) y[r * n + o] = hsum(acc[r]);                         \
    }                                                                                           \
}

KERNEL(q4_1_mm, {
    const uint8_t *q = qs + (o * blocks + b) * (BLOCK / 2);
    const float mb = m[o * blocks + b];
    for (int j = 0; j < BLOCK / 2; j++) {
        w[j] = (float)(q[j] & 15) * db + mb;
        w[j + BLOCK / 2] = (float)(q[j] >> 4) * db + mb;
    }
})

KERNEL(q8_0_mm, {
    const int8_t *q = (const int8_t *)qs + (o * blocks + b) * BLOCK;
    (void)m;
    for (int j = 0; j < BLOCK; j++) w[j] = (float)q[j] * db;
})
