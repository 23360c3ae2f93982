// Preconditions both backends share. Each op's argument struct has a validate() in its family
// header that the N-API glue calls before either backend runs; a failure is a MoeError whose
// code and message name the argument, never a CUDA error.
#pragma once
#include <string>

#include "runtime/errors.h"

namespace moe {

// Throws MoeError(code, "<argument>: <message>") unless ok.
inline void require(bool ok, const char* code, const char* argument, const std::string& message) {
  if (!ok) fail(code, std::string(argument) + ": " + message);
}

}  // namespace moe
