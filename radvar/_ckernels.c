/* Optional compiled CPU kernels for radvar, loaded with ctypes by radvar/_native.py.
 *
 * stochastic_round_f32: Quantize's compress in one pass, bitwise the same codes as its numpy path.
 * k_subsets: per-example Subsample's column sets by Floyd's algorithm, O(k) per row (the numpy path
 * partitions n random keys per row: the same distribution, other draws).
 * importance_scales_f32, poisson_keep_f32, scatter_mask_f32, scatter_rows_f32: Importance's row scales
 * (without a sort), its draw and its restore.
 * relu_mask_f32, mask_scale_f32: a ReLU with its 1-bit mask, and a gradient through such a mask.
 * scatter_columns_strided_f32: a shared column sketch's weight gradient.
 * The random words are numpy's PCG64 stream (XSL-RR 128/64, numpy's multiplier, "step, then output"):
 * raw output i is the (i+1)-th state's output and entry e takes 32-bit half e of those outputs read
 * little-endian, U = (word >> 8) * 2^-24. The stream is generated four lanes at a time (lane j makes
 * outputs j, j+4, ...; each lane steps four states at once), which keeps the 128-bit multiplies
 * independent.
 *
 * An entry x of a group (lo, delta per group of consecutive entries of a row) has u = clamp((x - lo) / d, 0, L) with d = delta if delta > 0 else 1 and L = 2^bits - 1, its level is
 * ceil(u - U), and the levels are packed 8/bits to a byte, level j of a byte in bits [bits*j, bits*(j+1)).
 * Rounding: the float operations are the ones numpy/torch do, in the same order, without fast-math: IEEE results
 * equal theirs (NaN entries, whose numpy level is undefined, get level 0).
 *
 * One thread: split over two threads the kernel took 1.0 instead of 1.8 ms alone on 512 x 2048, but in a
 * training step torch's OpenMP workers still spin after the matrix product before it and the split
 * made the wide MLP's step slower (1.60x plain instead of 1.27x, 2 cores).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

typedef __uint128_t u128;

#define LANES 4
#define BLOCK 512 /* entries per step of the loop: whole bytes at every bit width, and whole raw outputs */

static const u128 MULT = (((u128)0x2360ED051FC65DA4ULL) << 64) | 0x4385DF649FCCF645ULL;

/* U in [0, 1) from a 32-bit word: its top 24 bits times 2^-24 (numpy's float32 recipe; converted through
 * int32, which holds 24 bits exactly, so that loops over words vectorize) */
static inline float unit(uint32_t word) { return (float)(int32_t)(word >> 8) * 0x1p-24f; }

static inline uint64_t pcg_output(u128 s) {
    uint64_t hi = (uint64_t)(s >> 64), x = hi ^ (uint64_t)s;
    unsigned rot = (unsigned)(hi >> 58);
    return (x >> rot) | (x << ((64 - rot) & 63));
}

typedef struct {
    u128 lane[LANES];
    u128 mult, plus; /* LANES steps at once: s -> mult * s + plus */
} stream;

static void stream_start(stream *st, u128 state, u128 inc) {
    st->mult = 1;
    st->plus = 0;
    for (int j = 0; j < LANES; j++) {
        state = state * MULT + inc;
        st->lane[j] = state;
        st->plus = st->plus * MULT + inc;
        st->mult *= MULT;
    }
}

/* the next n raw outputs (n a multiple of LANES) */
static void stream_fill(stream *st, uint64_t *out, int64_t n) {
    for (int64_t i = 0; i < n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            out[i + j] = pcg_output(st->lane[j]);
            st->lane[j] = st->lane[j] * st->mult + st->plus;
        }
}

/* x: rows x n; lo, delta: one per group of `group_size` consecutive entries of a row; out:
 * ceil(rows * n * bits / 8) bytes. */
void stochastic_round_f32(const float *x, int64_t rows, int64_t n, int64_t group_size, const float *lo,
                         const float *delta, int bits, uint64_t state_hi, uint64_t state_lo, uint64_t inc_hi,
                         uint64_t inc_lo, uint8_t *out) {
    const float levels = (float)((1 << bits) - 1);
    const int per = 8 / bits;
    const int64_t total = rows * n, nbytes = (total * bits + 7) / 8;
    uint64_t raw[BLOCK / 2];
    float u[BLOCK];
    uint8_t level[BLOCK];
    stream st;
    stream_start(&st, ((u128)state_hi << 64) | state_lo, ((u128)inc_hi << 64) | inc_lo);
    int64_t group = 0, left = group_size; /* the group of the next entry, and its entries not yet seen */
    for (int64_t start = 0; start < total; start += BLOCK) {
        const int64_t m = total - start < BLOCK ? total - start : BLOCK;
        stream_fill(&st, raw, BLOCK / 2);
        const uint32_t *word = (const uint32_t *)raw;
        for (int64_t e = 0; e < m;) { /* u, a run of one group at a time */
            const int64_t run = left < m - e ? left : m - e;
            const float l = lo[group], d = delta[group] > 0.0f ? delta[group] : 1.0f;
            const float *xs = x + start + e;
            for (int64_t k = 0; k < run; k++) u[e + k] = (xs[k] - l) / d;
            e += run;
            left -= run;
            if (left == 0) {
                group++;
                left = group_size;
            }
        }
        for (int64_t k = 0; k < m; k++) {
            float v = u[k] > 0.0f ? u[k] : 0.0f; /* NaN -> 0 */
            v = v < levels ? v : levels;
            float y = v - unit(word[k]);                   /* in (-1, L] */
            int32_t low = (int32_t)y;                      /* truncation; the ceiling adds one above it */
            level[k] = (uint8_t)(low + (y > (float)low));
        }
        for (int64_t k = m; k < BLOCK; k++) level[k] = 0;
        const int64_t first = start * bits / 8;
        int64_t count = (m * bits + 7) / 8;
        if (first + count > nbytes) count = nbytes - first;
        if (per == 1) {
            memcpy(out + first, level, (size_t)count);
            continue;
        }
        for (int64_t b = 0; b < count; b++) {
            uint8_t byte = 0;
            for (int j = 0; j < per; j++) byte |= (uint8_t)(level[b * per + j] << (bits * j));
            out[first + b] = byte;
        }
    }
}

/* One uniform 32-bit word at a time from a stream (for samplers that use a variable number of words). */
typedef struct {
    stream st;
    uint64_t raw[BLOCK / 2];
    int next; /* the next unused 32-bit word of raw */
} words;

static void words_start(words *w, u128 state, u128 inc) {
    stream_start(&w->st, state, inc);
    w->next = BLOCK;
}

static inline uint32_t word_next(words *w) {
    if (w->next == BLOCK) {
        stream_fill(&w->st, w->raw, BLOCK / 2);
        w->next = 0;
    }
    return ((const uint32_t *)w->raw)[w->next++];
}

/* uniform on [0, range), range >= 1: Lemire's multiply-and-reject ("Fast random integer generation in an
 * interval", ACM TOMACS 2019), exact given uniform words */
static inline uint32_t below(words *w, uint32_t range) {
    uint64_t m = (uint64_t)word_next(w) * range;
    if ((uint32_t)m < range) {
        const uint32_t threshold = (uint32_t)(-range) % range;
        while ((uint32_t)m < threshold) m = (uint64_t)word_next(w) * range;
    }
    return (uint32_t)(m >> 32);
}

/* out (rows x k, int64): per row a uniformly random k-subset of [0, n), 1 <= k <= n < 2^32, by Floyd's
 * algorithm (Bentley and Floyd, "A sample of brilliance", CACM 1987): for j = n-k .. n-1 take t uniform on
 * [0, j], or j itself if t is already taken; every k-subset is equally likely. seen: n bytes of scratch. */
void k_subsets(int64_t rows, int64_t n, int64_t k, uint64_t state_hi, uint64_t state_lo, uint64_t inc_hi,
               uint64_t inc_lo, int64_t *out, uint8_t *seen) {
    words w;
    words_start(&w, ((u128)state_hi << 64) | state_lo, ((u128)inc_hi << 64) | inc_lo);
    memset(seen, 0, (size_t)n);
    for (int64_t r = 0; r < rows; r++) {
        int64_t *row = out + r * k;
        for (int64_t i = 0, j = n - k; j < n; i++, j++) {
            int64_t t = below(&w, (uint32_t)(j + 1));
            if (seen[t]) t = j;
            seen[t] = 1;
            row[i] = t;
        }
        for (int64_t i = 0; i < k; i++) seen[row[i]] = 0;
    }
}

/* Importance's Poisson draw of float32 x (rows x n) given each row's scale c: entry (r, j) is kept when
 * U < c_r |x_rj| (U the entry's uniform, drawn as for Quantize; a NaN product keeps nothing), with value
 * x / min(1, c_r |x_rj|). Writes the kept values and their columns in C order (capacity rows * n), each
 * row's count, and the packed mask (bit j of byte i: entry 8i + j); returns the number kept. values and
 * cols need one slot more than the number kept (each entry is written before it is known to be kept). Bitwise the
 * numpy path's (uniform, the comparison, the float32 product and quotient). */
int64_t poisson_keep_f32(const float *x, int64_t rows, int64_t n, const float *scale, uint64_t state_hi,
                         uint64_t state_lo, uint64_t inc_hi, uint64_t inc_lo, float *values, int32_t *cols,
                         int32_t *counts, uint8_t *mask) {
    stream st;
    stream_start(&st, ((u128)state_hi << 64) | state_lo, ((u128)inc_hi << 64) | inc_lo);
    const int64_t total = rows * n;
    uint64_t raw[BLOCK / 2];
    float quotient[BLOCK];
    uint8_t take[BLOCK];
    int64_t kept = 0, row = 0, col = 0; /* the row and column of the next entry */
    memset(counts, 0, (size_t)rows * sizeof(int32_t));
    for (int64_t start = 0; start < total; start += BLOCK) {
        const int64_t m = total - start < BLOCK ? total - start : BLOCK;
        stream_fill(&st, raw, BLOCK / 2);
        const uint32_t *word = (const uint32_t *)raw;
        for (int64_t e = 0; e < m;) { /* a run of one row at a time */
            const int64_t run = n - col < m - e ? n - col : m - e;
            const float c = scale[row], *xs = x + start + e;
            for (int64_t k = 0; k < run; k++) { /* vectorized: the draw and the quotient of every entry */
                const float scaled = (xs[k] < 0.0f ? -xs[k] : xs[k]) * c;
                take[e + k] = unit(word[e + k]) < scaled;
                quotient[e + k] = xs[k] / (scaled < 1.0f ? scaled : 1.0f);
            }
            const int64_t before = kept;
            for (int64_t k = 0; k < run; k++) { /* branch-free compaction: write, then advance if kept */
                values[kept] = quotient[e + k];
                cols[kept] = (int32_t)(col + k);
                kept += take[e + k];
            }
            counts[row] += (int32_t)(kept - before);
            e += run;
            col += run;
            if (col == n) {
                col = 0;
                row++;
            }
        }
        for (int64_t k = m; k < BLOCK; k++) take[k] = 0;
        uint8_t *bytes = mask + start / 8;
        for (int64_t b = 0; b < (m + 7) / 8; b++) { /* eight 0/1 bytes to one byte: a multiply gathers the bits */
            uint64_t eight;
            memcpy(&eight, take + 8 * b, 8);
            bytes[b] = (uint8_t)((eight * 0x0102040810204080ULL) >> 56);
        }
    }
    return kept;
}

/* Importance's restore: out (total float32 entries) zero except the kept entries, which take values in C
 * order; the kept positions given by the packed mask (bit j of byte i: entry 8i + j). Returns the number
 * of set bits; writes at most `count` values (the caller checks the two agree). */
int64_t scatter_mask_f32(const float *values, int64_t count, const uint8_t *mask, int64_t total, float *out) {
    memset(out, 0, (size_t)total * sizeof(float));
    int64_t next = 0;
    for (int64_t b = 0; b < (total + 7) / 8; b++)
        for (unsigned byte = mask[b]; byte; byte &= byte - 1, next++)
            if (next < count && 8 * b + __builtin_ctz(byte) < total) out[8 * b + __builtin_ctz(byte)] = values[next];
    return next;
}

/* The same with the kept positions given by int16 columns and per-row counts of a rows x n tensor.
 * Returns -1 (having written only in bounds) if the counts add up to more than `count` or a column is
 * outside [0, n), else the sum of the counts. */
int64_t scatter_rows_f32(const float *values, int64_t count, const int16_t *cols, const int32_t *counts,
                         int64_t rows, int64_t n, float *out) {
    memset(out, 0, (size_t)(rows * n) * sizeof(float));
    int64_t next = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int32_t i = 0; i < counts[r]; i++, next++) {
            if (next >= count || cols[next] < 0 || cols[next] >= n) return -1;
            out[r * n + cols[next]] = values[next];
        }
    return next;
}

/* ReLU forward with its 1-bit mask in one pass: y = x where x is not below zero (NaN and -0.0 kept, as torch.relu
 * keeps them), else +0.0; bit j of mask byte i set where y[8i + j] != 0 (x > 0 or NaN, as y.bool()). */
void relu_mask_f32(const float *x, int64_t total, float *y, uint8_t *mask) {
    int64_t e = 0;
#ifdef __SSE2__
    const __m128 zero = _mm_setzero_ps();
    for (; e + 8 <= total; e += 8) { /* 4 lanes at a time: the compare's sign bits are the mask bits */
        const __m128 lo = _mm_loadu_ps(x + e), hi = _mm_loadu_ps(x + e + 4);
        _mm_storeu_ps(y + e, _mm_andnot_ps(_mm_cmplt_ps(lo, zero), lo));
        _mm_storeu_ps(y + e + 4, _mm_andnot_ps(_mm_cmplt_ps(hi, zero), hi));
        mask[e / 8] = (uint8_t)(_mm_movemask_ps(_mm_cmpnle_ps(lo, zero)) | _mm_movemask_ps(_mm_cmpnle_ps(hi, zero)) << 4);
    }
#endif
    uint8_t byte = 0; /* the rest (everything without SSE2), one entry at a time */
    for (; e < total; e++) {
        const float v = x[e];
        y[e] = v < 0.0f ? 0.0f : v;
        byte |= (uint8_t)(!(v <= 0.0f) << (e & 7));
        if ((e & 7) == 7 || e == total - 1) {
            mask[e / 8] = byte;
            byte = 0;
        }
    }
}

/* out = g * (bit ? on : off) per entry, the bits packed as in _bits.pack (bit j of byte i: entry 8i + j);
 * out may be g. One pass: each mask byte picks a row of 8 factors from a table made for (on, off). */
void mask_scale_f32(const float *g, const uint8_t *mask, int64_t total, float on, float off, float *out) {
    float table[256][8];
    for (int b = 0; b < 256; b++)
        for (int j = 0; j < 8; j++) table[b][j] = (b >> j) & 1 ? on : off;
    const int64_t whole = total / 8;
    for (int64_t b = 0; b < whole; b++) {
        const float *f = table[mask[b]];
        for (int j = 0; j < 8; j++) out[8 * b + j] = g[8 * b + j] * f[j];
    }
    for (int64_t e = 8 * whole; e < total; e++) out[e] = g[e] * table[mask[whole]][e & 7];
}

/* Importance's per-row scale c of float32 x (rows x n): pi_j = min(1, c |x_j|) with sum_j pi_j = budget,
 * in double. c = budget / sum |x| when that caps nothing. Else the capped set S = {j : c |x_j| >= 1} and
 * c = (budget - |S|) / sum_{j not in S} |x_j| are iterated: c only grows and stays at most the solution,
 * S only grows, and when S stops changing c solves sum_j min(1, c |x_j|) = budget (the water-filling
 * solution the sorted torch path finds, up to rounding). Each round is one pass over the row; after
 * MAX_ROUNDS the row is sorted (scratch: 2n doubles) and c read off the sorted magnitudes as the torch
 * path does. A row with at most `budget` nonzeros gets c = +inf (every nonzero kept). */
#define MAX_ROUNDS 16

static int descending(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

/* sorted, tail: n doubles each (scratch) */
static double sorted_scale(const float *row, int64_t n, double budget, double *sorted, double *tail) {
    for (int64_t j = 0; j < n; j++) sorted[j] = row[j] < 0.0f ? -(double)row[j] : (double)row[j];
    qsort(sorted, (size_t)n, sizeof(double), descending);
    double sum = 0.0; /* tail_t = sum_{j >= t} s_j, summed from the smallest up (no cancellation) */
    for (int64_t t = n - 1; t >= 0; t--) tail[t] = sum += sorted[t];
    for (int64_t t = 0; t < n; t++) /* the first t with (budget - t) s_t <= tail_t */
        if ((budget - (double)t) * sorted[t] <= tail[t]) return (budget - (double)t) / tail[t];
    return INFINITY;
}

void importance_scales_f32(const float *x, int64_t rows, int64_t n, double budget, float *scale, double *scratch) {
    for (int64_t r = 0; r < rows; r++) {
        const float *row = x + r * n;
        double total = 0.0, top = 0.0;
        int64_t nonzero = 0;
        for (int64_t j = 0; j < n; j++) {
            const double a = fabs((double)row[j]);
            total += a;
            top = a > top ? a : top;
            nonzero += a > 0.0;
        }
        if ((double)nonzero <= budget) {
            scale[r] = INFINITY;
            continue;
        }
        double c = budget / total;
        int64_t capped = 0, rounds = 0;
        while (c * top >= 1.0) {
            if (++rounds > MAX_ROUNDS) {
                c = sorted_scale(row, n, budget, scratch, scratch + n);
                break;
            }
            double rest = 0.0;
            int64_t now = 0;
            for (int64_t j = 0; j < n; j++) {
                const double a = fabs((double)row[j]);
                const int cap = c * a >= 1.0;
                now += cap;
                rest += cap ? 0.0 : a;
            }
            if (now == capped) break;
            capped = now;
            c = (budget - (double)capped) / rest;
        }
        scale[r] = (float)c;
    }
}

/* Shared column sketches' weight gradient: out (m x n float32) zero except columns idx[0..k), where column
 * idx[j] takes cols[:, j] * scale (cols: m x k float32 with element (r, j) at cols[r * row_stride + j * col_stride],
 * so a transposed product needs no copy; distinct indices). One pass over out. Returns -1, writing nothing, if
 * an index is outside [0, n); else 0. */
int scatter_columns_strided_f32(const float *cols, int64_t m, int64_t k, int64_t row_stride, int64_t col_stride,
                                const int64_t *idx, int64_t n, float scale, float *out) {
    for (int64_t j = 0; j < k; j++)
        if (idx[j] < 0 || idx[j] >= n) return -1;
    for (int64_t r = 0; r < m; r++) {
        float *row = out + r * n;
        const float *src = cols + r * row_stride;
        memset(row, 0, (size_t)n * sizeof(float));
        for (int64_t j = 0; j < k; j++) row[idx[j]] = src[j * col_stride] * scale;
    }
    return 0;
}
