// Preconditions both backends share. Each op's argument struct has a validate() in its family
// header that the N-API glue calls before either backend runs; a failure is a MoeError whose
// code and message name the argument, never a CUDA error.
#pragma once
#include <string>

#include "runtime/errors.h"

namespace moe {

// Throws MoeError(code, "<argument>: <message>") unless ok. A macro, so that the message (often
// built with std::to_string) is only made on failure: these checks run on every op call.
#define MOE_REQUIRE(ok, code, argument, message)                          \
  do {                                                                     \
    if (!(ok)) ::moe::fail((code), std::string(argument) + ": " + (message)); \
  } while (0)

}  // namespace moe
