// CPU reference for MTP draft verification (speculative decoding). It defines the exact
// semantics that native/kernels/mtp reproduces on the GPU; see common/mtp.h for the contract
// (parameters, tie rules, random streams). Arguments pass validate() before they get here.
#pragma once
#include "common/mtp.h"

namespace moe::cpu::mtp {

void verifyDrafts(const VerifyDraftsArgs& args);

}  // namespace moe::cpu::mtp
