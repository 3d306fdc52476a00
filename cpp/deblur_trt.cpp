// TensorRT backend of the tiling core, and its CLI (C++17, TensorRT 10.12+ or 11, CUDA runtime).
//
//   deblur_trt BUNDLE_DIR INPUT OUTPUT.png [--precision fp16|fp32] [--tile 512] [--scale 1.0]
//                                          [--tile-batch N]
//
// NOT BUILT IN CI: no machine here has TensorRT or a GPU (cmake -DDEBLUR_TENSORRT=ON).
// The tiling, padding, blending and cond_mean pooling are those of src/tiling.cpp, the
// code that CI tests through the ONNX Runtime backend; this file only moves float32
// tiles to the engines and back. The engines come from `make engine` (FP32 I/O).
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "errors.hpp"
#include "image_io.hpp"
#include "manifest.hpp"
#include "tiling.hpp"

namespace {

using deblur::Error;

#define CUDA_CHECK(call)                                                                            \
  do {                                                                                              \
    const cudaError_t err_ = (call);                                                                \
    if (err_ != cudaSuccess)                                                                        \
      throw Error(DEBLUR_ERROR_BACKEND, std::string(#call) + " failed: " + cudaGetErrorName(err_)); \
  } while (0)

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "TensorRT: %s\n", msg);
  }
};

size_t volume(const nvinfer1::Dims& d) {
  size_t v = 1;
  for (int i = 0; i < d.nbDims; ++i) v *= static_cast<size_t>(d.d[i] > 0 ? d.d[i] : 0);
  return v;
}

nvinfer1::Dims dims_of(const std::vector<int64_t>& shape) {
  nvinfer1::Dims d{};
  d.nbDims = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) d.d[i] = shape[i];
  return d;
}

// One engine, its context, and one device buffer per I/O tensor sized for the profile's
// largest shapes (outputs: the inputs' largest batch, height and width). Owns all three.
class Engine {
 public:
  Engine(nvinfer1::IRuntime& runtime, const std::string& path, cudaStream_t stream) : stream_(stream) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw Error(DEBLUR_ERROR_BUNDLE, "cannot open engine " + path);
    const std::vector<char> blob((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    engine_.reset(runtime.deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) throw Error(DEBLUR_ERROR_BACKEND, "TensorRT could not deserialise " + path);
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw Error(DEBLUR_ERROR_BACKEND, "cannot create an execution context for " + path);
    nvinfer1::Dims largest{};
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      if (engine_->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
        throw Error(DEBLUR_ERROR_BACKEND, std::string("tensor ") + name + " of " + path + " is not float32");
      if (engine_->getTensorIOMode(name) != nvinfer1::TensorIOMode::kINPUT) continue;
      const nvinfer1::Dims max = engine_->getProfileShape(name, 0, nvinfer1::OptProfileSelector::kMAX);
      if (max.nbDims == 4) largest = max;
      allocate(name, volume(max));
    }
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      if (engine_->getTensorIOMode(name) != nvinfer1::TensorIOMode::kOUTPUT) continue;
      const nvinfer1::Dims shape = engine_->getTensorShape(name);  // -1 where dynamic
      size_t count = 1;
      for (int32_t k = 0; k < shape.nbDims; ++k)  // dynamic dims follow the image: N (0), H (2), W (3)
        count *= static_cast<size_t>(shape.d[k] >= 0 ? shape.d[k] : largest.d[k]);
      allocate(name, count);
    }
  }

  ~Engine() {
    for (auto& [name, buffer] : buffers_) cudaFree(buffer.first);
  }

  void run(const std::vector<deblur::Feed>& feeds, const std::string& output,
           const std::vector<int64_t>& shape, float* out) {
    for (const deblur::Feed& f : feeds) {
      const nvinfer1::Dims dims = dims_of(f.shape);
      if (volume(dims) > buffer(f.name).second)
        throw Error(DEBLUR_ERROR_ARGUMENT, "input " + f.name + " exceeds the engine profile");
      if (!context_->setInputShape(f.name.c_str(), dims))
        throw Error(DEBLUR_ERROR_ARGUMENT, "TensorRT refused the shape of " + f.name);
      CUDA_CHECK(cudaMemcpyAsync(buffer(f.name).first, f.data, volume(dims) * sizeof(float),
                                 cudaMemcpyHostToDevice, stream_));
    }
    for (auto& [name, b] : buffers_)
      if (!context_->setTensorAddress(name.c_str(), b.first))
        throw Error(DEBLUR_ERROR_BACKEND, "setTensorAddress failed for " + name);
    if (!context_->enqueueV3(stream_)) throw Error(DEBLUR_ERROR_BACKEND, "enqueueV3 failed");
    const nvinfer1::Dims got = context_->getTensorShape(output.c_str());
    if (volume(got) != volume(dims_of(shape)) || volume(got) > buffer(output).second)
      throw Error(DEBLUR_ERROR_BACKEND, "engine output " + output + " has an unexpected shape");
    CUDA_CHECK(cudaMemcpyAsync(out, buffer(output).first, volume(got) * sizeof(float), cudaMemcpyDeviceToHost,
                               stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

 private:
  void allocate(const char* name, size_t count) {
    void* ptr = nullptr;
    CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(count, 1) * sizeof(float)));
    buffers_[name] = {ptr, count};
  }

  std::pair<void*, size_t>& buffer(const std::string& name) {
    auto found = buffers_.find(name);
    if (found == buffers_.end()) throw Error(DEBLUR_ERROR_BACKEND, "the engine has no tensor " + name);
    return found->second;
  }

  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::map<std::string, std::pair<void*, size_t>> buffers_;  // name -> (device pointer, floats)
  cudaStream_t stream_;
};

// The engine entry's TensorRT version and compute capability must be this machine's
// (runtime.bundle.check_engine_entry does the full check, sha256 included).
void check_engine_entry(const nlohmann::json& entry, const std::string& bundle) {
  const std::string hint = ": rebuild with `python -m export.engine --bundle " + bundle + " --force`";
  const std::string here = std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                           std::to_string(NV_TENSORRT_PATCH);
  const std::string built = entry.at("tensorrt_version").get<std::string>();
  if (built.rfind(here, 0) != 0)
    throw Error(DEBLUR_ERROR_BUNDLE, "engine built with TensorRT " + built + ", this is " + here + hint);
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  const std::string wanted = entry.at("compute_capability").get<std::string>();
  if (entry.value("hardware_compatibility", "none") != "ampere_plus" && wanted != cc)
    throw Error(DEBLUR_ERROR_BUNDLE,
                "engine built for compute capability " + wanted + ", this GPU is " + cc + hint);
}

class TrtBackend : public deblur::Backend {
 public:
  TrtBackend(const deblur::Manifest& manifest, const std::string& precision)
      : runtime_(nvinfer1::createInferRuntime(logger_)) {
    if (!runtime_) throw Error(DEBLUR_ERROR_BACKEND, "cannot create the TensorRT runtime");
    const nlohmann::json& entry = manifest.raw.at("engines").at(precision);
    check_engine_entry(entry, manifest.root);
    const auto& lo = entry.at("profile").at("min");
    const auto& hi = entry.at("profile").at("max");
    profile_ = deblur::Profile{lo[1].get<int>(), lo[2].get<int>(), hi[1].get<int>(), hi[2].get<int>(),
                               hi[0].get<int>()};
    CUDA_CHECK(cudaStreamCreate(&stream_));
    for (const auto& [name, spec] : manifest.graphs)
      engines_[name] = std::make_unique<Engine>(
          *runtime_, manifest.root + "/" + entry.at("graphs").at(name).at("file").get<std::string>(),
          stream_);
  }

  ~TrtBackend() override {
    engines_.clear();  // before the stream they use
    cudaStreamDestroy(stream_);
  }

  void run(const std::string& graph, const std::vector<deblur::Feed>& feeds, const std::string& output,
           const std::vector<int64_t>& shape, float* out) override {
    engines_.at(graph)->run(feeds, output, shape, out);
  }

  std::optional<deblur::Profile> profile() const override { return profile_; }

 private:
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  deblur::Profile profile_{};
  cudaStream_t stream_ = nullptr;
  std::map<std::string, std::unique_ptr<Engine>> engines_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: deblur_trt BUNDLE_DIR INPUT OUTPUT.png [--precision fp16|fp32] [--tile 512] "
                 "[--scale 1.0] [--tile-batch N]\n");
    return 2;
  }
  const std::string bundle = argv[1], input = argv[2], output = argv[3];
  std::string precision = "fp16";
  deblur::TilingOptions tiling;
  tiling.tile = 512;  // Deblurrer's GPU default (runtime.deblurrer.GPU_TILING)
  tiling.tile_batch = 4;
  float scale = 1.0f;
  try {
    for (int i = 4; i + 1 < argc; i += 2) {
      const std::string key = argv[i];
      if (key == "--precision")
        precision = argv[i + 1];
      else if (key == "--tile")
        tiling.tile = std::stoi(argv[i + 1]);
      else if (key == "--tile-batch")
        tiling.tile_batch = std::stoi(argv[i + 1]);
      else if (key == "--scale")
        scale = std::stof(argv[i + 1]);
      else
        throw std::invalid_argument("unknown option " + key);
    }
    deblur::check_png_output(output);
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
    return 2;
  }
  try {
    const deblur::Manifest manifest = deblur::load_manifest(bundle);
    TrtBackend backend(manifest, precision);
    const deblur::Pipeline pipeline(manifest, backend, tiling);
    deblur::Rgb8 image = deblur::read_rgb8(input);
    deblur::Rgb8 result{image.height, image.width, std::vector<uint8_t>(image.pixels.size()), false};
    const float high =
        pipeline.run({image.pixels.data(), image.height, image.width, deblur::SampleType::kUint8}, scale,
                     nullptr, {result.pixels.data(), image.height, image.width, deblur::SampleType::kUint8}, nullptr);
    const std::string warning = deblur::map_range_warning(high, manifest.map_max, manifest.map_radius_scale_px);
    if (!warning.empty()) std::fprintf(stderr, "warning: %s\n", warning.c_str());
    deblur::write_png_atomic(output, result);
    std::fprintf(stderr, "wrote %s\n", output.c_str());
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
    return 1;
  }
  return 0;
}
