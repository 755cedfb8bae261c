/* One decode step of a Llama-style model (RMSNorm, rotary attention with grouped keys and
 * values, SiLU-gated MLP, residuals, LM head) for a few sequences, in one call: what
 * Transformers runs as ~20 dispatched ops per layer. Linear layers are block-quantized
 * (blockq.c); everything else is float32, computed as Transformers does it (same cos/sin
 * tables, same op order in RoPE; sums rounded in another order).
 *
 * The key/value cache is the batch's own (sidecar.kvcache's buffers): per layer
 * (rows, kv_heads, capacity, head_dim), the step's keys and values written at `length`.
 * `mask` (rows, length + 1) marks the positions each row attends to (0: left padding).
 * The layer stack runs inside one OpenMP parallel region (see dc_step). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "blockq.c" /* the block kernels: built as one unit */

typedef struct {
    const float *attn_norm, *mlp_norm;
    bq_weight q, k, v, o, gate, up, down;
} dc_layer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, inter, vocab, positions;
    float eps, scale;
    const float *embed;     /* (vocab, hidden) */
    const float *norm;      /* the final RMSNorm's weight */
    const float *cos, *sin; /* (positions, head_dim) */
    bq_weight head;
    const dc_layer *layer;
} dc_model;

static float dot(const float *a, const float *b, int64_t n) {
    float acc[16] = {0};
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int i = 0; i < 16; i++) acc[i] += a[j + i] * b[j + i];
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += acc[i];
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}

/* out = x * rsqrt(mean(x^2) + eps) * w, row by row */
static void rms_norm(const float *x, const float *w, int64_t rows, int64_t n, float eps, float *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        const float scale = 1.0f / sqrtf(dot(xr, xr, n) / (float)n + eps);
        for (int64_t j = 0; j < n; j++) out[r * n + j] = w[j] * (xr[j] * scale);
    }
}

/* Transformers' rotate_half form: x * cos + rotate_half(x) * sin */
static void rope(float *x, int64_t heads, int64_t dim, const float *cos, const float *sin) {
    const int64_t half = dim / 2;
    for (int64_t h = 0; h < heads; h++) {
        float *v = x + h * dim;
        for (int64_t i = 0; i < half; i++) {
            const float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

/* softmax(q . K^T * scale, masked) @ V for one query head of one row */
static void attend(const float *q, const float *keys, const float *values, const int64_t *mask, int64_t count,
                   int64_t dim, float scale, float *scores, float *out) {
    float top = -INFINITY;
    for (int64_t t = 0; t < count; t++) {
        scores[t] = mask[t] ? dot(q, keys + t * dim, dim) * scale : -INFINITY;
        if (scores[t] > top) top = scores[t];
    }
    float total = 0.0f;
    for (int64_t t = 0; t < count; t++) {
        scores[t] = mask[t] ? expf(scores[t] - top) : 0.0f;
        total += scores[t];
    }
    for (int64_t j = 0; j < dim; j++) out[j] = 0.0f;
    for (int64_t t = 0; t < count; t++) {
        if (!mask[t]) continue;
        const float p = scores[t] / total;
        const float *v = values + t * dim;
        for (int64_t j = 0; j < dim; j++) out[j] += p * v[j];
    }
}

/* outputs [o0, o1) of y = x @ w^T, on this thread */
static void span(const bq_weight *w, const float *x, int64_t rows, const float *xs, float *y, int64_t o0,
                 int64_t o1) {
    if (o1 > o0) bq_range(w, x, rows, xs, o0, o1, y, w->n);
}

/* logits (rows, vocab) of the tokens `ids` at positions `pos`; 0, or -1 for an id or a
 * position out of range, or no memory.
 *
 * Every thread keeps its own copy of the residual stream and of the normed input (the
 * same float ops on each: the same numbers), so the only waits are for a product's
 * outputs: five barriers per layer. Projections are split by output (q, k and v by
 * heads, each thread applying RoPE to and caching its own), attention by (row, head). */
int dc_step(const dc_model *M, int64_t rows, const int64_t *ids, const int64_t *pos, float *const *keys,
            float *const *values, int64_t capacity, int64_t length, const int64_t *mask, float *logits) {
    const int64_t H = M->hidden, I = M->inter, D = M->head_dim, NH = M->heads, NKV = M->kv_heads;
    const int64_t T = length + 1, group = NH / NKV, heads = NH + 2 * NKV, QD = NH * D;
    if (length >= capacity) return -1;
    for (int64_t r = 0; r < rows; r++)
        if (ids[r] < 0 || ids[r] >= M->vocab || pos[r] < 0 || pos[r] >= M->positions) return -1;
    const int64_t widest = (H > I ? H : I) > QD ? (H > I ? H : I) : QD;
    /* shared: q, k, v, attention output, gate (then the activation), up, a product's output */
    const size_t shared = (size_t)(rows * (2 * QD + 2 * NKV * D + 2 * I + H) + rows * NH * T);
    float *work = malloc(sizeof(float) * shared);
    if (work == NULL) return -1;
    float *q = work, *att = q + rows * QD, *k = att + rows * QD, *v = k + rows * NKV * D, *g = v + rows * NKV * D;
    float *u = g + rows * I, *y = u + rows * I, *scores = y + rows * H;
    int failed = 0;

#pragma omp parallel
    {
        int64_t threads = 1, me = 0;
#ifdef _OPENMP
        threads = omp_get_num_threads();
        me = omp_get_thread_num();
#endif
        /* this thread's residual stream, normed input and block sums */
        float *x = malloc(sizeof(float) * (size_t)(rows * (2 * H + widest / BQ_BLOCK)));
#pragma omp atomic
        failed += x == NULL;
#pragma omp barrier
        if (!failed) {
            float *h = x + rows * H, *xs = h + rows * H;
            const int64_t h0 = heads * me / threads, h1 = heads * (me + 1) / threads;
            const int64_t t0 = rows * NH * me / threads, t1 = rows * NH * (me + 1) / threads;
            const int64_t i0 = I * me / threads, i1 = I * (me + 1) / threads;
            for (int64_t r = 0; r < rows; r++) memcpy(x + r * H, M->embed + ids[r] * H, sizeof(float) * (size_t)H);
            for (int64_t l = 0; l < M->layers; l++) {
                const dc_layer *L = M->layer + l;
                rms_norm(x, L->attn_norm, rows, H, M->eps, h);
                bq_block_sums(h, rows, H, xs);
                /* heads [h0, h1) of q | k | v */
                const int64_t qa = h0 < NH ? h0 : NH, qb = h1 < NH ? h1 : NH;
                const int64_t ka = h0 < NH ? 0 : (h0 - NH < NKV ? h0 - NH : NKV);
                const int64_t kb = h1 < NH ? 0 : (h1 - NH < NKV ? h1 - NH : NKV);
                const int64_t va = h0 < NH + NKV ? 0 : h0 - NH - NKV, vb = h1 < NH + NKV ? 0 : h1 - NH - NKV;
                span(&L->q, h, rows, xs, q, qa * D, qb * D);
                span(&L->k, h, rows, xs, k, ka * D, kb * D);
                span(&L->v, h, rows, xs, v, va * D, vb * D);
                for (int64_t r = 0; r < rows; r++) {
                    const float *cos = M->cos + pos[r] * D, *sin = M->sin + pos[r] * D;
                    rope(q + (r * NH + qa) * D, qb - qa, D, cos, sin);
                    rope(k + (r * NKV + ka) * D, kb - ka, D, cos, sin);
                    for (int64_t j = ka; j < kb; j++)
                        memcpy(keys[l] + ((r * NKV + j) * capacity + length) * D, k + (r * NKV + j) * D,
                               sizeof(float) * (size_t)D);
                    for (int64_t j = va; j < vb; j++)
                        memcpy(values[l] + ((r * NKV + j) * capacity + length) * D, v + (r * NKV + j) * D,
                               sizeof(float) * (size_t)D);
                }
#pragma omp barrier
                for (int64_t task = t0; task < t1; task++) {
                    const int64_t r = task / NH, head = task % NH;
                    const int64_t base = (r * NKV + head / group) * capacity * D;
                    attend(q + task * D, keys[l] + base, values[l] + base, mask + r * T, T, D, M->scale,
                           scores + task * T, att + task * D);
                }
#pragma omp barrier
                bq_block_sums(att, rows, QD, xs);
                span(&L->o, att, rows, xs, y, H * me / threads, H * (me + 1) / threads);
#pragma omp barrier
                for (int64_t i = 0; i < rows * H; i++) x[i] += y[i];
                rms_norm(x, L->mlp_norm, rows, H, M->eps, h);
                bq_block_sums(h, rows, H, xs);
                span(&L->gate, h, rows, xs, g, i0, i1);
                span(&L->up, h, rows, xs, u, i0, i1);
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t i = r * I + i0; i < r * I + i1; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
#pragma omp barrier
                bq_block_sums(g, rows, I, xs);
                span(&L->down, g, rows, xs, y, H * me / threads, H * (me + 1) / threads);
#pragma omp barrier
                for (int64_t i = 0; i < rows * H; i++) x[i] += y[i];
            }
            rms_norm(x, M->norm, rows, H, M->eps, h);
            bq_block_sums(h, rows, H, xs);
            span(&M->head, h, rows, xs, logits, M->vocab * me / threads, M->vocab * (me + 1) / threads);
        }
        free(x);
    }
    free(work);
    return failed ? -1 : 0;
}
