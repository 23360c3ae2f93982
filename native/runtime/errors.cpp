#include "runtime/errors.h"

namespace moe {

void fail(const char* code, const std::string& message) { throw Error(code, message); }

}  // namespace moe
