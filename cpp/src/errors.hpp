// One exception type inside the runtime: a status code of the C API and a one-line message.
#pragma once

#include <stdexcept>
#include <string>

#include "deblur.h"

namespace deblur {

class Error : public std::runtime_error {
 public:
  Error(deblur_status status, const std::string& message) : std::runtime_error(message), status(status) {}
  deblur_status status;
};

}  // namespace deblur
