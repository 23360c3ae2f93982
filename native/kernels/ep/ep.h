// The ep family's CUDA launchers (common/ep.h), on the launch's stream. The destination tables
// hold device addresses this device can write: its own memory (ranks that share a device) or a
// peer's (peer access enabled by the runtime). Counts and completion travel as u64 count words:
// written with st.release.sys after a system-scope fence, waited for with ld.acquire.sys and a
// bound taken from %globaltimer, so a missing peer becomes a status word, never a hang.
#pragma once
#include "common/ep.h"
#include "kernels/common/launch.h"

namespace moe::kernels::ep {

// Three launches: the slots of each destination (a CTA per destination), the payload of each
// token (encoded once into scratch; an aligned bf16 payload is sent from x and skips it), and the
// copy into the destinations' regions (a warp per token, its row read once for all its
// destinations, on args.sms CTAs; the last CTA to finish publishes the count words). With
// args.sideStream the copy splits: the metadata and the count words on the launch stream, then
// the encode and the payloads on the side stream, each chunk of slots flagged as it completes.
cudaError_t dispatchSend(const EpDispatchSendArgs& args, const Launch& launch);
// The wait (one CTA), the layout (per tile of slots in three launches; one CTA where the receive
// is small) and the rows (a CTA per received slot, stored into the rows of its pairs, after its
// chunk's flag where the sender's payloads follow; padding rows zeroed per expert, masked: only
// those this call or the last one wrote). With args.sideStream the launch stream then waits for
// the side stream's work (args.joinEvent).
cudaError_t dispatchRecv(const EpDispatchRecvArgs& args, const Launch& launch);
// dispatchSend then dispatchRecv. A decode step's with gather (a send that scans its own slots,
// an aligned bf16 payload, a small layout, no side stream) is one launch of at most
// args.send.sms CTAs of 1024 threads, all resident at once: the send, then the wait, the layout
// (one CTA) and the rows (the others). The callers' kernels must be able to run at once: one
// rank per device.
cudaError_t dispatch(const EpDispatchArgs& args, const Launch& launch);
// A warp per received pair and 4 KB part of its row on args.sms CTAs; the last CTA publishes the
// count words. With args.sideStream the count words go first, then the entries on the side
// stream, a CTA per group of slots, each chunk of slots flagged as it completes.
cudaError_t combineSend(const EpCombineSendArgs& args, const Launch& launch);
// The wait (one CTA) and the sums (a CTA per group of tokens, or per token and slice of the hidden
// dimension), each pair's chunk awaited where the source's rows follow. With args.sideStream the
// launch stream then waits for the side stream's work (args.joinEvent).
cudaError_t combineRecv(const EpCombineRecvArgs& args, const Launch& launch);

}  // namespace moe::kernels::ep
