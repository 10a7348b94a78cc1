// Error reporting of detnas's C++ shims (device, c10d): a caught exception's message is
// copied into the caller's buffer, and GUARD_RETURN wraps a body that returns its own status.
#pragma once

#include <cstring>
#include <exception>

namespace detnas_shim {

inline void copy_message(const char* msg, char* err, size_t errlen) {
  if (err != nullptr && errlen > 0) {
    std::strncpy(err, msg, errlen - 1);
    err[errlen - 1] = '\0';
  }
}

}  // namespace detnas_shim

// Runs the body; an exception becomes status 1 with its message in `err` (the enclosing
// function's `char* err, size_t errlen` parameters).
#define GUARD_RETURN(...)                                  \
  try {                                                    \
    __VA_ARGS__                                            \
  } catch (const std::exception& e) {                      \
    detnas_shim::copy_message(e.what(), err, errlen);      \
    return 1;                                              \
  }
