// Hopper (sm_90a) NVFP4 x BF16 GEMM for the prefill regime:
//   out[M, N] = alpha * gsA * gsW * (A . W^T) (+ bias[N]), A bf16 [M, K], W NVFP4 [N, K]
// (gsA: the global scale of NVFP4 activations, expanded to bf16 by a kernel launched before
// this one; 1 for W4A16).
//
// Design (one persistent CTA per SM, 3 warpgroups, tile 128 weight rows x BM tokens x 64 k,
// BM = 128 or 256, picked with the split by selectSm90Tile in heuristics.h; the grouped GEMM also
// takes 192, by selectGroupedConfig):
//  - Swap AB: each consumer warpgroup computes C^T = W . A^T with wgmma m64nBMk16, the weight as
//    wgmma's A operand from registers and the activation tile as its B operand from shared memory
//    (bf16, K-major, 128B swizzle, which is exactly what a TMA box of 64 k x BM rows writes).
//    E2M1 x E4M3 products are exact in BF16, so dequantizing W in registers right before the MMA
//    keeps the result exact up to fp32 accumulation, and W never exists in BF16 anywhere else.
//    A register-sourced A operand also spares shared-memory bandwidth: the only large smem reads
//    are the activation tiles, shared by both consumer warpgroups.
//  - 256 tokens per MMA (wgmma's largest N) halves the decode work per FLOP compared with 128;
//    the 64x256 fp32 accumulator is 128 registers per thread.
//  - Producer warpgroup: thread 0 issues the TMA loads of the activation tile and the packed FP4
//    tile (32 bytes x 128 rows, 32B swizzle so the consumers' 16-byte row reads are free of bank
//    conflicts). All 128 producer threads turn one row's four e4m3 block scales per 64-k step
//    into bf16x2 multipliers (see detail::scaleToBf16x2) and store them next to the tile: the
//    scale conversion leaves the consumers' critical path, and plain loads need no alignment, so
//    any scale pointer works. Each thread keeps kScaleAhead steps of scale loads in flight, and
//    thread 0 issues a stage's TMA loads before its own scale store and arrival.
//  - kStages-deep ring of stages with full/empty mbarriers. setmaxnreg moves registers from the
//    producer (kProducerRegs) to the consumers (kConsumerRegs).
//  - Consumers: per 64-k step, read the thread's fragment bytes (rows g and g+8 of its warp's 16
//    rows: two 16-byte reads per row, broadcast across the quad), build the 16 A registers (4 per
//    k16), then issue 4 wgmmas as one commit group. The previous step's group is retired with
//    wgmma.wait_group 1 before its stage is released, so decode overlaps the running MMAs. The
//    k loop is unrolled by two so the in-flight and the next fragments live in distinct registers.
//  - Epilogue: scale by alpha * gsW * 2^8 (the dequantized weights carry 2^-8), add the bias.
//    BF16 out with 16-byte aligned rows: stmatrix.trans writes the warpgroup's 64 x BM block
//    into a 128B-swizzled smem tile and one thread issues a TMA store, which clips the M/N tails
//    and runs while the warpgroup already starts the next tile's mainloop (the buffer is reused
//    only after the store has read it). Otherwise (F32 out, ragged N, unaligned out) the block
//    is transposed through a padded smem buffer and written as 16-byte row segments, or element
//    by element where rows are not aligned.
//  - Tails: M and N tails of the inputs are zero-filled by TMA. K must be a multiple of 32 (TMA
//    needs 16-byte row strides for the packed weights; the host falls back to the portable
//    kernel otherwise); a K tail inside the last 64-wide step is zero-filled by TMA and gets
//    zero scale multipliers.
//  - Tile order: groups of kGroupM token tiles, weight tiles outer within a group, so one wave of
//    CTAs shares a few activation tiles and a few dozen weight tiles in L2.
//  - Split K (selectSm90Split) where the tiles cannot fill the SMs: a tile's k range becomes
//    several work units; each stores its fp32 accumulators, and the unit that finishes last sums
//    them in split order and runs the epilogue, in the same launch.
//  - The grouped (expert) GEMM runs the same mainloop in groupedKernel (see GroupedParams).
//
// The .cu that includes this is also compiled for compute_80: every sm_90a instruction sits
// behind __CUDA_ARCH_FEAT_SM90_ALL and the kernel traps elsewhere (the host never launches it
// there; see sm90GemmSupported).
#pragma once
#include <cstdint>

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/nvfp4/common.cuh"
#include "kernels/nvfp4/group.cuh"

namespace moe::kernels::nvfp4::sm90 {

inline constexpr int kTileN = 128;  // weight rows per CTA (2 consumer warpgroups x 64)
inline constexpr int kTileK = 64;   // k per pipeline stage (128 bytes of bf16: one swizzle atom)
inline constexpr int kGroupM = 4;   // token tiles per rasterization group
inline constexpr int kThreads = 384;
inline constexpr int kProducerRegs = 40;
inline constexpr int kScaleAhead = 8;  // 64-k steps of scale bytes each producer thread has in flight
inline constexpr int kConsumerRegs = 232;
inline constexpr int kWBytes = kTileN * kTileK / 2;  // 4 KB packed E2M1 per stage
inline constexpr int kSBytes = kTileN * 4 * 4;       // 2 KB bf16x2 scale multipliers per stage

// Shared memory plan for BM tokens per tile (offsets from a 1024-byte aligned base; the 128B
// swizzle needs that alignment).
template <int BM>
struct Config {
  static_assert(BM == 128 || BM == 192 || BM == 256, "BM is 128, 192 (grouped only) or 256");
  static constexpr int kTileM = BM;
  static constexpr int kAcc = BM / 2;                  // fp32 accumulators per thread
  static constexpr int kStages = BM == 256 ? 4 : BM == 192 ? 5 : 6;
  static constexpr int kABytes = BM * kTileK * 2;      // activations per stage
  static constexpr int kStageBytes = kABytes + kWBytes + kSBytes;
  static constexpr uint32_t kStageTxBytes = kABytes + kWBytes;
  // Padded transpose path: kEpiRows tokens x 64 outputs, +16 bytes per row so a warp's
  // transposing stores hit distinct banks.
  static constexpr int kEpiRowBytesBf16 = 64 * 2 + 16;
  static constexpr int kEpiRowBytesF32 = 64 * 4 + 16;
  static constexpr int kEpiRowsBf16 = 128;
  static constexpr int kEpiRowsF32 = 64;
  // Per consumer warpgroup: the TMA-store tile (BM x 128 bytes) or the padded buffer.
  static constexpr int kEpiBytes = (BM * 128 > kEpiRowsBf16 * kEpiRowBytesBf16)
                                       ? BM * 128
                                       : kEpiRowsBf16 * kEpiRowBytesBf16;
  static constexpr int kEpiOffset = kStages * kStageBytes;
  static constexpr int kBarOffset = kEpiOffset + 2 * kEpiBytes;
  static constexpr int kFlagOffset = kBarOffset + 2 * kStages * 8;  // split K: "this CTA sums the tile"
  static constexpr int kGroupOffset = kFlagOffset + 16;  // grouped: the unit table, E + 1 ints past kSmemBytes
  static constexpr int kSmemBytes = kFlagOffset + 16 + 1024;         // + alignment slack
  static_assert(kEpiRowsF32 * kEpiRowBytesF32 <= kEpiBytes, "epilogue buffer too small");
  static_assert(kStageBytes % 1024 == 0 && kEpiBytes % 1024 == 0, "1024-byte alignment");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory budget");
  // grouped swiglu: the up warpgroup hands its accumulators to the gate one through both
  // warpgroups' epilogue buffers
  static_assert(128 * kAcc * 4 <= 2 * kEpiBytes, "swiglu exchange buffer");
};

struct Params {
  int M, N, K;
  int numKTiles;       // ceil(K / 64)
  int tilesM, tilesN;  // ceil(M / BM), ceil(N / 128)
  int numTiles;
  // Split K: work unit u is split u % splits of tile u / splits, k-tiles [split * kTilesPerSplit,
  // ...). With splits > 1 each unit stores its fp32 accumulators in partials ([unit][kAcc][256
  // consumer threads]) and counts itself on tileDone[tile] (zero on entry); the unit that counts
  // last sums the tile's partials in split order (the same bits whichever arrives last), resets
  // the counter and runs the epilogue.
  int splits;
  int kTilesPerSplit;
  int numUnits;        // numTiles * splits
  float* partials;
  int* tileDone;
  const uint8_t* wScales;   // e4m3 [N, K/16]
  const float* wGlobalScale;
  const float* aGlobalScale;  // W4A4: the activations' global scale (their codes x block scales
                              // were expanded to bf16 before the launch), else nullptr
  const void* bias;         // [N] or nullptr
  void* out;                // [M, N]
  float alpha;
  bool biasF32;
  bool outF32;
  bool scalesVec4;  // scale rows 4-byte aligned (K % 64 == 0, aligned base)
  bool outVec16;    // out rows 16-byte aligned (N * elem % 16 == 0, aligned base)
  bool tmaStore;    // BF16 out through the TMA-store epilogue (needs outVec16)
};

// The grouped GEMM (GroupedGemmArgs) on this mainloop, groupedKernel below: every expert's rows
// in one persistent launch. Work units are the experts' tiles in expert order; each CTA maps a
// unit to its expert through a table of E + 1 prefix counts built at its start. In `base`:
// N, K, numKTiles, tilesN (tiles of 128 weight rows, or of 64 output columns for swiglu),
// wScales / wGlobalScale of expert 0, out [rows, N] (or [rows, N/2]), scalesVec4, outVec16; no
// split K, no bias, bf16 out without the TMA store (a tile's last rows may belong to the next
// expert, so stores are clipped per expert).
//  - Swiglu: a tile is 64 gate rows (warpgroup 1) and the 64 matching up rows (warpgroup 2), so
//    the two accumulators of an output meet at the same register of the same thread of the two
//    warpgroups; the up warpgroup hands its values over through shared memory.
struct GroupedParams {
  Params base;
  detail::GroupParams group;
  int E;
};

// Tile t of a tilesM x tilesN grid -> (token tile, weight tile): groups of kGroupM token tiles,
// token tile fastest.
__host__ __device__ __forceinline__ void tileCoordsIn(int t, int tilesM, int tilesN, int& mTile,
                                                      int& nTile) {
  const int span = kGroupM * tilesN;
  const int group = t / span;
  const int first = group * kGroupM;
  const int size = min(kGroupM, tilesM - first);
  const int r = t - group * span;
  mTile = first + r % size;
  nTile = r / size;
}

__host__ __device__ __forceinline__ void tileCoords(const Params& p, int t, int& mTile,
                                                    int& nTile) {
  tileCoordsIn(t, p.tilesM, p.tilesN, mTile, nTile);
}

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace dev {

__device__ __forceinline__ uint32_t smem(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void mbarInit(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem(bar)), "r"(count));
}

__device__ __forceinline__ void mbarArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem(bar)) : "memory");
}

// Raises the transaction count of the current phase without arriving: the TMA loads can be
// issued before this thread's own arrival, which waits for its scale multipliers.
__device__ __forceinline__ void mbarExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem(bar)), "r"(bytes)
               : "memory");
}

// One arrival per warp once all its lanes are done with a stage: the warp barrier orders every
// lane's shared-memory reads before lane 0's release.
__device__ __forceinline__ void releaseStage(uint64_t* bar, int lane) {
  __syncwarp();
  if (lane == 0) mbarArrive(bar);
}

__device__ __forceinline__ void mbarWait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = smem(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
}

__device__ __forceinline__ void tmaLoad2d(void* dst, const CUtensorMap* map, int x, int y,
                                          uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(smem(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(smem(bar))
      : "memory");
}

__device__ __forceinline__ void tmaStore2d(const CUtensorMap* map, const void* src, int x, int y) {
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n"
      "cp.async.bulk.commit_group;\n" ::"l"(reinterpret_cast<uint64_t>(map)),
      "r"(x), "r"(y), "r"(smem(src))
      : "memory");
}

// Waits until the issued TMA stores have finished reading shared memory.
__device__ __forceinline__ void tmaStoreWaitRead() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void tmaStoreWaitAll() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}

// Four 8x8 bf16 matrices, each stored transposed (fragment row = output column n).
__device__ __forceinline__ void stmatrixX4Trans(const void* addr, uint32_t r0, uint32_t r1,
                                                uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(
                   smem(addr)),
               "r"(r0), "r"(r1), "r"(r2), "r"(r3)
               : "memory");
}

__device__ __forceinline__ uint32_t packBf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ void prefetchTensorMap(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

__device__ __forceinline__ void wgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmmaCommit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving accumulator reads or writes across the asynchronous MMAs.
template <int N>
__device__ __forceinline__ void fenceAcc(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

__device__ __forceinline__ void namedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Shared-memory matrix descriptor for a K-major, 128B-swizzled bf16 tile whose rows are 128
// bytes: 8-row groups 1024 bytes apart (SBO); LBO is unused for this layout.
__device__ __forceinline__ uint64_t descSw128(const void* base) {
  const uint64_t addr = smem(base);
  return ((addr & 0x3FFFFull) >> 4) | (1ull << 16) | (uint64_t(1024 >> 4) << 32) | (1ull << 62);
}

// D(64xN, f32) += A(64x16 bf16, registers) * B(16xN bf16, shared, K-major, 128B swizzle).
// scaleD == 0 ignores the incoming accumulator (first MMA of a tile).
__device__ __forceinline__ void wgmmaM64N256K16(float (&d)[128], uint32_t a0, uint32_t a1,
                                                uint32_t a2, uint32_t a3, uint64_t descB,
                                                uint32_t scaleD) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(descB), "r"(scaleD));
}

__device__ __forceinline__ void wgmmaM64N128K16(float (&d)[64], uint32_t a0, uint32_t a1,
                                                uint32_t a2, uint32_t a3, uint64_t descB,
                                                uint32_t scaleD) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(descB), "r"(scaleD));
}

__device__ __forceinline__ void wgmmaM64N192K16(float (&d)[96], uint32_t a0, uint32_t a1,
                                                uint32_t a2, uint32_t a3, uint64_t descB,
                                                uint32_t scaleD) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %101, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n192k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
      "}, {%96, %97, %98, %99}, %100, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(descB), "r"(scaleD));
}

template <int BM>
__device__ __forceinline__ void wgmmaTile(float (&d)[BM / 2], uint32_t a0, uint32_t a1,
                                          uint32_t a2, uint32_t a3, uint64_t descB,
                                          uint32_t scaleD) {
  if constexpr (BM == 256) wgmmaM64N256K16(d, a0, a1, a2, a3, descB, scaleD);
  else if constexpr (BM == 192) wgmmaM64N192K16(d, a0, a1, a2, a3, descB, scaleD);
  else wgmmaM64N128K16(d, a0, a1, a2, a3, descB, scaleD);
}

// One byte of packed E2M1 (two consecutive k) at the top nibble of each 16-bit half -> bf16x2,
// value * 2^-126 (sign, two low exponent bits and the mantissa bit; see detail::dequantWord).
__device__ __forceinline__ uint32_t e2m1TopNibbles(uint32_t x) {
  return (x & 0x80008000u) | ((x >> 6) & 0x01C001C0u);
}

// Byte t of wordA and byte t of wordB (sel = t | t<<4 | (t+4)<<8 | (t+4)<<12) -> two A-fragment
// registers: pairs (lo nibble, hi nibble) of each byte, i.e. k (2t, 2t+1), times `scale`.
__device__ __forceinline__ void decodePair(uint32_t wordA, uint32_t wordB, uint32_t sel,
                                           uint32_t scale, uint32_t& outA, uint32_t& outB) {
  const uint32_t y = __byte_perm(wordA, wordB, sel);   // [Ba, Ba, Bb, Bb]
  const uint32_t hi = e2m1TopNibbles(y);               // (hi Ba, hi Bb)
  const uint32_t lo = e2m1TopNibbles(y << 4);          // (lo Ba, lo Bb)
  uint32_t a = __byte_perm(lo, hi, 0x5410);            // (lo Ba, hi Ba)
  uint32_t b = __byte_perm(lo, hi, 0x7632);            // (lo Bb, hi Bb)
  __nv_bfloat162 va = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a),
                              *reinterpret_cast<const __nv_bfloat162*>(&scale));
  __nv_bfloat162 vb = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&b),
                              *reinterpret_cast<const __nv_bfloat162*>(&scale));
  outA = *reinterpret_cast<uint32_t*>(&va);
  outB = *reinterpret_cast<uint32_t*>(&vb);
}

// The 16 A registers (4 per k16) of one 64-k stage for this thread: rows r and r+8 of the tile.
// Packed rows are 32 bytes, 16-byte chunk c of row r stored at chunk c ^ ((r >> 2) & 1) (TMA
// 32B swizzle). Thread t of a quad needs byte t of every 32-bit word (k 2t, 2t+1 and 2t+8, 2t+9
// of each k16), so each quad reads whole rows and picks its bytes with byte permutes.
__device__ __forceinline__ void loadFragments(const uint8_t* sW, int r, uint32_t sel,
                                              uint32_t (&a)[16]) {
  const uint8_t* sS = sW + kWBytes;
  const int flip = ((r >> 2) & 1) << 4;
  const uint4 g0 = *reinterpret_cast<const uint4*>(sW + r * 32 + flip);
  const uint4 g1 = *reinterpret_cast<const uint4*>(sW + r * 32 + (16 ^ flip));
  const uint4 h0 = *reinterpret_cast<const uint4*>(sW + (r + 8) * 32 + flip);
  const uint4 h1 = *reinterpret_cast<const uint4*>(sW + (r + 8) * 32 + (16 ^ flip));
  const uint4 sg = *reinterpret_cast<const uint4*>(sS + r * 16);
  const uint4 sh = *reinterpret_cast<const uint4*>(sS + (r + 8) * 16);
  // k16 step s uses words 2s (k 16s..16s+7) and 2s+1 (k 16s+8..16s+15).
  decodePair(g0.x, g0.y, sel, sg.x, a[0], a[2]);
  decodePair(h0.x, h0.y, sel, sh.x, a[1], a[3]);
  decodePair(g0.z, g0.w, sel, sg.y, a[4], a[6]);
  decodePair(h0.z, h0.w, sel, sh.y, a[5], a[7]);
  decodePair(g1.x, g1.y, sel, sg.z, a[8], a[10]);
  decodePair(h1.x, h1.y, sel, sh.z, a[9], a[11]);
  decodePair(g1.z, g1.w, sel, sg.w, a[12], a[14]);
  decodePair(h1.z, h1.w, sel, sh.w, a[13], a[15]);
}

// Four k16 MMAs over one stage; scaleFirst == 0 starts a fresh accumulator.
template <int BM>
__device__ __forceinline__ void mmaStage(float (&acc)[BM / 2], const uint32_t (&a)[16],
                                         const uint8_t* stage, uint32_t scaleFirst) {
  // All descriptors are formed before the fence so no wgmma input is defined inside the batch;
  // +32 bytes per k16 inside the swizzle atom (descriptor addresses are in 16-byte units).
  const uint64_t desc = descSw128(stage);
  uint64_t d[4];
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    d[s] = desc + 2 * s;
    asm volatile("" : "+l"(d[s]));
  }
  wgmmaFence();
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    wgmmaTile<BM>(acc, a[4 * s], a[4 * s + 1], a[4 * s + 2], a[4 * s + 3], d[s],
                  s == 0 ? scaleFirst : 1u);
  }
  wgmmaCommit();
}

// Producer side: this row's four block scales of stage kt as bf16x2 multipliers (0 past the end).
__device__ __forceinline__ uint32_t loadScaleBytes(const Params& p, const uint8_t* row, bool valid,
                                                   int kt) {
  if (!valid) return 0u;
  const int kBlocks = p.K >> 4;
  const int b0 = kt * 4;
  if (p.scalesVec4) return __ldg(reinterpret_cast<const uint32_t*>(row + b0));
  uint32_t v = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (b0 + j < kBlocks) v |= static_cast<uint32_t>(__ldg(row + b0 + j)) << (8 * j);
  }
  return v;
}

__device__ __forceinline__ uint4 scaleMultipliers(uint32_t raw, bool valid, int kt, int kBlocks) {
  uint4 s;
  // Zero multipliers past the tensor keep the zero-filled tail exactly zero.
  s.x = (valid && kt * 4 + 0 < kBlocks) ? detail::scaleToBf16x2(raw & 0xFFu) : 0u;
  s.y = (valid && kt * 4 + 1 < kBlocks) ? detail::scaleToBf16x2((raw >> 8) & 0xFFu) : 0u;
  s.z = (valid && kt * 4 + 2 < kBlocks) ? detail::scaleToBf16x2((raw >> 16) & 0xFFu) : 0u;
  s.w = (valid && kt * 4 + 3 < kBlocks) ? detail::scaleToBf16x2(raw >> 24) : 0u;
  return s;
}

template <int kStages>
__device__ __forceinline__ void initStages(uint64_t* full, uint64_t* empty) {
#pragma unroll
  for (int s = 0; s < kStages; ++s) {
    mbarInit(&full[s], 128);  // every producer thread stores scales and arrives
    mbarInit(&empty[s], 8);   // one arrival per consumer warp
  }
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// Producer, one work unit: the stages of k-tiles [kt0, kt1). `row` is this thread's weight row's
// scale bytes (valid: the row exists); issue(stage, bar, kt) is thread 0's TMA loads of a stage.
template <int BM, class Issue>
__device__ __forceinline__ void produceUnit(const Params& p, uint8_t* base, uint64_t* full, uint64_t* empty,
                                            uint32_t& it, int r, const uint8_t* row, bool valid, int kt0,
                                            int kt1, Issue issue) {
  using C = Config<BM>;
  constexpr int kStages = C::kStages;
  const int kBlocks = p.K >> 4;
  // Scale bytes come kScaleAhead steps ahead through a register ring, and thread 0 issues a
  // stage's TMA loads before it waits for its own scale bytes, so no step's loads queue
  // behind a scale load's round trip (1-14% faster at M >= 1024; benchmarks/NOTES.md, v6).
  uint32_t ring[kScaleAhead];
#pragma unroll
  for (int j = 0; j < kScaleAhead; ++j) ring[j] = kt0 + j < kt1 ? loadScaleBytes(p, row, valid, kt0 + j) : 0u;
  for (int kb = kt0; kb < kt1; kb += kScaleAhead) {
#pragma unroll
    for (int j = 0; j < kScaleAhead; ++j) {
      const int kt = kb + j;
      if (kt >= kt1) break;
      const uint32_t raw = ring[j];
      ring[j] = kt + kScaleAhead < kt1 ? loadScaleBytes(p, row, valid, kt + kScaleAhead) : 0u;
      const int s = it % kStages;
      mbarWait(&empty[s], ((it / kStages) & 1) ^ 1);
      uint8_t* stage = base + s * C::kStageBytes;
      if (r == 0) {
        mbarExpectTx(&full[s], C::kStageTxBytes);
        issue(stage, &full[s], kt);
      }
      *reinterpret_cast<uint4*>(stage + C::kABytes + kWBytes + r * 16) =
          scaleMultipliers(raw, valid, kt, kBlocks);
      mbarArrive(&full[s]);
      ++it;
    }
  }
}

// Consumer warpgroup, one work unit: k-tiles [kt0, kt1) into acc; every stage it read released.
// Two stages per iteration with separate fragment registers (see the header comment): the group
// that last read a fragment set is always retired before it is rewritten.
template <int BM>
__device__ __forceinline__ void consumeUnit(uint8_t* base, uint64_t* full, uint64_t* empty, uint32_t& it,
                                            int rowInTile, uint32_t sel, int lane, int kt0, int kt1,
                                            float (&acc)[BM / 2], uint32_t (&fragA)[16], uint32_t (&fragB)[16]) {
  using C = Config<BM>;
  constexpr int kStages = C::kStages;
  auto step = [&](uint32_t(&frag)[16], uint32_t scaleFirst, bool release) {
    const int s = it % kStages;
    mbarWait(&full[s], (it / kStages) & 1);
    const uint8_t* stage = base + s * C::kStageBytes;
    loadFragments(stage + C::kABytes, rowInTile, sel, frag);
    mmaStage<BM>(acc, frag, stage, scaleFirst);
    wgmmaWait<1>();
    if (release) releaseStage(&empty[(it + kStages - 1) % kStages], lane);
    ++it;
  };
  int kt = kt0;
  for (; kt + 1 < kt1; kt += 2) {
    step(fragA, kt == kt0 ? 0u : 1u, kt > kt0);
    step(fragB, 1u, true);
  }
  if (kt < kt1) step(fragA, kt == kt0 ? 0u : 1u, kt > kt0);
  wgmmaWait<0>();
  fenceAcc(acc);
  releaseStage(&empty[(it + kStages - 1) % kStages], lane);
}

// The padded-buffer epilogue of a consumer warpgroup (64 outputs x BM tokens): value(k) of
// accumulator k, transposed through `epi`, written as 16-byte row pieces (element by element
// where a row's pieces are not aligned) to out + (m * rowStride + n) * elem, for tokens
// m = m0 + [0, BM) below rowsEnd and columns n = colBase + [0, 64) below colLimit.
template <int BM, bool OutF32, class Value>
__device__ __forceinline__ void storeTransposed(uint8_t* epi, int cw, int tid, int nLocal0, int t, Value value,
                                                void* out, int m0, int rowsEnd, int rowStride, int colBase,
                                                int colLimit, bool vec16) {
  using C = Config<BM>;
  constexpr int kElem = OutF32 ? 4 : 2;
  constexpr int kRows = OutF32 ? C::kEpiRowsF32 : C::kEpiRowsBf16;
  constexpr int kRowBytes = OutF32 ? C::kEpiRowBytesF32 : C::kEpiRowBytesBf16;
  constexpr int kChunks = 64 * kElem / 16;      // 16-byte pieces per token row
  constexpr int kPerChunk = 16 / kElem;         // outputs per piece
  // rows per pass: the buffer's, or 64 where they do not divide BM (192-token tiles)
  constexpr int kPassRows = kRows >= BM ? BM : BM % kRows == 0 ? kRows : 64;
  static_assert(BM % kPassRows == 0 && kPassRows <= kRows, "epilogue passes");
#pragma unroll
  for (int pass = 0; pass < BM / kPassRows; ++pass) {
    namedBarrier(1 + cw, 128);  // the previous readers of the buffer are done
#pragma unroll
    for (int j = pass * (kPassRows / 8); j < (pass + 1) * (kPassRows / 8); ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = 8 * (j - pass * (kPassRows / 8)) + 2 * t + (i & 1);
        const int nl = nLocal0 + ((i & 2) ? 8 : 0);
        const float v = value(4 * j + i);
        uint8_t* dst = epi + m * kRowBytes + nl * kElem;
        if constexpr (OutF32) *reinterpret_cast<float*>(dst) = v;
        else *reinterpret_cast<__nv_bfloat16*>(dst) = __float2bfloat16_rn(v);
      }
    }
    namedBarrier(1 + cw, 128);
#pragma unroll 4
    for (int idx = tid; idx < kPassRows * kChunks; idx += 128) {
      const int rowL = idx / kChunks, c = idx % kChunks;
      const int m = m0 + pass * kPassRows + rowL;
      const int n = colBase + c * kPerChunk;
      if (m >= rowsEnd || n >= colLimit) continue;
      const uint8_t* src = epi + rowL * kRowBytes + c * 16;
      uint8_t* dst = static_cast<uint8_t*>(out) + (static_cast<int64_t>(m) * rowStride + n) * kElem;
      if (vec16 && n + kPerChunk <= colLimit) {
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
      } else {
        for (int e = 0; e < kPerChunk && n + e < colLimit; ++e) {
          if constexpr (OutF32) {
            reinterpret_cast<float*>(dst)[e] = reinterpret_cast<const float*>(src)[e];
          } else {
            reinterpret_cast<__nv_bfloat16*>(dst)[e] = reinterpret_cast<const __nv_bfloat16*>(src)[e];
          }
        }
      }
    }
  }
}

// Grouped: the unit table, prefix[e] = the units (tiles) of experts before e, prefix[E] = all of
// them. Every thread of the CTA takes part; it ends with a CTA barrier.
template <int BM>
__device__ __forceinline__ void buildUnitTable(const GroupedParams& gp, int* prefix) {
  for (int e = threadIdx.x; e < gp.E; e += blockDim.x) {
    int64_t start;
    int count;
    prefix[e + 1] = detail::groupSlot(gp.group, e, start, count) ? (count + BM - 1) / BM * gp.base.tilesN : 0;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    // warp 0: each lane sums a run of experts, a warp scan offsets the runs
    const int lane = threadIdx.x, per = (gp.E + 31) / 32;
    const int i0 = min(gp.E, lane * per), i1 = min(gp.E, i0 + per);
    int sum = 0;
    for (int i = i0; i < i1; ++i) sum += prefix[i + 1];
    int incl = sum;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int v = __shfl_up_sync(0xFFFFFFFFu, incl, d);
      if (lane >= d) incl += v;
    }
    int run = incl - sum;
    for (int i = i0; i < i1; ++i) {
      run += prefix[i + 1];
      prefix[i + 1] = run;
    }
    if (lane == 0) prefix[0] = 0;
  }
  __syncthreads();
}

// Grouped: unit u -> its expert e (prefix[e] <= u < prefix[e + 1]), the expert's first row and
// row count, and the tile within the expert.
template <int BM>
__device__ __forceinline__ void groupedUnit(const GroupedParams& gp, const int* prefix, int u, int& e,
                                            int64_t& start, int& count, int& mTile, int& nTile) {
  int lo = 0, hi = gp.E;
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (prefix[mid] <= u) lo = mid;
    else hi = mid;
  }
  e = lo;
  detail::groupSlot(gp.group, e, start, count);
  tileCoordsIn(u - prefix[e], (count + BM - 1) / BM, gp.base.tilesN, mTile, nTile);
}

}  // namespace dev
#endif

// Split: the split-K variant (work units, partials, the last unit's sum); without it the loops
// run over whole tiles, as they did before split K existed, which measured 2.5-7% faster on
// the problems that do not split.
template <int BM, bool OutF32, bool Split>
__global__ void __launch_bounds__(kThreads, 1)
    gemmKernel(const __grid_constant__ CUtensorMap mapA, const __grid_constant__ CUtensorMap mapW,
               const __grid_constant__ CUtensorMap mapOut, const Params p) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace dev;
  using C = Config<BM>;
  constexpr int kStages = C::kStages;
  extern __shared__ uint8_t smemRaw[];
  uint8_t* base = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smemRaw) + 1023) & ~static_cast<uintptr_t>(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(base + C::kBarOffset);
  uint64_t* empty = full + kStages;

  const int warpGroup = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    prefetchTensorMap(&mapA);
    prefetchTensorMap(&mapW);
    if (p.tmaStore) prefetchTensorMap(&mapOut);
    initStages<kStages>(full, empty);
  }
  __syncthreads();

  if (warpGroup == 0) {
    // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
    const int r = threadIdx.x;
    const int kBlocks = p.K >> 4;
    uint32_t it = 0;
    for (int unit = blockIdx.x; unit < (Split ? p.numUnits : p.numTiles); unit += gridDim.x) {
      int mTile, nTile;
      tileCoords(p, Split ? unit / p.splits : unit, mTile, nTile);
      const int kt0 = Split ? (unit % p.splits) * p.kTilesPerSplit : 0;
      const int kt1 = Split ? min(p.numKTiles, kt0 + p.kTilesPerSplit) : p.numKTiles;
      const int n = nTile * kTileN + r;
      const bool valid = n < p.N;
      const uint8_t* row = p.wScales + static_cast<int64_t>(valid ? n : 0) * kBlocks;
      produceUnit<BM>(p, base, full, empty, it, r, row, valid, kt0, kt1,
                      [&](uint8_t* stage, uint64_t* bar, int kt) {
                        tmaLoad2d(stage, &mapA, kt * kTileK, mTile * BM, bar);
                        tmaLoad2d(stage + C::kABytes, &mapW, kt * (kTileK / 2), nTile * kTileN, bar);
                      });
    }
  } else {
    // ---------------- consumers ----------------
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));
    const int cw = warpGroup - 1;          // which 64 weight rows of the tile
    const int tid = threadIdx.x - 128 * warpGroup;
    const int warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int rowInTile = 64 * cw + 16 * warp + g;
    const uint32_t sel = t | (t << 4) | ((t + 4) << 8) | ((t + 4) << 12);
    const float factor = p.alpha * __ldg(p.wGlobalScale) * 0x1p8f *
                         (p.aGlobalScale != nullptr ? __ldg(p.aGlobalScale) : 1.0f);
    uint8_t* epi = base + C::kEpiOffset + cw * C::kEpiBytes;

    float acc[C::kAcc];
    uint32_t fragA[16], fragB[16];
    uint32_t it = 0;
    for (int unit = blockIdx.x; unit < (Split ? p.numUnits : p.numTiles); unit += gridDim.x) {
      const int tile = Split ? unit / p.splits : unit;
      int mTile, nTile;
      tileCoords(p, tile, mTile, nTile);
      const int kt0 = Split ? (unit % p.splits) * p.kTilesPerSplit : 0;
      const int kt1 = Split ? min(p.numKTiles, kt0 + p.kTilesPerSplit) : p.numKTiles;
      consumeUnit<BM>(base, full, empty, it, rowInTile, sel, lane, kt0, kt1, acc, fragA, fragB);

      if constexpr (Split) {
        // this unit's partial, coalesced per accumulator register across the 256 consumer threads
        const int ctid = tid + 128 * cw;
        float* mine = p.partials + static_cast<int64_t>(unit) * C::kAcc * 256 + ctid;
#pragma unroll
        for (int i = 0; i < C::kAcc; ++i) mine[i * 256] = acc[i];
        __threadfence();
        namedBarrier(3, 256);  // both consumer warpgroups' partials are written
        volatile int* last = reinterpret_cast<volatile int*>(base + C::kFlagOffset);
        if (ctid == 0) *last = atomicAdd(p.tileDone + tile, 1) == p.splits - 1;
        namedBarrier(3, 256);
        if (!*last) continue;
        __threadfence();
        const float* all = p.partials + static_cast<int64_t>(tile) * p.splits * C::kAcc * 256 + ctid;
#pragma unroll
        for (int i = 0; i < C::kAcc; ++i) acc[i] = 0.f;
        for (int sp = 0; sp < p.splits; ++sp) {
#pragma unroll
          for (int i = 0; i < C::kAcc; ++i) acc[i] += __ldcg(all + (sp * C::kAcc + i) * 256);
        }
        if (ctid == 0) p.tileDone[tile] = 0;  // for the next launch
      }

      // ---------------- epilogue ----------------
      const int nLocal0 = 16 * warp + g;  // this thread's two outputs: nLocal0, nLocal0 + 8
      const int nBase = nTile * kTileN + 64 * cw;
      float bias0 = 0.f, bias1 = 0.f;
      if (p.bias != nullptr) {
        const int n0 = nBase + nLocal0, n1 = n0 + 8;
        if (p.biasF32) {
          const float* b = static_cast<const float*>(p.bias);
          if (n0 < p.N) bias0 = __ldg(b + n0);
          if (n1 < p.N) bias1 = __ldg(b + n1);
        } else {
          const __nv_bfloat16* b = static_cast<const __nv_bfloat16*>(p.bias);
          if (n0 < p.N) bias0 = __bfloat162float(b[n0]);
          if (n1 < p.N) bias1 = __bfloat162float(b[n1]);
        }
      }
      if (!OutF32 && p.tmaStore) {
        // The previous tile's store must have finished reading the buffer.
        if (tid == 0) tmaStoreWaitRead();
        namedBarrier(1 + cw, 128);
        // Buffer: BM token rows of 64 outputs (128 bytes), 16-byte chunk c of row m at
        // c ^ (m & 7) (TMA 128B swizzle). Matrix q of each stmatrix: tokens 16jj + 8(q>>1) ..
        // +7, outputs 16 warp + 8(q&1) .. +7; lane l gives the address of token row l & 7.
        const int q = lane >> 3, rr = lane & 7;
        const int chunk = 2 * warp + (q & 1);
#pragma unroll
        for (int jj = 0; jj < BM / 16; ++jj) {
          const float* d = acc + 8 * jj;
          const uint32_t r0 = packBf16(d[0] * factor + bias0, d[1] * factor + bias0);
          const uint32_t r1 = packBf16(d[2] * factor + bias1, d[3] * factor + bias1);
          const uint32_t r2 = packBf16(d[4] * factor + bias0, d[5] * factor + bias0);
          const uint32_t r3 = packBf16(d[6] * factor + bias1, d[7] * factor + bias1);
          const int m = 16 * jj + 8 * (q >> 1) + rr;
          stmatrixX4Trans(epi + m * 128 + ((chunk ^ (m & 7)) << 4), r0, r1, r2, r3);
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        namedBarrier(1 + cw, 128);
        if (tid == 0) tmaStore2d(&mapOut, epi, nBase, mTile * BM);
        continue;
      }
      storeTransposed<BM, OutF32>(
          epi, cw, tid, nLocal0, t,
          [&](int k) { return acc[k] * factor + ((k & 2) ? bias1 : bias0); },
          p.out, mTile * BM, p.M, p.N, nBase, p.N, p.outVec16);
    }
    // Shared memory must outlive the last store's reads.
    if (!OutF32 && p.tmaStore && tid == 0) tmaStoreWaitAll();
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // sm_90a only; the host launcher never selects this kernel elsewhere
#endif
}

// The grouped GEMM (GroupedParams): Swiglu selects the swiglu epilogue. One persistent CTA per SM
// walks the units; the mainloop is the dense kernel's.
template <int BM, bool Swiglu>
__global__ void __launch_bounds__(kThreads, 1)
    groupedKernel(const __grid_constant__ CUtensorMap mapA, const __grid_constant__ CUtensorMap mapW,
                  const GroupedParams gp) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace dev;
  using C = Config<BM>;
  // The unit bookkeeping needs more producer registers than the dense kernel's 40 (ptxas spills
  // there otherwise); the consumers keep enough for 256-token tiles without spilling.
  constexpr int kGroupedProducerRegs = 56, kGroupedConsumerRegs = 224;
  static_assert(128 * kGroupedProducerRegs + 256 * kGroupedConsumerRegs <= 65536, "register file");
  const Params& p = gp.base;
  extern __shared__ uint8_t smemRaw[];
  uint8_t* base = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smemRaw) + 1023) & ~static_cast<uintptr_t>(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(base + C::kBarOffset);
  uint64_t* empty = full + C::kStages;
  int* prefix = reinterpret_cast<int*>(base + C::kGroupOffset);
  const int I = gp.group.swigluI;

  const int warpGroup = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    prefetchTensorMap(&mapA);
    prefetchTensorMap(&mapW);
    initStages<C::kStages>(full, empty);
  }
  __syncthreads();
  buildUnitTable<BM>(gp, prefix);

  if (warpGroup == 0) {
    // ---------------- producer ----------------
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kGroupedProducerRegs));
    const int r = threadIdx.x;
    uint32_t it = 0;
    for (int unit = blockIdx.x; unit < prefix[gp.E]; unit += gridDim.x) {
      int e, count, mTile, nTile;
      int64_t start;
      groupedUnit<BM>(gp, prefix, unit, e, start, count, mTile, nTile);
      // The tile's two 64-row weight boxes: rows 128 nTile.. and +64, or for swiglu gate rows
      // 64 nTile.. and the matching up rows I + 64 nTile..; row r's scales likewise.
      int n, w0, w1;
      bool valid;
      if constexpr (Swiglu) {
        const int j = nTile * 64 + (r & 63);
        valid = j < I;
        n = (r >> 6) ? I + j : j;
        w0 = e * p.N + nTile * 64;
        w1 = w0 + I;
      } else {
        n = nTile * kTileN + r;
        valid = n < p.N;
        w0 = e * p.N + nTile * kTileN;
        w1 = w0 + 64;
      }
      const uint8_t* row = p.wScales + e * gp.group.sStride + static_cast<int64_t>(valid ? n : 0) * (p.K >> 4);
      const int aRow = static_cast<int>(start) + mTile * BM;
      produceUnit<BM>(p, base, full, empty, it, r, row, valid, 0, p.numKTiles,
                      [&](uint8_t* stage, uint64_t* bar, int kt) {
                        tmaLoad2d(stage, &mapA, kt * kTileK, aRow, bar);
                        tmaLoad2d(stage + C::kABytes, &mapW, kt * (kTileK / 2), w0, bar);
                        tmaLoad2d(stage + C::kABytes + kWBytes / 2, &mapW, kt * (kTileK / 2), w1, bar);
                      });
    }
  } else {
    // ---------------- consumers ----------------
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kGroupedConsumerRegs));
    const int cw = warpGroup - 1;  // which 64 weight rows of the tile (swiglu: gate, up)
    const int tid = threadIdx.x - 128 * warpGroup;
    const int warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const int rowInTile = 64 * cw + 16 * warp + g;
    const uint32_t sel = t | (t << 4) | ((t + 4) << 8) | ((t + 4) << 12);
    uint8_t* epi = base + C::kEpiOffset + cw * C::kEpiBytes;

    float acc[C::kAcc];
    uint32_t fragA[16], fragB[16];
    uint32_t it = 0;
    for (int unit = blockIdx.x; unit < prefix[gp.E]; unit += gridDim.x) {
      consumeUnit<BM>(base, full, empty, it, rowInTile, sel, lane, 0, p.numKTiles, acc, fragA, fragB);

      // ---------------- epilogue ----------------
      // the tile's place, found after the mainloop so that it holds no registers there
      int e, count, mTile, nTile;
      int64_t start;
      groupedUnit<BM>(gp, prefix, unit, e, start, count, mTile, nTile);
      const float factor = __ldg(p.wGlobalScale + e) * 0x1p8f;  // the dequantized weights carry 2^-8
      if constexpr (Swiglu) {
        // The up warpgroup hands over its scaled accumulators, register i of thread tid at
        // [i][tid]; the gate warpgroup forms silu(gate) * up in place and stores the tile. The
        // first barrier keeps the up warpgroup from overwriting the buffer while the gate one
        // still stores the previous tile out of it.
        float* xch = reinterpret_cast<float*>(base + C::kEpiOffset);
        namedBarrier(4, 256);
        if (cw == 1) {
#pragma unroll
          for (int i = 0; i < C::kAcc; ++i) xch[i * 128 + tid] = acc[i] * factor;
        }
        namedBarrier(4, 256);
        if (cw == 1) continue;
#pragma unroll
        for (int i = 0; i < C::kAcc; ++i) acc[i] = detail::swiglu(acc[i] * factor, xch[i * 128 + tid]);
      } else {
#pragma unroll
        for (int i = 0; i < C::kAcc; ++i) acc[i] *= factor;
      }
      const int rowStride = Swiglu ? I : p.N;
      storeTransposed<BM, false>(epi, cw, tid, 16 * warp + g, t, [&](int k) { return acc[k]; },
                                 static_cast<__nv_bfloat16*>(p.out) + start * rowStride, mTile * BM, count,
                                 rowStride, Swiglu ? nTile * 64 : nTile * kTileN + 64 * cw, rowStride,
                                 p.outVec16);
    }
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // sm_90a only; the host launcher never selects this kernel elsewhere
#endif
}

}  // namespace moe::kernels::nvfp4::sm90
