#include "cpu/ep/ep.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/nvfp4.h"
#include "common/routing_rules.h"
#include "cpu/common/numeric.h"
#include "cpu/nvfp4/nvfp4.h"

namespace moe::cpu::ep {
namespace E = moe::ep;
namespace {

template <typename T>
T* at(uint64_t address) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(address));
}

uint32_t countOf(uint64_t word, uint32_t epoch, int32_t rank, const char* what) {
  const uint32_t e = static_cast<uint32_t>(word >> 32);
  if (e != epoch) {
    fail("E_COMM", std::string(what) + ": rank " + std::to_string(rank) + "'s data is from call " + std::to_string(e) +
                       ", this call is " + std::to_string(epoch) + " (the ranks' calls are out of step)");
  }
  return static_cast<uint32_t>(word);
}

void encodeFp8(const uint16_t* x, int64_t hidden, uint8_t* out) {
  float* scales = reinterpret_cast<float*>(out + hidden);
  for (int64_t b0 = 0, blk = 0; b0 < hidden; b0 += E::kFp8Block, ++blk) {
    const int64_t b1 = std::min<int64_t>(hidden, b0 + E::kFp8Block);
    float amax = 0.0f;
    for (int64_t i = b0; i < b1; ++i) {
      const float a = std::fabs(bf16BitsToF32(x[i]));
      amax = a > amax ? a : amax;  // NaN never wins
    }
    float s = amax / 448.0f;
    if (s == 0.0f) s = 1.0f;
    std::memcpy(scales + blk, &s, 4);
    for (int64_t i = b0; i < b1; ++i) out[i] = f32ToE4m3Bits(bf16BitsToF32(x[i]) / s);
  }
}

void decodeFp8(const uint8_t* in, int64_t hidden, uint16_t* out) {
  const float* scales = reinterpret_cast<const float*>(in + hidden);
  for (int64_t i = 0; i < hidden; ++i) {
    float s;
    std::memcpy(&s, scales + i / E::kFp8Block, 4);
    out[i] = f32ToBf16Bits(e4m3BitsToF32(in[i]) * s);
  }
}

// The nvfp4 family's quantizer on one row: amax, the global scale from it, the blocks.
void encodeNvfp4(const uint16_t* x, int64_t hidden, uint8_t* out) {
  uint8_t* data = out;
  uint8_t* scales = out + hidden / 2;
  float* gs = reinterpret_cast<float*>(out + hidden / 2 + hidden / 16);
  float amax = 0.0f;
  nvfp4::amax(AmaxArgs{x, DType::BF16, hidden, &amax});
  float g = 0.0f;
  nvfp4::globalScaleFromAmax(GlobalScaleArgs{&amax, &g});
  std::memcpy(gs, &g, 4);
  QuantizeArgs q{};
  q.x = x;
  q.xType = DType::BF16;
  q.rows = 1;
  q.K = hidden;
  q.globalScale = &g;
  q.globalScaleOut = nullptr;
  q.data = data;
  q.scales = scales;
  nvfp4::quantize(q);
}

void decodeNvfp4(const uint8_t* in, int64_t hidden, uint16_t* out) {
  float g;
  std::memcpy(&g, in + hidden / 2 + hidden / 16, 4);
  DequantizeArgs d{};
  d.data = in;
  d.scales = in + hidden / 2;
  d.globalScale = &g;
  d.rows = 1;
  d.K = hidden;
  d.out = out;
  d.outType = DType::BF16;
  nvfp4::dequantize(d);
}

}  // namespace

void encodeRow(int32_t payload, const uint16_t* x, int64_t hidden, uint8_t* out) {
  if (payload == E::kPayloadFp8) encodeFp8(x, hidden, out);
  else if (payload == E::kPayloadNvfp4) encodeNvfp4(x, hidden, out);
  else std::memcpy(out, x, 2 * hidden);
}

void decodeRow(int32_t payload, const uint8_t* in, int64_t hidden, uint16_t* out) {
  if (payload == E::kPayloadFp8) decodeFp8(in, hidden, out);
  else if (payload == E::kPayloadNvfp4) decodeNvfp4(in, hidden, out);
  else std::memcpy(out, in, 2 * hidden);
}

void dispatchSend(const EpDispatchSendArgs& a) {
  const EpShape& s = a.shape;
  const int32_t R = s.ranks, K = s.k, L = s.experts / s.ranks;
  const int64_t H = s.hidden, slot = E::slotBytes(s.payload, H, K), meta = E::metaOffset(s.payload, H);
  std::vector<uint32_t> next(R, 0);
  std::vector<int32_t> dest(K);
  int32_t errors = 0;
  for (int64_t t = 0; t < a.tokens; ++t) {
    const int32_t* ids = a.ids + t * K;
    for (int32_t i = 0; i < K; ++i) {
      dest[i] = ids[i] >= 0 && ids[i] < s.experts ? ids[i] / L : -1;
      if (dest[i] < 0) {
        ++errors;
        a.combineIndex[t * K + i] = -1;
      }
    }
    for (int32_t d = 0; d < R; ++d) {
      if (std::find(dest.begin(), dest.end(), d) == dest.end()) continue;
      const uint32_t j = next[d]++;
      uint8_t* p = at<uint8_t>(a.dataDst[d]) + j * slot;
      encodeRow(s.payload, a.x + t * H, H, p);
      int32_t* m = reinterpret_cast<int32_t*>(p + meta);
      m[0] = static_cast<int32_t>(t);
      float* w = reinterpret_cast<float*>(m + 1 + K);
      for (int32_t i = 0; i < K; ++i) {
        const bool here = dest[i] == d;
        m[1 + i] = here ? ids[i] - d * L : -1;
        w[i] = here ? a.weights[t * K + i] : 0.0f;
        if (here) a.combineIndex[t * K + i] = static_cast<int32_t>((int64_t{d} * s.maxTokens + j) * K + i);
      }
    }
  }
  for (int32_t d = 0; d < R; ++d) *at<uint64_t>(a.countDst[d]) = E::countWord(*a.epoch + 1, next[d]);
  *a.errors = errors;
}

void dispatchRecv(const EpDispatchRecvArgs& a) {
  const EpShape& s = a.shape;
  const int32_t R = s.ranks, K = s.k, L = s.experts / s.ranks;
  const int64_t H = s.hidden, M = s.maxTokens, slot = E::slotBytes(s.payload, H, K), meta = E::metaOffset(s.payload, H);
  const int64_t region = E::dispatchRegionBytes(s.payload, H, K, M);
  const uint32_t epoch = *a.epoch + 1;
  std::vector<uint32_t> count(R);
  for (int32_t r = 0; r < R; ++r) {
    const uint32_t word = countOf(a.counts[r], epoch, r, "dispatch");
    count[r] = std::min<uint32_t>(word & ~E::kPayloadFollows, static_cast<uint32_t>(M));
    if ((word & E::kPayloadFollows) == 0) continue;
    // an overlapped send: each chunk's payloads are there once its flag carries this call
    const uint32_t* flags = reinterpret_cast<const uint32_t*>(a.regions + r * region + E::flagsOffset(s.payload, H, K, M));
    for (int64_t c = 0; c < (count[r] + E::kChunkSlots - 1) / E::kChunkSlots; ++c) {
      if (flags[c] != epoch) fail("E_COMM", "dispatch: rank " + std::to_string(r) + "'s payloads of chunk " + std::to_string(c) + " have not arrived");
    }
  }
  auto localId = [&](int64_t i, int32_t kk) -> int32_t {
    const int64_t r = i / M, j = i % M;
    if (j >= count[r]) return -1;
    return reinterpret_cast<const int32_t*>(a.regions + r * region + j * slot + meta)[1 + kk];
  };
  const int64_t slots = int64_t{R} * M;
  // pairs in slot order: a stable counting sort by local expert, as routing's expertLayout
  std::vector<int64_t> total(L, 0);
  int32_t errors = 0;
  for (int64_t i = 0; i < slots; ++i) {
    for (int32_t kk = 0; kk < K; ++kk) {
      const int32_t e = localId(i, kk);
      if (e >= L || e < -1) ++errors;
      else if (e >= 0) ++total[e];
    }
  }
  const int64_t Mx = a.maxPerExpert;
  int64_t dropped = 0;
  a.offsets[0] = 0;
  for (int32_t e = 0; e < L; ++e) {
    if (Mx > 0) {
      a.layoutCounts[e] = static_cast<int32_t>(std::min(total[e], Mx));
      dropped += total[e] - a.layoutCounts[e];
      a.offsets[e + 1] = static_cast<int32_t>((e + 1) * Mx);
    } else {
      a.layoutCounts[e] = static_cast<int32_t>(total[e]);
      a.offsets[e + 1] = static_cast<int32_t>(a.offsets[e] + (total[e] + a.align - 1) / a.align * a.align);
    }
  }
  std::fill(a.sourceIndex, a.sourceIndex + a.rows, -1);
  std::vector<int64_t> next(L, 0);
  for (int64_t i = 0; i < slots; ++i) {
    for (int32_t kk = 0; kk < K; ++kk) {
      const int32_t e = localId(i, kk);
      int32_t row = -1;
      if (e >= 0 && e < L) {
        const int64_t n = next[e]++;
        if (Mx == 0 || n < Mx) {
          row = static_cast<int32_t>(a.offsets[e] + n);
          a.sourceIndex[row] = static_cast<int32_t>(i * K + kk);
        }
      }
      a.rowIndex[i * K + kk] = row;
    }
  }
  const int64_t used = a.offsets[L];
  if (a.gather) {
    for (int64_t i = 0; i < slots; ++i) {
      if (i % M < count[i / M]) decodeRow(s.payload, a.regions + (i / M) * region + (i % M) * slot, H, a.tokensOut + i * H);
    }
  }
  for (int64_t r = 0; r < used && !a.gather; ++r) {
    uint16_t* dst = a.tokensOut + r * H;
    const int32_t src = a.sourceIndex[r];
    if (src < 0) {
      std::memset(dst, 0, 2 * H);
      continue;
    }
    const int64_t i = src / K;
    decodeRow(s.payload, a.regions + (i / M) * region + (i % M) * slot, H, dst);
  }
  *a.usedRows = static_cast<int32_t>(used);
  *a.dropped = static_cast<int32_t>(dropped);
  *a.errors = errors;
  for (int32_t r = 0; r < R; ++r) a.recvCounts[r] = count[r];
  *a.epoch = epoch;
}

void dispatch(const EpDispatchArgs& a) {
  dispatchSend(a.send);
  dispatchRecv(a.recv);
}

void combineSend(const EpCombineSendArgs& a) {
  const EpShape& s = a.shape;
  const int32_t R = s.ranks, K = s.k, entries = E::combineEntries(s.combine, K);
  const bool reduced = s.combine == E::kCombineReduced;
  const int64_t H = s.hidden, M = s.maxTokens, rowsAt = E::combineRowsOffset(M, entries);
  const int64_t slot = E::slotBytes(s.payload, H, K), meta = E::metaOffset(s.payload, H), region = E::dispatchRegionBytes(s.payload, H, K, M);
  std::vector<float> acc(reduced ? H : 0);
  for (int32_t src = 0; src < R; ++src) {
    const uint32_t n = std::min<uint32_t>(a.recvCounts[src], static_cast<uint32_t>(M));
    uint8_t* out = at<uint8_t>(a.dataDst[src]);
    int32_t* valid = reinterpret_cast<int32_t*>(out);
    uint16_t* rows = reinterpret_cast<uint16_t*>(out + rowsAt);
    for (uint32_t j = 0; j < n; ++j) {
      const int32_t* rowOf = a.rowIndex + (src * M + j) * K;
      if (!reduced) {
        for (int32_t kk = 0; kk < K; ++kk) {
          const int64_t e = int64_t{j} * K + kk;
          const int32_t r = rowOf[kk];
          const bool ok = r >= 0 && r < a.rows;
          valid[e] = ok ? 1 : 0;
          if (ok) std::memcpy(rows + e * H, a.y + int64_t{r} * H, 2 * H);
        }
        continue;
      }
      // the slot's weights, as its sender wrote them: after the source token and the k local ids
      const uint8_t* weights = a.regions + src * region + int64_t{j} * slot + meta + 4 + 4 * int64_t{K};
      std::fill(acc.begin(), acc.end(), 0.0f);
      bool any = false;
      for (int32_t kk = 0; kk < K; ++kk) {
        const int32_t r = rowOf[kk];
        if (r < 0 || r >= a.rows) continue;
        float w;
        std::memcpy(&w, weights + 4 * kk, 4);
        const uint16_t* y = a.y + int64_t{r} * H;
        for (int64_t h = 0; h < H; ++h) acc[h] = routing_rules::fma(w, bf16BitsToF32(y[h]), acc[h]);
        any = true;
      }
      valid[j] = any ? 1 : 0;
      if (any) {
        for (int64_t h = 0; h < H; ++h) rows[int64_t{j} * H + h] = f32ToBf16Bits(acc[h]);
      }
    }
    *at<uint64_t>(a.countDst[src]) = E::countWord(*a.epoch, n);
  }
}

void combineRecv(const EpCombineRecvArgs& a) {
  const EpShape& s = a.shape;
  const int32_t R = s.ranks, K = s.k, entries = E::combineEntries(s.combine, K);
  const bool reduced = s.combine == E::kCombineReduced;
  const int64_t H = s.hidden, M = s.maxTokens, region = E::combineRegionBytes(H, entries, M), rowsAt = E::combineRowsOffset(M, entries);
  std::vector<uint32_t> count(R);
  for (int32_t r = 0; r < R; ++r) {
    const uint32_t word = countOf(a.counts[r], *a.epoch, r, "combine");
    count[r] = std::min<uint32_t>(word & ~E::kPayloadFollows, static_cast<uint32_t>(M));
    if ((word & E::kPayloadFollows) == 0) continue;
    // an overlapped send: each chunk's entries are there once its flag carries this call
    const uint32_t* flags = reinterpret_cast<const uint32_t*>(a.regions + r * region + E::combineFlagsOffset(H, entries, M));
    for (int64_t c = 0; c < (count[r] + E::kChunkSlots - 1) / E::kChunkSlots; ++c) {
      if (flags[c] != *a.epoch) fail("E_COMM", "combine: rank " + std::to_string(r) + "'s rows of chunk " + std::to_string(c) + " have not arrived");
    }
  }
  std::vector<float> acc(H);
  for (int64_t t = 0; t < a.tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int32_t kk = 0; kk < K; ++kk) {
      const int32_t idx = a.combineIndex[t * K + kk];
      if (idx < 0) continue;
      const int64_t d = idx / (M * K), j = idx % (M * K) / K;
      if (d >= R || j >= count[d]) continue;
      float w = a.weights[t * K + kk];
      int64_t e = idx % (M * K);
      if (reduced) {
        // a rank's entry adds once, at the token's first pair on that rank
        bool seen = false;
        for (int32_t q = 0; q < kk && !seen; ++q) seen = a.combineIndex[t * K + q] >= 0 && a.combineIndex[t * K + q] / (M * K) == d;
        if (seen) continue;
        w = 1.0f;
        e = j;
      }
      const uint8_t* base = a.regions + d * region;
      if (reinterpret_cast<const int32_t*>(base)[e] != 1) continue;
      const uint16_t* y = reinterpret_cast<const uint16_t*>(base + rowsAt) + e * H;
      for (int64_t h = 0; h < H; ++h) acc[h] = routing_rules::fma(w, bf16BitsToF32(y[h]), acc[h]);
    }
    if (a.outType == DType::BF16) {
      uint16_t* o = static_cast<uint16_t*>(a.out) + t * H;
      for (int64_t h = 0; h < H; ++h) o[h] = f32ToBf16Bits(acc[h]);
    } else {
      std::memcpy(static_cast<float*>(a.out) + t * H, acc.data(), H * sizeof(float));
    }
  }
}

}  // namespace moe::cpu::ep
