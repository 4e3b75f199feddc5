/* xpcnn._fast._conv: compiled float32 convolution and max-pooling kernels for the NumPy
 * fast path.
 *
 * The Python side (xpcnn/_fast/compiled.py) validates arrays and shapes first; this
 * module checks again that every buffer is a C-contiguous float32 buffer large enough
 * for the geometry it is given, so a wrong call raises instead of reading out of
 * bounds. Every kernel call releases the GIL. The kernels themselves are in
 * _conv_kernels.h, compiled once per instruction set (AVX-512, AVX2, generic); each
 * call names the one to run (isas() lists those this CPU runs, best first).
 *
 * Only the stable ABI (Py_LIMITED_API 3.11) is used: no NumPy headers at build time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define XPCNN_X86 1
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#define XPCNN_ARM64 1
#endif

#define ALWAYS_INLINE __attribute__((always_inline))
/* A register tile's loops must unroll completely, or its accumulators live in memory. */
#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#else
#define UNROLL _Pragma("GCC unroll 32")
#endif

typedef struct {
    ptrdiff_t C, Hp, Wp, N, FN, FH, FW, stride, OH, OW;
} ConvGeom;

typedef struct {
    ptrdiff_t C, H, W, N, ph, pw, stride, OH, OW;
} PoolGeom;

typedef struct {
    ptrdiff_t FN, OH, OW, N, Hd, Wd, first_row, first_col, stride;
} PlaceGeom;

/* ---- the instruction sets ------------------------------------------------------------- */

#ifdef XPCNN_X86
#define ISA avx512
#define TARGET __attribute__((target("avx512f,avx2,fma")))
#define VB 64
#define FWD_MR 4
#define FWD_NR 6
#define DW_NR(FN) ((FN) <= 16 ? 1 : (FN) <= 32 ? 2 : 4)
#define DW_MR1 24
#define DW_MR2 12
#define DW_MR4 6
#define LOAD_PART(p, n) ((vf)_mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1u), (p)))
#define STORE_PART(p, v, n) _mm512_mask_storeu_ps((p), (__mmask16)((1u << (n)) - 1u), (__m512)(v))
#include "_conv_kernels.h"

static const int32_t avx2_lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#define ISA avx2
#define TARGET __attribute__((target("avx2,fma")))
#define VB 32
#define FWD_MR 4
#define FWD_NR 3
#define DW_NR(FN) ((FN) <= 8 ? 1 : 2)
#define DW_MR1 12
#define DW_MR2 6
#define DW_MR4 3
#define AVX2_MASK(n) _mm256_loadu_si256((const __m256i *)(avx2_lanes + 8 - (n)))
#define LOAD_PART(p, n) ((vf)_mm256_maskload_ps((p), AVX2_MASK(n)))
#define STORE_PART(p, v, n) _mm256_maskstore_ps((p), AVX2_MASK(n), (__m256)(v))
#include "_conv_kernels.h"
#endif /* XPCNN_X86 */

/* Portable: 16-byte vectors (SSE2 on x86-64, NEON on arm64, whatever the compiler has
 * elsewhere); partial vectors go through memory lane by lane. */
#define ISA generic
#define TARGET
#define VB 16
#define FWD_MR 4
#define FWD_NR 3
#define DW_NR(FN) ((FN) <= 4 ? 1 : 2)
#define DW_MR1 12
#define DW_MR2 6
#define DW_MR4 3
#define LOAD_PART(p, n) generic_load_part((p), (n))
#define STORE_PART(p, v, n) generic_store_part((p), (v), (n))
typedef float generic_vec __attribute__((vector_size(16)));
static inline generic_vec generic_load_part(const float *p, int n)
{
    generic_vec v = {0};
    memcpy(&v, p, (size_t)n * sizeof(float));
    return v;
}
static inline void generic_store_part(float *p, generic_vec v, int n)
{
    memcpy(p, &v, (size_t)n * sizeof(float));
}
#include "_conv_kernels.h"

/* ---- run-time choice ------------------------------------------------------------------ */

typedef void (*fwd_fn)(const ConvGeom *, const float *, const float *, const float *, float *,
                       ptrdiff_t, ptrdiff_t, int, const ptrdiff_t *);
typedef int (*wino_fn)(const ConvGeom *, const float *, const float *, const float *,
                       const float *, float *, ptrdiff_t, ptrdiff_t, int, const ptrdiff_t *);
typedef int (*dw_fn)(const ConvGeom *, const float *, const float *, const float *, float *,
                     float *, ptrdiff_t, ptrdiff_t, const ptrdiff_t *);
typedef void (*place_fn)(const PlaceGeom *, const float *, const float *, float *, ptrdiff_t,
                         ptrdiff_t);
typedef void (*pool_fwd_fn)(const PoolGeom *, const float *, float *, int, ptrdiff_t, ptrdiff_t);
typedef void (*pool_bwd_fn)(const PoolGeom *, const float *, const float *, const float *, float *,
                            ptrdiff_t, ptrdiff_t);

typedef struct {
    const char *name;
    int fwd_mr;
    fwd_fn fwd;
    wino_fn wino;
    dw_fn dw, wino_dw;
    pool_fwd_fn pool_fwd;
    pool_bwd_fn pool_bwd;
    place_fn place;
} Isa;

#define ISA_ENTRY(name)                                                                     \
    {#name, 4, conv_forward_##name, wino_forward_##name, conv_dw_##name, wino_dw_##name, pool_forward_##name, pool_backward_##name, \
     place_##name}
static const Isa ISAS[] = {
#ifdef XPCNN_X86
    ISA_ENTRY(avx512),
    ISA_ENTRY(avx2),
#endif
    ISA_ENTRY(generic),
};
#define N_ISAS ((int)(sizeof ISAS / sizeof ISAS[0]))

static int cpu_has(const char *name)
{
#ifdef XPCNN_X86
    __builtin_cpu_init();
    if (strcmp(name, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
    if (strcmp(name, "avx2") == 0)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return strcmp(name, "generic") == 0;
}

/* The kernels named `name`, if this build has them and this CPU runs them; NULL with
 * ValueError set otherwise. */
static const Isa *find_isa(const char *name)
{
    for (int i = 0; i < N_ISAS; i++) {
        if (strcmp(ISAS[i].name, name) != 0) continue;
        if (!cpu_has(name)) {
            PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s kernels", name);
            return NULL;
        }
        return &ISAS[i];
    }
    PyErr_Format(PyExc_ValueError, "no %s kernels in this build", name);
    return NULL;
}

/* ---- argument checks ------------------------------------------------------------------ */

/* a * b * ... without overflow; -1 on overflow or a negative factor. */
static ptrdiff_t product(int n, const ptrdiff_t *f)
{
    ptrdiff_t p = 1;
    for (int i = 0; i < n; i++) {
        if (f[i] < 0 || (f[i] && p > PTRDIFF_MAX / f[i])) return -1;
        p *= f[i];
    }
    return p;
}

/* A C-contiguous float32 buffer of at least `need` floats. */
static int get_floats(PyObject *obj, Py_buffer *view, ptrdiff_t need, int writable,
                      const char *what)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a C-contiguous%s float32 array (compiled convolution)", what,
                     writable ? ", writable" : "");
        return -1;
    }
    const char *fmt = view->format ? view->format : "B";
    if (fmt[0] == '<' || fmt[0] == '=' || fmt[0] == '@') fmt++;
    if (view->itemsize != 4 || strcmp(fmt, "f") != 0) {
        PyErr_Format(PyExc_TypeError, "%s must be float32, got buffer format '%s'", what,
                     view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if (need < 0 || view->len / 4 < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd floats, the geometry needs %zd", what,
                     view->len / 4, need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Parses the geometry tuple and the row range, and checks that the windows fit. */
static int get_geom(PyObject *geom, ConvGeom *g)
{
    if (!PyArg_ParseTuple(geom, "nnnnnnnnnn;geometry is (C, Hp, Wp, N, FN, FH, FW, stride, OH, OW)",
                          &g->C, &g->Hp, &g->Wp, &g->N, &g->FN, &g->FH, &g->FW, &g->stride,
                          &g->OH, &g->OW))
        return -1;
    if (g->C < 1 || g->Hp < 1 || g->Wp < 1 || g->N < 1 || g->FN < 1 || g->FH < 1 || g->FW < 1 ||
        g->stride < 1 || g->OH < 1 || g->OW < 1) {
        PyErr_SetString(PyExc_ValueError, "every convolution dimension must be positive");
        return -1;
    }
    if ((g->OH - 1) * g->stride + g->FH > g->Hp || (g->OW - 1) * g->stride + g->FW > g->Wp) {
        PyErr_SetString(PyExc_ValueError, "the output size does not fit the padded input");
        return -1;
    }
    ptrdiff_t dims[] = {g->C, g->Hp, g->Wp, g->N, g->FN, g->FH, g->FW, g->OH, g->OW};
    if (product(9, dims) < 0) {
        PyErr_SetString(PyExc_OverflowError, "convolution too large");
        return -1;
    }
    return 0;
}

static ptrdiff_t *filter_offsets(const ConvGeom *g)
{
    const ptrdiff_t K = g->C * g->FH * g->FW;
    ptrdiff_t *koff = malloc((size_t)K * sizeof(ptrdiff_t));
    if (!koff) return NULL;
    for (ptrdiff_t c = 0; c < g->C; c++)
        for (ptrdiff_t i = 0; i < g->FH; i++)
            for (ptrdiff_t j = 0; j < g->FW; j++)
                koff[(c * g->FH + i) * g->FW + j] = ((c * g->Hp + i) * g->Wp + j) * g->N;
    return koff;
}

static int get_rows(ptrdiff_t r0, ptrdiff_t r1, const ConvGeom *g)
{
    if (r0 < 0 || r1 < r0 || r1 > g->OH) {
        PyErr_Format(PyExc_ValueError, "rows [%zd, %zd) outside [0, %zd)", r0, r1, g->OH);
        return -1;
    }
    return 0;
}

/* ---- module functions ----------------------------------------------------------------- */

PyDoc_STRVAR(forward_doc,
             "forward(img, wp, bias, out, geometry, r0, r1, relu, isa, up=None)\n\n"
             "Output rows [r0, r1) of the convolution of img (C, Hp, Wp, N), padded, with the\n"
             "packed filters wp (ceil(FN/MR), C*FH*FW, MR) plus bias (FN,), written to out\n"
             "(FN, OH, OW, N); relu clamps the result at 0. geometry = (C, Hp, Wp, N, FN, FH,\n"
             "FW, stride, OH, OW). With up, the Winograd-transformed filters packed (16,\n"
             "ceil(FN/MR), C, MR), a 3x3 stride-1 convolution runs as Winograd F(2x2, 3x3).\n"
             "All arrays C-contiguous float32.");

static PyObject *py_forward(PyObject *self, PyObject *args)
{
    PyObject *o_img, *o_wp, *o_bias, *o_out, *o_geom, *o_up = Py_None;
    ptrdiff_t r0, r1;
    int relu;
    const char *isa_name;
    if (!PyArg_ParseTuple(args, "OOOOOnnps|O", &o_img, &o_wp, &o_bias, &o_out, &o_geom, &r0, &r1,
                          &relu, &isa_name, &o_up))
        return NULL;
    ConvGeom g;
    const Isa *isa = find_isa(isa_name);
    if (!isa || get_geom(o_geom, &g) < 0 || get_rows(r0, r1, &g) < 0) return NULL;
    const int wino = o_up != Py_None;
    if (wino && (g.FH != 3 || g.FW != 3 || g.stride != 1)) {
        PyErr_SetString(PyExc_ValueError, "Winograd F(2x2, 3x3) needs 3x3 filters and stride 1");
        return NULL;
    }
    const ptrdiff_t K = g.C * g.FH * g.FW, blocks = (g.FN + isa->fwd_mr - 1) / isa->fwd_mr;
    ptrdiff_t n_img[] = {g.C, g.Hp, g.Wp, g.N}, n_wp[] = {blocks, K, isa->fwd_mr},
              n_out[] = {g.FN, g.OH, g.OW, g.N}, n_up[] = {16, blocks, g.C, isa->fwd_mr};
    Py_buffer img, wp, bias, out, up = {0};
    if (get_floats(o_img, &img, product(4, n_img), 0, "img") < 0) return NULL;
    if (get_floats(o_wp, &wp, product(3, n_wp), 0, "packed filters") < 0) goto fail1;
    if (get_floats(o_bias, &bias, g.FN, 0, "bias") < 0) goto fail2;
    if (wino && get_floats(o_up, &up, product(4, n_up), 0, "transformed filters") < 0) goto fail3;
    if (get_floats(o_out, &out, product(4, n_out), 1, "out") < 0) goto fail4;
    ptrdiff_t *koff = filter_offsets(&g);
    int status = koff ? 0 : -1;
    if (koff) {
        Py_BEGIN_ALLOW_THREADS;
        if (wino)
            status = isa->wino(&g, img.buf, up.buf, wp.buf, bias.buf, out.buf, r0, r1, relu, koff);
        else
            isa->fwd(&g, img.buf, wp.buf, bias.buf, out.buf, r0, r1, relu, koff);
        Py_END_ALLOW_THREADS;
        free(koff);
    }
    if (status < 0) PyErr_NoMemory();
    PyBuffer_Release(&out);
fail4:
    if (wino) PyBuffer_Release(&up);
fail3:
    PyBuffer_Release(&bias);
fail2:
    PyBuffer_Release(&wp);
fail1:
    PyBuffer_Release(&img);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(weight_grad_doc,
             "weight_grad(img, dout, dW, db, geometry, r0, r1, isa, mask=None, winograd=False)\n\n"
             "The filter and bias gradients of output rows [r0, r1): dW (FN, C*FH*FW) and db\n"
             "(FN,) are overwritten with sum over those rows, columns and the batch of\n"
             "dout (FN, OH, OW, N) times the windows of img (C, Hp, Wp, N); with mask (a\n"
             "ReLU's output, shaped as dout) dout counts only where mask > 0; winograd: a 3x3\n"
             "stride-1 convolution's by Winograd F(2x2, 3x3).");

static PyObject *py_weight_grad(PyObject *self, PyObject *args)
{
    PyObject *o_img, *o_dout, *o_dW, *o_db, *o_geom, *o_mask = Py_None;
    ptrdiff_t r0, r1;
    const char *isa_name;
    int wino = 0;
    if (!PyArg_ParseTuple(args, "OOOOOnns|Op", &o_img, &o_dout, &o_dW, &o_db, &o_geom, &r0, &r1,
                          &isa_name, &o_mask, &wino))
        return NULL;
    ConvGeom g;
    const Isa *isa = find_isa(isa_name);
    if (!isa || get_geom(o_geom, &g) < 0 || get_rows(r0, r1, &g) < 0) return NULL;
    if (wino && (g.FH != 3 || g.FW != 3 || g.stride != 1)) {
        PyErr_SetString(PyExc_ValueError, "Winograd F(2x2, 3x3) needs 3x3 filters and stride 1");
        return NULL;
    }
    ptrdiff_t n_img[] = {g.C, g.Hp, g.Wp, g.N}, n_dout[] = {g.FN, g.OH, g.OW, g.N},
              n_dW[] = {g.FN, g.C, g.FH, g.FW};
    Py_buffer img, dout, dW, db, mask = {0};
    int status = 0, masked = o_mask != Py_None;
    if (get_floats(o_img, &img, product(4, n_img), 0, "img") < 0) return NULL;
    if (get_floats(o_dout, &dout, product(4, n_dout), 0, "dout") < 0) goto fail1;
    if (get_floats(o_dW, &dW, product(4, n_dW), 1, "dW") < 0) goto fail2;
    if (get_floats(o_db, &db, g.FN, 1, "db") < 0) goto fail3;
    if (masked && get_floats(o_mask, &mask, product(4, n_dout), 0, "mask") < 0) goto fail4;
    ptrdiff_t *koff = filter_offsets(&g);
    if (!koff) {
        PyErr_NoMemory();
    } else {
        Py_BEGIN_ALLOW_THREADS;
        status = (wino ? isa->wino_dw : isa->dw)(&g, img.buf, dout.buf, masked ? mask.buf : NULL,
                                                 dW.buf, db.buf, r0, r1, koff);
        Py_END_ALLOW_THREADS;
        free(koff);
        if (status < 0) PyErr_NoMemory();
    }
    if (masked) PyBuffer_Release(&mask);
fail4:
    PyBuffer_Release(&db);
fail3:
    PyBuffer_Release(&dW);
fail2:
    PyBuffer_Release(&dout);
fail1:
    PyBuffer_Release(&img);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

/* Parses a pooling geometry: disjoint windows (stride >= window) inside the input. */
static int get_pool_geom(PyObject *geom, PoolGeom *g)
{
    if (!PyArg_ParseTuple(geom, "nnnnnnnnn;geometry is (C, H, W, N, pool_h, pool_w, stride, OH, OW)",
                          &g->C, &g->H, &g->W, &g->N, &g->ph, &g->pw, &g->stride, &g->OH, &g->OW))
        return -1;
    if (g->C < 1 || g->H < 1 || g->W < 1 || g->N < 1 || g->ph < 1 || g->pw < 1 || g->OH < 1 ||
        g->OW < 1 || g->stride < g->ph || g->stride < g->pw) {
        PyErr_SetString(PyExc_ValueError,
                        "pooling dimensions must be positive and windows disjoint (stride >= window)");
        return -1;
    }
    if ((g->OH - 1) * g->stride + g->ph > g->H || (g->OW - 1) * g->stride + g->pw > g->W) {
        PyErr_SetString(PyExc_ValueError, "the output size does not fit the input");
        return -1;
    }
    ptrdiff_t dims[] = {g->C, g->H, g->W, g->N, g->OH, g->OW};
    if (product(6, dims) < 0) {
        PyErr_SetString(PyExc_OverflowError, "pooling too large");
        return -1;
    }
    return 0;
}

static int get_channels(ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t C)
{
    if (c0 < 0 || c1 < c0 || c1 > C) {
        PyErr_Format(PyExc_ValueError, "channels [%zd, %zd) outside [0, %zd)", c0, c1, C);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(pool_forward_doc,
             "pool_forward(x, out, geometry, skip_nan, c0, c1, isa)\n\n"
             "Max pooling of channels [c0, c1) of x (C, H, W, N) into out (C, OH, OW, N) over\n"
             "disjoint windows; geometry = (C, H, W, N, pool_h, pool_w, stride, OH, OW).");

static PyObject *py_pool_forward(PyObject *self, PyObject *args)
{
    PyObject *o_x, *o_out, *o_geom;
    int skip_nan;
    ptrdiff_t c0, c1;
    const char *isa_name;
    if (!PyArg_ParseTuple(args, "OOOpnns", &o_x, &o_out, &o_geom, &skip_nan, &c0, &c1, &isa_name))
        return NULL;
    PoolGeom g;
    const Isa *isa = find_isa(isa_name);
    if (!isa || get_pool_geom(o_geom, &g) < 0 || get_channels(c0, c1, g.C) < 0) return NULL;
    ptrdiff_t n_x[] = {g.C, g.H, g.W, g.N}, n_out[] = {g.C, g.OH, g.OW, g.N};
    Py_buffer x, out;
    if (get_floats(o_x, &x, product(4, n_x), 0, "x") < 0) return NULL;
    if (get_floats(o_out, &out, product(4, n_out), 1, "out") == 0) {
        Py_BEGIN_ALLOW_THREADS;
        isa->pool_fwd(&g, x.buf, out.buf, skip_nan, c0, c1);
        Py_END_ALLOW_THREADS;
        PyBuffer_Release(&out);
    }
    PyBuffer_Release(&x);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(pool_backward_doc,
             "pool_backward(x, out, dout, dx, geometry, c0, c1, isa)\n\n"
             "dx (C, H, W, N) of channels [c0, c1): each dout (C, OH, OW, N) routed to its\n"
             "window's first element equal to out (NaN: the first NaN); 0 elsewhere.");

static PyObject *py_pool_backward(PyObject *self, PyObject *args)
{
    PyObject *o_x, *o_out, *o_dout, *o_dx, *o_geom;
    ptrdiff_t c0, c1;
    const char *isa_name;
    if (!PyArg_ParseTuple(args, "OOOOOnns", &o_x, &o_out, &o_dout, &o_dx, &o_geom, &c0, &c1,
                          &isa_name))
        return NULL;
    PoolGeom g;
    const Isa *isa = find_isa(isa_name);
    if (!isa || get_pool_geom(o_geom, &g) < 0 || get_channels(c0, c1, g.C) < 0) return NULL;
    ptrdiff_t n_x[] = {g.C, g.H, g.W, g.N}, n_out[] = {g.C, g.OH, g.OW, g.N};
    Py_buffer x, out, dout, dx;
    if (get_floats(o_x, &x, product(4, n_x), 0, "x") < 0) return NULL;
    if (get_floats(o_out, &out, product(4, n_out), 0, "out") < 0) goto fail1;
    if (get_floats(o_dout, &dout, product(4, n_out), 0, "dout") < 0) goto fail2;
    if (get_floats(o_dx, &dx, product(4, n_x), 1, "dx") < 0) goto fail3;
    Py_BEGIN_ALLOW_THREADS;
    isa->pool_bwd(&g, x.buf, out.buf, dout.buf, dx.buf, c0, c1);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&dx);
fail3:
    PyBuffer_Release(&dout);
fail2:
    PyBuffer_Release(&out);
fail1:
    PyBuffer_Release(&x);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(place_doc,
             "place(src, mask, dst, geometry, f0, f1, isa)\n\n"
             "dst[f, first_row + oh*stride, first_col + ow*stride] = src[f, oh, ow] (times\n"
             "mask > 0 unless mask is None) for channels [f0, f1), where inside dst (FN, Hd,\n"
             "Wd, N); geometry = (FN, OH, OW, N, Hd, Wd, first_row, first_col, stride).");

static PyObject *py_place(PyObject *self, PyObject *args)
{
    PyObject *o_src, *o_mask, *o_dst, *o_geom;
    ptrdiff_t f0, f1;
    const char *isa_name;
    if (!PyArg_ParseTuple(args, "OOOOnns", &o_src, &o_mask, &o_dst, &o_geom, &f0, &f1, &isa_name))
        return NULL;
    PlaceGeom g;
    const Isa *isa = find_isa(isa_name);
    if (!isa) return NULL;
    if (!PyArg_ParseTuple(o_geom,
                          "nnnnnnnnn;geometry is (FN, OH, OW, N, Hd, Wd, first_row, first_col, stride)",
                          &g.FN, &g.OH, &g.OW, &g.N, &g.Hd, &g.Wd, &g.first_row, &g.first_col,
                          &g.stride))
        return NULL;
    ptrdiff_t n_src[] = {g.FN, g.OH, g.OW, g.N}, n_dst[] = {g.FN, g.Hd, g.Wd, g.N};
    if (g.FN < 1 || g.OH < 1 || g.OW < 1 || g.N < 1 || g.Hd < 1 || g.Wd < 1 || g.stride < 1 ||
        product(4, n_src) < 0 || product(4, n_dst) < 0) {
        PyErr_SetString(PyExc_ValueError, "every placing dimension must be positive");
        return NULL;
    }
    if (get_channels(f0, f1, g.FN) < 0) return NULL;
    Py_buffer src, mask = {0}, dst;
    const int masked = o_mask != Py_None;
    if (get_floats(o_src, &src, product(4, n_src), 0, "src") < 0) return NULL;
    if (masked && get_floats(o_mask, &mask, product(4, n_src), 0, "mask") < 0) goto fail1;
    if (get_floats(o_dst, &dst, product(4, n_dst), 1, "dst") == 0) {
        Py_BEGIN_ALLOW_THREADS;
        isa->place(&g, src.buf, masked ? mask.buf : NULL, dst.buf, f0, f1);
        Py_END_ALLOW_THREADS;
        PyBuffer_Release(&dst);
    }
    if (masked) PyBuffer_Release(&mask);
fail1:
    PyBuffer_Release(&src);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_isas(PyObject *self, PyObject *noargs)
{
    PyObject *names = PyList_New(0);
    if (!names) return NULL;
    for (int i = 0; i < N_ISAS; i++) {
        if (!cpu_has(ISAS[i].name)) continue;
        PyObject *s = PyUnicode_FromString(ISAS[i].name);
        if (!s || PyList_Append(names, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(s);
    }
    return names;
}

static PyObject *py_tile(PyObject *self, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8AndSize(arg, NULL);
    const Isa *isa = name ? find_isa(name) : NULL;
    return isa ? PyLong_FromLong(isa->fwd_mr) : NULL;
}

/* ---- flush-to-zero / denormals-are-zero ----------------------------------------------- */

/* The calling thread's floating-point control bits that flush subnormals: MXCSR's FTZ
 * (bit 15) and DAZ (bit 6) on x86-64, FPCR's FZ (bit 24) on arm64. */
#ifdef XPCNN_X86
#define FLUSH_BITS 0x8040u
static unsigned int get_ctrl(void) { return _mm_getcsr(); }
static void set_ctrl(unsigned int v) { _mm_setcsr(v); }
#elif defined(XPCNN_ARM64)
#define FLUSH_BITS (1u << 24)
static unsigned int get_ctrl(void)
{
    uint64_t v;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
    return (unsigned int)v;
}
static void set_ctrl(unsigned int v)
{
    uint64_t w = v;
    __asm__ __volatile__("msr fpcr, %0" : : "r"(w));
}
#endif

static PyObject *py_flush_denormals(PyObject *self, PyObject *arg)
{
#ifdef FLUSH_BITS
    int on = PyObject_IsTrue(arg);
    if (on < 0) return NULL;
    unsigned int old = get_ctrl();
    set_ctrl(on ? (old | FLUSH_BITS) : (old & ~FLUSH_BITS));
    return PyBool_FromLong((old & FLUSH_BITS) == FLUSH_BITS);
#else
    PyErr_SetString(PyExc_NotImplementedError, "flushing subnormals is not supported on this CPU");
    return NULL;
#endif
}

static PyMethodDef methods[] = {
    {"forward", py_forward, METH_VARARGS, forward_doc},
    {"weight_grad", py_weight_grad, METH_VARARGS, weight_grad_doc},
    {"place", py_place, METH_VARARGS, place_doc},
    {"pool_forward", py_pool_forward, METH_VARARGS, pool_forward_doc},
    {"pool_backward", py_pool_backward, METH_VARARGS, pool_backward_doc},
    {"isas", py_isas, METH_NOARGS, "The instruction sets this build has and this CPU runs, best first."},
    {"tile", py_tile, METH_O, "MR of the named instruction set: output channels per packed filter block."},
    {"flush_denormals", py_flush_denormals, METH_O,
     "Set (True) or clear (False) flush-to-zero and denormals-are-zero on the calling thread; "
     "returns whether both were set before."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_conv", "Compiled float32 convolution and max-pooling kernels (see _conv.c).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__conv(void) { return PyModule_Create(&module); }
