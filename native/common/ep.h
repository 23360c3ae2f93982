// The ep family's argument structs (expert-parallel dispatch and combine), shared by the CPU
// reference and the N-API glue, with the preconditions both share.
//
// R ranks share E experts, contiguously: rank r holds experts [r*L, (r+1)*L), L = E/R. Each
// rank owns one symmetric buffer; rank s's data for rank d lands in region s of d's buffer, so
// every region has exactly one writer and a sender never needs to know what the others send:
//
//   dispatch region (per source rank): maxTokens slots. Slot j holds the j-th token (in token
//     order) that the source sends to this rank, once however many of its k experts live here:
//       payload  (payloadBytes: the row as bf16, fp8 or nvfp4; see below)
//       meta     i32 source token, k x i32 local expert id (-1: not this rank's), k x f32 weight
//   combine region (per destination rank, on the source), written by the rank that received
//   slot j, in one of two forms (the buffer's combine option, the same on every rank):
//     exact:   maxTokens x k entries, entry (j, kk) = the expert output of slot j's pair kk
//       valid    i32 [maxTokens * k]: 1 where the row was computed (0: dropped, or not that rank's)
//       rows     bf16 [maxTokens * k, hidden]
//     reduced: maxTokens entries, entry j = bf16 of the f32 sum, over slot j's pairs that got a
//       row here in pair order, of weight x expert output (fused multiply-adds from 0): one row
//       per (token, rank) on the wire instead of one per pair
//       valid    i32 [maxTokens]: 1 where at least one pair of the slot got a row
//       rows     bf16 [maxTokens, hidden]
//     then a u32 chunk flag per kChunkSlots slots (see "Overlapped sends").
//   chunk flags: u32 per chunk of kChunkSlots slots, after the slots (see "Overlapped sends").
//   count words: one u64 per region, (epoch << 32) | rows sent, written after the region.
//
// Overlapped sends (a device's dispatchSend or combineSend given a side stream): the count word
// goes out first (dispatch: once the slots' metadata has landed), with bit 31 of its count set
// (kPayloadFollows); the rest follows on the side stream, and chunk flag c = the call number once
// everything of chunk c's slots has landed (dispatch: the payloads; combine: the slots' valid
// flags and rows). The dispatch receiver computes the layout from the metadata while the payloads
// travel and expands each chunk into its experts' rows as soon as its flag is there; the combine
// receiver sums each token once the chunks of its slots are there. dispatchRecv and combineRecv,
// given the same side stream, make the launch stream wait for the side stream's work before they
// return.
//
// The call number (epoch) lives in the rank's own memory, so that a captured graph replays with
// the next number: dispatchSend sends with *epoch + 1, dispatchRecv expects *epoch + 1 and then
// stores it, combineSend and combineRecv use *epoch. A receiver on a device waits for its count
// words with a bound (timeoutNs); past it, it records the timeout in status (kStatus*, and the
// first rank it waited for), treats the missing regions as empty and never reads them.
//
// A sender writes through a table of R destination pointers (one region and one count word per
// destination): the addresses in the peers' buffers for a one-sided transport, a local staging
// buffer for one that ships bytes (the host transport). The receive side reads its own buffer.
//
// Payloads (one row of `hidden` bf16 values; the tokens handed to the experts are bf16):
//   bf16   the row's bytes.
//   fp8    per block of 128 elements: f32 scale s = amax / 448 (1 where amax is 0), then
//          e4m3(x / s) (round to nearest even, saturating); bytes: hidden + 4 * ceil(hidden/128).
//          Dequantized as bf16(e4m3 * s): |error| <= 2^-4 |x| + 2^-10 s, before the bf16 rounding.
//   nvfp4  the nvfp4 family's quantizer on one row: global scale amax / 2688, block scales of
//          16 elements in e4m3, e2m1 elements; bytes: hidden/2 + hidden/16 + 4 (hidden % 16 == 0).
//          Dequantized as bf16(e2m1 * e4m3 * global): |error| <= the block's amax / 6, times
//          (1 + 2^-4) for the e4m3 rounding of its scale, before the bf16 rounding (about 3.55x
//          fewer bytes than bf16).
#pragma once
#include <cstdint>
#include <string>

#include "common/check.h"
#include "common/dtype.h"

#if defined(__CUDACC__)
#define EP_HD __host__ __device__ __forceinline__
#else
#define EP_HD inline
#endif

namespace moe {

namespace ep {
constexpr int32_t kPayloadBf16 = 0;
constexpr int32_t kPayloadFp8 = 1;
constexpr int32_t kPayloadNvfp4 = 2;
constexpr int32_t kCombineExact = 0;
constexpr int32_t kCombineReduced = 1;
constexpr int32_t kFp8Block = 128;
constexpr int32_t kMaxTopK = 16;
constexpr int32_t kMaxLocalExperts = 1024;
constexpr int64_t kMaxRanks = 65536;
constexpr int32_t kChunkSlots = 64;
constexpr uint32_t kPayloadFollows = 0x80000000u;

EP_HD int64_t roundUp16(int64_t n) { return (n + 15) / 16 * 16; }

EP_HD int64_t payloadBytes(int32_t payload, int64_t hidden) {
  if (payload == kPayloadFp8) return hidden + 4 * ((hidden + kFp8Block - 1) / kFp8Block);
  if (payload == kPayloadNvfp4) return hidden / 2 + hidden / 16 + 4;
  return 2 * hidden;
}

// Slot: payload, then meta, each starting on 16 bytes.
EP_HD int64_t metaOffset(int32_t payload, int64_t hidden) { return roundUp16(payloadBytes(payload, hidden)); }
EP_HD int64_t slotBytes(int32_t payload, int64_t hidden, int32_t k) { return metaOffset(payload, hidden) + roundUp16(4 + 8 * int64_t{k}); }
EP_HD int64_t chunks(int64_t maxTokens) { return (maxTokens + kChunkSlots - 1) / kChunkSlots; }
// The chunk flags start right after the slots (on 16 bytes: slots are multiples of 16).
EP_HD int64_t flagsOffset(int32_t payload, int64_t hidden, int32_t k, int64_t maxTokens) { return maxTokens * slotBytes(payload, hidden, k); }
EP_HD int64_t dispatchRegionBytes(int32_t payload, int64_t hidden, int32_t k, int64_t maxTokens) {
  return flagsOffset(payload, hidden, k, maxTokens) + roundUp16(4 * chunks(maxTokens));
}
// Combine region: entries per slot (k exact, 1 reduced), valid flags, rows, then the chunk flags;
// each region starts on 16 bytes, so that its flags load as words.
EP_HD int32_t combineEntries(int32_t combine, int32_t k) { return combine == kCombineReduced ? 1 : k; }
EP_HD int64_t combineRowsOffset(int64_t maxTokens, int32_t entries) { return roundUp16(4 * maxTokens * entries); }
EP_HD int64_t combineFlagsOffset(int64_t hidden, int32_t entries, int64_t maxTokens) {
  return roundUp16(combineRowsOffset(maxTokens, entries) + maxTokens * entries * 2 * hidden);
}
EP_HD int64_t combineRegionBytes(int64_t hidden, int32_t entries, int64_t maxTokens) {
  return combineFlagsOffset(hidden, entries, maxTokens) + roundUp16(4 * chunks(maxTokens));
}
EP_HD uint64_t countWord(uint32_t epoch, uint32_t count) { return (static_cast<uint64_t>(epoch) << 32) | count; }
// A bf16 row that fills its payload exactly, at a 16-byte aligned x, is sent straight from x
// (no encoded copy).
EP_HD bool sendsRaw(int32_t payload, int64_t hidden, const void* x) {
  return payload == kPayloadBf16 && metaOffset(payload, hidden) == 2 * hidden && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}
// An overlapped exact combine leaves the pairs a rank sends itself out of its own region where
// their rows can be read from y in 16-byte pieces, as the sum reads a region's.
EP_HD bool combineReadsOwnY(int32_t combine, int64_t hidden, const void* y) {
  return combine == kCombineExact && hidden % 8 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0;
}

// status[0]: 0, or the op whose wait ran out; status[1]: the first rank it waited for.
constexpr int32_t kStatusDispatchTimeout = 1;
constexpr int32_t kStatusCombineTimeout = 2;
}  // namespace ep

// The shape every ep op shares.
struct EpShape {
  int32_t ranks;
  int32_t rank;
  int32_t experts;     // E, all ranks together; L = E / ranks per rank
  int32_t k;
  int64_t hidden;
  int64_t maxTokens;   // per rank and call
  int32_t payload;     // ep::kPayload*
  int32_t combine;     // ep::kCombine*
};

namespace ep {
// The shape with the byte sizes derived from it, as the device kernels take it.
struct EpShapeView {
  int32_t ranks, rank, experts, k;
  int64_t hidden, maxTokens;
  int32_t payload, combine, combineEntries;
  int64_t metaAt, slotBytes, regionBytes, combineRowsAt, combineRegionBytes, flagsAt, combineFlagsAt;
};

inline EpShapeView view(const EpShape& s) {
  const int32_t entries = combineEntries(s.combine, s.k);
  return {s.ranks, s.rank, s.experts, s.k, s.hidden, s.maxTokens, s.payload, s.combine, entries, metaOffset(s.payload, s.hidden),
          slotBytes(s.payload, s.hidden, s.k), dispatchRegionBytes(s.payload, s.hidden, s.k, s.maxTokens), combineRowsOffset(s.maxTokens, entries),
          combineRegionBytes(s.hidden, entries, s.maxTokens), flagsOffset(s.payload, s.hidden, s.k, s.maxTokens),
          combineFlagsOffset(s.hidden, entries, s.maxTokens)};
}
}  // namespace ep

inline void validate(const EpShape& s) {
  using namespace ep;
  MOE_REQUIRE(s.ranks >= 1 && s.ranks <= kMaxRanks, "E_ARGUMENT", "ranks", "expected 1 to 65536, got " + std::to_string(s.ranks));
  MOE_REQUIRE(s.rank >= 0 && s.rank < s.ranks, "E_ARGUMENT", "rank", "expected 0 to " + std::to_string(s.ranks - 1));
  MOE_REQUIRE(s.experts >= s.ranks && s.experts % s.ranks == 0 && s.experts / s.ranks <= kMaxLocalExperts, "E_ARGUMENT", "numExperts",
              std::to_string(s.experts) + " experts do not split into " + std::to_string(s.ranks) + " ranks of 1 to 1024");
  MOE_REQUIRE(s.k >= 1 && s.k <= kMaxTopK && s.k <= s.experts, "E_ARGUMENT", "topK", "expected 1 to min(16, numExperts), got " + std::to_string(s.k));
  MOE_REQUIRE(s.hidden >= 1, "E_ARGUMENT", "hidden", "expected at least 1, got " + std::to_string(s.hidden));
  MOE_REQUIRE(s.payload == kPayloadBf16 || s.payload == kPayloadFp8 || s.payload == kPayloadNvfp4, "E_ARGUMENT", "payload",
              "expected bf16, fp8 or nvfp4");
  MOE_REQUIRE(s.payload != kPayloadNvfp4 || s.hidden % 16 == 0, "E_ARGUMENT", "payload",
              "nvfp4 needs hidden to be a multiple of 16, got " + std::to_string(s.hidden));
  MOE_REQUIRE(s.combine == kCombineExact || s.combine == kCombineReduced, "E_ARGUMENT", "combine", "expected exact or reduced");
  MOE_REQUIRE(s.maxTokens >= 1 && s.maxTokens * s.ranks * s.k <= 2147483647LL, "E_ARGUMENT", "maxTokensPerRank",
              "expected at least 1, and ranks * maxTokensPerRank * topK below 2^31");
}

// dispatchSend: this rank's tokens to the ranks of their experts. For each destination d, the
// tokens t (ascending) with an expert in d's range go to slots 0.. of dataDst[d] (a dispatch
// region); then *countDst[d] = countWord(*epoch + 1, slots written). combineIndex[t*k + i] = where
// pair (t, i)'s expert output will sit in this rank's combine regions, ((d * maxTokens + j) * k + i),
// or -1 where ids[t, i] is outside [0, experts) (counted in *errors, sent nowhere).
struct EpDispatchSendArgs {
  EpShape shape;
  const uint16_t* x;           // bf16 [tokens, hidden]
  const int32_t* ids;          // [tokens, k], global expert ids
  const float* weights;        // [tokens, k]
  int64_t tokens;
  const uint64_t* dataDst;     // [ranks] addresses of dispatch regions
  const uint64_t* countDst;    // [ranks] addresses of u64 count words
  const uint32_t* epoch;       // [1] this rank's call number
  uint32_t* sync;              // [1] scratch of the device kernels, 0 between calls
  int32_t sms;                 // CTAs of the device copy kernel
  int32_t* combineIndex;       // [tokens, k]
  int32_t* errors;             // [1]
  // Overlapped send (devices only; the CPU ignores these): with sideStream, the metadata and the
  // count words go out on the launch stream, then forkEvent hands over to sideStream for the
  // payloads. The memory the side stream reads lives outside the stream's workspace:
  void* sideStream;            // cudaStream_t, or null: everything on the launch stream
  void* forkEvent;             // cudaEvent_t
  uint8_t* staging;            // [maxTokens, metaAt] the encoded rows; null where x is sent as it is
  uint32_t* sendCounts;        // [ranks + 1] the slots per destination, then the call number
  uint32_t* chunkDone;         // [ranks, chunks] zeros between calls
};

inline void validate(const EpDispatchSendArgs& a) {
  validate(a.shape);
  MOE_REQUIRE(a.tokens >= 0 && a.tokens <= a.shape.maxTokens, "E_SHAPE", "x",
              std::to_string(a.tokens) + " tokens exceed maxTokensPerRank = " + std::to_string(a.shape.maxTokens));
  MOE_REQUIRE(a.tokens == 0 || (a.x && a.ids && a.weights && a.combineIndex), "E_ARGUMENT", "x", "null data pointer");
  MOE_REQUIRE(a.sms >= 1 && a.sms <= 1024, "E_ARGUMENT", "sms", "expected 1 to 1024, got " + std::to_string(a.sms));
  MOE_REQUIRE(a.dataDst && a.countDst && a.epoch && a.sync && a.errors, "E_ARGUMENT", "buffer", "null data pointer");
  MOE_REQUIRE(!a.sideStream || (a.forkEvent && a.sendCounts && a.chunkDone && (a.staging || a.tokens == 0 || ep::sendsRaw(a.shape.payload, a.shape.hidden, a.x))),
              "E_ARGUMENT", "buffer", "an overlapped send needs its event, counters and (for an encoded payload) staging");
}

// dispatchRecv: the regions of this rank's buffer (region s: *counts[s] slots from rank s, whose
// epoch must be *epoch + 1; recvCounts[s] = those slots) -> the local experts' layout and rows. Received slot i = s * maxTokens + j
// plays the token of routing's layouts, so pair (i, kk) = i * k + kk, and within an expert pairs
// are in (source rank, source token) order: the order of the ranks' tokens concatenated.
// Contiguous (maxPerExpert == 0): rows = slots * k + L * (align - 1); masked: rows = L * maxPerExpert,
// pairs past an expert's first maxPerExpert dropped and counted. tokensOut [rows, hidden] bf16:
// the dequantized payload of each row's slot, zeros for padding, rows past usedRows untouched.
// Gather: tokensOut [slots, hidden] instead, row i the dequantized payload of received slot i
// (rows of slots not received untouched), for a grouped GEMM that reads layout row r from row
// sourceIndex[r] / k (GroupedGemmArgs::xRows): each token lands once, not once per expert.
struct EpDispatchRecvArgs {
  EpShape shape;
  const uint8_t* regions;      // ranks dispatch regions, region s first at s * dispatchRegionBytes
  const uint64_t* counts;      // [ranks]
  uint32_t* epoch;             // [1] advanced by one
  int64_t timeoutNs;
  int32_t* status;             // [2]
  uint32_t* recvCounts;        // [ranks] slots received from each rank (0 for a rank waited for in vain)
  int32_t align;
  int32_t maxPerExpert;
  int64_t rows;
  bool gather;
  uint16_t* tokensOut;         // bf16 [rows, hidden], or [slots, hidden] with gather
  int32_t* layoutCounts;       // [L]; masked: the last call's on entry, tokensOut rows beyond them zeros
  int32_t* offsets;            // [L + 1]
  int32_t* sourceIndex;        // [rows]
  int32_t* rowIndex;           // [slots * k]
  int32_t* usedRows;           // [1]
  int32_t* dropped;            // [1]
  int32_t* errors;             // [1] local ids outside [0, L) in received slots (never from a well-formed sender)
  // An overlapped send's end (devices only): the launch stream waits for joinEvent, recorded on
  // sideStream, before dispatchRecv returns.
  void* sideStream;            // cudaStream_t, or null
  void* joinEvent;             // cudaEvent_t
  // An overlapped send of x as it is leaves the payloads of the slots a rank sends itself out of
  // its own region (they would cross the device's memory twice): the receive reads those rows
  // from that send's x (ownRows, with sideStream) at the token each slot's metadata names.
  const uint16_t* ownRows;     // bf16 [tokens, hidden], or null
};

inline int64_t epLayoutRows(const EpShape& s, int32_t align, int32_t maxPerExpert) {
  const int64_t L = s.experts / s.ranks;
  return maxPerExpert > 0 ? L * maxPerExpert : int64_t{s.ranks} * s.maxTokens * s.k + L * (align - 1);
}

inline void validate(const EpDispatchRecvArgs& a) {
  validate(a.shape);
  MOE_REQUIRE(a.align >= 1 && a.align <= 1024, "E_ARGUMENT", "align", "expected 1 to 1024, got " + std::to_string(a.align));
  MOE_REQUIRE(a.maxPerExpert >= 0 && (a.maxPerExpert == 0 || a.align == 1), "E_ARGUMENT", "maxTokensPerExpert",
              "expected a positive integer, without align");
  const int64_t rows = epLayoutRows(a.shape, a.align, a.maxPerExpert);
  MOE_REQUIRE(a.rows == rows && rows <= 2147483647LL && rows * a.shape.hidden <= 2147483647LL * 8, "E_SHAPE", "layout",
              "expected " + std::to_string(rows) + " rows, got " + std::to_string(a.rows));
  MOE_REQUIRE(a.timeoutNs > 0, "E_ARGUMENT", "timeoutMs", "expected a positive timeout");
  MOE_REQUIRE(a.regions && a.counts && a.epoch && a.status && a.recvCounts && a.layoutCounts && a.offsets && a.rowIndex && a.usedRows && a.dropped && a.errors &&
                  (a.rows == 0 || (a.sourceIndex && a.tokensOut)),
              "E_ARGUMENT", "buffer", "null data pointer");
  MOE_REQUIRE(!a.sideStream || a.joinEvent, "E_ARGUMENT", "buffer", "an overlapped receive needs its event");
  MOE_REQUIRE(!a.ownRows || (a.sideStream && ep::sendsRaw(a.shape.payload, a.shape.hidden, a.ownRows)), "E_ARGUMENT", "x",
              "the own rows of a receive come from an overlapped send of x as it is (bf16, 16-byte aligned)");
}

// dispatch: dispatchSend(send), then dispatchRecv(recv), for a one-sided transport (whose send
// writes the receivers' regions, so that the receive may follow it without a host step). Both
// carry the same shape; send.epoch and recv.epoch are the same word. recvSync is this rank's
// device scratch of a one-launch dispatch (0 between calls).
struct EpDispatchArgs {
  EpDispatchSendArgs send;
  EpDispatchRecvArgs recv;
  uint32_t* recvSync;          // [1]
};

inline void validate(const EpDispatchArgs& a) {
  validate(a.send);
  validate(a.recv);
  MOE_REQUIRE(a.send.epoch == a.recv.epoch, "E_ARGUMENT", "buffer", "the send and the receive of one dispatch share the call number");
  MOE_REQUIRE(a.recvSync, "E_ARGUMENT", "buffer", "null data pointer");
}

// combineSend: the local experts' outputs y [rows, hidden] (bf16, rows of the dispatchRecv
// layout) back to the ranks their slots came from: for source s and slot j < its count, with
// row(kk) = y[rowIndex[(s*maxTokens+j)*k+kk]] where that index is in [0, rows):
//   exact:   entry (j, kk) of dataDst[s] (a combine region) gets valid = 1 and row(kk), or valid = 0;
//   reduced: entry j gets bf16(sum over those kk in order of fma(weight kk, row(kk), acc)), acc
//            from 0 and the weights those the slot's metadata carries in the dispatch regions,
//            and valid = 1, or valid = 0 where no pair of the slot got a row;
// then *countDst[s] = countWord(*epoch, count) (overlapped: countWord(*epoch, count |
// kPayloadFollows) first, and chunk flag c of dataDst[s] = *epoch once chunk c's entries are there;
// where combineReadsOwnY holds, source s = rank gets no entries, its receive reads y instead).
struct EpCombineSendArgs {
  EpShape shape;
  const uint16_t* y;           // bf16 [rows, hidden]
  int64_t rows;
  const uint8_t* regions;      // this rank's dispatch regions (dispatchRecv's): the weights of the reduced sum
  const int32_t* rowIndex;     // [slots * k] of the dispatch layout
  const uint32_t* recvCounts;  // [ranks] from dispatchRecv
  const uint64_t* dataDst;     // [ranks] addresses of combine regions
  const uint64_t* countDst;    // [ranks] addresses of u64 count words
  const uint32_t* epoch;       // [1]
  uint32_t* sync;              // [1] scratch of the device kernels, 0 between calls
  int32_t sms;                 // CTAs of the device copy kernel
  // Overlapped send (devices only; the CPU ignores these): with sideStream, the count words go
  // out on the launch stream (kPayloadFollows), then forkEvent hands over to sideStream for the
  // entries, each chunk of slots flagged in the source's combine region once complete.
  void* sideStream;            // cudaStream_t, or null: everything on the launch stream
  void* forkEvent;             // cudaEvent_t
  uint32_t* chunkDone;         // [ranks, chunks] zeros between calls
};

inline void validate(const EpCombineSendArgs& a) {
  validate(a.shape);
  MOE_REQUIRE(a.rows >= 0 && a.rows <= 2147483647LL, "E_SHAPE", "y", "expected 0 to 2^31 - 1 rows");
  MOE_REQUIRE(a.sms >= 1 && a.sms <= 1024, "E_ARGUMENT", "sms", "expected 1 to 1024, got " + std::to_string(a.sms));
  MOE_REQUIRE((a.rows == 0 || a.y) && a.regions && a.rowIndex && a.recvCounts && a.dataDst && a.countDst && a.epoch && a.sync, "E_ARGUMENT", "y",
              "null data pointer");
  MOE_REQUIRE(!a.sideStream || (a.forkEvent && a.chunkDone), "E_ARGUMENT", "buffer", "an overlapped send needs its event and counters");
}

// combineRecv: a region whose count word has kPayloadFollows is read chunk by chunk, each once its
// flag carries the call (bounded like the count words). exact: out[t] = sum over i = 0..k-1, in that order, of weights[t, i] *
// row(combineIndex[t, i]) for the pairs whose entry is valid, each step one f32 fused
// multiply-add from 0, rounded once to out's dtype: unpermute's arithmetic, so the result equals
// the single-device block's bits. reduced: out[t] = the f32 sum from 0 of the valid entries of
// the ranks t was sent to, in the order of their first pair in t's row of combineIndex, rounded
// once to out's dtype (each entry already rounded to bf16 on its expert's rank).
struct EpCombineRecvArgs {
  EpShape shape;
  const uint8_t* regions;      // ranks combine regions, region d first at d * combineRegionBytes
  const uint64_t* counts;      // [ranks], epoch *epoch
  const uint32_t* epoch;       // [1]
  int64_t timeoutNs;
  int32_t* status;             // [2]
  const int32_t* combineIndex; // [tokens, k] from dispatchSend
  const float* weights;        // [tokens, k]
  int64_t tokens;
  void* out;                   // [tokens, hidden]
  DType outType;               // BF16 or F32
  // An overlapped send's end (devices only): the launch stream waits for joinEvent, recorded on
  // sideStream, before combineRecv returns.
  void* sideStream;            // cudaStream_t, or null
  void* joinEvent;             // cudaEvent_t
  // Where an overlapped exact send left this rank's own pairs out (combineReadsOwnY of its y), the
  // receive reads them from that y through the dispatch layout's rowIndex, as combineSend would:
  // row(kk) of slot j of this rank = ownY[ownRowIndex[(rank*maxTokens+j)*k+kk]] where in [0, ownRows).
  const uint16_t* ownY;        // bf16 [ownRows, hidden], or null
  int64_t ownRows;
  const int32_t* ownRowIndex;
};

inline void validate(const EpCombineRecvArgs& a) {
  validate(a.shape);
  MOE_REQUIRE(a.tokens >= 0 && a.tokens <= a.shape.maxTokens, "E_SHAPE", "weights",
              std::to_string(a.tokens) + " tokens exceed maxTokensPerRank = " + std::to_string(a.shape.maxTokens));
  MOE_REQUIRE(a.outType == DType::BF16 || a.outType == DType::F32, "E_DTYPE", "out", "expected dtype bf16 or f32");
  MOE_REQUIRE(a.timeoutNs > 0, "E_ARGUMENT", "timeoutMs", "expected a positive timeout");
  MOE_REQUIRE(a.regions && a.counts && a.epoch && a.status && (a.tokens == 0 || (a.combineIndex && a.weights && a.out)), "E_ARGUMENT", "out", "null data pointer");
  MOE_REQUIRE(!a.sideStream || a.joinEvent, "E_ARGUMENT", "buffer", "an overlapped receive needs its event");
  MOE_REQUIRE(!a.ownY || (a.sideStream && a.ownRowIndex && a.ownRows >= 0 && a.ownRows <= 2147483647LL &&
                          ep::combineReadsOwnY(a.shape.combine, a.shape.hidden, a.ownY)),
              "E_ARGUMENT", "y", "the own rows of a combine come from an overlapped exact send of y (16-byte aligned rows)");
}

}  // namespace moe
