// CPU reference for NVFP4. Every fp32 operation here mirrors one in native/kernels/nvfp4 (same
// operands, same order, IEEE single precision, round to nearest even), which is what makes the
// quantizer's bytes comparable across backends.
#include "cpu/nvfp4/nvfp4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <system_error>
#include <thread>
#include <vector>

#include "cpu/common/numeric.h"

namespace moe::cpu::nvfp4 {
namespace {

constexpr uint32_t kCanonicalNanKey = 0x7FC00000u;

// f32 bit pattern of |x|; any NaN -> kCanonicalNanKey, which orders above +inf.
uint32_t absKey(const void* x, DType t, int64_t i) {
  if (t == DType::F32) {
    uint32_t u = static_cast<const uint32_t*>(x)[i] & 0x7FFFFFFFu;
    return u > 0x7F800000u ? kCanonicalNanKey : u;
  }
  uint16_t h = static_cast<uint16_t>(static_cast<const uint16_t*>(x)[i] & 0x7FFFu);
  if (t == DType::F16) return h > 0x7C00u ? kCanonicalNanKey : floatBits(f16BitsToF32(h));
  return h > 0x7F80u ? kCanonicalNanKey : static_cast<uint32_t>(h) << 16;
}

float loadElement(const void* x, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(x)[i];
    case DType::F16: return f16BitsToF32(static_cast<const uint16_t*>(x)[i]);
    default: return bf16BitsToF32(static_cast<const uint16_t*>(x)[i]);
  }
}

bool signBit(const void* x, DType t, int64_t i) {
  if (t == DType::F32) return (static_cast<const uint32_t*>(x)[i] >> 31) != 0;
  return (static_cast<const uint16_t*>(x)[i] >> 15) != 0;
}

// |q| on the E2M1 grid {0, .5, 1, 1.5, 2, 3, 4, 6}, nearest with ties to the even code,
// saturating at 6. Each threshold is a midpoint; "> " where the lower neighbour has the even
// code, ">=" where the upper one does. NaN fails every compare and gives 0.
uint32_t e2m1Magnitude(float a) {
  return static_cast<uint32_t>(a > 0.25f) + static_cast<uint32_t>(a >= 0.75f) +
         static_cast<uint32_t>(a > 1.25f) + static_cast<uint32_t>(a >= 1.75f) +
         static_cast<uint32_t>(a > 2.5f) + static_cast<uint32_t>(a >= 3.5f) +
         static_cast<uint32_t>(a > 5.0f);
}

float e2m1ToFloat(uint32_t code) {
  static constexpr float kValues[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  float v = kValues[code & 7u];
  return (code & 8u) ? -v : v;
}

// Value of element k of a packed row (exact: e2m1 * e4m3 has at most 6 significant bits).
float dequantElement(const uint8_t* dataRow, const uint8_t* scaleRow, int64_t k) {
  uint32_t code = (dataRow[k / 2] >> ((k % 2) * 4)) & 0xFu;
  return e2m1ToFloat(code) * e4m3BitsToF32(scaleRow[k / 16]);
}

int64_t swizzledOffset(int64_t m, int64_t k, int64_t numKTiles) {
  return ((m / 128) * numKTiles + k / 4) * 512 + (m % 32) * 16 + ((m / 32) % 4) * 4 + (k % 4);
}

}  // namespace

void amax(const AmaxArgs& args) {
  uint32_t key = 0;
  for (int64_t i = 0; i < args.numel; ++i) key = std::max(key, absKey(args.x, args.xType, i));
  *args.amax = bitsFloat(key);
}

void globalScaleFromAmax(const GlobalScaleArgs& args) {
  const float a = *args.amax;
  float s = a / 2688.0f;  // 6 * 448
  if (s == 0.0f) s = 1.0f;
  // NaN passes through with its bits, independent of how the host FPU propagates payloads.
  *args.globalScale = std::isnan(a) ? a : s;
}

void quantize(const QuantizeArgs& args) {
  const void* x = args.x;
  const DType xType = args.xType;
  const int64_t rows = args.rows, K = args.K;
  uint8_t* data = args.data;
  uint8_t* scales = args.scales;
  const float gs = *args.globalScale;
  // bits, not value: the copy is the scale the data was quantized with, exactly
  if (args.globalScaleOut != nullptr && args.globalScaleOut != args.globalScale) {
    std::memcpy(args.globalScaleOut, args.globalScale, sizeof(float));
  }
  const int64_t numBlocks = rows * (K / 16);  // blocks are contiguous since K % 16 == 0
  for (int64_t b = 0; b < numBlocks; ++b) {
    const int64_t base = b * 16;
    float v[16];
    float blockAmax = 0.0f;
    for (int i = 0; i < 16; ++i) {
      v[i] = loadElement(x, xType, base + i);
      const float a = std::fabs(v[i]);
      blockAmax = a > blockAmax ? a : blockAmax;  // NaN never wins a compare
    }
    float s = blockAmax / (6.0f * gs);
    if (s == 0.0f) s = 1.0f;
    s = std::fmin(std::fmax(s, 0x1p-9f), 448.0f);  // fmax(NaN, c) == c
    const uint8_t code = f32ToE4m3Bits(s);
    const float denom = e4m3BitsToF32(code) * gs;
    for (int i = 0; i < 16; i += 2) {
      uint32_t lo = e2m1Magnitude(std::fabs(v[i] / denom));
      uint32_t hi = e2m1Magnitude(std::fabs(v[i + 1] / denom));
      lo |= signBit(x, xType, base + i) ? 8u : 0u;
      hi |= signBit(x, xType, base + i + 1) ? 8u : 0u;
      data[b * 8 + i / 2] = static_cast<uint8_t>(lo | (hi << 4));
    }
    scales[b] = code;
  }
}

void dequantize(const DequantizeArgs& args) {
  const uint8_t* data = args.data;
  const uint8_t* scales = args.scales;
  void* out = args.out;
  const DType outType = args.outType;
  const int64_t numel = args.rows * args.K;
  if (numel <= 0) return;
  const float gs = *args.globalScale;
  for (int64_t i = 0; i < numel; ++i) {
    const uint32_t code = (data[i / 2] >> ((i % 2) * 4)) & 0xFu;
    float r = (e2m1ToFloat(code) * e4m3BitsToF32(scales[i / 16])) * gs;
    if (std::isnan(r)) r = bitsFloat(0x7FFFFFFFu);
    switch (outType) {
      case DType::F32: static_cast<float*>(out)[i] = r; break;
      case DType::F16: static_cast<uint16_t*>(out)[i] = f32ToF16Bits(r); break;
      default: static_cast<uint16_t*>(out)[i] = f32ToBf16Bits(r); break;
    }
  }
}

void swizzleScales(const SwizzleScalesArgs& args) {
  const uint8_t* scales = args.scales;
  uint8_t* swizzled = args.swizzled;
  const int64_t rows = args.rows, K = args.K;
  const int64_t kBlocks = K / 16, numKTiles = (kBlocks + 3) / 4;
  std::fill(swizzled, swizzled + nvfp4SwizzledScaleBytes(rows, K), uint8_t{0});
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t k = 0; k < kBlocks; ++k)
      swizzled[swizzledOffset(m, k, numKTiles)] = scales[m * kBlocks + k];
}

void unswizzleScales(const UnswizzleScalesArgs& args) {
  const uint8_t* swizzled = args.swizzled;
  uint8_t* scales = args.scales;
  const int64_t rows = args.rows, K = args.K;
  const int64_t kBlocks = K / 16, numKTiles = (kBlocks + 3) / 4;
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t k = 0; k < kBlocks; ++k)
      scales[m * kBlocks + k] = swizzled[swizzledOffset(m, k, numKTiles)];
}

void gemm(const GemmArgs& args) {
  const void* a = args.a;
  const uint8_t* aScales = args.aScales;
  const uint8_t* wData = args.wData;
  const uint8_t* wScales = args.wScales;
  const void* bias = args.bias;
  const DType biasType = args.biasType;
  void* out = args.out;
  const DType outType = args.outType;
  const int64_t M = args.M, N = args.N, K = args.K;
  if (M <= 0 || N <= 0) return;
  const bool aFp4 = args.aType == DType::U8;
  const int64_t kBlocks = K / 16;

  // Exact operand values (both fit in fp32 without rounding).
  std::vector<float> aVal(static_cast<size_t>(M * K));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      aVal[m * K + k] =
          aFp4 ? dequantElement(static_cast<const uint8_t*>(a) + m * (K / 2), aScales + m * kBlocks, k)
               : bf16BitsToF32(static_cast<const uint16_t*>(a)[m * K + k]);
    }
  }
  const double scale = static_cast<double>(args.alpha) * (aFp4 ? static_cast<double>(*args.aGlobalScale) : 1.0) *
                       static_cast<double>(*args.wGlobalScale);

  auto columns = [&](int64_t nBegin, int64_t nEnd) {
    std::vector<float> wRow(static_cast<size_t>(K));
    for (int64_t n = nBegin; n < nEnd; ++n) {
      for (int64_t k = 0; k < K; ++k) wRow[k] = dequantElement(wData + n * (K / 2), wScales + n * kBlocks, k);
      double b = 0.0;
      if (bias != nullptr) {
        b = biasType == DType::F32 ? static_cast<double>(static_cast<const float*>(bias)[n])
                                   : static_cast<double>(bf16BitsToF32(static_cast<const uint16_t*>(bias)[n]));
      }
      for (int64_t m = 0; m < M; ++m) {
        const float* ar = aVal.data() + m * K;
        double acc = 0.0;
        for (int64_t k = 0; k < K; ++k) acc += static_cast<double>(ar[k]) * static_cast<double>(wRow[k]);
        const float v = static_cast<float>(scale * acc + b);
        if (outType == DType::F32) static_cast<float*>(out)[m * N + n] = v;
        else static_cast<uint16_t*>(out)[m * N + n] = f32ToBf16Bits(v);
      }
    }
  };

  const double work = static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K);
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  int64_t workers = work < 1e6 ? 1 : std::min<int64_t>({static_cast<int64_t>(hw), 32, N});
  if (workers <= 1) {
    columns(0, N);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (N + workers - 1) / workers;
  for (int64_t w = 0; w < workers; ++w) {
    const int64_t b = w * per, e = std::min(N, b + per);
    if (b >= e) continue;
    try {
      pool.emplace_back(columns, b, e);
    } catch (const std::system_error&) {
      columns(b, e);  // no thread to be had: this one does the slice
    }
  }
  for (auto& th : pool) th.join();
}

void groupedGemm(const GroupedGemmArgs& args) {
  const int64_t E = args.E, rows = args.rows, N = args.N, K = args.K;
  const bool xFp4 = args.xType == DType::U8, outFp4 = args.outType == DType::U8;
  if (outFp4 && args.outGlobalScaleOut != nullptr && args.outGlobalScaleOut != args.outGlobalScale) {
    std::memcpy(args.outGlobalScaleOut, args.outGlobalScale, sizeof(float));
  }
  if (rows == 0 || N == 0) return;
  const bool swiglu = args.epilogue == GroupedEpilogue::Swiglu;
  const int64_t I = N / 2, outN = groupedOutColumns(args);
  std::vector<float> pre;
  std::vector<uint16_t> act;
  // Gather: an expert's rows of x, copied in layout order (zeros for a pair outside x)
  std::vector<uint8_t> gathered, gatheredScales;
  const int64_t xRowBytes = xFp4 ? K / 2 : 2 * K, xScaleBytes = K / kNvfp4Block;
  auto gather = [&](int64_t start, int64_t count) {
    gathered.assign(static_cast<size_t>(count * xRowBytes), 0);
    if (xFp4) gatheredScales.assign(static_cast<size_t>(count * xScaleBytes), 0);
    for (int64_t m = 0; m < count; ++m) {
      const int32_t pair = args.xRows[start + m];
      const int64_t t = pair >= 0 ? pair / args.gatherK : -1;
      if (t < 0 || t >= args.xTokens) continue;
      std::memcpy(gathered.data() + m * xRowBytes, static_cast<const uint8_t*>(args.x) + t * xRowBytes, static_cast<size_t>(xRowBytes));
      if (xFp4) std::memcpy(gatheredScales.data() + m * xScaleBytes, args.xScales + t * xScaleBytes, static_cast<size_t>(xScaleBytes));
    }
  };
  for (int64_t e = 0; e < E; ++e) {
    const int64_t start = args.offsets[e];
    int64_t count = args.counts[e];
    // The kernels' bounds: an expert's rows stay inside x (and inside its masked block).
    if (start < 0 || start >= rows || count <= 0) continue;
    count = std::min(count, rows - start);
    if (args.maxRowsPerExpert > 0) count = std::min(count, args.maxRowsPerExpert);
    GemmArgs g{};
    if (args.xRows) {
      gather(start, count);
      g.a = gathered.data();
      g.aType = xFp4 ? DType::U8 : DType::BF16;
      g.aScales = xFp4 ? gatheredScales.data() : nullptr;
      g.aGlobalScale = xFp4 ? args.xGlobalScale : nullptr;
    } else if (xFp4) {
      g.a = static_cast<const uint8_t*>(args.x) + start * (K / 2);
      g.aType = DType::U8;
      g.aScales = args.xScales + start * (K / kNvfp4Block);
      g.aGlobalScale = args.xGlobalScale;
    } else {
      g.a = static_cast<const uint16_t*>(args.x) + start * K;
      g.aType = DType::BF16;
    }
    g.wData = args.wData + e * N * (K / 2);
    g.wScales = args.wScales + e * N * (K / kNvfp4Block);
    g.wGlobalScale = args.wGlobalScale + e;
    g.biasType = DType::F32;
    g.M = count;
    g.N = N;
    g.K = K;
    g.alpha = 1.0f;
    if (!swiglu) {
      g.out = static_cast<uint16_t*>(args.out) + start * outN;
      g.outType = DType::BF16;
      gemm(g);
      continue;
    }
    // Gate and up as the dense GEMM rounds them to f32, then silu(gate) * up in f32, rounded to bf16.
    pre.resize(static_cast<size_t>(count * N));
    g.out = pre.data();
    g.outType = DType::F32;
    gemm(g);
    uint16_t* out = outFp4 ? nullptr : static_cast<uint16_t*>(args.out) + start * outN;
    if (outFp4) act.resize(static_cast<size_t>(count * I));
    for (int64_t m = 0; m < count; ++m) {
      for (int64_t j = 0; j < I; ++j) {
        const float gate = pre[m * N + j], up = pre[m * N + I + j];
        const uint16_t v = f32ToBf16Bits(gate / (1.0f + std::exp(-gate)) * up);
        if (outFp4) act[m * I + j] = v;
        else out[m * outN + j] = v;
      }
    }
    if (!outFp4) continue;
    // NVFP4 output: the bf16 rows above through the quantizer.
    QuantizeArgs q{};
    q.x = act.data();
    q.xType = DType::BF16;
    q.rows = count;
    q.K = I;
    q.globalScale = args.outGlobalScale;
    q.data = static_cast<uint8_t*>(args.out) + start * (I / 2);
    q.scales = args.outScales + start * (I / kNvfp4Block);
    q.globalScaleOut = nullptr;
    quantize(q);
  }
}

}  // namespace moe::cpu::nvfp4
