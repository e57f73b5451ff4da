/* One-pass CPU kernels for the measures (docs/math.md §2–3) and the exact global magnitude selection (§5), called
 * from pqprune.measure.sums, pqprune.measure.histogram and pqprune.prune.select, which check every argument and
 * keep a PyTorch path for everything else (other devices, dtypes, exponents and scores).
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

/* The Gini index's sums for units and for all of them together, from one sort (docs/math.md §3): keys are the
 * bit patterns of n survivors' float32 magnitudes (ordered like the values), unit[i] the unit of key i (< n_units).
 * A stable LSD radix sort (four passes of 8 bits: 256 output streams per pass stay in the cache, where 2048 did
 * not; the digit counts of all passes come from one read, and a pass whose digit is the same for every key, as the
 * exponent's high bits often are, is skipped) orders all keys, carrying units along; the sorted order
 * restricted to one unit is that unit's sorted order, so one walk gives, per unit u and (row n_units) for all,
 * out[2u] = Σ_i i·x_(i) (ranks from 1) and out[2u + 1] = Σ x. keys and unit are the sort's first buffers (their
 * contents are lost). Returns 0; 1 when a key is Inf or NaN (found by the read that counts digits; out is not
 * written); -1 when out of memory. */
static int gini_sums(uint32_t *keys, uint16_t *unit, int64_t n, int64_t n_units, double *out) {
    uint32_t *k2 = scratch(n * sizeof *k2), *ka = keys;
    uint16_t *u2 = scratch(n * sizeof *u2), *ua = unit;
    int64_t *rank = calloc(n_units, sizeof *rank), *count = calloc(4 * 256, sizeof *count);
    double *sums = calloc(2 * n_units, sizeof *sums);
    if (!k2 || !u2 || !rank || !count || !sums) {
        free(k2), free(u2), free(rank), free(count), free(sums);
        return -1;
    }
    uint32_t largest = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t k = ka[i];
        count[k & 255]++, count[256 + ((k >> 8) & 255)]++, count[512 + ((k >> 16) & 255)]++, count[768 + (k >> 24)]++;
        largest = k > largest ? k : largest;
    }
    if (largest >= 0x7f800000u) { /* the bit patterns of Inf and NaN: nothing to sort */
        free(k2), free(u2), free(rank), free(count), free(sums);
        return 1;
    }
    for (int pass = 0; pass < 4; pass++) {
        int64_t *c = count + 256 * pass, at = 0;
        int shift = 8 * pass, trivial = 0;
        for (int d = 0; d < 256; d++) {
            int64_t m = c[d];
            trivial |= m == n;
            c[d] = at, at += m;
        }
        if (trivial) continue;
        for (int64_t i = 0; i < n; i++) {
            int64_t to = c[(ka[i] >> shift) & 255]++;
            k2[to] = ka[i], u2[to] = ua[i];
        }
        uint32_t *tk = ka; ka = k2, k2 = tk;
        uint16_t *tu = ua; ua = u2, u2 = tu;
    }
    double ranked = 0, total = 0; /* of all units: in registers, not in out, which the per-unit sums share */
    for (int64_t i = 0; i < n; i++) {
        float x;
        memcpy(&x, &ka[i], sizeof x);
        int64_t u = ua[i];
        sums[2 * u] += (double)(++rank[u]) * x, sums[2 * u + 1] += x;
        ranked += (double)(i + 1) * x, total += x;
    }
    memcpy(out, sums, 2 * n_units * sizeof *out);
    out[2 * n_units] = ranked, out[2 * n_units + 1] = total;
    free(keys == ka ? k2 : ka), free(unit == ua ? u2 : ua), free(rank), free(count), free(sums);
    return 0;
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

static PyObject *py_gini_sums(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long keys, unit, out;
    long long n, n_units;
    int status;
    if (!PyArg_ParseTuple(args, "KKLLK", &keys, &unit, &n, &n_units, &out)) return NULL;
    Py_BEGIN_ALLOW_THREADS;
    status = gini_sums((uint32_t *)keys, (uint16_t *)unit, n, n_units, (double *)out);
    Py_END_ALLOW_THREADS;
    if (status < 0) return PyErr_NoMemory();
    return PyBool_FromLong(status == 0);
}

static PyMethodDef methods[] = {
    {"half_counts", py_half_counts, METH_VARARGS, "half_counts(bits, mask, n, out) -> pruned"},
    {"f32_many_row_sums", py_f32_many_row_sums, METH_VARARGS, "f32_many_row_sums(table, n, r0, r1, out)"},
    {"half_row_sums", py_half_row_sums, METH_VARARGS,
     "half_row_sums(bits, mask, rows, cols, bf16, tables, n_tables, out, hist) -> pruned"},
    {"f32_magnitude_digits", py_f32_magnitude_digits, METH_VARARGS,
     "f32_magnitude_digits(bits, mask, n, level, prefix, out)"},
    {"f32_keep_from", py_f32_keep_from, METH_VARARGS, "f32_keep_from(bits, mask, n, bound, keep)"},
    {"gini_sums", py_gini_sums, METH_VARARGS, "gini_sums(keys, unit, n, n_units, out) -> all finite"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels", "One-pass CPU kernels for the measures.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
