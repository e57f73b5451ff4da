/* One-pass CPU kernels for the measures (docs/math.md §2–3) and the exact global magnitude selection (§5), called
 * from pqprune.measure.sums, pqprune.measure.histogram, pqprune.measure.gini_index and pqprune.prune.select, which
 * check every argument and keep a PyTorch path for everything else (other devices, dtypes, exponents and scores).
 *
 * Why C: the measures read each weight once and do a few operations on it. PyTorch does each operation as its
 * own pass over a block (|w|, then √, then a sum), its square root alone costs several reads of the block on
 * this project's CPUs, and torch.bincount counts one entry at a time into one table. Fused loops that GCC
 * vectorises (and, for counting, four interleaved tables, so that runs of equal magnitudes do not wait on one
 * another) are the difference between several reads of the weights and about one.
 *
 * Arguments are addresses of contiguous buffers (tensor.data_ptr()) and sizes; the caller owns the buffers and
 * keeps them alive. The GIL is released while a kernel runs, so threads can measure tensors side by side.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

#define HALF_BINS 32768

/* Counts of the sign-less bit patterns of n 16-bit floats into out (int64[HALF_BINS], added to). Entries whose
 * mask byte is 0 are counted in bin 0; the number of them is returned, for the caller to take off (-1: out of
 * memory). */
CLONES static int64_t half_counts(const uint16_t *bits, const uint8_t *mask, int64_t n, int64_t *out) {
    uint32_t(*h)[HALF_BINS] = malloc(4 * sizeof *h);
    int64_t pruned = 0;
    if (!h) return -1;
    for (int64_t start = 0; start < n; start += (int64_t)1 << 30) { /* uint32 tables cannot overflow */
        int64_t end = n - start > ((int64_t)1 << 30) ? start + ((int64_t)1 << 30) : n;
        memset(h, 0, 4 * sizeof *h);
        int64_t i = start;
        for (; i + 4 <= end; i += 4) {
            uint16_t k0 = bits[i] & 0x7fff, k1 = bits[i + 1] & 0x7fff;
            uint16_t k2 = bits[i + 2] & 0x7fff, k3 = bits[i + 3] & 0x7fff;
            if (mask) {
                k0 = mask[i] ? k0 : 0, k1 = mask[i + 1] ? k1 : 0;
                k2 = mask[i + 2] ? k2 : 0, k3 = mask[i + 3] ? k3 : 0;
            }
            h[0][k0]++, h[1][k1]++, h[2][k2]++, h[3][k3]++;
        }
        for (; i < end; i++) h[0][mask && !mask[i] ? 0 : bits[i] & 0x7fff]++;
        for (int k = 0; k < HALF_BINS; k++) out[k] += (int64_t)h[0][k] + h[1][k] + h[2][k] + h[3][k];
        if (mask)
            for (i = start; i < end; i++) pruned += !mask[i];
    }
    free(h);
    return pruned;
}

/* Per row of a float32 [rows, cols] matrix: the number of entries whose mask byte is not 0 (all when mask is NULL)
 * and their Σ√|w|, Σ|w|, Σw², into out (float64[rows, 4]). Each power is taken in float32, as PyTorch would; runs
 * of RUN entries are summed in float32 (vectorised: a handful of additions per vector lane, relative error below
 * 5e-7 and about 1e-8 on real weights) and the runs' sums in float64, so the total is as good as a float64 sum
 * of the powers whatever the row length, and equal magnitudes add up exactly enough for the counts that depend on
 * them. NaN and Inf reach the sums, where the caller looks. */
#define RUN 64
CLONES static void f32_row_sums(const float *w, const uint8_t *mask, int64_t rows, int64_t cols, double *out) {
    for (int64_t r = 0; r < rows; r++) {
        const float *x = w + r * cols;
        const uint8_t *m = mask ? mask + r * cols : NULL;
        double t05 = 0, t1 = 0, t2 = 0;
        int64_t alive = m ? 0 : cols;
        for (int64_t j0 = 0; j0 < cols; j0 += RUN) {
            int64_t j1 = cols - j0 > RUN ? j0 + RUN : cols;
            float s05 = 0, s1 = 0, s2 = 0;
            if (m) {
                for (int64_t j = j0; j < j1; j++) {
                    float a = m[j] ? fabsf(x[j]) : 0.0f;
                    s05 += sqrtf(a), s1 += a, s2 += a * a, alive += m[j] != 0;
                }
            } else {
                for (int64_t j = j0; j < j1; j++) {
                    float a = fabsf(x[j]);
                    s05 += sqrtf(a), s1 += a, s2 += a * a;
                }
            }
            t05 += s05, t1 += s1, t2 += s2;
        }
        out[4 * r] = (double)alive, out[4 * r + 1] = t05, out[4 * r + 2] = t1, out[4 * r + 3] = t2;
    }
}

/* f32_row_sums of rows r0 to r1 (exclusive) of n matrices' rows laid end to end, matrix i described by
 * table[4i .. 4i + 3] = its address, its mask's address (0: none), rows, cols; row k of the concatenation goes
 * to out[4k .. 4k + 3]. One call measures many small tensors, and threads share a model by row ranges. */
static void f32_many_row_sums(const int64_t *table, int64_t n, int64_t r0, int64_t r1, double *out) {
    int64_t first = 0; /* the matrix's first row in the concatenation */
    for (int64_t i = 0; i < n && first < r1; i++) {
        const int64_t *t = table + 4 * i, rows = t[2], cols = t[3];
        int64_t a = r0 > first ? r0 - first : 0, b = r1 - first < rows ? r1 - first : rows;
        if (a < b) {
            const uint8_t *m = t[1] ? (const uint8_t *)(intptr_t)t[1] + a * cols : NULL;
            f32_row_sums((const float *)(intptr_t)t[0] + a * cols, m, b - a, cols, out + 4 * (first + a));
        }
        first += rows;
    }
}

/* The magnitudes of n 16-bit floats (bf16: bfloat16, else float16) as float32, 0 for Inf and NaN (the histogram
 * reports them): a bfloat16 is the top half of a float32; float16's exponent and mantissa moved into float32's
 * places give its value times 2^-112, subnormals included. */
CLONES static void half_magnitudes(const uint16_t *x, int64_t n, int bf16, float *out) {
    union { uint32_t u; float f; } v;
    if (bf16)
        for (int64_t j = 0; j < n; j++) {
            uint32_t k = x[j] & 0x7fffu;
            v.u = k << 16;
            out[j] = k < 0x7f80u ? v.f : 0.0f;
        }
    else
        for (int64_t j = 0; j < n; j++) {
            uint32_t k = x[j] & 0x7fffu;
            v.u = k << 13;
            out[j] = k < 0x7c00u ? v.f * 0x1p112f : 0.0f;
        }
}

/* Per row of a 16-bit [rows, cols] matrix, the counts of keys into hist as half_counts does (its return value),
 * and either (n_tables = 0) f32_row_sums of its magnitudes into out (float64[rows, 4]), or the float64 sums of
 * table[e][key] for each of n_tables tables (float32 [n_tables, HALF_BINS]: other powers, looked up) into out
 * (float64[rows, n_tables]). Returns -1 when out of memory. */
static int64_t half_row_sums(const uint16_t *bits, const uint8_t *mask, int64_t rows, int64_t cols, int bf16,
                             const float *tables, int64_t n_tables, double *out, int64_t *hist) {
    float *row = n_tables ? NULL : malloc(cols * sizeof *row);
    int64_t pruned = (n_tables || row) ? half_counts(bits, mask, rows * cols, hist) : -1;
    for (int64_t r = 0; r < rows && pruned >= 0; r++) {
        const uint16_t *x = bits + r * cols;
        const uint8_t *m = mask ? mask + r * cols : NULL;
        if (!n_tables) {
            half_magnitudes(x, cols, bf16, row);
            f32_row_sums(row, m, 1, cols, out + 4 * r);
        }
        for (int64_t e = 0; e < n_tables; e++) {
            const float *t = tables + e * HALF_BINS;
            double total = 0; /* a table lookup per entry is not vectorised: a float64 sum costs nothing more */
            for (int64_t j = 0; j < cols; j++) total += (m && !m[j]) ? 0.0f : t[x[j] & 0x7fff];
            out[r * n_tables + e] = total;
        }
    }
    free(row);
    return pruned;
}

/* Radix digits of the magnitudes of n float32 weights, for the exact global selection (pqprune.prune.select): a
 * magnitude's bit pattern (the weight's without the sign) orders it like its value. Level 0 counts the top 16
 * bits, offset by 2^15 as the selection counts signed digits, into out (int64[65537], added to), entries whose
 * mask byte is 0 in the last bin; level 1 counts the low 16 bits of the survivors whose top 16 bits are prefix. */
CLONES static int f32_magnitude_digits(const uint32_t *bits, const uint8_t *mask, int64_t n, int level,
                                       uint32_t prefix, int64_t *out) {
    if (level != 0) {
        for (int64_t i = 0; i < n; i++) {
            uint32_t k = bits[i] & 0x7fffffffu;
            if ((k >> 16) == prefix && (!mask || mask[i])) out[k & 0xffff]++;
        }
        return 0;
    }
    enum { BINS = 65537 };
    uint32_t(*h)[BINS] = malloc(4 * sizeof *h);
    if (!h) return -1;
    for (int64_t start = 0; start < n; start += (int64_t)1 << 30) {
        int64_t end = n - start > ((int64_t)1 << 30) ? start + ((int64_t)1 << 30) : n;
        memset(h, 0, 4 * sizeof *h);
        for (int64_t i = start; i < end; i++) {
            uint32_t d = ((bits[i] & 0x7fffffffu) >> 16) + 32768u;
            h[i & 3][mask && !mask[i] ? BINS - 1 : d]++;
        }
        for (int k = 0; k < BINS; k++) out[k] += (int64_t)h[0][k] + h[1][k] + h[2][k] + h[3][k];
    }
    free(h);
    return 0;
}

/* keep[i] = 1 where the magnitude's bit pattern is at least bound and the mask byte (if any) is not 0. */
CLONES static void f32_keep_from(const uint32_t *bits, const uint8_t *mask, int64_t n, uint32_t bound, uint8_t *keep) {
    if (mask)
        for (int64_t i = 0; i < n; i++) keep[i] = ((bits[i] & 0x7fffffffu) >= bound) & (mask[i] != 0);
    else
        for (int64_t i = 0; i < n; i++) keep[i] = (bits[i] & 0x7fffffffu) >= bound;
}

/* A scratch buffer of n bytes for a pass over many weights: in 2 MB pages where the kernel offers them, so that
 * writing it for the first time does not fault once per 4 KB page (a cost as large as a radix pass). */
static void *scratch(size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    size_t page = (size_t)1 << 21, size = (n + page - 1) / page * page;
    void *p = aligned_alloc(page, size ? size : page);
    if (p) madvise(p, size ? size : page, MADV_HUGEPAGE);
    return p;
#else
    return malloc(n ? n : 1);
#endif
}

/* The Gini index's sums (docs/math.md §3) need each unit's magnitudes in ascending order, and the whole model's.
 * One sort serves both: all survivors are sorted together, each carrying its unit, and the sorted order restricted
 * to one unit is that unit's order. Magnitudes sort like their bit patterns (keys). The sort is a most significant
 * digit radix sort in three steps, each split over threads by the caller:
 *   gini_count    counts the keys' top GINI_TOP bits (their bucket) over a range of entries;
 *   gini_scatter  writes each survivor as one 32-bit word, its key's low GINI_LOW bits above its unit's number,
 *                 into its bucket's part of one buffer (the exponent and top mantissa bits are the bucket's);
 *   gini_buckets  sorts each bucket of a range of buckets by the rest of the key (two passes of GINI_DIGIT bits
 *                 over a bucket that fits the cache, where sorting all keys by digits from the lowest up would
 *                 make four passes through memory) and
 *                 walks it, summing per unit and for all units Σ r·x (r: rank from 1 within the range), Σ x and
 *                 the count, from which the caller adds up the ranges.
 * Entries are counted and scattered in four interleaved lanes, each with its own counters: runs of equal buckets,
 * the common case, then do not wait on one counter. Pruned entries (mask byte 0) go to bucket GINI_BUCKETS, never
 * sorted. A table describes the tensors: table[4i .. 4i + 3] = address of float32 weights, of the mask (0: none),
 * entry count, unit number; entry ranges [e0, e1) index the tensors' entries laid end to end. */
#define GINI_TOP 12
#define GINI_LOW (31 - GINI_TOP)
#define GINI_UNIT_BITS (32 - GINI_LOW)
#define GINI_BUCKETS (1 << GINI_TOP)
#define GINI_DIGIT 10

/* The part [*lo, *hi) of a tensor of n entries, the first at index first of the concatenation, inside the entry
 * range [e0, e1); 0 when empty. */
static int gini_part(int64_t first, int64_t n, int64_t e0, int64_t e1, int64_t *lo, int64_t *hi) {
    *lo = e0 > first ? e0 - first : 0;
    *hi = e1 - first < n ? e1 - first : n;
    return *lo < *hi;
}

/* Bucket counts of entries [e0, e1), lane by lane, added to hist (int64[4][GINI_BUCKETS + 1]). Returns 1 when a
 * survivor is Inf or NaN, else 0. */
CLONES static int gini_count(const int64_t *table, int64_t n_tensors, int64_t e0, int64_t e1, int64_t *hist) {
    uint32_t bad = 0;
    for (int64_t t = 0, first = 0, lo, hi; t < n_tensors; first += table[4 * t + 2], t++) {
        if (!gini_part(first, table[4 * t + 2], e0, e1, &lo, &hi)) continue;
        const uint32_t *w = (const uint32_t *)(intptr_t)table[4 * t];
        const uint8_t *m = (const uint8_t *)(intptr_t)table[4 * t + 1];
        if (m)
            for (int64_t i = lo; i < hi; i++) {
                uint32_t k = w[i] & 0x7fffffffu;
                bad |= (k >= 0x7f800000u) & (m[i] != 0);
                hist[((i - lo) & 3) * (GINI_BUCKETS + 1) + (m[i] ? k >> GINI_LOW : GINI_BUCKETS)]++;
            }
        else
            for (int64_t i = lo; i < hi; i++) {
                uint32_t k = w[i] & 0x7fffffffu;
                bad |= k >= 0x7f800000u;
                hist[((i - lo) & 3) * (GINI_BUCKETS + 1) + (k >> GINI_LOW)]++;
            }
    }
    return bad != 0;
}

#define GINI_PUT(lane)                                                                   \
    {                                                                                    \
        uint32_t k = w[i + (lane)] & 0x7fffffffu;                                        \
        int64_t b = (m && !m[i + (lane)]) ? GINI_BUCKETS : k >> GINI_LOW;                \
        words[next[(lane) * (GINI_BUCKETS + 1) + b]++] = (k << GINI_UNIT_BITS) | unit;   \
    }

/* Entries [e0, e1) written into words at next[lane][bucket] (int64[4][GINI_BUCKETS + 1], advanced): the same
 * lanes as gini_count's for the same range. */
CLONES static void gini_scatter(const int64_t *table, int64_t n_tensors, int64_t e0, int64_t e1, int64_t *next,
                                uint32_t *words) {
    for (int64_t t = 0, first = 0, lo, hi; t < n_tensors; first += table[4 * t + 2], t++) {
        if (!gini_part(first, table[4 * t + 2], e0, e1, &lo, &hi)) continue;
        const uint32_t *w = (const uint32_t *)(intptr_t)table[4 * t];
        const uint8_t *m = (const uint8_t *)(intptr_t)table[4 * t + 1];
        uint32_t unit = (uint32_t)table[4 * t + 3];
        int64_t i = lo;
        for (; i + 4 <= hi; i += 4) {
            GINI_PUT(0) GINI_PUT(1) GINI_PUT(2) GINI_PUT(3)
        }
        for (int64_t lane = 0; i + lane < hi; lane++) GINI_PUT(lane)
    }
}

/* Least significant digit radix sort of the n words of a (tmp: n words) by their bits from GINI_UNIT_BITS up;
 * returns the one of a and tmp that holds the result. */
static uint32_t *gini_sort_bucket(uint32_t *a, uint32_t *tmp, int64_t n) {
    enum { DIGITS = (GINI_LOW + GINI_DIGIT - 1) / GINI_DIGIT, VALUES = 1 << GINI_DIGIT };
    int64_t count[DIGITS][VALUES];
    memset(count, 0, sizeof count);
    for (int64_t i = 0; i < n; i++)
        for (int d = 0; d < DIGITS; d++) count[d][(a[i] >> (GINI_UNIT_BITS + GINI_DIGIT * d)) & (VALUES - 1)]++;
    for (int d = 0; d < DIGITS; d++) {
        int64_t at = 0, trivial = 0, *c = count[d];
        for (int v = 0; v < VALUES; v++) {
            int64_t k = c[v];
            trivial |= k == n;
            c[v] = at, at += k;
        }
        if (trivial) continue; /* one digit value for all: the pass would not move anything */
        int shift = GINI_UNIT_BITS + GINI_DIGIT * d;
        for (int64_t i = 0; i < n; i++) tmp[c[(a[i] >> shift) & (VALUES - 1)]++] = a[i];
        uint32_t *t = a;
        a = tmp, tmp = t;
    }
    return a;
}

/* Sorts buckets [b0, b1) of words (bucket b: words[start[b] .. start[b + 1]]) and walks them in order: out[3u ..
 * 3u + 2] = Σ r·x, Σ x and the count of unit u's magnitudes x in these buckets, r their ranks from 1 within them;
 * out[3 n_units ..] the same over all units. Returns -1 when out of memory, else 0. */
static int gini_buckets(uint32_t *words, const int64_t *start, int64_t b0, int64_t b1, int64_t n_units, double *out) {
    int64_t biggest = 0;
    for (int64_t b = b0; b < b1; b++) biggest = start[b + 1] - start[b] > biggest ? start[b + 1] - start[b] : biggest;
    uint32_t *tmp = scratch(biggest * sizeof *tmp);
    int64_t *rank = calloc(n_units + 1, sizeof *rank);
    double *sums = calloc(2 * (n_units + 1), sizeof *sums);
    if (!tmp || !rank || !sums) {
        free(tmp), free(rank), free(sums);
        return -1;
    }
    const uint32_t unit_mask = (1u << GINI_UNIT_BITS) - 1;
    double ranked = 0, total = 0; /* of all units: in registers, not in sums, which the units' updates share */
    int64_t seen = 0;
    for (int64_t b = b0; b < b1; b++) {
        int64_t n = start[b + 1] - start[b];
        const uint32_t *a = n > 1 ? gini_sort_bucket(words + start[b], tmp, n) : words + start[b];
        uint32_t high = (uint32_t)b << GINI_LOW;
        for (int64_t i = 0; i < n; i++) {
            uint32_t key = high | (a[i] >> GINI_UNIT_BITS), u = a[i] & unit_mask;
            float x;
            memcpy(&x, &key, sizeof x);
            sums[2 * u] += (double)(++rank[u]) * x, sums[2 * u + 1] += x;
            ranked += (double)(++seen) * x, total += x;
        }
    }
    for (int64_t u = 0; u < n_units; u++)
        out[3 * u] = sums[2 * u], out[3 * u + 1] = sums[2 * u + 1], out[3 * u + 2] = (double)rank[u];
    out[3 * n_units] = ranked, out[3 * n_units + 1] = total, out[3 * n_units + 2] = (double)seen;
    free(tmp), free(rank), free(sums);
    return 0;
}

/* Asks for 2 MB pages for the 2 MB-aligned part of a buffer not yet written (see scratch). */
static void huge_pages(uintptr_t address, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    uintptr_t page = (uintptr_t)1 << 21, lo = (address + page - 1) / page * page, hi = (address + n) / page * page;
    if (lo < hi) madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
    (void)address, (void)n;
#endif
}

static PyObject *py_half_counts(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long bits, mask, out;
    long long n, pruned;
    if (!PyArg_ParseTuple(args, "KKLK", &bits, &mask, &n, &out)) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    pruned = half_counts((const uint16_t *)bits, (const uint8_t *)mask, n, (int64_t *)out);
    Py_END_ALLOW_THREADS;
    if (pruned < 0) return PyErr_NoMemory();
    return PyLong_FromLongLong(pruned);
}

static PyObject *py_f32_many_row_sums(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long table, out;
    long long n, r0, r1;
    if (!PyArg_ParseTuple(args, "KLLLK", &table, &n, &r0, &r1, &out)) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    f32_many_row_sums((const int64_t *)table, n, r0, r1, (double *)out);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

static PyObject *py_half_row_sums(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long bits, mask, tables, out, hist;
    long long rows, cols, n_tables, pruned;
    int bf16;
    if (!PyArg_ParseTuple(args, "KKLLpKLKK", &bits, &mask, &rows, &cols, &bf16, &tables, &n_tables, &out, &hist))
        return NULL;
    Py_BEGIN_ALLOW_THREADS;
    pruned = half_row_sums((const uint16_t *)bits, (const uint8_t *)mask, rows, cols, bf16, (const float *)tables,
                           n_tables, (double *)out, (int64_t *)hist);
    Py_END_ALLOW_THREADS;
    if (pruned < 0) return PyErr_NoMemory();
    return PyLong_FromLongLong(pruned);
}

static PyObject *py_f32_magnitude_digits(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long bits, mask, out;
    long long n;
    int level, status;
    unsigned int prefix;
    if (!PyArg_ParseTuple(args, "KKLiIK", &bits, &mask, &n, &level, &prefix, &out)) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    status = f32_magnitude_digits((const uint32_t *)bits, (const uint8_t *)mask, n, level, prefix, (int64_t *)out);
    Py_END_ALLOW_THREADS;
    if (status < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_f32_keep_from(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long bits, mask, keep;
    long long n;
    unsigned int bound;
    if (!PyArg_ParseTuple(args, "KKLIK", &bits, &mask, &n, &bound, &keep)) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    f32_keep_from((const uint32_t *)bits, (const uint8_t *)mask, n, bound, (uint8_t *)keep);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

static PyObject *py_gini_count(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long table, hist;
    long long n_tensors, e0, e1;
    int bad;
    if (!PyArg_ParseTuple(args, "KLLLK", &table, &n_tensors, &e0, &e1, &hist)) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    bad = gini_count((const int64_t *)table, n_tensors, e0, e1, (int64_t *)hist);
    Py_END_ALLOW_THREADS;
    return PyBool_FromLong(!bad);
}

static PyObject *py_gini_scatter(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long table, next, words;
    long long n_tensors, e0, e1;
    if (!PyArg_ParseTuple(args, "KLLLKK", &table, &n_tensors, &e0, &e1, &next, &words)) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    gini_scatter((const int64_t *)table, n_tensors, e0, e1, (int64_t *)next, (uint32_t *)words);
    Py_END_ALLOW_THREADS;
    Py_RETURN_NONE;
}

static PyObject *py_gini_buckets(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long words, start, out;
    long long b0, b1, n_units;
    int status;
    if (!PyArg_ParseTuple(args, "KKLLLK", &words, &start, &b0, &b1, &n_units, &out)) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    status = gini_buckets((uint32_t *)words, (const int64_t *)start, b0, b1, n_units, (double *)out);
    Py_END_ALLOW_THREADS;
    if (status < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_huge_pages(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long address, n;
    if (!PyArg_ParseTuple(args, "KK", &address, &n)) return NULL;
    huge_pages((uintptr_t)address, (size_t)n);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"half_counts", py_half_counts, METH_VARARGS, "half_counts(bits, mask, n, out) -> pruned"},
    {"f32_many_row_sums", py_f32_many_row_sums, METH_VARARGS, "f32_many_row_sums(table, n, r0, r1, out)"},
    {"half_row_sums", py_half_row_sums, METH_VARARGS,
     "half_row_sums(bits, mask, rows, cols, bf16, tables, n_tables, out, hist) -> pruned"},
    {"f32_magnitude_digits", py_f32_magnitude_digits, METH_VARARGS,
     "f32_magnitude_digits(bits, mask, n, level, prefix, out)"},
    {"f32_keep_from", py_f32_keep_from, METH_VARARGS, "f32_keep_from(bits, mask, n, bound, keep)"},
    {"gini_count", py_gini_count, METH_VARARGS, "gini_count(table, n_tensors, e0, e1, hist) -> all finite"},
    {"gini_scatter", py_gini_scatter, METH_VARARGS, "gini_scatter(table, n_tensors, e0, e1, next, words)"},
    {"gini_buckets", py_gini_buckets, METH_VARARGS, "gini_buckets(words, start, b0, b1, n_units, out)"},
    {"huge_pages", py_huge_pages, METH_VARARGS, "huge_pages(address, n)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels", "One-pass CPU kernels for the measures.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
