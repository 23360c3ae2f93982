// MTP draft verification on the GPU. Contract and semantics: common/mtp.h.
//
// Three kernels, all sized from (B, n, V) only, so one launch sequence serves every mix of
// per-request modes and can be captured in a CUDA graph (kernel 2 only when a top-k or top-p
// array is given: without one no row is filtered):
//
//  1. rowStatsKernel   grid (rows, rowChunks): one streaming pass over each needed row that is
//     not filtered (greedy, relaxed, rejection without top-k/top-p). Each CTA reduces its chunk
//     to a record {max, sum exp((l-max)/T), argmax, #logits > l(draft)} in the workspace. Rows
//     past a request's draft length are never read. Splitting rows into chunks keeps B = 1
//     (4 rows) spread over ~100 CTAs; at B = 256 each row gets two CTAs.
//  2. filterRowKernel  clusters of CTAs (1024 threads, about one per SM) walking the rows: rows
//     of rejection requests with top-k or top-p. A small batch splits each row over a cluster
//     of up to 8 CTAs, whose histograms and reductions meet through distributed shared memory.
//     The thresholds are found by radix select on the order-preserving key of the logits
//     (12 + 12 (+ 8 for f32) bit digits), with count and probability-mass histograms:
//       pass 1: max, argmax, count histogram of the top digit (for top-k);
//       top-k : one more count pass per remaining digit -> exact k-th largest key;
//       top-p : one mass pass per digit over keys >= the top-k threshold; the first gives the
//               top-k mass, each picks the largest digit whose suffix mass reaches the target;
//       top-k only: one pass summing the kept mass.
//     When at most 2048 values have a top digit at or above top-k's, one pass collects them into
//     shared memory and every later pass runs over those instead of the row: top-k and top-p
//     then cost two passes over the row (a split row's candidates go to its rank 0, which
//     finishes alone). At most 256 candidates skip the digits: each is ranked by comparison with
//     all the others. Pass 1 streams from DRAM; the later passes are L2 hits.
//  3. verifyKernel     grid (B, verifyChunks): chunk 0 of a greedy or relaxed request, and every
//     CTA of a rejection request, merges that request's records (fixed order, so all CTAs reach
//     the same decision) and walks the draft positions. A rejection request's sampled row: a
//     one-hot or bonus row is sampled by inverse CDF, each CTA storing its chunk's sums of
//     fixed-point weights per 256-element step (workspace); the last CTA to finish (atomic
//     counter zeroed by kernel 1) draws U below the row's total, finds the step whose prefix
//     range holds U, then the token inside it. The sums are integers and exp has the same bits
//     on both backends, so the CPU reference's running sum finds the same token. A residual
//     against a draft is raced instead (its weights depend on the float normalizer): each CTA
//     races its chunk, the last merges the chunk winners. The last CTA writes the outputs.
//
// Inverse CDF costs one Philox draw per row, and per element one exp, a conversion and an add;
// the race one Philox block per four candidates, a log1pf and a division per candidate
// (candidates whose weight times the largest possible 1/E cannot beat the thread's best so far
// are skipped without drawing, which is exact).
#include "kernels/mtp/mtp.h"

#include <cuda_bf16.h>
#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <type_traits>

#include "common/mtp_rules.h"

namespace moe::kernels::mtp {

namespace {

using namespace moe::mtp_rules;

constexpr int kRowThreads = 256;
constexpr int kFilterThreads = 1024;
constexpr int kVerifyThreads = 256;
constexpr int64_t kRowCtaTarget = 2048;
constexpr int64_t kVerifyCtaTarget = 1024;
constexpr int64_t kMinChunk = 4096;
constexpr int kBins = 4096;  // radix digits of 12 bits (the last f32 digit uses 8)

struct alignas(16) RowRecord {
  float max;
  float sum;
  int32_t argmax;
  uint32_t countGreater;
  uint32_t tau;
  uint32_t pad[3];
};

struct alignas(8) RacePartial {
  float score;
  int32_t index;
};

// Elements per step of the sampling pass: 32 lanes x 8 consecutive elements. Each step's sum
// of fixed-point weights is kept, so the token is found by scanning the step sums, then one step.
constexpr int64_t kStep = 256;

struct Plan {
  int64_t rowChunks = 1, rowChunkLen = 1, verifyChunks = 1, verifyChunkLen = 1;
  size_t recordsOffset = 0, stepSumsOffset = 0, partialsOffset = 0, countersOffset = 0, total = 0;
};

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
size_t alignUp(size_t a, size_t b) { return (a + b - 1) / b * b; }

void chunking(int64_t rows, int64_t vocab, int64_t ctaTarget, int64_t align, int64_t& chunks, int64_t& len) {
  int64_t want = ceilDiv(ctaTarget, rows < 1 ? 1 : rows);
  int64_t most = ceilDiv(vocab, kMinChunk);
  if (want > most) want = most;
  if (want < 1) want = 1;
  len = alignUp(static_cast<size_t>(ceilDiv(vocab, want)), align);
  chunks = ceilDiv(vocab, len);
}

Plan makePlan(int64_t batch, int64_t numDrafts, int64_t vocab) {
  Plan p;
  chunking(batch * (numDrafts + 1), vocab, kRowCtaTarget, 16, p.rowChunks, p.rowChunkLen);
  chunking(batch, vocab, kVerifyCtaTarget, kStep, p.verifyChunks, p.verifyChunkLen);
  const int64_t rows = batch * (2 * numDrafts + 1);  // target rows, then draft-logit rows
  p.recordsOffset = 0;
  p.stepSumsOffset = alignUp(static_cast<size_t>(rows * p.rowChunks) * sizeof(RowRecord), 256);
  p.partialsOffset = alignUp(
      p.stepSumsOffset + static_cast<size_t>(batch * ceilDiv(vocab, kStep)) * sizeof(uint64_t), 256);
  p.countersOffset = alignUp(
      p.partialsOffset + static_cast<size_t>(batch * p.verifyChunks) * sizeof(RacePartial), 256);
  p.total = alignUp(p.countersOffset + static_cast<size_t>(batch) * sizeof(uint32_t), 256);
  return p;
}

// What every kernel receives: the op's arguments as given (draftKind and draftData normalized
// by draftKindOf) plus the plan's chunking and the workspace carved into its parts.
struct Args : VerifyDraftsArgs {
  int64_t rowChunks, rowChunkLen, verifyChunks, verifyChunkLen;
  RowRecord* records;
  uint64_t* stepSums;      // [B][ceil(V / kStep)]: the sampled row's fixed-point weight per step
  RacePartial* partials;   // [B][verifyChunks]: each chunk's race winner (residual rows)
  uint32_t* counters;
};

// ---- element access -------------------------------------------------------------------

template <typename T> struct Elem;
template <> struct Elem<float> {
  static constexpr int kVec = 4;
  __device__ static float load(const float* p) { return __ldg(p); }
  template <typename F>
  __device__ static void unpack(const uint4& r, int64_t x, F& f) {
    f(x, __uint_as_float(r.x)); f(x + 1, __uint_as_float(r.y));
    f(x + 2, __uint_as_float(r.z)); f(x + 3, __uint_as_float(r.w));
  }
};
template <> struct Elem<__nv_bfloat16> {
  static constexpr int kVec = 8;
  __device__ static float load(const __nv_bfloat16* p) {
    return __uint_as_float(static_cast<uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p))) << 16);
  }
  template <typename F>
  __device__ static void word(uint32_t w, int64_t x, F& f) {
    f(x, __uint_as_float(w << 16));
    f(x + 1, __uint_as_float(w & 0xFFFF0000u));
  }
  template <typename F>
  __device__ static void unpack(const uint4& r, int64_t x, F& f) {
    word(r.x, x, f); word(r.y, x + 2, f); word(r.z, x + 4, f); word(r.w, x + 6, f);
  }
};
template <> struct Elem<__half> {
  static constexpr int kVec = 8;
  __device__ static float load(const __half* p) { return __half2float(__ldg(p)); }
  template <typename F>
  __device__ static void word(uint32_t w, int64_t x, F& f) {
    __half2 h = *reinterpret_cast<__half2*>(&w);
    float2 v = __half22float2(h);
    f(x, v.x);
    f(x + 1, v.y);
  }
  template <typename F>
  __device__ static void unpack(const uint4& r, int64_t x, F& f) {
    word(r.x, x, f); word(r.y, x + 2, f); word(r.z, x + 4, f); word(r.w, x + 6, f);
  }
};

// Calls fv(index, values) for each aligned 16-byte vector of row[begin, end) (values[j] is
// element index + j) and fs(index, value) for the unaligned head and tail elements, spread over
// the CTA, with U vector loads in flight per thread.
template <int U = 4, typename T, typename FV, typename FS>
__device__ __forceinline__ void forEachVector(const T* __restrict__ row, int64_t begin, int64_t end,
                                              FV&& fv, FS&& fs) {
  constexpr int N = Elem<T>::kVec;
  // Offsets from begin fit in 32 bits (V < 2^31): fewer registers than 64-bit indices.
  const T* base = row + begin;
  const int len = static_cast<int>(end - begin);
  const uintptr_t addr = reinterpret_cast<uintptr_t>(base);
  int head = static_cast<int>(((16u - (addr & 15u)) & 15u) / sizeof(T));
  if (head > len) head = len;
  const int numVec = (len - head) / N;
  const int vecEnd = head + numVec * N;
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int x = tid; x < head; x += nt) fs(begin + x, Elem<T>::load(base + x));
  for (int x = vecEnd + tid; x < len; x += nt) fs(begin + x, Elem<T>::load(base + x));
  const uint4* vp = reinterpret_cast<const uint4*>(base + head);
  auto vector = [&](const uint4& r, int x) {
    float vals[N];
    auto put = [&](int64_t j, float v) { vals[j] = v; };
    Elem<T>::unpack(r, 0, put);
    fv(begin + x, vals);
  };
  int v = tid;
  for (; v + (U - 1) * nt < numVec; v += U * nt) {
    uint4 r[U];
#pragma unroll
    for (int u = 0; u < U; ++u) r[u] = __ldg(vp + v + u * nt);
#pragma unroll
    for (int u = 0; u < U; ++u) vector(r[u], head + (v + u * nt) * N);
  }
  for (; v < numVec; v += nt) vector(__ldg(vp + v), head + v * N);
}

// Calls f(index, value) for every element of row[begin, end), spread over the CTA.
template <int U = 4, typename T, typename F>
__device__ __forceinline__ void forEachElement(const T* __restrict__ row, int64_t begin,
                                               int64_t end, F&& f) {
  constexpr int N = Elem<T>::kVec;
  forEachVector<U>(
      row, begin, end,
      [&](int64_t x, const float(&vals)[N]) {
#pragma unroll
        for (int j = 0; j < N; ++j) f(x + j, vals[j]);
      },
      f);
}

template <typename T>
__device__ __forceinline__ float loadAt(const void* base, int64_t i) {
  return Elem<T>::load(static_cast<const T*>(base) + i);
}

// 2^x by the SFU (ex2.approx: about 2 ulp), the cost of the softmax sums' terms.
__device__ __forceinline__ float exp2Approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// ---- reductions -----------------------------------------------------------------------

__device__ __forceinline__ bool argmaxBetter(float v, int32_t i, float bv, int32_t bi) {
  return v > bv || (v == bv && i < bi);
}

// The largest of a vector's values (NaN ignored; NaN if all are).
template <int N>
__device__ __forceinline__ float vectorMax(const float (&vals)[N]) {
  float m = vals[0];
#pragma unroll
  for (int j = 1; j < N; ++j) m = fmaxf(m, vals[j]);
  return m;
}

// The argmax over a vector starting at index x with maximum vm: its elements are compared one by
// one only when vm could win, which keeps an argmax pass bound by memory, not by issue.
template <int N>
__device__ __forceinline__ void vectorArgmax(int64_t x, const float (&vals)[N], float vm, float& bestV, int32_t& bestI) {
  if (vm > bestV || (vm == bestV && x < bestI)) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (argmaxBetter(vals[j], static_cast<int32_t>(x + j), bestV, bestI)) {
        bestV = vals[j];
        bestI = static_cast<int32_t>(x + j);
      }
    }
  }
}

// (max, sum of exp((l - max) * invT)) pairs; a pair with sum 0 contributes nothing.
__device__ __forceinline__ void combineSoftmax(float& m, float& s, float m2, float s2,
                                               float invT) {
  const float mm = fmaxf(m, m2);
  float r = 0.0f;
  if (s > 0.0f) r += s * __expf((m - mm) * invT);
  if (s2 > 0.0f) r += s2 * __expf((m2 - mm) * invT);
  m = mm;
  s = r;
}

struct Stats {
  float bestV;
  int32_t bestI;
  float m;
  float s;
  uint32_t count;
};

__device__ __forceinline__ void combineStats(Stats& a, const Stats& b, float invT) {
  if (argmaxBetter(b.bestV, b.bestI, a.bestV, a.bestI)) {
    a.bestV = b.bestV;
    a.bestI = b.bestI;
  }
  combineSoftmax(a.m, a.s, b.m, b.s, invT);
  a.count += b.count;
}

__device__ __forceinline__ Stats shflDownStats(const Stats& a, int off) {
  Stats r;
  r.bestV = __shfl_down_sync(0xFFFFFFFFu, a.bestV, off);
  r.bestI = __shfl_down_sync(0xFFFFFFFFu, a.bestI, off);
  r.m = __shfl_down_sync(0xFFFFFFFFu, a.m, off);
  r.s = __shfl_down_sync(0xFFFFFFFFu, a.s, off);
  r.count = __shfl_down_sync(0xFFFFFFFFu, a.count, off);
  return r;
}

// Result valid in thread 0 (and in lane 0 of each warp for the warp part).
__device__ __forceinline__ Stats warpReduceStats(Stats a, float invT) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Stats o = shflDownStats(a, off);
    combineStats(a, o, invT);
  }
  return a;
}

__device__ Stats blockReduceStats(Stats a, float invT) {
  __shared__ Stats warpRes[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  a = warpReduceStats(a, invT);
  __syncthreads();
  if (lane == 0) warpRes[warp] = a;
  __syncthreads();
  if (warp == 0) {
    Stats s = lane < nw ? warpRes[lane] : Stats{-INFINITY, INT_MAX, -INFINITY, 0.0f, 0u};
    a = warpReduceStats(s, invT);
  }
  return a;
}

template <typename T>
__device__ T blockSum(T v) {
  __shared__ T warpSums[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xFFFFFFFFu, v, off);
  __syncthreads();
  if (lane == 0) warpSums[warp] = v;
  __syncthreads();
  T r = T(0);
  for (int w = 0; w < nw; ++w) r += warpSums[w];  // same order in every thread
  return r;
}

// Sum of v over all threads with a larger index (threads own bins in increasing order).
template <typename T>
__device__ T blockSuffixExclusive(T v) {
  __shared__ T warpTotals[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  T x = v;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    T y = __shfl_down_sync(0xFFFFFFFFu, x, off);
    if (lane + off < 32) x += y;
  }
  T excl = __shfl_down_sync(0xFFFFFFFFu, x, 1);
  if (lane == 31) excl = T(0);
  __syncthreads();
  if (lane == 0) warpTotals[warp] = x;
  __syncthreads();
  T above = T(0);
  for (int w = nw - 1; w > warp; --w) above += warpTotals[w];
  return above + excl;
}

// ---- radix select over histogram bins --------------------------------------------------

struct Selection {
  int32_t digit;
  float aboveMass;  // mass (or count) of bins above `digit`, plus `base`
  float atMass;     // aboveMass + bin `digit`
  uint32_t aboveCount;
};

// Largest digit d with base + suffix(d) >= target (suffix over hist[d..nbins)); digit 0 when
// none. Works for exact counts and for float masses: each thread tests its own bins and the
// largest qualifying digit wins, so rounding can never yield two answers.
template <typename T>
__device__ Selection selectDigit(const T* hist, int nbins, T target, T base) {
  __shared__ int32_t found;
  __shared__ Selection sel;
  const int per = (nbins + blockDim.x - 1) / blockDim.x;
  const int lo = min(nbins, static_cast<int>(threadIdx.x) * per);
  const int hi = min(nbins, lo + per);
  if (threadIdx.x == 0) found = 0;
  T local = T(0);
  for (int d = lo; d < hi; ++d) local += hist[d];
  const T after = blockSuffixExclusive(local) + base;  // also orders the write of `found`
  T run = after;
  for (int d = hi - 1; d >= lo; --d) {
    run += hist[d];
    if (run >= target) {
      atomicMax(&found, d + 1);
      break;
    }
  }
  __syncthreads();
  const int d = found > 0 ? found - 1 : 0;
  if (d >= lo && d < hi) {
    run = after;
    for (int e = hi - 1; e > d; --e) run += hist[e];
    Selection s;
    s.digit = d;
    s.aboveMass = static_cast<float>(run);
    s.atMass = static_cast<float>(run + hist[d]);
    s.aboveCount = static_cast<uint32_t>(run);
    sel = s;
  }
  __syncthreads();
  return sel;
}

// ---- kernel 1: unfiltered row statistics -----------------------------------------------

struct RowRef {
  int64_t b, i;
  bool isDraft;
};

__device__ __forceinline__ RowRef rowRef(const Args& a, int64_t rowId) {
  const int64_t targetRows = a.batch * (a.numDrafts + 1);
  RowRef r;
  r.isDraft = rowId >= targetRows;
  if (!r.isDraft) {
    r.b = rowId / (a.numDrafts + 1);
    r.i = rowId % (a.numDrafts + 1);
  } else {
    const int64_t k = rowId - targetRows;
    r.b = k / a.numDrafts;
    r.i = k % a.numDrafts;
  }
  return r;
}

__device__ __forceinline__ bool rowNeeded(const Args& a, const RowRef& r, const Request& q) {
  if (!r.isDraft) return r.i <= q.len;
  return a.draftKind == kDraftLogits && q.mode == kModeRejection && r.i < q.len;
}

template <typename T>
__device__ void rowStats(const Args& a, const T* row, int64_t rowId, const Request& q,
                         bool wantSum, bool wantCount, float lx) {
  const int64_t chunk = blockIdx.y;
  const int64_t begin = chunk * a.rowChunkLen;
  const int64_t end = min(a.vocab, begin + a.rowChunkLen);
  const float invT = q.invT;
  Stats st{-INFINITY, INT_MAX, -INFINITY, 0.0f, 0u};
  auto best = [&](int64_t x, float v) {
    if (argmaxBetter(v, static_cast<int32_t>(x), st.bestV, st.bestI)) {
      st.bestV = v;
      st.bestI = static_cast<int32_t>(x);
    }
  };
  if (!wantSum && !wantCount) {
    // Argmax only (greedy rows): one max per vector.
    constexpr int N = Elem<T>::kVec;
    forEachVector(
        row, begin, end, [&](int64_t x, const float(&vals)[N]) { vectorArgmax(x, vals, vectorMax(vals), st.bestV, st.bestI); }, best);
  } else {
    auto one = [&](int64_t x, float v) {
      best(x, v);
      if (wantSum) {
        if (v > st.m) {
          st.s = st.s * __expf((st.m - v) * invT) + 1.0f;
          st.m = v;
        } else if (v > -INFINITY) {
          st.s += __expf((v - st.m) * invT);
        }
      }
      if (wantCount) st.count += v > lx ? 1u : 0u;
    };
    // Per vector: the running max moves (and the sum is rescaled) at most once, then each
    // element costs one fma and one ex2. A vector holding +inf or only NaN takes the element
    // path above, which gives such rows the same statistics as before.
    constexpr int N = Elem<T>::kVec;
    const float c = invT * 1.44269504088896341f;
    forEachVector(
        row, begin, end,
        [&](int64_t x, const float(&vals)[N]) {
          const float vm = vectorMax(vals);
          if (!(vm < INFINITY)) {
#pragma unroll
            for (int j = 0; j < N; ++j) one(x + j, vals[j]);
            return;
          }
          vectorArgmax(x, vals, vm, st.bestV, st.bestI);
          if (wantSum && vm > -INFINITY) {
            if (vm > st.m) {
              st.s = st.s > 0.0f ? st.s * __expf((st.m - vm) * invT) : 0.0f;
              st.m = vm;
            }
            const float mc = st.m * c;
            float add = 0.0f;
#pragma unroll
            for (int j = 0; j < N; ++j) {
              // computed for every element, then selected: a conditional asm would branch
              const float e = exp2Approx(fmaf(vals[j], c, -mc));
              add += vals[j] > -INFINITY ? e : 0.0f;
            }
            st.s += add;
          }
          if (wantCount) {
#pragma unroll
            for (int j = 0; j < N; ++j) st.count += vals[j] > lx ? 1u : 0u;
          }
        },
        one);
  }
  st = blockReduceStats(st, invT);
  if (threadIdx.x == 0) {
    RowRecord rec;
    rec.max = wantSum ? st.m : st.bestV;
    rec.sum = wantSum ? st.s : 0.0f;
    rec.argmax = st.bestI;
    rec.countGreater = st.count;
    rec.tau = 0u;
    rec.pad[0] = rec.pad[1] = rec.pad[2] = 0u;
    a.records[rowId * a.rowChunks + chunk] = rec;
  }
}

template <typename TT, typename TD>
__global__ void __launch_bounds__(kRowThreads) rowStatsKernel(Args a) {
  const int64_t rowId = blockIdx.x;
  const RowRef r = rowRef(a, rowId);
  if (!r.isDraft && r.i == 0 && blockIdx.y == 0 && threadIdx.x == 0) a.counters[r.b] = 0u;
  const Request q = loadRequest(a, r.b);
  if (!rowNeeded(a, r, q) || q.filtered) return;
  if (r.isDraft) {
    const TD* row = static_cast<const TD*>(a.draftData) + (r.b * a.numDrafts + r.i) * a.vocab;
    rowStats<TD>(a, row, rowId, q, true, false, 0.0f);
    return;
  }
  const TT* row = static_cast<const TT*>(a.targetLogits) + rowId * a.vocab;
  const bool hasDraft = r.i < q.len;
  const bool wantSum = q.mode == kModeRejection || (q.mode == kModeRelaxed && hasDraft);
  bool wantCount = false;
  float lx = 0.0f;
  if (q.mode == kModeRelaxed && hasDraft) {
    const int32_t x = a.draftTokens[r.b * a.numDrafts + r.i];
    if (x >= 0 && x < a.vocab) {
      wantCount = true;
      lx = Elem<TT>::load(row + x);
    }
  }
  rowStats<TT>(a, row, rowId, q, wantSum, wantCount, lx);
}

// ---- kernel 2: filtered rows (a cluster of CTAs per row) --------------------------------

// Top-k's candidates: when the keys in or above the top-k digit of the first pass number at
// most kCandidates, the later passes run over those values (shared memory) instead of the row.
constexpr int kCandidates = 2048;
// At most this many candidates: the thresholds come from each candidate's rank, by direct
// comparison with every other (the CPU reference's sorted walk), instead of histogram digits.
constexpr int kDirectCandidates = 256;
// The most CTAs that split one row (a portable cluster size).
constexpr int kMaxFilterSplit = 8;

struct FilterShared {
  uint32_t hist[kBins];    // this CTA's histogram: counts, or f32 mass bits
  uint32_t merged[kBins];  // the cluster's histogram (slices summed in rank order)
  float cand[kCandidates];  // this CTA's top-k candidates
  float all[kCandidates];   // every rank's candidates, in rank order (rank 0 of a split row)
  int32_t listed[kFilterThreads];
  uint32_t scalar[2];                        // this CTA's share of a meeting
  uint32_t scalars[kMaxFilterSplit][2];      // every rank's, as read at the last meeting
  int32_t warpCount[kFilterThreads / 32];
  int32_t numCand;
  uint32_t directKey;  // the direct path's thresholds
  float directMass;
};

// The max of a vector that is NaN when any element is NaN.
template <int N>
__device__ __forceinline__ float vectorMaxNaN(const float (&vals)[N]) {
  float m = vals[0];
#pragma unroll
  for (int j = 1; j < N; ++j) asm("max.NaN.f32 %0, %0, %1;" : "+f"(m) : "f"(vals[j]));
  return m;
}

// The CTAs of a cluster that share a row. At a meeting every CTA has filled `hist` (and
// `scalar`); then each rank sums its slice of the bins over all ranks, and every rank gathers the
// slices, so all hold the same histogram bits and take the same decisions. The two cluster
// barriers order each buffer's reuse: `hist` and `scalar` are read only between them, a slice
// of `merged` is rewritten only after the next meeting's first barrier.
struct Team {
  FilterShared& sh;
  int rank, size;

  template <typename H>
  __device__ const H* meet(int nb) {
    if (size == 1) return local<H>();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    if (threadIdx.x < 2 * size) {
      const int r = threadIdx.x >> 1, j = threadIdx.x & 1;
      sh.scalars[r][j] = cluster.map_shared_rank(sh.scalar, r)[j];
    }
    const int per = nb / size;  // nb is 256 or 4096, size a power of two up to 8
    for (int i = threadIdx.x; i < per; i += blockDim.x) {
      const int d = rank * per + i;
      H s = H(0);
      for (int r0 = 0; r0 < size; r0 += 4) {  // four loads in flight, added in rank order
        H v[4];
#pragma unroll
        for (int r = 0; r < 4; ++r)
          if (r0 + r < size) v[r] = reinterpret_cast<const H*>(cluster.map_shared_rank(sh.hist, r0 + r))[d];
#pragma unroll
        for (int r = 0; r < 4; ++r)
          if (r0 + r < size) s += v[r];
      }
      sh.merged[d] = reinterpret_cast<const uint32_t&>(s);
    }
    cluster.sync();
    for (int d = threadIdx.x; d < nb; d += blockDim.x) {
      const int owner = d / per;
      if (owner != rank) sh.merged[d] = cluster.map_shared_rank(sh.merged, owner)[d];
    }
    __syncthreads();
#else
    __trap();  // the host splits rows only where clusters exist
#endif
    return reinterpret_cast<const H*>(sh.merged);
  }

  // A histogram this CTA built alone.
  template <typename H>
  __device__ const H* local() {
    __syncthreads();
    return reinterpret_cast<const H*>(sh.hist);
  }

  // Rank r's scalars at the last meeting (a lone CTA's own, which it rewrites only at the next
  // row's first pass).
  __device__ const uint32_t* scalarsOf(int r) const { return size == 1 ? sh.scalar : sh.scalars[r]; }

  // No CTA may exit while another can still read its shared memory.
  __device__ void leave() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (size > 1) cooperative_groups::this_cluster().sync();
#endif
  }
};

// kLoads: vector loads in flight per thread in the row passes (a split row's part is a few
// vectors per thread; four would not fit its CTA's 64 registers next to the meetings).
template <int kLoads, typename T>
__device__ __forceinline__ void filterRow(const Args& a, const T* row, int64_t rowId, const Request& q, Team& t) {
  FilterShared& sh = t.sh;
  const int64_t V = a.vocab;
  // this CTA's part of the row: whole 16-byte vectors, empty for the last ranks of a short row
  const int64_t len = ((V + t.size - 1) / t.size + 7) / 8 * 8;
  const int64_t begin = min(V, t.rank * len);
  const T* part0 = row + begin;  // indices below are relative to part0, argmax's absolute
  const int64_t count = min(V - begin, len);
  const float invT = q.invT;
  const bool useK = q.topK > 0 && static_cast<int64_t>(q.topK) < V;
  const bool useP = q.topP < 1.0f;
  constexpr int kLevels = sizeof(T) == 4 ? 3 : 2;
  // Digit l covers key bits [shift(l), shift(l) + bits(l)); 16-bit sources are exact after two
  // digits because all keys sharing the top 24 bits are the same value.
  auto shiftOf = [](int l) { return l == 0 ? 20 : (l == 1 ? 8 : 0); };
  auto bitsOf = [](int l) { return l == 2 ? 8 : 12; };
  const int lastShift = shiftOf(kLevels - 1);

  uint32_t* counts = sh.hist;
  if (useK)
    for (int d = threadIdx.x; d < kBins; d += blockDim.x) counts[d] = 0u;
  __syncthreads();

  Stats st{-INFINITY, INT_MAX, -INFINITY, 0.0f, 0u};
  auto one = [&](int64_t x, float v) {
    if (argmaxBetter(v, static_cast<int32_t>(begin + x), st.bestV, st.bestI)) {
      st.bestV = v;
      st.bestI = static_cast<int32_t>(begin + x);
    }
    if (useK) atomicAdd(&counts[orderKey(v) >> 20], 1u);
  };
  constexpr int N = Elem<T>::kVec;
  forEachVector<kLoads>(
      part0, 0, count,
      [&](int64_t x, const float(&vals)[N]) {
        vectorArgmax(begin + x, vals, vectorMax(vals), st.bestV, st.bestI);
        if (useK) {
#pragma unroll
          for (int j = 0; j < N; ++j) atomicAdd(&counts[orderKey(vals[j]) >> 20], 1u);
        }
      },
      one);
  st = blockReduceStats(st, invT);
  if (threadIdx.x == 0) {
    sh.scalar[0] = __float_as_uint(st.bestV);
    sh.scalar[1] = static_cast<uint32_t>(st.bestI);
  }
  const uint32_t* top = t.meet<uint32_t>(useK ? kBins : 0);
  float m = -INFINITY;
  int32_t mArg = INT_MAX;
  for (int r = 0; r < t.size; ++r) {
    const float v = __uint_as_float(t.scalarsOf(r)[0]);
    const int32_t i = static_cast<int32_t>(t.scalarsOf(r)[1]);
    if (argmaxBetter(v, i, m, mArg)) {
      m = v;
      mArg = i;
    }
  }

  // The values the later passes visit: this CTA's part of the row, or every top-k candidate of
  // the row (then this CTA holds them all, and its histograms need no meeting).
  const float* cands = nullptr;
  int nCand = 0;
  bool alone = t.size == 1;
  auto forValues = [&](auto&& f) {
    if (cands) {
      for (int i = threadIdx.x; i < nCand; i += blockDim.x) f(cands[i]);
    } else {
      forEachElement<kLoads>(part0, 0, count, [&](int64_t, float v) { f(v); });
    }
  };

  uint32_t tau = 0u;
  if (useK) {
    uint32_t kRem = static_cast<uint32_t>(q.topK);
    uint32_t prefix = 0u;
    const uint32_t* hist = top;
    for (int l = 0; l < kLevels; ++l) {
      const int sh0 = shiftOf(l), bits = bitsOf(l), nb = 1 << bits;
      if (l > 0) {
        for (int d = threadIdx.x; d < nb; d += blockDim.x) sh.hist[d] = 0u;
        __syncthreads();
        const uint32_t want = prefix;
        forValues([&](float v) {
          const uint32_t k = orderKey(v);
          if ((k >> (sh0 + bits)) == want) atomicAdd(&sh.hist[(k >> sh0) & (nb - 1)], 1u);
        });
        hist = alone ? t.local<uint32_t>() : t.meet<uint32_t>(nb);
      }
      const Selection s = selectDigit<uint32_t>(hist, nb, kRem, 0u);
      const bool collect = l == 0 && s.aboveCount + hist[s.digit] <= static_cast<uint32_t>(kCandidates);
      __syncthreads();  // every thread has read hist, which the next phase may rewrite
      if (collect) {
        // every key the rest can keep has a top digit >= s.digit: collect those values once
        // (a vector whose largest value is below that digit holds none; NaN keys are tested)
        const uint32_t d0 = static_cast<uint32_t>(s.digit);
        if (threadIdx.x == 0) sh.numCand = 0;
        __syncthreads();
        auto keep = [&](float v) {
          if ((orderKey(v) >> 20) >= d0) sh.cand[atomicAdd(&sh.numCand, 1)] = v;
        };
        forEachVector<kLoads>(
            part0, 0, count,
            [&](int64_t, const float(&vals)[N]) {
              const float vm = vectorMaxNaN(vals);
              if (vm == vm && (orderKey(vm) >> 20) < d0) return;
#pragma unroll
              for (int j = 0; j < N; ++j) keep(vals[j]);
            },
            [&](int64_t, float v) { keep(v); });
        __syncthreads();
        nCand = sh.numCand;
        cands = sh.cand;
        if (!alone) {
          // rank 0 takes every rank's candidates and finishes the row alone
          if (threadIdx.x == 0) sh.scalar[0] = static_cast<uint32_t>(nCand);
          t.meet<uint32_t>(0);
          if (t.rank != 0) return;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
          namespace cg = cooperative_groups;
          cg::cluster_group cluster = cg::this_cluster();
          int at = 0;
          for (int r = 0; r < t.size; ++r) {
            const int c = static_cast<int>(t.scalarsOf(r)[0]);
            const float* theirs = cluster.map_shared_rank(sh.cand, r);
            for (int i = threadIdx.x; i < c; i += blockDim.x) sh.all[at + i] = theirs[i];
            at += c;
          }
          nCand = at;
#endif
          __syncthreads();
          cands = sh.all;
          alone = true;
        }
        if (nCand <= kDirectCandidates) break;
      }
      kRem -= s.aboveCount;
      prefix = (prefix << bits) | static_cast<uint32_t>(s.digit);
    }
    tau = prefix << lastShift;
  }

  float z = 0.0f;
  if (cands && nCand <= kDirectCandidates) {
    // Few candidates (every value top-k can keep): thread i takes candidate i and compares it
    // with all of them, in index order. Top-k's threshold is the key with fewer than k keys
    // above it and at least k at or above; top-p's the largest key whose mass at or above
    // reaches the target.
    const int i = threadIdx.x;
    const bool mine = i < nCand;
    const float vi = mine ? cands[i] : 0.0f;
    const uint32_t ki = mine ? orderKey(vi) : 0u;
    float* wts = cands == sh.cand ? sh.all : sh.cand;
    // first: no candidate before i has i's key (equal keys have equal results: one writes)
    bool first = true;
    uint32_t tk = 0u;
    if (useK) {
      uint32_t above = 0u, atOrAbove = 0u;
      if (mine) {
        for (int j = 0; j < nCand; ++j) {
          const uint32_t kj = orderKey(cands[j]);
          above += kj > ki ? 1u : 0u;
          atOrAbove += kj >= ki ? 1u : 0u;
          first = first && !(j < i && kj == ki);
        }
        const uint32_t k = static_cast<uint32_t>(q.topK);
        if (first && above < k && k <= atOrAbove) sh.directKey = ki;
      }
      __syncthreads();
      tk = sh.directKey;
    }
    const float wi = mine && ki >= tk ? weightOf(vi, m, invT) : 0.0f;
    if (mine) wts[i] = wi;
    const float zk = blockSum(wi);  // its barriers also publish wts
    tau = tk;
    z = zk;
    if (useP) {
      const float target = q.topP * zk;
      if (threadIdx.x == 0) {
        sh.directKey = 0u;
        sh.directMass = zk;  // the target never reached (rounding): top-k's set stays
      }
      __syncthreads();
      float si = 0.0f;
      if (mine && ki >= tk) {
        for (int j = 0; j < nCand; ++j)
          if (orderKey(cands[j]) >= ki) si += wts[j];
        if (si >= target) atomicMax(&sh.directKey, ki);
      }
      __syncthreads();
      const uint32_t tp = sh.directKey;
      if (tp != 0u && mine && first && ki == tp) sh.directMass = si;
      __syncthreads();
      tau = max(tk, tp);
      z = sh.directMass;
    }
  } else if (useP) {
    uint32_t prefix = 0u;
    float above = 0.0f, target = 0.0f;
    for (int l = 0; l < kLevels; ++l) {
      const int sh0 = shiftOf(l), bits = bitsOf(l), nb = 1 << bits;
      float* mass = reinterpret_cast<float*>(sh.hist);
      for (int d = threadIdx.x; d < nb; d += blockDim.x) mass[d] = 0.0f;
      __syncthreads();
      const uint32_t want = prefix;
      forValues([&](float v) {
        const uint32_t k = orderKey(v);
        if (k >= tau && (l == 0 || (k >> (sh0 + bits)) == want))
          atomicAdd(&mass[(k >> sh0) & (nb - 1)], weightOf(v, m, invT));
      });
      const float* hist = alone ? t.local<float>() : t.meet<float>(nb);
      if (l == 0) {
        float local = 0.0f;
        for (int d = threadIdx.x; d < nb; d += blockDim.x) local += hist[d];
        target = q.topP * blockSum(local);
      }
      const Selection s = selectDigit<float>(hist, nb, target, above);
      above = s.aboveMass;
      z = s.atMass;
      prefix = (prefix << bits) | static_cast<uint32_t>(s.digit);
    }
    tau = max(tau, prefix << lastShift);
  } else {
    float local = 0.0f;
    const uint32_t k0 = tau;
    forValues([&](float v) {
      if (orderKey(v) >= k0) local += weightOf(v, m, invT);
    });
    z = blockSum(local);
    if (!alone) {
      if (threadIdx.x == 0) sh.scalar[0] = __float_as_uint(z);
      t.meet<uint32_t>(0);
      z = 0.0f;
      for (int r = 0; r < t.size; ++r) z += __uint_as_float(t.scalarsOf(r)[0]);
    }
  }

  if (t.rank == 0) {
    for (int64_t c = threadIdx.x; c < a.rowChunks; c += blockDim.x) {
      RowRecord rec;
      rec.max = c == 0 ? m : -INFINITY;
      rec.sum = c == 0 ? z : 0.0f;
      rec.argmax = c == 0 ? mArg : INT_MAX;
      rec.countGreater = 0u;
      rec.tau = c == 0 ? tau : 0u;
      rec.pad[0] = rec.pad[1] = rec.pad[2] = 0u;
      a.records[rowId * a.rowChunks + c] = rec;
    }
  }
}

// A grid of clusters, about one CTA per SM, walks the rows (cluster c: rows c, c + clusters,
// ...): its threads list the filtered ones in row order, then the cluster filters those one
// after the other, each CTA of the cluster reading its part of the row. A small batch gets
// clusters of up to kMaxFilterSplit CTAs, so that B = 1 does not wait on four SMs.
// kSplit: compiled apart, so that a lone CTA per row (large batches) keeps its registers for
// the row passes.
template <typename TT, typename TD, bool kSplit>
__global__ void __launch_bounds__(kFilterThreads, 1) filterRowKernel(Args a, int64_t rows, int split) {
  extern __shared__ uint4 filterSmem[];
  FilterShared& sh = *reinterpret_cast<FilterShared*>(filterSmem);
  if (!kSplit) split = 1;
  Team t{sh, static_cast<int>(blockIdx.x) % split, split};
  constexpr int kLoads = kSplit ? 2 : 4;
  const int64_t cluster = blockIdx.x / split, clusters = gridDim.x / split;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t m0 = 0; cluster + clusters * m0 < rows; m0 += kFilterThreads) {
    // every CTA of the cluster lists the same rows in the same order: no atomics here
    const int64_t rowId = cluster + clusters * (m0 + threadIdx.x);
    bool want = false;
    if (rowId < rows) {
      const RowRef r = rowRef(a, rowId);
      const Request q = loadRequest(a, r.b);
      want = rowNeeded(a, r, q) && q.filtered;
    }
    const uint32_t ballot = __ballot_sync(0xFFFFFFFFu, want);
    if (lane == 0) sh.warpCount[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, n = 0;
    for (int w = 0; w < kFilterThreads / 32; ++w) {
      before += w < warp ? sh.warpCount[w] : 0;
      n += sh.warpCount[w];
    }
    if (want) sh.listed[before + __popc(ballot & ((1u << lane) - 1u))] = static_cast<int32_t>(rowId);  // rows < 2^31: a grid dimension
    __syncthreads();
    for (int i = 0; i < n; ++i) {
      const int64_t id = sh.listed[i];
      const RowRef r = rowRef(a, id);
      const Request q = loadRequest(a, r.b);
      auto draftRow = [&] { return static_cast<const TD*>(a.draftData) + (r.b * a.numDrafts + r.i) * a.vocab; };
      const TT* targetRow = static_cast<const TT*>(a.targetLogits) + id * a.vocab;
      if constexpr (std::is_same_v<TT, TD>) {
        filterRow<kLoads>(a, r.isDraft ? draftRow() : targetRow, id, q, t);  // one copy of the code
      } else {
        if (r.isDraft)
          filterRow<kLoads>(a, draftRow(), id, q, t);
        else
          filterRow<kLoads>(a, targetRow, id, q, t);
      }
      __syncthreads();  // the shared buffers are the next row's
    }
  }
  t.leave();
}

// ---- kernel 3: decision, sample, outputs -------------------------------------------------

struct Merged {
  float m, z;
  int32_t argmax;
  uint32_t countGreater, tau;
};

// Warp-wide merge of one row's chunk records; every lane returns lane 0's result.
__device__ Merged mergeRow(const Args& a, int64_t rowId, float invT) {
  const int lane = threadIdx.x & 31;
  Stats st{-INFINITY, INT_MAX, -INFINITY, 0.0f, 0u};
  uint32_t tau = 0u;
  for (int64_t c = lane; c < a.rowChunks; c += 32) {
    const RowRecord rec = a.records[rowId * a.rowChunks + c];
    Stats o{rec.max, rec.argmax, rec.max, rec.sum, rec.countGreater};
    combineStats(st, o, invT);
    tau = max(tau, rec.tau);
  }
  st = warpReduceStats(st, invT);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) tau = max(tau, __shfl_down_sync(0xFFFFFFFFu, tau, off));
  Merged r;
  r.m = __shfl_sync(0xFFFFFFFFu, st.m, 0);
  r.z = __shfl_sync(0xFFFFFFFFu, st.s, 0);
  const int32_t am = __shfl_sync(0xFFFFFFFFu, st.bestI, 0);
  r.argmax = am == INT_MAX ? 0 : am;
  r.countGreater = __shfl_sync(0xFFFFFFFFu, st.count, 0);
  r.tau = __shfl_sync(0xFFFFFFFFu, tau, 0);
  return r;
}

struct Decision {
  int32_t accepted;  // position j of the emitted token
  int32_t token;     // emitted token, or the fallback when sampling finds nothing
  int32_t sample;    // 1: sample from row j
  int32_t exclude;   // one-hot residual: token removed from the sample
  int32_t qKind;     // draft distribution subtracted in the sample
  int32_t state;     // thinking state before the emitted token
  int32_t beginId, endId;
  float invT, mP, zP, mQ, zQ;
  uint32_t tauP, tauQ;
  uint64_t seed, offset;
};

// What the walk over the drafts needs of draft position j, computed for a window of positions
// at once (one warp each), so that the loads of the rows' records and the drafts' logits are in
// flight together instead of one position after another.
struct DraftStep {
  Merged p;           // target row j
  Merged q;           // draft-logit row j (rejection with draft logits)
  int32_t x;          // draft token j
  int32_t accept;     // the draft is accepted (relaxed: by the argmax alone)
  int32_t relaxedOk;  // relaxed: accepted in the thinking phase
};

// Called by every thread of the CTA; dec is complete after the CTA's next barrier.
template <typename TT, typename TD>
__device__ void decide(const Args& a, int64_t b, Decision& dec) {
  constexpr int kWindow = kVerifyThreads / 32;
  __shared__ DraftStep win[kWindow];
  __shared__ int32_t walkDone, walkState;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const Request q = loadRequest(a, b);
  const int64_t n = a.numDrafts, V = a.vocab;
  const Walk w = loadWalk(a, b);
  const int32_t kind = a.draftData ? a.draftKind : kDraftNone;
  const int32_t* drafts = a.draftTokens + b * n;
  const int64_t targetRows = a.batch * (n + 1);
  const bool useQ = q.mode == kModeRejection && kind == kDraftLogits;
  if (threadIdx.x == 0) walkState = w.state;

  for (int32_t j0 = 0;; j0 += kWindow) {
    const int32_t jj = j0 + warp;
    if (jj <= q.len) {
      DraftStep s{};
      s.p = mergeRow(a, b * (n + 1) + jj, q.invT);
      if (useQ && jj < q.len) s.q = mergeRow(a, targetRows + b * n + jj, q.invT);
      s.x = -1;
      if (lane == 0 && jj < q.len) {
        const int32_t x = drafts[jj];
        s.x = x;
        if (x >= 0 && x < V) {
          const int64_t rowBase = (b * (n + 1) + jj) * V;
          if (q.mode == kModeGreedy) {
            s.accept = x == s.p.argmax;
          } else if (q.mode == kModeRelaxed) {
            s.accept = x == s.p.argmax;
            if (!s.accept) {
              const float lx = loadAt<TT>(a.targetLogits, rowBase + x);
              s.relaxedOk = relaxedAccepts(static_cast<int64_t>(s.p.countGreater), w.relaxedTopK, lx, s.p.m, s.p.z, w.relaxedDelta);
            }
          } else {
            const float lx = loadAt<TT>(a.targetLogits, rowBase + x);
            const float px = keptProb(lx, s.p.tau, s.p.m, q.invT, s.p.z);
            float qx = 1.0f;
            const int64_t dIdx = (b * n + jj) * V + x;
            if (kind == kDraftProbs) {
              qx = loadAt<TD>(a.draftData, dIdx);
            } else if (kind == kDraftLogits) {
              const float dx = loadAt<TD>(a.draftData, dIdx);
              qx = keptProb(dx, s.q.tau, s.q.m, q.invT, s.q.z);
            }
            s.accept = rejectionAccepts(w.seed, w.offset, jj, px, qx);
          }
        }
      }
      if (lane == 0) win[warp] = s;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      // the walk: accept in order until a draft is rejected or the drafts end
      int32_t state = walkState, j = j0, done = 0;
      for (; j < j0 + kWindow; ++j) {
        if (j == q.len) {
          done = 1;
          break;
        }
        const DraftStep& s = win[j - j0];
        const int32_t accept = s.accept || (q.mode == kModeRelaxed && state && s.relaxedOk);
        if (!accept) {
          done = 1;
          break;
        }
        state = updateThinking(state, s.x, w.beginId, w.endId);
      }
      walkDone = done;
      walkState = state;
      if (done) {
        const DraftStep& s = win[j - j0];
        dec.accepted = j;
        dec.token = s.p.argmax;
        dec.sample = q.mode == kModeRejection ? 1 : 0;
        dec.exclude = (j < q.len && kind == kDraftNone) ? s.x : -1;
        dec.qKind = j < q.len ? kind : kDraftNone;
        dec.state = state;
        dec.beginId = w.beginId;
        dec.endId = w.endId;
        dec.invT = q.invT;
        dec.mP = s.p.m;
        dec.zP = s.p.z;
        dec.tauP = s.p.tau;
        if (useQ && j < q.len) {
          dec.mQ = s.q.m;
          dec.zQ = s.q.z;
          dec.tauQ = s.q.tau;
        }
        dec.seed = w.seed;
        dec.offset = w.offset;
      }
    }
    __syncthreads();
    if (walkDone) return;
  }
}

__device__ void writeOutputs(const Args& a, int64_t b, const Decision& dec, int32_t token) {
  const int64_t n = a.numDrafts;
  const int32_t j = dec.accepted;
  for (int64_t i = threadIdx.x; i <= n; i += blockDim.x)
    a.outTokens[b * (n + 1) + i] = outputToken(i, j, a.draftTokens + b * n, token);
  if (a.outAcceptMask)
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) a.outAcceptMask[b * n + i] = i < j ? 1 : 0;
  if (threadIdx.x == 0) {
    a.outNumAccepted[b] = j + 1;
    if (a.outInThinking) a.outInThinking[b] = updateThinking(dec.state, token, dec.beginId, dec.endId);
  }
}

// The eight consecutive elements x0 .. x0 + 7 of a row as floats (16-byte loads where the row
// allows them); n of them exist (n < 8 at the row's end only).
template <typename T>
__device__ __forceinline__ void loadEight(const T* __restrict__ row, int64_t x0, int64_t n, bool vec, float (&v)[8]) {
  if (vec && n == 8) {
    constexpr int N = Elem<T>::kVec;
    const uint4* p = reinterpret_cast<const uint4*>(row + x0);
#pragma unroll
    for (int u = 0; u < 8 / N; ++u) {
      auto put = [&](int64_t j, float x) { v[u * N + j] = x; };
      Elem<T>::unpack(__ldg(p + u), 0, put);
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = j < n ? Elem<T>::load(row + x0 + j) : 0.0f;
}

// Inclusive prefix sum over a warp's lanes.
__device__ __forceinline__ uint64_t warpInclusive(uint64_t v, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const uint64_t y = __shfl_up_sync(0xFFFFFFFFu, v, off);
    if (lane >= off) v += y;
  }
  return v;
}

template <typename TT, typename TD>
__global__ void __launch_bounds__(kVerifyThreads) verifyKernel(Args a) {
  __shared__ Decision dec;
  __shared__ int32_t isLast;
  const int64_t b = blockIdx.x;
  const int64_t chunk = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  constexpr int kWarps = kVerifyThreads / 32;
  // only rejection samples: the other chunks of any other request have nothing to do
  if (chunk > 0 && loadRequest(a, b).mode != kModeRejection) return;
  decide<TT, TD>(a, b, dec);
  if (!dec.sample) {
    if (chunk == 0) writeOutputs(a, b, dec, dec.token);
    return;
  }

  const int64_t n = a.numDrafts, V = a.vocab;
  const int32_t j = dec.accepted;
  const TT* row = static_cast<const TT*>(a.targetLogits) + (b * (n + 1) + j) * V;
  const bool vec = reinterpret_cast<uintptr_t>(row) % 16 == 0;
  const int64_t draftBase = (b * n + j) * V;
  const float invT = dec.invT, mP = dec.mP, zP = dec.zP, mQ = dec.mQ, zQ = dec.zQ;
  const uint32_t tauP = dec.tauP, tauQ = dec.tauQ;
  const int32_t qKind = dec.qKind, exclude = dec.exclude;
  const float scale = sampleScale(sampleShift(V));
  const int64_t steps = (V + kStep - 1) / kStep;
  uint64_t* sums = a.stepSums + b * steps;
  // W(x) of logit v: the CPU reference's weight, in fixed point (common/mtp_rules.h); one-hot
  // and bonus rows only. In a filtered row nearly every value lies below the threshold and
  // returns early; an unfiltered row computes every weight without a branch.
  auto weight = [&](int64_t x, float v, auto filtered) -> uint64_t {
    if constexpr (!decltype(filtered)::value) {
      return sampleWeight(v, mP, invT, x != exclude, scale);
    } else {
      if (orderKey(v) < tauP) return 0ull;
      return fixedWeight(x == exclude ? 0.0f : weightOf(v, mP, invT), scale);
    }
  };
  // lane's part of step s: its eight elements (cnt of them exist), then their weights (into wt,
  // when given) and the weights' sum
  auto loadStep = [&](int64_t s, float(&v)[8]) -> int64_t {
    const int64_t x0 = s * kStep + lane * 8;
    const int64_t cnt = x0 < V ? min(int64_t{8}, V - x0) : 0;
    loadEight<TT>(row, x0, cnt, vec, v);
    return cnt;
  };
  auto weighStep = [&](int64_t s, const float(&v)[8], int64_t cnt, uint64_t* wt, auto filtered) -> uint64_t {
    const int64_t x0 = s * kStep + lane * 8;
    uint64_t sum = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      const uint64_t wk = weight(x0 + k, v[k], filtered);
      const uint64_t w = k < cnt ? wk : 0ull;
      if (wt) wt[k] = w;
      sum += w;
    }
    return sum;
  };
  auto storeStep = [&](int64_t s, uint64_t sum) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, off);
    if (lane == 0) sums[s] = sum;
  };

  const int64_t s0 = chunk * a.verifyChunkLen / kStep;
  const int64_t s1 = min(steps, (chunk + 1) * a.verifyChunkLen / kStep);
  if (qKind != kDraftNone) {
    // The residual max(0, p - q) against a draft: its weights depend on the float normalizer zP,
    // which the backends sum in different orders, so it is sampled by an exponential race (each
    // token's own score: an ulp of zP moves no prefix-sum boundary). A chunk's winner goes to
    // partials.
    const uint32_t k0 = static_cast<uint32_t>(dec.seed), k1 = static_cast<uint32_t>(dec.seed >> 32);
    const uint32_t c2 = static_cast<uint32_t>(dec.offset), c3 = static_cast<uint32_t>(dec.offset >> 32);
    float best = 0.0f;
    int32_t bestIdx = INT_MAX;
    uint32_t cachedGroup = 0xFFFFFFFFu;
    Philox4 words{{0u, 0u, 0u, 0u}};
    forEachElement(row, s0 * kStep, min(V, s1 * kStep), [&](int64_t x, float v) {
      if (orderKey(v) < tauP) return;
      const float dv = loadAt<TD>(a.draftData, draftBase + x);
      const float qv = qKind == kDraftProbs ? dv : keptProb(dv, tauQ, mQ, invT, zQ);
      const float w = weightOf(v, mP, invT) / zP - qv;
      if (!(w > 0.0f) || w * kRaceBound < best) return;
      const uint32_t group = static_cast<uint32_t>(x) >> 2;
      if (group != cachedGroup) {
        cachedGroup = group;
        words = philox4x32_10(group, static_cast<uint32_t>(j), c2, c3, k0, k1);
      }
      const float sc = w / exponentialFromWord(philoxWordAt(words, static_cast<uint32_t>(x)));
      if (sc > best || (sc == best && sc > 0.0f && x < bestIdx)) {
        best = sc;
        bestIdx = static_cast<int32_t>(x);
      }
    });
    Stats st{best, bestIdx, -INFINITY, 0.0f, 0u};
    st = blockReduceStats(st, 1.0f);
    if (threadIdx.x == 0) a.partials[b * a.verifyChunks + chunk] = RacePartial{st.bestV, st.bestI};
  } else {
    // Each warp sums the steps w, w + 8, ... of this chunk, two steps' loads in flight; lane 0
    // stores each step's sum. The filter decides the loop once, not per element.
    auto sumSteps = [&](auto filtered) {
      for (int64_t s = s0 + warp; s < s1; s += 2 * kWarps) {
        const bool two = s + kWarps < s1;
        float v0[8], v1[8];
        const int64_t c0 = loadStep(s, v0);
        const int64_t c1 = two ? loadStep(s + kWarps, v1) : 0;
        storeStep(s, weighStep(s, v0, c0, nullptr, filtered));
        if (two) storeStep(s + kWarps, weighStep(s + kWarps, v1, c1, nullptr, filtered));
      }
    };
    if (tauP == 0u)
      sumSteps(std::false_type{});
    else
      sumSteps(std::true_type{});
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const uint32_t prev = atomicAdd(&a.counters[b], 1u);
    isLast = prev == static_cast<uint32_t>(a.verifyChunks - 1) ? 1 : 0;
  }
  __syncthreads();
  if (!isLast) return;
  __threadfence();

  __shared__ int32_t winner;
  if (qKind != kDraftNone) {
    // the last CTA: the chunk winners, merged in chunk order
    if (threadIdx.x == 0) {
      float bs = 0.0f;
      int32_t bi = INT_MAX;
      for (int64_t c = 0; c < a.verifyChunks; ++c) {
        const float sc = __ldcg(&a.partials[b * a.verifyChunks + c].score);
        const int32_t i = __ldcg(&a.partials[b * a.verifyChunks + c].index);
        if (sc > 0.0f && (sc > bs || (sc == bs && i < bi))) {
          bs = sc;
          bi = i;
        }
      }
      winner = bi == INT_MAX ? dec.token : bi;
    }
    __syncthreads();
    writeOutputs(a, b, dec, winner);
    return;
  }

  // The last CTA: Z, the draw U, the step whose prefix range holds U (each thread scans a
  // contiguous group of step sums), then that step's element in warp 0.
  __shared__ uint64_t warpTotal[kWarps];
  __shared__ uint64_t rest;
  __shared__ int64_t stepAt;
  const int64_t per = (steps + kVerifyThreads - 1) / kVerifyThreads;
  const int64_t g0 = min(steps, threadIdx.x * per), g1 = min(steps, g0 + per);
  uint64_t mine = 0;
  for (int64_t s = g0; s < g1; ++s) mine += __ldcg(&sums[s]);
  const uint64_t incl = warpInclusive(mine, lane);
  if (lane == 31) warpTotal[warp] = incl;
  if (threadIdx.x == 0) winner = dec.token;  // every weight 0: the argmax
  __syncthreads();
  uint64_t before = incl - mine, z = 0;
  for (int w = 0; w < kWarps; ++w) {
    before += w < warp ? warpTotal[w] : 0ull;
    z += warpTotal[w];
  }
  if (z != 0) {
    const uint64_t u = drawBelow(sampleDraw(dec.seed, dec.offset, static_cast<uint32_t>(j)), z);
    if (u >= before && u - before < mine) {  // exactly one thread: the group that holds u
      uint64_t r = u - before;
      int64_t s = g0;
      for (uint64_t w; r >= (w = __ldcg(&sums[s])); ++s) r -= w;
      stepAt = s;
      rest = r;
    }
  }
  __syncthreads();
  if (z != 0 && warp == 0) {
    uint64_t wt[8];
    float v[8];
    const int64_t cnt = loadStep(stepAt, v);
    const uint64_t sum = weighStep(stepAt, v, cnt, wt, std::true_type{});
    const uint64_t in = warpInclusive(sum, lane);
    const uint64_t r = rest;
    if (r >= in - sum && r < in) {
      uint64_t left = r - (in - sum);
      int k = 0;
      while (left >= wt[k]) left -= wt[k++];
      winner = static_cast<int32_t>(stepAt * kStep + lane * 8 + k);
    }
  }
  __syncthreads();
  writeOutputs(a, b, dec, winner);
}

// Kernel 2's grid: clusters of `split` CTAs, about one CTA per SM. A batch of few rows splits
// each row over up to kMaxFilterSplit CTAs (clusters exist from sm_90 on).
template <typename TT, typename TD>
cudaError_t launchFilter(const Args& a, int64_t rows, const DeviceFacts& facts, cudaStream_t stream) {
  const int sms = std::max(1, facts.multiprocessors);
  int split = 1;
  if (facts.hopper)
    while (split < kMaxFilterSplit && rows * split * 2 <= sms) split *= 2;
  const int64_t clusters = std::min<int64_t>(rows, std::max(1, sms / split));
  const auto kernel = split > 1 ? filterRowKernel<TT, TD, true> : filterRowKernel<TT, TD, false>;
  // the shared-memory allowance belongs to the current device's context: set at each launch
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, sizeof(FilterShared));
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(static_cast<unsigned>(clusters * split));
  cfg.blockDim = dim3(kFilterThreads);
  cfg.dynamicSmemBytes = sizeof(FilterShared);
  cfg.stream = stream;
  cudaLaunchAttribute cluster[1];
  cluster[0].id = cudaLaunchAttributeClusterDimension;
  cluster[0].val.clusterDim.x = static_cast<unsigned>(split);
  cluster[0].val.clusterDim.y = 1;
  cluster[0].val.clusterDim.z = 1;
  cfg.attrs = cluster;
  cfg.numAttrs = split > 1 ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, a, rows, split);
}

template <typename TT, typename TD>
cudaError_t launchAll(const Args& a, const DeviceFacts& facts, cudaStream_t stream) {
  const int64_t targetRows = a.batch * (a.numDrafts + 1);
  const int64_t draftRows = a.draftKind == kDraftLogits ? a.batch * a.numDrafts : 0;
  const int64_t rows = targetRows + draftRows;
  rowStatsKernel<TT, TD><<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(a.rowChunks)),
                           kRowThreads, 0, stream>>>(a);
  // without top-k and top-p arrays no row is filtered: kernel 2 would only read the requests
  if (a.topK != nullptr || a.topP != nullptr) {
    const cudaError_t err = launchFilter<TT, TD>(a, rows, facts, stream);
    if (err != cudaSuccess) return err;
  }
  verifyKernel<TT, TD><<<dim3(static_cast<unsigned>(a.batch), static_cast<unsigned>(a.verifyChunks)),
                         kVerifyThreads, 0, stream>>>(a);
  return cudaSuccess;
}

template <typename TT>
cudaError_t dispatchDraft(const Args& a, DType draftDType, const DeviceFacts& facts, cudaStream_t stream) {
  if (a.draftKind == kDraftNone) return launchAll<TT, TT>(a, facts, stream);
  switch (draftDType) {
    case DType::F32: return launchAll<TT, float>(a, facts, stream);
    case DType::F16: return launchAll<TT, __half>(a, facts, stream);
    case DType::BF16: return launchAll<TT, __nv_bfloat16>(a, facts, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t verifyDrafts(const VerifyDraftsArgs& args, const Launch& l) {
  // validate() has checked dtypes, sizes and pointers. The plan keeps every grid within limits:
  // at most kRowCtaTarget row chunks and kVerifyCtaTarget verify chunks, and B * (2n + 1) rows.
  if (args.batch == 0) return cudaSuccess;
  const Plan plan = makePlan(args.batch, args.numDrafts, args.vocab);

  Args a;
  static_cast<VerifyDraftsArgs&>(a) = args;
  a.draftKind = draftKindOf(args);
  if (a.draftKind == kDraftNone) a.draftData = nullptr;
  a.rowChunks = plan.rowChunks;
  a.rowChunkLen = plan.rowChunkLen;
  a.verifyChunks = plan.verifyChunks;
  a.verifyChunkLen = plan.verifyChunkLen;
  // Arena blocks are allocator blocks (256-byte aligned at least); the records need 16.
  char* ws = static_cast<char*>(l.workspace.get(plan.total));
  a.records = reinterpret_cast<RowRecord*>(ws + plan.recordsOffset);
  a.stepSums = reinterpret_cast<uint64_t*>(ws + plan.stepSumsOffset);
  a.partials = reinterpret_cast<RacePartial*>(ws + plan.partialsOffset);
  a.counters = reinterpret_cast<uint32_t*>(ws + plan.countersOffset);

  const cudaStream_t stream = l.stream;
  cudaError_t err;
  switch (args.logitsDType) {
    case DType::F32: err = dispatchDraft<float>(a, args.draftDType, l.facts, stream); break;
    case DType::F16: err = dispatchDraft<__half>(a, args.draftDType, l.facts, stream); break;
    case DType::BF16: err = dispatchDraft<__nv_bfloat16>(a, args.draftDType, l.facts, stream); break;
    default: return cudaErrorInvalidValue;
  }
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

}  // namespace moe::kernels::mtp
