// ONNX Runtime (C++ API, CPU) backend of the tiling core: one session per graph, reused.
#pragma once

#include <onnxruntime_cxx_api.h>

#include <map>
#include <memory>
#include <string>

#include "tiling.hpp"

namespace deblur {

class OrtBackend : public Backend {
 public:
  // threads: intra-op threads, 0 lets ONNX Runtime use all cores. Throws Error.
  OrtBackend(const Manifest& manifest, const std::string& precision, int threads);
  void run(const std::string& graph, const std::vector<Feed>& feeds, const std::string& output,
           const std::vector<int64_t>& shape, float* out) override;
  std::string describe() const;

 private:
  std::string precision_;
  int threads_;
  Ort::MemoryInfo memory_;
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
};

}  // namespace deblur
