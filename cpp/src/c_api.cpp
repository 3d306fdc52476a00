// The C API (include/deblur.h) over the tiling core and the ONNX Runtime backend.
// Every entry point catches everything: no C++ exception crosses the boundary.
#include <limits>
#include <memory>
#include <new>
#include <string>

#include "deblur.h"
#include "errors.hpp"
#include "ort_backend.hpp"

struct deblur_model {
  deblur::Manifest manifest;
  std::unique_ptr<deblur::OrtBackend> backend;
  std::unique_ptr<deblur::Pipeline> pipeline;
  std::string description;
  std::string warning;  // of the last successful run
  int self_ensemble = 1;
};

namespace {

thread_local std::string last_error;

template <typename F>
int guarded(F&& body) {
  last_error.clear();
  try {
    body();
    return DEBLUR_OK;
  } catch (const deblur::Error& err) {
    last_error = err.what();
    return err.status;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory (try a smaller tile)";
    return DEBLUR_ERROR_MEMORY;
  } catch (const std::exception& err) {
    last_error = err.what();
    return DEBLUR_ERROR_INTERNAL;
  } catch (...) {
    last_error = "unknown error";
    return DEBLUR_ERROR_INTERNAL;
  }
}

[[noreturn]] void bad_argument(const std::string& message) {
  throw deblur::Error(DEBLUR_ERROR_ARGUMENT, message);
}

size_t sample_size(int32_t dtype, const char* what) {
  if (dtype == DEBLUR_UINT8) return 1;
  if (dtype == DEBLUR_FLOAT32) return 4;
  bad_argument(std::string(what) + " dtype must be DEBLUR_UINT8 (0) or DEBLUR_FLOAT32 (1), got " +
               std::to_string(dtype));
}

// Checks an image buffer against its height, width and dtype; returns the core's view.
deblur::ImageRef image_ref(const deblur_image* image, const char* what) {
  if (image == nullptr || image->data == nullptr) bad_argument(std::string(what) + " is NULL");
  if (image->height < 1 || image->width < 1)
    bad_argument(std::string(what) + " is empty: " + std::to_string(image->height) + " x " +
                 std::to_string(image->width));
  const size_t pixels = static_cast<size_t>(image->height) * static_cast<size_t>(image->width);
  if (pixels > std::numeric_limits<size_t>::max() / 12) bad_argument(std::string(what) + " is too large");
  const size_t need = pixels * 3 * sample_size(image->dtype, what);
  if (image->size_bytes != need)
    bad_argument(std::string(what) + " buffer holds " + std::to_string(image->size_bytes) + " bytes, " +
                 std::to_string(image->height) + " x " + std::to_string(image->width) + " x 3 needs " +
                 std::to_string(need));
  return {image->data, image->height, image->width,
          image->dtype == DEBLUR_UINT8 ? deblur::SampleType::kUint8 : deblur::SampleType::kFloat32};
}

void check_map_bytes(const float* map, size_t bytes, const deblur_image* input, const char* what) {
  if (map == nullptr) return;
  const size_t need = static_cast<size_t>(input->height) * static_cast<size_t>(input->width) * sizeof(float);
  if (bytes != need)
    bad_argument(std::string(what) + " buffer holds " + std::to_string(bytes) + " bytes, " +
                 std::to_string(input->height) + " x " + std::to_string(input->width) + " float32 needs " +
                 std::to_string(need));
}

}  // namespace

extern "C" {

void deblur_default_options(deblur_options* options) {
  if (options == nullptr) return;
  *options = deblur_options{1024, -1, 1, 0, "fp32", nullptr, nullptr};
}

int deblur_create(const char* bundle, const deblur_options* options, deblur_model** model) {
  if (model != nullptr) *model = nullptr;
  return guarded([&] {
    if (bundle == nullptr || model == nullptr) bad_argument("bundle path and model pointer must not be NULL");
    deblur_options opts;
    deblur_default_options(&opts);
    if (options != nullptr) opts = *options;
    auto handle = std::make_unique<deblur_model>();
    handle->manifest = deblur::load_manifest(bundle);
    handle->backend = std::make_unique<deblur::OrtBackend>(
        handle->manifest, opts.precision ? opts.precision : "fp32", opts.threads);
    deblur::TilingOptions tiling{opts.tile, opts.overlap, opts.tile_batch, {}};
    if (opts.progress != nullptr) {
      const deblur_progress_fn progress = opts.progress;
      void* user = opts.progress_user;
      tiling.progress = [progress, user](int done, int total) { progress(done, total, user); };
    }
    handle->pipeline = std::make_unique<deblur::Pipeline>(handle->manifest, *handle->backend, tiling);
    handle->description = handle->backend->describe() + ", tile " + std::to_string(handle->pipeline->tile()) +
                          " (estimate " + std::to_string(handle->pipeline->estimate_tile()) + ")";
    *model = handle.release();
  });
}

int deblur_run(deblur_model* model, const deblur_image* input, float defocus_scale, const float* defocus_map,
               size_t defocus_map_bytes, deblur_image* output, float* map_out, size_t map_out_bytes) {
  return guarded([&] {
    if (model == nullptr) bad_argument("model is NULL");
    const deblur::ImageRef in = image_ref(input, "input"), out = image_ref(output, "output");
    check_map_bytes(defocus_map, defocus_map_bytes, input, "defocus map");
    check_map_bytes(map_out, map_out_bytes, input, "map output");
    model->warning.clear();
    const float high =
        model->pipeline->run(in, defocus_scale, defocus_map, out, map_out, model->self_ensemble);
    if (defocus_map != nullptr || defocus_scale > 1.0f)  // an estimate alone stays in range
      model->warning =
          deblur::map_range_warning(high, model->manifest.map_max, model->manifest.map_radius_scale_px);
  });
}

int deblur_set_self_ensemble(deblur_model* model, int32_t passes) {
  return guarded([&] {
    if (model == nullptr) bad_argument("model is NULL");
    deblur::check_self_ensemble(passes);
    model->self_ensemble = passes;
  });
}

int deblur_get_info(const deblur_model* model, deblur_info* info) {
  return guarded([&] {
    if (model == nullptr || info == nullptr) bad_argument("model and info must not be NULL");
    const deblur::Pipeline& p = *model->pipeline;
    *info = deblur_info{model->manifest.size_multiple,
                        p.tile(),
                        p.estimate_tile(),
                        p.overlap_for("restore"),
                        p.overlap_for("estimate"),
                        model->manifest.uses_pooling() ? 1 : 0,
                        model->manifest.map_radius_scale_px,
                        model->manifest.map_max};
  });
}

const char* deblur_describe(const deblur_model* model) {
  return model == nullptr ? nullptr : model->description.c_str();
}

const char* deblur_last_warning(const deblur_model* model) {
  return model == nullptr ? nullptr : model->warning.c_str();
}

const char* deblur_last_error(void) { return last_error.c_str(); }

void deblur_destroy(deblur_model* model) { delete model; }

}  // extern "C"
