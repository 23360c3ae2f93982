// CPU reference of the ep family: what dispatch and combine compute, on host pointers (the
// destination tables hold host addresses). A count word whose epoch is not the call's is E_COMM:
// the ranks' calls are out of step.
#pragma once
#include "common/ep.h"

namespace moe::cpu::ep {

void dispatchSend(const EpDispatchSendArgs& args);
void dispatchRecv(const EpDispatchRecvArgs& args);
void dispatch(const EpDispatchArgs& args);
void combineSend(const EpCombineSendArgs& args);
void combineRecv(const EpCombineRecvArgs& args);

// One row of `hidden` bf16 values to a payload and back (exposed for the tests' error bounds).
void encodeRow(int32_t payload, const uint16_t* x, int64_t hidden, uint8_t* out);
void decodeRow(int32_t payload, const uint8_t* in, int64_t hidden, uint16_t* out);

}  // namespace moe::cpu::ep
