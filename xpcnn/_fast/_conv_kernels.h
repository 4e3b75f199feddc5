/* Direct convolution kernels for one instruction set, float32, "CHWN" layout.
 *
 * Included by _conv.c once per instruction set, with these macros defined:
 *   ISA          the name suffix (avx512, avx2, generic)
 *   TARGET       a function attribute selecting the instruction set, or nothing
 *   VB           the vector width in bytes (64, 32, 16)
 *   FWD_MR, FWD_NR   the forward kernel's register tile: output channels x vectors
 *   DW_NR(FN)    vectors of output channels in the weight-gradient tile (1, 2 or 4)
 *   DW_MR1, DW_MR2, DW_MR4   its rows of dW^T for each of those
 *   LOAD_PART(p, n), STORE_PART(p, v, n)   the first n lanes (0 < n < V) of a vector
 * and undefines them at its end, ready for the next instruction set.
 *
 * Layout: an image is (C, Hp, Wp, N) in memory, batch innermost, already padded;
 * an output (FN, OH, OW, N). For stride 1 one output row (OW*N floats) reads, under
 * filter offset (i, j), one contiguous run of an input row: the kernels treat it as
 * one "segment". For stride s > 1 each output column is its own segment of N floats.
 * Vectors run along a segment, so no im2col is ever materialised.
 *
 * No fast-math: the sums are plain multiply-adds (contracted to FMA where the target
 * has it), so NaN and infinities propagate as in any dot product.
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define NAME(x) CAT(x, ISA)
#define V (VB / 4)

typedef float NAME(vf) __attribute__((vector_size(VB)));
typedef int32_t NAME(vi) __attribute__((vector_size(VB)));
#define vf NAME(vf)
#define vi NAME(vi)

static inline ALWAYS_INLINE TARGET vf NAME(ld)(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline ALWAYS_INLINE TARGET void NAME(st)(float *p, vf v) { memcpy(p, &v, sizeof v); }

static inline ALWAYS_INLINE TARGET vf NAME(splat)(float s) { return (vf){0} + s; }

/* ---- forward: out[f, q] = bias[f] + sum_k W[f, k] * src[koff[k] + q] -------------------- */

/* One register tile: MR output channels (packed weights w[K][FWD_MR]) by nr vectors of a
 * segment; the last vector has only `part` lanes when part > 0. `relu` clamps at 0
 * (fmax-like: NaN becomes 0, as the ReLU ops do). */
static inline ALWAYS_INLINE TARGET void NAME(fwd_tile)(
    const int nr, const int masked, int part, int mr, const float *restrict w, ptrdiff_t K,
    const ptrdiff_t *restrict koff, const float *restrict src, float *const *dst,
    const float *restrict bias, int relu)
{
    vf acc[FWD_MR][FWD_NR];
    UNROLL
    for (int m = 0; m < FWD_MR; m++)
        UNROLL
        for (int v = 0; v < FWD_NR; v++)
            if (v < nr) acc[m][v] = NAME(splat)(bias[m]);
    for (ptrdiff_t k = 0; k < K; k++) {
        const float *p = src + koff[k];
        vf b[FWD_NR];
        UNROLL
        for (int v = 0; v < FWD_NR; v++)
            if (v < nr) {
                if (masked && v == nr - 1)
                    b[v] = LOAD_PART(p + v * V, part);
                else
                    b[v] = NAME(ld)(p + v * V);
            }
        const float *wk = w + k * FWD_MR;
        UNROLL
        for (int m = 0; m < FWD_MR; m++) {
            const float s = wk[m];
            UNROLL
            for (int v = 0; v < FWD_NR; v++)
                if (v < nr) acc[m][v] += b[v] * s;
        }
    }
    UNROLL
    for (int m = 0; m < FWD_MR; m++) {
        if (m >= mr) break;
        UNROLL
        for (int v = 0; v < FWD_NR; v++) {
            if (v >= nr) break;
            vf a = acc[m][v];
            if (relu) { /* NaN > 0 and -0.0 > 0 are false: both give +0, as the ReLU ops */
                const vf zero = {0};
                a = (vf)((vi)a & (a > zero));
            }
            if (masked && v == nr - 1)
                STORE_PART(dst[m] + v * V, a, part);
            else
                NAME(st)(dst[m] + v * V, a);
        }
    }
}

/* Tiles of `nr` vectors (the last with `part` lanes when masked) at position q of a
 * segment, for every block of FWD_MR output channels in turn: the tile's input (K rows
 * of nr vectors) is read from memory once and from cache by the other blocks. */
static inline ALWAYS_INLINE TARGET void NAME(fwd_blocks)(
    const int nr, const int masked, int part, const float *restrict wp, ptrdiff_t K, ptrdiff_t FN,
    const ptrdiff_t *restrict koff, const float *src, float *out, ptrdiff_t plane,
    const float *bias, int relu)
{
    for (ptrdiff_t f0 = 0; f0 < FN; f0 += FWD_MR) {
        const int mr = (int)(FN - f0 < FWD_MR ? FN - f0 : FWD_MR);
        float b[FWD_MR];
        float *d[FWD_MR];
        for (int m = 0; m < FWD_MR; m++) {
            const ptrdiff_t f = f0 + (m < mr ? m : 0); /* rows past FN: computed, not stored */
            b[m] = bias[f];
            d[m] = out + f * plane;
        }
        NAME(fwd_tile)(nr, masked, part, mr, wp + (f0 / FWD_MR) * K * FWD_MR, K, koff, src, d,
                       b, relu);
    }
}

/* A segment of `len` floats: src is its input under filter offset (0, 0), out its output
 * in channel 0 (channel f at out + f * plane). */
static TARGET void NAME(fwd_segment)(const float *restrict wp, ptrdiff_t K, ptrdiff_t FN,
                                     const ptrdiff_t *restrict koff, const float *src, float *out,
                                     ptrdiff_t plane, ptrdiff_t len, const float *bias, int relu)
{
    const ptrdiff_t full = len / V, part = len % V;
    ptrdiff_t q = 0, nv = 0;
    for (; nv + FWD_NR <= full; nv += FWD_NR, q += FWD_NR * V)
        NAME(fwd_blocks)(FWD_NR, 0, 0, wp, K, FN, koff, src + q, out + q, plane, bias, relu);
    const int rest = (int)(full - nv);
    switch (rest) { /* each case a tile specialised at compile time */
#define FWD_REST(n)                                                                         \
    case n:                                                                                 \
        if (n < FWD_NR)                                                                     \
            NAME(fwd_blocks)(n, 0, 0, wp, K, FN, koff, src + q, out + q, plane, bias, relu); \
        break;
        FWD_REST(1) FWD_REST(2) FWD_REST(3) FWD_REST(4) FWD_REST(5) FWD_REST(6) FWD_REST(7)
#undef FWD_REST
    default:
        break;
    }
    q += (ptrdiff_t)rest * V;
    if (part)
        NAME(fwd_blocks)(1, 1, (int)part, wp, K, FN, koff, src + q, out + q, plane, bias, relu);
}

/* Output rows [r0, r1) of every output channel; see forward() in _conv.c. */
static TARGET void NAME(conv_forward)(const ConvGeom *g, const float *img, const float *wp,
                                      const float *bias, float *out, ptrdiff_t r0, ptrdiff_t r1,
                                      int relu, const ptrdiff_t *koff)
{
    const ptrdiff_t N = g->N, K = g->C * g->FH * g->FW, FN = g->FN, s = g->stride;
    const ptrdiff_t row_in = g->Wp * N, row_out = g->OW * N, plane = g->OH * row_out;
    for (ptrdiff_t oh = r0; oh < r1; oh++) {
        const float *src = img + oh * s * row_in;
        float *dst = out + oh * row_out;
        if (s == 1)
            NAME(fwd_segment)(wp, K, FN, koff, src, dst, plane, row_out, bias, relu);
        else
            for (ptrdiff_t ow = 0; ow < g->OW; ow++)
                NAME(fwd_segment)(wp, K, FN, koff, src + ow * s * N, dst + ow * N, plane, N, bias,
                                  relu);
    }
}

/* ---- Winograd F(2x2, 3x3): 3x3 filters, stride 1 ---------------------------------------
 * Each 2x2 block ("tile") of output pixels comes from the 4x4 input block under it:
 * Y = A^T [U . V] A with U = G g G^T (the filter, transformed once by the caller) and
 * V = B^T d B (Lavin & Gray, 2016). For each of the 16 positions xi the products summed
 * over the channels are one matrix product, M[xi] (FN, cols) = U[xi] (FN, C) @ V[xi]
 * (C, cols), which the forward kernel above computes (K = C): the columns are the
 * (tile, image) pairs of a chunk of one row of tiles. 4 multiply-adds per output and
 * channel instead of 9, plus the transforms.
 *
 * Rounding differs from the direct sum (within the same kind of bound), and a NaN or an
 * infinity would spread to the other outputs of its tiles: a chunk whose outputs are not
 * all finite is computed again by the direct kernel, so non-finite values propagate
 * exactly as on the generic path. */

/* V = B^T d B, B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], of one
 * vector of images of a 4x4 input block at p (rows `row`, columns N floats apart; rows
 * >= hmax or columns >= wmax read as 0 when edge), stored `step` floats apart at v. */
static inline ALWAYS_INLINE TARGET void NAME(wino_in)(const int edge, const int partial,
                                                     int part, const float *p, ptrdiff_t row,
                                                     ptrdiff_t N, int hmax, int wmax, float *v,
                                                     ptrdiff_t step)
{
    vf d[4][4], t[4][4];
    UNROLL
    for (int i = 0; i < 4; i++)
        UNROLL
        for (int j = 0; j < 4; j++) {
            const float *q = p + i * row + j * N;
            if (edge && (i >= hmax || j >= wmax))
                d[i][j] = (vf){0};
            else
                d[i][j] = partial ? LOAD_PART(q, part) : NAME(ld)(q);
        }
    UNROLL
    for (int j = 0; j < 4; j++) {
        t[0][j] = d[0][j] - d[2][j];
        t[1][j] = d[1][j] + d[2][j];
        t[2][j] = d[2][j] - d[1][j];
        t[3][j] = d[1][j] - d[3][j];
    }
    UNROLL
    for (int i = 0; i < 4; i++) {
        const vf r[4] = {t[i][0] - t[i][2], t[i][1] + t[i][2], t[i][2] - t[i][1],
                         t[i][1] - t[i][3]};
        UNROLL
        for (int j = 0; j < 4; j++) {
            if (partial)
                STORE_PART(v + (i * 4 + j) * step, r[j], part);
            else
                NAME(st)(v + (i * 4 + j) * step, r[j]);
        }
    }
}

/* Y = A^T m A + bias, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], of one vector of images from
 * the 16 products at m (`step` floats apart); row i of Y is stored (at o + i * orow, then
 * clamped at 0 if relu) when rlo <= i < rhi, column j when j < wmax. Returns lanes set
 * where the four outputs are not all finite. */
static inline ALWAYS_INLINE TARGET vi NAME(wino_out)(const int partial, int part,
                                                    const float *m, ptrdiff_t step, vf bv,
                                                    int relu, float *o, ptrdiff_t orow,
                                                    ptrdiff_t N, int rlo, int rhi, int wmax)
{
    vf mm[16], r[4][2], y[2][2];
    UNROLL
    for (int x = 0; x < 16; x++)
        mm[x] = partial ? LOAD_PART(m + x * step, part) : NAME(ld)(m + x * step);
    UNROLL
    for (int i = 0; i < 4; i++) {
        r[i][0] = mm[i * 4 + 0] + mm[i * 4 + 1] + mm[i * 4 + 2];
        r[i][1] = mm[i * 4 + 1] - mm[i * 4 + 2] - mm[i * 4 + 3];
    }
    UNROLL
    for (int j = 0; j < 2; j++) {
        y[0][j] = r[0][j] + r[1][j] + r[2][j] + bv;
        y[1][j] = r[1][j] - r[2][j] - r[3][j] + bv;
    }
    const vf s = (y[0][0] + y[0][1]) + (y[1][0] + y[1][1]); /* inf or NaN if any is */
    UNROLL
    for (int i = 0; i < 2; i++)
        UNROLL
        for (int j = 0; j < 2; j++) {
            if (i < rlo || i >= rhi || j >= wmax) continue;
            vf a = y[i][j];
            if (relu) {
                const vf zero = {0};
                a = (vf)((vi)a & (a > zero));
            }
            if (partial)
                STORE_PART(o + i * orow + j * N, a, part);
            else
                NAME(st)(o + i * orow + j * N, a);
        }
    return (s - s) != (s - s);
}

/* V (16, C, T*N) of tiles [t0, t0 + T) of tile row ti: the input transform of a chunk. */
static TARGET void NAME(wino_inputs)(const ConvGeom *g, const float *img, ptrdiff_t ti,
                                     ptrdiff_t t0, ptrdiff_t T, float *Vs)
{
    const ptrdiff_t N = g->N, C = g->C, Hp = g->Hp, Wp = g->Wp, cols = T * N, y0 = 2 * ti;
    const ptrdiff_t nfull = N / V * V, step = C * cols, row = Wp * N;
    const int part = (int)(N % V), hin = (int)(Hp - y0 < 4 ? Hp - y0 : 4);
    for (ptrdiff_t c = 0; c < C; c++)
        for (ptrdiff_t t = 0; t < T; t++) {
            const ptrdiff_t x0 = 2 * (t0 + t);
            const int win = (int)(Wp - x0 < 4 ? Wp - x0 : 4), edge = hin < 4 || win < 4;
            const float *p = img + ((c * Hp + y0) * Wp + x0) * N;
            float *v = Vs + c * cols + t * N;
            for (ptrdiff_t n = 0; n < nfull; n += V) {
                if (edge)
                    NAME(wino_in)(1, 0, 0, p + n, row, N, hin, win, v + n, step);
                else
                    NAME(wino_in)(0, 0, 0, p + n, row, N, 4, 4, v + n, step);
            }
            if (part) NAME(wino_in)(1, 1, part, p + nfull, row, N, hin, win, v + nfull, step);
        }
}

/* Tiles of a chunk of about `cols` columns (256 for the forward, 128 for the filter
 * gradient, measured): the scratch stays in L2, the products have long rows. */
static inline ptrdiff_t NAME(wino_tiles)(ptrdiff_t N, ptrdiff_t tw, ptrdiff_t cols)
{
    return cols / N < 1 ? 1 : (cols / N > tw ? tw : cols / N);
}

typedef struct {
    const ConvGeom *g;
    const float *img, *up, *wp, *bias;
    const ptrdiff_t *koff, *coff;
    float *out, *Vs, *Ms;
    const float *zeros;
    ptrdiff_t r0, r1;
    int relu;
} NAME(Wino);

/* Tiles [t0, t0 + T) of tile row ti: their output rows within [r0, r1). */
static TARGET void NAME(wino_chunk)(const NAME(Wino) *w, ptrdiff_t ti, ptrdiff_t t0, ptrdiff_t T)
{
    const ConvGeom *g = w->g;
    const ptrdiff_t N = g->N, C = g->C, FN = g->FN, Wp = g->Wp, OH = g->OH, OW = g->OW,
                    cols = T * N, nfull = N / V * V, y0 = 2 * ti;
    const int part = (int)(N % V);
    NAME(wino_inputs)(g, w->img, ti, t0, T, w->Vs);
    const ptrdiff_t blocks = (FN + FWD_MR - 1) / FWD_MR;
    for (int x = 0; x < 16; x++)
        NAME(fwd_segment)(w->up + x * blocks * C * FWD_MR, C, FN, w->coff, w->Vs + x * C * cols,
                          w->Ms + x * FN * cols, cols, cols, w->zeros, 0);
    const ptrdiff_t ya = y0 < w->r0 ? w->r0 : y0, yb = y0 + 2 < w->r1 ? y0 + 2 : w->r1;
    const int rlo = (int)(ya - y0), rhi = (int)(yb - y0);
    vi bad = {0};
    for (ptrdiff_t f = 0; f < FN; f++) {
        const vf bv = NAME(splat)(w->bias[f]);
        for (ptrdiff_t t = 0; t < T; t++) {
            const ptrdiff_t x0 = 2 * (t0 + t), step = FN * cols, orow = OW * N;
            const int wout = (int)(OW - x0 < 2 ? OW - x0 : 2);
            const float *m = w->Ms + f * cols + t * N;
            float *o = w->out + ((f * OH + y0) * OW + x0) * N;
            for (ptrdiff_t n = 0; n < nfull; n += V)
                bad |= NAME(wino_out)(0, 0, m + n, step, bv, w->relu, o + n, orow, N, rlo, rhi,
                                      wout);
            if (part)
                bad |= NAME(wino_out)(1, part, m + nfull, step, bv, w->relu, o + nfull, orow, N,
                                      rlo, rhi, wout);
        }
    }
    int any = 0;
    for (int i = 0; i < V; i++) any |= bad[i];
    if (!any) return;
    const ptrdiff_t x0 = 2 * t0, len = ((OW - x0 < 2 * T) ? OW - x0 : 2 * T) * N;
    for (ptrdiff_t y = ya; y < yb; y++) /* the direct kernel, as on the generic path */
        NAME(fwd_segment)(w->wp, 9 * C, FN, w->koff, w->img + (y * Wp + x0) * N,
                          w->out + (y * OW + x0) * N, OH * OW * N, len, w->bias, w->relu);
}

/* Output rows [r0, r1) of a 3x3, stride-1 convolution; up: the transformed filters
 * packed (16, ceil(FN/MR), C, MR), wp and koff as for conv_forward (the direct kernel
 * recomputes chunks whose outputs are not finite). Returns -1 when scratch memory
 * cannot be allocated. */
static TARGET int NAME(wino_forward)(const ConvGeom *g, const float *img, const float *up,
                                     const float *wp, const float *bias, float *out,
                                     ptrdiff_t r0, ptrdiff_t r1, int relu, const ptrdiff_t *koff)
{
    const ptrdiff_t N = g->N, C = g->C, FN = g->FN, tw = (g->OW + 1) / 2;
    const ptrdiff_t T = NAME(wino_tiles)(N, tw, 256);
    NAME(Wino) w = {g, img, up, wp, bias, koff, NULL, out, NULL, NULL, NULL, r0, r1, relu};
    float *Vs = malloc((size_t)(16 * C * T * N) * sizeof(float));
    float *Ms = malloc((size_t)(16 * FN * T * N) * sizeof(float));
    ptrdiff_t *coff = malloc((size_t)C * sizeof(ptrdiff_t));
    float *zeros = calloc((size_t)FN, sizeof(float));
    int status = -1;
    if (Vs && Ms && coff && zeros) {
        w.Vs = Vs, w.Ms = Ms, w.coff = coff, w.zeros = zeros;
        for (ptrdiff_t ti = r0 / 2; ti < (r1 + 1) / 2; ti++)
            for (ptrdiff_t t0 = 0; t0 < tw; t0 += T) {
                const ptrdiff_t Tn = tw - t0 < T ? tw - t0 : T;
                for (ptrdiff_t c = 0; c < C; c++) coff[c] = c * Tn * N;
                NAME(wino_chunk)(&w, ti, t0, Tn);
            }
        status = 0;
    }
    free(Vs), free(Ms), free(coff), free(zeros);
    return status;
}

/* ---- weight gradient: dWT[k, f] += sum_q src[koff[k] + q] * dout[f, q] ------------------
 * A GEMM whose reduction runs along the segments: dout is packed, a chunk of positions at a
 * time, transposed to P[q][f] (f padded to whole vectors with zeros), so that the register
 * tile holds MR rows of dW^T by NR vectors of output channels, and each step broadcasts MR
 * input values and loads NR vectors of P. The bias gradient is summed while packing. */

static inline ALWAYS_INLINE TARGET void NAME(dw_tile)(
    const int MR, const int NR, const int full, int mr, ptrdiff_t qc, const float *const *a,
    const float *restrict P, ptrdiff_t FNP, float *restrict dwt)
{
    vf acc[24][4];
    UNROLL
    for (int m = 0; m < MR; m++) /* rows past mr: zero, never used */
        UNROLL
        for (int v = 0; v < NR; v++)
            acc[m][v] = (full || m < mr) ? NAME(ld)(dwt + m * FNP + v * V) : (vf){0};
    for (ptrdiff_t q = 0; q < qc; q++) {
        vf b[4];
        UNROLL
        for (int v = 0; v < NR; v++) b[v] = NAME(ld)(P + q * FNP + v * V);
        UNROLL
        for (int m = 0; m < MR; m++) {
            if (!full && m >= mr) break;
            const float s = a[m][q];
            UNROLL
            for (int v = 0; v < NR; v++) acc[m][v] += b[v] * s;
        }
    }
    UNROLL
    for (int m = 0; m < MR; m++)
        UNROLL
        for (int v = 0; v < NR; v++)
            if (full || m < mr) NAME(st)(dwt + m * FNP + v * V, acc[m][v]);
}

/* Every tile of one packed chunk: K rows of dW^T by FNP channels. */
static inline ALWAYS_INLINE TARGET void NAME(dw_chunk)(
    const int MR, const int NR, ptrdiff_t K, const ptrdiff_t *restrict koff, const float *src,
    ptrdiff_t qc, const float *P, ptrdiff_t FNP, float *dwt)
{
    const float *a[24];
    for (ptrdiff_t k0 = 0; k0 < K; k0 += MR) {
        const int mr = (int)(K - k0 < MR ? K - k0 : MR);
        for (int m = 0; m < MR; m++) a[m] = src + koff[k0 + (m < mr ? m : 0)];
        for (ptrdiff_t f0 = 0; f0 < FNP; f0 += NR * V) {
            float *t = dwt + k0 * FNP + f0;
            if (mr == MR)
                NAME(dw_tile)(MR, NR, 1, MR, qc, a, P + f0, FNP, t);
            else
                NAME(dw_tile)(MR, NR, 0, mr, qc, a, P + f0, FNP, t);
        }
    }
}

/* Lanes of two vectors interleaved: ZIP_LO(a, b) = a0 b0 a1 b1 ..., ZIP_HI the upper halves.
 * log2(V) rounds of zips pairing row i with row i + V/2 transpose a V x V block. */
#if VB == 64
#define ZIP_LO(a, b) __builtin_shufflevector(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
#define ZIP_HI(a, b) \
    __builtin_shufflevector(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
#elif VB == 32
#define ZIP_LO(a, b) __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11)
#define ZIP_HI(a, b) __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15)
#else
#define ZIP_LO(a, b) __builtin_shufflevector(a, b, 0, 4, 1, 5)
#define ZIP_HI(a, b) __builtin_shufflevector(a, b, 2, 6, 3, 7)
#endif

/* r[0 .. V) transposed in place: lane j of r[i] becomes lane i of r[j]. */
static inline ALWAYS_INLINE TARGET void NAME(transpose)(vf *r)
{
    UNROLL
    for (int round = 1; round < V; round *= 2) {
        vf t[V];
        UNROLL
        for (int i = 0; i < V / 2; i++) {
            t[2 * i] = ZIP_LO(r[i], r[i + V / 2]);
            t[2 * i + 1] = ZIP_HI(r[i], r[i + V / 2]);
        }
        UNROLL
        for (int i = 0; i < V; i++) r[i] = t[i];
    }
}

/* Packs dout[f, q0 .. q0+qc) for every f into P[q][f] (V x V blocks transposed in
 * registers, the rest one by one) and adds each row's sum to db. With mask_seg (a ReLU's
 * output, laid out as dout) only the elements where it is > 0 count: the ReLU's backward. */
static inline ALWAYS_INLINE TARGET void NAME(dw_pack)(const float *dout_seg,
                                                      const float *mask_seg, ptrdiff_t plane,
                                                      ptrdiff_t FN, ptrdiff_t FNP, ptrdiff_t qc,
                                                      float *P, float *db)
{
    const ptrdiff_t qv = qc / V * V;
    for (ptrdiff_t f0 = 0; f0 < FN; f0 += V) {
        const int rows = (int)(FN - f0 < V ? FN - f0 : V);
        vf sum = {0};
        for (ptrdiff_t q0 = 0; q0 < qv; q0 += V) {
            vf r[V];
            UNROLL
            for (int i = 0; i < V; i++) {
                const ptrdiff_t at = (f0 + i) * plane + q0;
                r[i] = i < rows ? NAME(ld)(dout_seg + at) : (vf){0};
                if (mask_seg && i < rows) r[i] = (vf)((vi)r[i] & (NAME(ld)(mask_seg + at) > 0.0f));
            }
            NAME(transpose)(r);
            UNROLL
            for (int i = 0; i < V; i++) {
                NAME(st)(P + (q0 + i) * FNP + f0, r[i]);
                sum += r[i];
            }
        }
        float s[V];
        NAME(st)(s, sum);
        for (int i = 0; i < rows; i++) {
            const float *d = dout_seg + (f0 + i) * plane;
            const float *mk = mask_seg ? mask_seg + (f0 + i) * plane : NULL;
            for (ptrdiff_t q = qv; q < qc; q++) {
                const float v = (mk && !(mk[q] > 0.0f)) ? 0.0f : d[q];
                P[q * FNP + f0 + i] = v;
                s[i] += v;
            }
            db[f0 + i] += s[i];
        }
    }
}

/* Weight and bias gradients of output rows [r0, r1): dW (FN, K) and db (FN,) are written
 * (not accumulated); with mask, dout counts only where mask > 0 (see dw_pack). Returns 0,
 * or -1 when scratch memory cannot be allocated. */
static TARGET int NAME(conv_dw)(const ConvGeom *g, const float *img, const float *dout,
                                const float *mask, float *dW, float *db, ptrdiff_t r0,
                                ptrdiff_t r1, const ptrdiff_t *koff)
{
    const ptrdiff_t N = g->N, K = g->C * g->FH * g->FW, FN = g->FN;
    const int NR = DW_NR(FN);
    const ptrdiff_t FNP = (FN + NR * V - 1) / (NR * V) * (NR * V);
    const ptrdiff_t qmax = 4096 / FNP > 0 ? 4096 / FNP : 1; /* P: about 16 KiB, in L1 */
    /* Padding lanes of P stay zero: the dW^T columns past FN are never read. */
    float *P = calloc((size_t)(qmax * FNP), sizeof(float));
    float *dwt = calloc((size_t)(K * FNP), sizeof(float));
    float *dbp = calloc((size_t)FNP, sizeof(float));
    if (!P || !dwt || !dbp) {
        free(P), free(dwt), free(dbp);
        return -1;
    }
    const ptrdiff_t row_in = g->Wp * N, plane = g->OH * g->OW * N;
    const ptrdiff_t seg_len = g->stride == 1 ? g->OW * N : N;
    const ptrdiff_t segs = g->stride == 1 ? 1 : g->OW;
    for (ptrdiff_t oh = r0; oh < r1; oh++) {
        for (ptrdiff_t sg = 0; sg < segs; sg++) {
            const float *src_seg = img + oh * g->stride * row_in + sg * g->stride * N;
            const float *dout_seg = dout + oh * g->OW * N + sg * N;
            for (ptrdiff_t q0 = 0; q0 < seg_len; q0 += qmax) {
                const ptrdiff_t qc = seg_len - q0 < qmax ? seg_len - q0 : qmax;
                NAME(dw_pack)(dout_seg + q0, mask ? mask + (dout_seg - dout) + q0 : NULL, plane,
                              FN, FNP, qc, P, dbp);
                const float *src = src_seg + q0;
                switch (NR) {
                case 1: NAME(dw_chunk)(DW_MR1, 1, K, koff, src, qc, P, FNP, dwt); break;
                case 2: NAME(dw_chunk)(DW_MR2, 2, K, koff, src, qc, P, FNP, dwt); break;
                default: NAME(dw_chunk)(DW_MR4, 4, K, koff, src, qc, P, FNP, dwt); break;
                }
            }
        }
    }
    for (ptrdiff_t f = 0; f < FN; f++) {
        for (ptrdiff_t k = 0; k < K; k++) dW[f * K + k] = dwt[k * FNP + f];
        db[f] = dbp[f];
    }
    free(P), free(dwt), free(dbp);
    return 0;
}

/* ---- Winograd weight gradient: the adjoint of the forward above ------------------------
 * Y = A^T [U . V] A gives dL/dU[xi] = sum over tiles and images of Z[xi] V[xi], with Z =
 * A dY A^T the 2x2 output gradient of a tile brought to 4x4, and dL/dg = G^T (dL/dU) G.
 * For each xi the sum is the weight-gradient product above with K = C: dU^T[xi] (C, FNP)
 * += V[xi] (C, cols) @ Z[xi]^T. A thread whose sums are not all finite computes its rows
 * again with the direct kernel (a NaN would reach all 9 taps of its filter otherwise). */

/* Z = A dY A^T, A = [[1, 0], [1, 1], [1, -1], [0, -1]], of one vector of images of a 2x2
 * block of dout at d (rows `orow` apart; rows outside [rlo, rhi) and columns >= wmax
 * count as 0; with mk, only where mk > 0), stored `step` apart at z. Returns the sum of
 * the block (the bias gradient's part). */
static inline ALWAYS_INLINE TARGET vf NAME(wino_dout)(const int partial, int part, const float *d,
                                                     const float *mk, ptrdiff_t orow, ptrdiff_t N,
                                                     int rlo, int rhi, int wmax, float *z,
                                                     ptrdiff_t step)
{
    vf y[2][2], t[4][2];
    UNROLL
    for (int a = 0; a < 2; a++)
        UNROLL
        for (int b = 0; b < 2; b++) {
            const ptrdiff_t at = a * orow + b * N;
            if (a < rlo || a >= rhi || b >= wmax) {
                y[a][b] = (vf){0};
                continue;
            }
            y[a][b] = partial ? LOAD_PART(d + at, part) : NAME(ld)(d + at);
            if (mk) {
                const vf m = partial ? LOAD_PART(mk + at, part) : NAME(ld)(mk + at);
                y[a][b] = (vf)((vi)y[a][b] & (m > 0.0f));
            }
        }
    UNROLL
    for (int b = 0; b < 2; b++) {
        t[0][b] = y[0][b];
        t[1][b] = y[0][b] + y[1][b];
        t[2][b] = y[0][b] - y[1][b];
        t[3][b] = -y[1][b];
    }
    UNROLL
    for (int i = 0; i < 4; i++) {
        const vf r[4] = {t[i][0], t[i][0] + t[i][1], t[i][0] - t[i][1], -t[i][1]};
        UNROLL
        for (int j = 0; j < 4; j++) {
            if (partial)
                STORE_PART(z + (i * 4 + j) * step, r[j], part);
            else
                NAME(st)(z + (i * 4 + j) * step, r[j]);
        }
    }
    return (y[0][0] + y[0][1]) + (y[1][0] + y[1][1]);
}

/* Chunk [t0, t0 + T) of tile row ti into dut (16, C, FNP) and db (FN,); Vs, Zs scratch
 * (16, C, cols) and (16, FN, cols), P (qmax, FNP). */
static TARGET void NAME(wino_dw_chunk)(const ConvGeom *g, const float *img, const float *dout,
                                       const float *mask, ptrdiff_t r0, ptrdiff_t r1,
                                       ptrdiff_t ti, ptrdiff_t t0, ptrdiff_t T, float *Vs,
                                       float *Zs, float *P, ptrdiff_t qmax, ptrdiff_t FNP,
                                       const ptrdiff_t *coff, float *dut, float *db, float *junk)
{
    const ptrdiff_t N = g->N, C = g->C, FN = g->FN, OH = g->OH, OW = g->OW, cols = T * N;
    const ptrdiff_t nfull = N / V * V, y0 = 2 * ti, orow = OW * N, step = FN * cols;
    const int part = (int)(N % V);
    const int rlo = (int)((y0 < r0 ? r0 : y0) - y0), rhi = (int)((y0 + 2 < r1 ? y0 + 2 : r1) - y0);
    NAME(wino_inputs)(g, img, ti, t0, T, Vs);
    for (ptrdiff_t f = 0; f < FN; f++) {
        vf sum = {0};
        for (ptrdiff_t t = 0; t < T; t++) {
            const ptrdiff_t x0 = 2 * (t0 + t), at = ((f * OH + y0) * OW + x0) * N;
            const int wout = (int)(OW - x0 < 2 ? OW - x0 : 2);
            const float *mk = mask ? mask + at : NULL;
            float *z = Zs + f * cols + t * N;
            for (ptrdiff_t n = 0; n < nfull; n += V)
                sum += NAME(wino_dout)(0, 0, dout + at + n, mk ? mk + n : NULL, orow, N, rlo, rhi,
                                       wout, z + n, step);
            if (part)
                sum += NAME(wino_dout)(1, part, dout + at + nfull, mk ? mk + nfull : NULL, orow, N,
                                       rlo, rhi, wout, z + nfull, step);
        }
        float s[V];
        NAME(st)(s, sum);
        for (int i = 0; i < V; i++) db[f] += s[i];
    }
    const int NR = DW_NR(FN);
    for (int x = 0; x < 16; x++)
        for (ptrdiff_t q0 = 0; q0 < cols; q0 += qmax) {
            const ptrdiff_t qc = cols - q0 < qmax ? cols - q0 : qmax;
            NAME(dw_pack)(Zs + x * step + q0, NULL, cols, FN, FNP, qc, P, junk);
            const float *src = Vs + x * C * cols + q0;
            float *dwt = dut + x * C * FNP;
            switch (NR) {
            case 1: NAME(dw_chunk)(DW_MR1, 1, C, coff, src, qc, P, FNP, dwt); break;
            case 2: NAME(dw_chunk)(DW_MR2, 2, C, coff, src, qc, P, FNP, dwt); break;
            default: NAME(dw_chunk)(DW_MR4, 4, C, coff, src, qc, P, FNP, dwt); break;
            }
        }
}

/* Weight and bias gradients of output rows [r0, r1) of a 3x3 stride-1 convolution, as
 * conv_dw (written, not accumulated). Returns 0, or -1 when scratch memory cannot be
 * allocated. */
static TARGET int NAME(wino_dw)(const ConvGeom *g, const float *img, const float *dout,
                                const float *mask, float *dW, float *db, ptrdiff_t r0,
                                ptrdiff_t r1, const ptrdiff_t *koff)
{
    const ptrdiff_t N = g->N, C = g->C, FN = g->FN, tw = (g->OW + 1) / 2;
    const ptrdiff_t T = NAME(wino_tiles)(N, tw, 128), FNP = (FN + DW_NR(FN) * V - 1) /
                                                          (DW_NR(FN) * V) * (DW_NR(FN) * V);
    const ptrdiff_t qmax = 4096 / FNP > 0 ? 4096 / FNP : 1;
    float *Vs = malloc((size_t)(16 * C * T * N) * sizeof(float));
    float *Zs = malloc((size_t)(16 * FN * T * N) * sizeof(float));
    float *P = calloc((size_t)(qmax * FNP), sizeof(float)); /* padding lanes stay 0 */
    float *dut = calloc((size_t)(16 * C * FNP), sizeof(float));
    float *junk = calloc((size_t)FNP, sizeof(float));
    ptrdiff_t *coff = malloc((size_t)C * sizeof(ptrdiff_t));
    int status = -1;
    if (Vs && Zs && P && dut && junk && coff) {
        for (ptrdiff_t f = 0; f < FN; f++) db[f] = 0.0f;
        for (ptrdiff_t ti = r0 / 2; ti < (r1 + 1) / 2; ti++)
            for (ptrdiff_t t0 = 0; t0 < tw; t0 += T) {
                const ptrdiff_t Tn = tw - t0 < T ? tw - t0 : T;
                for (ptrdiff_t c = 0; c < C; c++) coff[c] = c * Tn * N;
                NAME(wino_dw_chunk)(g, img, dout, mask, r0, r1, ti, t0, Tn, Vs, Zs, P, qmax, FNP,
                                    coff, dut, db, junk);
            }
        /* dW[f, c] = G^T dU[f, c] G, G^T = [[1, .5, .5, 0], [0, .5, -.5, 0], [0, .5, .5, 1]] */
        int finite = 1;
        for (ptrdiff_t c = 0; c < C; c++)
            for (ptrdiff_t f = 0; f < FN; f++) {
                float u[4][4], t[3][4];
                for (int x = 0; x < 16; x++) u[x / 4][x % 4] = dut[(x * C + c) * FNP + f];
                for (int j = 0; j < 4; j++) {
                    t[0][j] = u[0][j] + 0.5f * (u[1][j] + u[2][j]);
                    t[1][j] = 0.5f * (u[1][j] - u[2][j]);
                    t[2][j] = 0.5f * (u[1][j] + u[2][j]) + u[3][j];
                }
                float *o = dW + (f * C + c) * 9;
                for (int k = 0; k < 3; k++) {
                    o[k * 3 + 0] = t[k][0] + 0.5f * (t[k][1] + t[k][2]);
                    o[k * 3 + 1] = 0.5f * (t[k][1] - t[k][2]);
                    o[k * 3 + 2] = 0.5f * (t[k][1] + t[k][2]) + t[k][3];
                    for (int l = 0; l < 3; l++) finite &= o[k * 3 + l] - o[k * 3 + l] == 0.0f;
                }
            }
        for (ptrdiff_t f = 0; f < FN; f++) finite &= db[f] - db[f] == 0.0f;
        status = finite ? 0 : NAME(conv_dw)(g, img, dout, mask, dW, db, r0, r1, koff);
    }
    free(Vs), free(Zs), free(P), free(dut), free(junk), free(coff);
    return status;
}

/* ---- placing a gradient for the input-gradient correlation --------------------------
 * dst[f, first_row + oh*stride, first_col + ow*stride, :] = src[f, oh, ow, :] (where mask,
 * if given, is > 0; else 0) for channels [f0, f1), the rows and columns that land inside
 * dst; dst's other elements are left as they are (zero). */
static TARGET void NAME(place)(const PlaceGeom *g, const float *src, const float *mask,
                               float *dst, ptrdiff_t f0, ptrdiff_t f1)
{
    const ptrdiff_t N = g->N;
    for (ptrdiff_t f = f0; f < f1; f++)
        for (ptrdiff_t oh = 0; oh < g->OH; oh++) {
            const ptrdiff_t r = g->first_row + oh * g->stride;
            if (r < 0 || r >= g->Hd) continue;
            for (ptrdiff_t ow = 0; ow < g->OW; ow++) {
                const ptrdiff_t c = g->first_col + ow * g->stride;
                if (c < 0 || c >= g->Wd) continue;
                const ptrdiff_t from = ((f * g->OH + oh) * g->OW + ow) * N;
                float *to = dst + ((f * g->Hd + r) * g->Wd + c) * N;
                ptrdiff_t n = 0;
                if (mask) {
                    for (; n + V <= N; n += V)
                        NAME(st)(to + n, (vf)((vi)NAME(ld)(src + from + n) &
                                              (NAME(ld)(mask + from + n) > 0.0f)));
                    for (; n < N; n++) to[n] = mask[from + n] > 0.0f ? src[from + n] : 0.0f;
                } else {
                    memcpy(to, src + from, (size_t)N * sizeof(float));
                }
            }
        }
}

/* ---- max pooling over disjoint windows (stride >= window), no padding ---------------
 * x (C, H, W, N) -> out (C, OH, OW, N), channels [c0, c1). The maximum keeps the first of
 * equal values; a NaN beats every number and the first NaN is kept (the generic rule),
 * or with skip_nan a NaN loses to any number (fmax: a window of NaN only gives NaN). */

static inline ALWAYS_INLINE TARGET vf NAME(blend)(vi take, vf a, vf b)
{
    return (vf)(((vi)a & take) | ((vi)b & ~take));
}

static TARGET void NAME(pool_forward)(const PoolGeom *g, const float *x, float *out,
                                      int skip_nan, ptrdiff_t c0, ptrdiff_t c1)
{
    const ptrdiff_t N = g->N, H = g->H, W = g->W, s = g->stride;
    for (ptrdiff_t c = c0; c < c1; c++)
        for (ptrdiff_t oh = 0; oh < g->OH; oh++)
            for (ptrdiff_t ow = 0; ow < g->OW; ow++) {
                const float *base = x + ((c * H + oh * s) * W + ow * s) * N;
                float *o = out + ((c * g->OH + oh) * g->OW + ow) * N;
                ptrdiff_t n = 0;
                for (; n + V <= N; n += V) {
                    vf m = NAME(ld)(base + n);
                    for (ptrdiff_t k = 1; k < g->ph * g->pw; k++) {
                        const vf v = NAME(ld)(base + ((k / g->pw) * W + k % g->pw) * N + n);
                        const vi nan_v = v != v, nan_m = m != m;
                        const vi take = (v > m) | (skip_nan ? (nan_m & ~nan_v) : (nan_v & ~nan_m));
                        m = NAME(blend)(take, v, m);
                    }
                    NAME(st)(o + n, m);
                }
                for (; n < N; n++) {
                    float m = base[n];
                    for (ptrdiff_t k = 1; k < g->ph * g->pw; k++) {
                        const float v = base[((k / g->pw) * W + k % g->pw) * N + n];
                        const int nan_v = v != v, nan_m = m != m;
                        if (v > m || (skip_nan ? (nan_m && !nan_v) : (nan_v && !nan_m))) m = v;
                    }
                    o[n] = m;
                }
            }
}

/* dx (C, H, W, N) of channels [c0, c1): each dout goes to its window's first element equal
 * to the output (NaN: the first NaN), the others get 0. Windows are disjoint, so each
 * element receives at most one gradient; elements under no window are zeroed. */
static TARGET void NAME(pool_backward)(const PoolGeom *g, const float *x, const float *out,
                                       const float *dout, float *dx, ptrdiff_t c0, ptrdiff_t c1)
{
    const ptrdiff_t N = g->N, H = g->H, W = g->W, s = g->stride, K = g->ph * g->pw;
    const int tiles = s == g->ph && s == g->pw && g->OH * s == H && g->OW * s == W;
    if (!tiles) memset(dx + c0 * H * W * N, 0, (size_t)((c1 - c0) * H * W * N) * sizeof(float));
    for (ptrdiff_t c = c0; c < c1; c++)
        for (ptrdiff_t oh = 0; oh < g->OH; oh++)
            for (ptrdiff_t ow = 0; ow < g->OW; ow++) {
                const ptrdiff_t at = ((c * H + oh * s) * W + ow * s) * N;
                const ptrdiff_t o = ((c * g->OH + oh) * g->OW + ow) * N;
                ptrdiff_t n = 0;
                for (; n + V <= N; n += V) {
                    const vf m = NAME(ld)(out + o + n), d = NAME(ld)(dout + o + n);
                    const vi nan_m = m != m;
                    vi taken = {0};
                    for (ptrdiff_t k = 0; k < K; k++) {
                        const ptrdiff_t e = at + ((k / g->pw) * W + k % g->pw) * N + n;
                        const vf v = NAME(ld)(x + e);
                        const vi hit = (v == m) | ((v != v) & nan_m);
                        /* + 0: a routed -0.0 becomes +0.0, as when the generic path adds it
                         * to its zero-filled dx */
                        NAME(st)(dx + e, (vf)((vi)d & hit & ~taken) + 0.0f);
                        taken |= hit;
                    }
                }
                for (; n < N; n++) {
                    const float m = out[o + n];
                    int taken = 0;
                    for (ptrdiff_t k = 0; k < K; k++) {
                        const ptrdiff_t e = at + ((k / g->pw) * W + k % g->pw) * N + n;
                        const int hit = x[e] == m || (x[e] != x[e] && m != m);
                        dx[e] = (hit && !taken ? dout[o + n] : 0.0f) + 0.0f;
                        taken |= hit;
                    }
                }
            }
}

#undef ZIP_LO
#undef ZIP_HI
#undef vf
#undef vi
#undef V
#undef NAME
#undef ISA
#undef TARGET
#undef VB
#undef FWD_MR
#undef FWD_NR
#undef DW_NR
#undef DW_MR1
#undef DW_MR2
#undef DW_MR4
#undef LOAD_PART
#undef STORE_PART
