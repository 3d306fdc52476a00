// Defocus deblurring of one image with the bundle's TensorRT engines (C++17, TensorRT 10).
//
//   deblur_trt BUNDLE_DIR INPUT OUTPUT.png [--precision fp16|fp32] [--tile 512] [--scale 1.0]
//
// Same algorithm as runtime/tiling.py: the defocus map is estimated tile by tile and
// blended (raised cosine, zero weight within `margin` of inner tile edges, weights
// normalised per axis), cond_mean is pooled once over the whole map from aligned
// chunks, and every restore tile gets that cond_mean. Manifest: nlohmann/json.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <iostream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using json = nlohmann::json;
constexpr double kPi = 3.14159265358979323846;

#define CUDA_CHECK(call)                                                                    \
  do {                                                                                      \
    cudaError_t err_ = (call);                                                              \
    if (err_ != cudaSuccess)                                                                \
      throw std::runtime_error(std::string(#call) + " failed: " + cudaGetErrorName(err_)); \
  } while (0)

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << msg << "\n";
  }
};

size_t volume(const nvinfer1::Dims& d) {
  size_t v = 1;
  for (int i = 0; i < d.nbDims; ++i) v *= static_cast<size_t>(std::max<int64_t>(d.d[i], 0));
  return v;
}

// One engine with its context and a device buffer per I/O tensor, sized for the
// profile's maximum shapes (outputs: same batch/height/width as the image input).
class EngineRunner {
 public:
  EngineRunner(nvinfer1::IRuntime& runtime, const std::string& path, cudaStream_t stream)
      : stream_(stream) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error("cannot open engine " + path);
    std::vector<char> blob((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    engine_.reset(runtime.deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) throw std::runtime_error("TensorRT could not deserialise " + path);
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw std::runtime_error("cannot create an execution context for " + path);
    nvinfer1::Dims max_spatial{};
    for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      if (engine_->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
        throw std::runtime_error(std::string("tensor ") + name + " is not float32 (expected FP32 I/O)");
      if (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT) {
        nvinfer1::Dims max = engine_->getProfileShape(name, 0, nvinfer1::OptProfileSelector::kMAX);
        if (max.nbDims == 4) max_spatial = max;
        allocate(name, volume(max));
      }
    }
    for (int i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      if (engine_->getTensorIOMode(name) != nvinfer1::TensorIOMode::kOUTPUT) continue;
      nvinfer1::Dims shape = engine_->getTensorShape(name);  // -1 where dynamic
      size_t count = 1;
      for (int k = 0; k < shape.nbDims; ++k) {
        // Dynamic dims follow the image: batch (0), height (2), width (3).
        count *= static_cast<size_t>(shape.d[k] >= 0 ? shape.d[k] : max_spatial.d[k]);
      }
      allocate(name, count);
    }
  }

  ~EngineRunner() {
    for (auto& kv : buffers_) cudaFree(kv.second.first);
  }

  // Host inputs (float32, row-major) -> host outputs, through the device buffers.
  std::map<std::string, std::vector<float>> run(
      const std::map<std::string, std::pair<nvinfer1::Dims, const float*>>& inputs) {
    for (const auto& [name, value] : inputs) {
      const auto& [dims, data] = value;
      if (volume(dims) > buffers_.at(name).second)
        throw std::runtime_error("input " + name + " exceeds the engine profile");
      if (!context_->setInputShape(name.c_str(), dims))
        throw std::runtime_error("TensorRT refused the shape of " + name);
      CUDA_CHECK(cudaMemcpyAsync(buffers_.at(name).first, data, volume(dims) * sizeof(float),
                                 cudaMemcpyHostToDevice, stream_));
    }
    for (auto& [name, buffer] : buffers_) {
      if (!context_->setTensorAddress(name.c_str(), buffer.first))
        throw std::runtime_error("setTensorAddress failed for " + name);
    }
    if (!context_->enqueueV3(stream_)) throw std::runtime_error("enqueueV3 failed");
    std::map<std::string, std::vector<float>> outputs;
    for (auto& [name, buffer] : buffers_) {
      if (engine_->getTensorIOMode(name.c_str()) != nvinfer1::TensorIOMode::kOUTPUT) continue;
      std::vector<float>& out = outputs[name];
      out.resize(volume(context_->getTensorShape(name.c_str())));
      CUDA_CHECK(cudaMemcpyAsync(out.data(), buffer.first, out.size() * sizeof(float),
                                 cudaMemcpyDeviceToHost, stream_));
    }
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return outputs;
  }

 private:
  void allocate(const char* name, size_t count) {
    void* ptr = nullptr;
    CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(count, 1) * sizeof(float)));
    buffers_[name] = {ptr, count};
  }

  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  std::map<std::string, std::pair<void*, size_t>> buffers_;  // name -> (device ptr, floats)
  cudaStream_t stream_;
};

// --- tiling, as in runtime/tiling.py ---------------------------------------------------

int round_up(int v, int m) { return (v + m - 1) / m * m; }
int margin_for(int rf) { return (rf + 1) / 2 + 1; }
int default_overlap(int rf, int m) { return round_up(2 * margin_for(rf) + 16, m); }

std::vector<int> tile_starts(int length, int tile, int overlap) {
  if (tile >= length) return {0};
  std::vector<int> starts;
  for (int s = 0; s < length - tile; s += tile - overlap) starts.push_back(s);
  starts.push_back(length - tile);
  return starts;
}

// Normalised 1-D weights of each tile (see runtime.tiling.axis_weights).
std::vector<std::vector<float>> axis_weights(const std::vector<int>& starts, int size, int length,
                                             int margin) {
  std::vector<std::vector<double>> raw(starts.size(), std::vector<double>(size, 1.0));
  for (size_t k = 0; k + 1 < starts.size(); ++k) {
    int lo = starts[k + 1] + margin, hi = starts[k] + size - margin;
    if (hi < lo) throw std::runtime_error("overlap too small for exact tiling");
    for (int p = 0; p < length; ++p) {
      double fade = p >= hi ? 1.0 : p < lo ? 0.0 : 0.5 - 0.5 * std::cos(kPi * (p - lo + 0.5) / (hi - lo));
      if (p >= starts[k] && p < starts[k] + size) raw[k][p - starts[k]] *= 1.0 - fade;
      if (p >= starts[k + 1] && p < starts[k + 1] + size) raw[k + 1][p - starts[k + 1]] *= fade;
    }
  }
  std::vector<double> total(length, 0.0);
  for (size_t k = 0; k < starts.size(); ++k)
    for (int i = 0; i < size; ++i) total[starts[k] + i] += raw[k][i];
  std::vector<std::vector<float>> out(starts.size(), std::vector<float>(size));
  for (size_t k = 0; k < starts.size(); ++k)
    for (int i = 0; i < size; ++i) out[k][i] = static_cast<float>(raw[k][i] / total[starts[k] + i]);
  return out;
}

// Copy planes[c](y:y+h, x:x+w) into a (C, h, w) buffer.
std::vector<float> crop_chw(const std::vector<cv::Mat>& planes, int y, int x, int h, int w) {
  std::vector<float> out(planes.size() * h * w);
  for (size_t c = 0; c < planes.size(); ++c)
    for (int r = 0; r < h; ++r)
      std::copy_n(planes[c].ptr<float>(y + r) + x, w, out.data() + (c * h + r) * w);
  return out;
}

// Run `graph` tile by tile over planes (H, W each) and blend its output into `out` planes.
void run_tiled(EngineRunner& runner, const std::vector<std::pair<std::string, std::vector<cv::Mat>>>& inputs,
               const std::vector<float>* cond_mean, const std::string& output, std::vector<cv::Mat>& out,
               int tile, int overlap, int rf) {
  const int height = out[0].rows, width = out[0].cols;
  const int th = std::min(tile, height), tw = std::min(tile, width), margin = margin_for(rf);
  auto ys = tile_starts(height, th, overlap), xs = tile_starts(width, tw, overlap);
  auto wy = axis_weights(ys, th, height, margin), wx = axis_weights(xs, tw, width, margin);
  for (size_t i = 0; i < ys.size(); ++i) {
    for (size_t j = 0; j < xs.size(); ++j) {
      std::map<std::string, std::vector<float>> data;
      std::map<std::string, std::pair<nvinfer1::Dims, const float*>> feeds;
      for (const auto& [name, planes] : inputs) {
        data[name] = crop_chw(planes, ys[i], xs[j], th, tw);
        feeds[name] = {nvinfer1::Dims4{1, static_cast<int64_t>(planes.size()), th, tw}, data[name].data()};
      }
      if (cond_mean != nullptr)
        feeds["cond_mean"] = {nvinfer1::Dims2{1, static_cast<int64_t>(cond_mean->size())}, cond_mean->data()};
      const std::vector<float> result = runner.run(feeds).at(output);
      for (size_t c = 0; c < out.size(); ++c)
        for (int r = 0; r < th; ++r) {
          float* row = out[c].ptr<float>(ys[i] + r) + xs[j];
          const float* src = result.data() + (c * th + r) * tw;
          for (int q = 0; q < tw; ++q) row[q] += src[q] * wy[i][r] * wx[j][q];
        }
    }
  }
}

// Pixel-weighted mean of the condition graph over near-equal aligned chunks.
std::vector<float> condition_mean(EngineRunner& runner, const cv::Mat& map, int tile, int m) {
  auto bounds = [m, tile](int length) {
    int cells = length / m, parts = std::max(1, (length + tile - 1) / tile);
    std::vector<int> edges;
    for (int i = 0; i <= parts; ++i)
      edges.push_back(static_cast<int>(std::lround(static_cast<double>(i) * cells / parts)) * m);
    return edges;
  };
  auto ey = bounds(map.rows), ex = bounds(map.cols);
  std::vector<double> total;
  double weight = 0;
  for (size_t i = 0; i + 1 < ey.size(); ++i)
    for (size_t j = 0; j + 1 < ex.size(); ++j) {
      int h = ey[i + 1] - ey[i], w = ex[j + 1] - ex[j];
      std::vector<float> chunk = crop_chw({map}, ey[i], ex[j], h, w);
      auto out = runner.run({{"defocus_map", {nvinfer1::Dims4{1, 1, h, w}, chunk.data()}}}).at("cond_mean");
      total.resize(out.size(), 0.0);
      for (size_t c = 0; c < out.size(); ++c) total[c] += static_cast<double>(out[c]) * h * w;
      weight += static_cast<double>(h) * w;
    }
  std::vector<float> mean(total.size());
  for (size_t c = 0; c < total.size(); ++c) mean[c] = static_cast<float>(total[c] / weight);
  return mean;
}

void check_engine_entry(const json& entry, const std::string& bundle) {
  const std::string hint = ": rebuild with `python -m export.engine --bundle " + bundle + " --force`";
  const std::string here = std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) +
                           "." + std::to_string(NV_TENSORRT_PATCH);
  const std::string built = entry.at("tensorrt_version").get<std::string>();
  if (built.rfind(here, 0) != 0) throw std::runtime_error("engine built with TensorRT " + built + ", this is " + here + hint);
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const std::string cc = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  if (entry.at("compute_capability").get<std::string>() != cc)
    throw std::runtime_error("engine built for compute capability " +
                             entry.at("compute_capability").get<std::string>() + ", this GPU is " + cc + hint);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: deblur_trt BUNDLE_DIR INPUT OUTPUT.png [--precision fp16|fp32] [--tile 512] [--scale 1.0]\n";
    return 2;
  }
  const std::string bundle = argv[1], input = argv[2], output = argv[3];
  std::string precision = "fp16";
  int tile = 512;
  float scale = 1.0f;
  for (int i = 4; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--precision") precision = argv[i + 1];
    else if (key == "--tile") tile = std::stoi(argv[i + 1]);
    else if (key == "--scale") scale = std::stof(argv[i + 1]);
    else { std::cerr << "error: unknown option " << key << "\n"; return 2; }
  }
  try {
    std::ifstream manifest_file(bundle + "/manifest.json");
    if (!manifest_file) throw std::runtime_error(bundle + " is not a bundle: no manifest.json");
    const json manifest = json::parse(manifest_file);
    const json& entry = manifest.at("engines").at(precision);
    check_engine_entry(entry, bundle);
    const int m = manifest.at("size_multiple").get<int>();
    const int rf_est = manifest.at("receptive_field").at("estimate").get<int>();
    const int rf_res = manifest.at("receptive_field").at("restore").get<int>();
    const auto& profile_min = entry.at("profile").at("min");
    const int min_side = std::max(profile_min[1].get<int>(), profile_min[2].get<int>());
    const auto& profile_max = entry.at("profile").at("max");
    const int max_side = std::min(profile_max[1].get<int>(), profile_max[2].get<int>());
    // As runtime.tiling.estimate_tile_for: the narrow estimate pass takes tiles twice as large.
    const int estimate_tile = std::max(tile, std::min(round_up(2 * tile, m), max_side / m * m));

    cv::Mat bgr = cv::imread(input, cv::IMREAD_COLOR);  // 8-bit, EXIF orientation applied
    if (bgr.empty()) throw std::runtime_error(input + ": not a readable image");
    const int height = bgr.rows, width = bgr.cols;
    const int ph = round_up(std::max(height, min_side), m), pw = round_up(std::max(width, min_side), m);
    cv::Mat rgb;
    cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
    // numpy's "reflect" is OpenCV's BORDER_REFLECT_101; tiny images fall back to edge.
    const int border = (ph - height < height && pw - width < width) ? cv::BORDER_REFLECT_101 : cv::BORDER_REPLICATE;
    cv::copyMakeBorder(rgb, rgb, 0, ph - height, 0, pw - width, border);
    rgb.convertTo(rgb, CV_32FC3, 1.0 / 255.0);
    std::vector<cv::Mat> image;
    cv::split(rgb, image);

    Logger logger;
    std::unique_ptr<nvinfer1::IRuntime> runtime(nvinfer1::createInferRuntime(logger));
    cudaStream_t stream;
    CUDA_CHECK(cudaStreamCreate(&stream));
    auto engine_path = [&](const char* graph) {
      return bundle + "/" + entry.at("graphs").at(graph).at("file").get<std::string>();
    };
    {
      EngineRunner estimate(*runtime, engine_path("estimate"), stream);
      EngineRunner restore(*runtime, engine_path("restore"), stream);
      std::vector<cv::Mat> map{cv::Mat::zeros(ph, pw, CV_32F)};
      run_tiled(estimate, {{"image", image}}, nullptr, "defocus_map", map, estimate_tile,
                default_overlap(rf_est, m), rf_est);
      map[0] *= scale;
      std::vector<float> cond;
      const bool pooling = manifest.at("graphs").contains("condition");
      if (pooling) {
        EngineRunner condition(*runtime, engine_path("condition"), stream);
        cond = condition_mean(condition, map[0], tile, m);
      }
      std::vector<cv::Mat> out{cv::Mat::zeros(ph, pw, CV_32F), cv::Mat::zeros(ph, pw, CV_32F),
                               cv::Mat::zeros(ph, pw, CV_32F)};
      run_tiled(restore, {{"image", image}, {"defocus_map", map}}, pooling ? &cond : nullptr, "deblurred", out,
                tile, default_overlap(rf_res, m), rf_res);
      cv::Mat merged, result;
      cv::merge(out, merged);
      merged(cv::Rect(0, 0, width, height)).convertTo(result, CV_8UC3, 255.0);  // saturates to [0, 255]
      cv::cvtColor(result, result, cv::COLOR_RGB2BGR);
      if (!cv::imwrite(output, result)) throw std::runtime_error("cannot write " + output);
    }
    CUDA_CHECK(cudaStreamDestroy(stream));
    std::cerr << "wrote " << output << "\n";
  } catch (const std::exception& err) {
    std::cerr << "error: " << err.what() << "\n";
    return 1;
  }
  return 0;
}
