#include "ort_backend.hpp"

#include "errors.hpp"

namespace deblur {

namespace {

Ort::Env& environment() {
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "deblur");
  return env;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

OrtBackend::OrtBackend(const Manifest& manifest, const std::string& precision, int threads)
    : precision_(precision),
      threads_(threads),
      memory_(Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault)) {
  if (precision != "fp32" && precision != "fp16")
    throw Error(DEBLUR_ERROR_ARGUMENT, "precision must be fp32 or fp16, got '" + precision + "'");
  if (threads < 0) throw Error(DEBLUR_ERROR_ARGUMENT, "threads must be >= 0, got " + std::to_string(threads));
  Ort::SessionOptions options;
  options.SetLogSeverityLevel(3);
  // As runtime.ort_backend: tiles of varying shapes make the CPU arena keep the largest
  // of every buffer; without it peak RSS halves at the same speed.
  options.DisableCpuMemArena();
  if (threads > 0) options.SetIntraOpNumThreads(threads);
  Ort::AllocatorWithDefaultOptions allocator;
  for (const auto& [name, spec] : manifest.graphs) {
    const std::string& path = spec.file(precision);
    try {
      sessions_[name] = std::make_unique<Ort::Session>(environment(), path.c_str(), options);
    } catch (const Ort::Exception& err) {
      throw Error(DEBLUR_ERROR_BACKEND, "ONNX Runtime cannot load " + path + ": " + first_line(err.what()));
    }
    const Ort::Session& session = *sessions_[name];
    std::string found, expected;
    for (size_t i = 0; i < session.GetInputCount(); ++i)
      found += (i ? ", " : "") + std::string(session.GetInputNameAllocated(i, allocator).get());
    for (size_t i = 0; i < spec.inputs.size(); ++i) expected += (i ? ", " : "") + spec.inputs[i].name;
    if (found != expected)
      throw Error(DEBLUR_ERROR_BUNDLE,
                  path + ": inputs [" + found + "] differ from the manifest's [" + expected + "]");
  }
}

void OrtBackend::run(const std::string& graph, const std::vector<Feed>& feeds, const std::string& output,
                     const std::vector<int64_t>& shape, float* out) {
  std::vector<Ort::Value> values;
  std::vector<const char*> names;
  for (const Feed& f : feeds) {
    size_t count = 1;
    for (int64_t d : f.shape) count *= static_cast<size_t>(d);
    // ONNX Runtime only reads inputs; its API takes a non-const pointer.
    values.push_back(Ort::Value::CreateTensor<float>(memory_, const_cast<float*>(f.data), count,
                                                     f.shape.data(), f.shape.size()));
    names.push_back(f.name.c_str());
  }
  size_t count = 1;
  for (int64_t d : shape) count *= static_cast<size_t>(d);
  Ort::Value result = Ort::Value::CreateTensor<float>(memory_, out, count, shape.data(), shape.size());
  const char* output_name = output.c_str();
  try {
    sessions_.at(graph)->Run(Ort::RunOptions{nullptr}, names.data(), values.data(), values.size(),
                             &output_name, &result, 1);
  } catch (const Ort::Exception& err) {
    throw Error(DEBLUR_ERROR_BACKEND, "ONNX Runtime failed on '" + graph + "': " + first_line(err.what()));
  }
}

std::string OrtBackend::describe() const {
  return "onnxruntime " + Ort::GetVersionString() + " (CPU), " + precision_ + ", " +
         (threads_ > 0 ? std::to_string(threads_) : std::string("all")) + " threads";
}

}  // namespace deblur
