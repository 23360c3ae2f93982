// The error the native layers throw; the N-API glue turns it into a JS MoeError with the
// same code. Codes are the ones MoeErrorCode lists in lib/errors.ts.
#pragma once
#include <stdexcept>
#include <string>

namespace moe {

class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

[[noreturn]] void fail(const char* code, const std::string& message);

}  // namespace moe
