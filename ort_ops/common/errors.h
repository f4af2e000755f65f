// Errors inside the library are C++ exceptions; at the C boundary they become OrtStatus objects.
#pragma once

#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "common/ort_api.h"

namespace caffe2_ort {

class OpError : public std::runtime_error {
 public:
  OpError(OrtErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  OrtErrorCode code() const { return code_; }

 private:
  OrtErrorCode code_;
};

// Builds a message from streamable parts: Fail(ORT_INVALID_ARGUMENT, "x = ", x).
template <typename... Parts>
[[noreturn]] void Fail(OrtErrorCode code, Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  throw OpError(code, os.str());
}

// Runs fn and converts anything it throws into a status: nothing may cross the C boundary.
template <typename Fn>
OrtStatus* StatusFrom(Fn&& fn) noexcept {
  try {
    fn();
    return nullptr;
  } catch (const OpError& e) {
    return Api().CreateStatus(e.code(), e.what());
  } catch (const Ort::Exception& e) {
    return Api().CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::bad_alloc&) {
    return Api().CreateStatus(ORT_FAIL, "caffe2-ort: out of memory");
  } catch (const std::exception& e) {
    return Api().CreateStatus(ORT_FAIL, e.what());
  } catch (...) {
    return Api().CreateStatus(ORT_FAIL, "caffe2-ort: unknown error");
  }
}

}  // namespace caffe2_ort
