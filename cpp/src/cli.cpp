// deblur_cpp: deblur one 8-bit image file with a bundle, through the C API.
//
//   deblur_cpp BUNDLE in.png out.png [--tile N] [--scale S] [--overlap N] [--tile-batch N]
//              [--threads N] [--precision fp32|fp16] [--self-ensemble 1|2|4|8]
//
// Exit status: 0 done, 1 the image failed, 2 bad usage or a bad model (as runtime.infer).
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "deblur.h"
#include "image_io.hpp"

namespace {

const char* const kUsage =
    "usage: deblur_cpp BUNDLE INPUT OUTPUT.png [--tile N] [--scale S] [--overlap N] [--tile-batch N]\n"
    "                  [--threads N] [--precision fp32|fp16] [--self-ensemble 1|2|4|8]\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "%serror: %s\n", kUsage, message.c_str());
  return 2;
}

bool parse_int(const char* text, int32_t& value) {
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (errno || end == text || *end != '\0' || v < -1000000000L || v > 1000000000L) return false;
  value = static_cast<int32_t>(v);
  return true;
}

bool parse_float(const char* text, float& value) {
  errno = 0;
  char* end = nullptr;
  value = std::strtof(text, &end);
  return errno == 0 && end != text && *end == '\0';
}

void show_progress(int32_t done, int32_t total, void*) {
  std::fprintf(stderr, "\rtiles %d/%d%s", done, total, done == total ? "\n" : "");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) return usage_error("BUNDLE, INPUT and OUTPUT are required");
  const std::string bundle = argv[1], input = argv[2], output = argv[3];
  deblur_options options;
  deblur_default_options(&options);
  float scale = 1.0f;
  int32_t self_ensemble = 1;
  for (int i = 4; i < argc; i += 2) {
    const std::string key = argv[i];
    if (i + 1 >= argc) return usage_error(key + " needs a value");
    const char* value = argv[i + 1];
    bool ok = true;
    if (key == "--tile")
      ok = parse_int(value, options.tile);
    else if (key == "--overlap")
      ok = parse_int(value, options.overlap);
    else if (key == "--tile-batch")
      ok = parse_int(value, options.tile_batch);
    else if (key == "--threads")
      ok = parse_int(value, options.threads);
    else if (key == "--self-ensemble")
      ok = parse_int(value, self_ensemble);
    else if (key == "--scale")
      ok = parse_float(value, scale);
    else if (key == "--precision")
      options.precision = value;
    else
      return usage_error("unknown option " + key);
    if (!ok) return usage_error(key + " " + value + " is not a number");
  }
  if (!std::isfinite(scale) || scale < 0) return usage_error("--scale must be a finite number >= 0");
  try {
    deblur::check_png_output(output);
  } catch (const std::exception& err) {
    return usage_error(err.what());
  }
  if (isatty(STDERR_FILENO)) options.progress = show_progress;
  deblur_model* model = nullptr;
  if (deblur_create(bundle.c_str(), &options, &model) != DEBLUR_OK ||
      deblur_set_self_ensemble(model, self_ensemble) != DEBLUR_OK) {
    std::fprintf(stderr, "error: %s\n", deblur_last_error());
    deblur_destroy(model);  // NULL when deblur_create failed
    return 2;
  }
  int status = 0;
  try {
    deblur::Rgb8 image = deblur::read_rgb8(input);
    if (image.had_alpha) std::fprintf(stderr, "warning: %s: alpha channel dropped\n", input.c_str());
    deblur::Rgb8 result{image.height, image.width, std::vector<uint8_t>(image.pixels.size()), false};
    deblur_image in{image.pixels.data(), image.pixels.size(), image.height, image.width, DEBLUR_UINT8};
    deblur_image out{result.pixels.data(), result.pixels.size(), image.height, image.width, DEBLUR_UINT8};
    if (deblur_run(model, &in, scale, nullptr, 0, &out, nullptr, 0) != DEBLUR_OK)
      throw std::runtime_error(input + ": " + deblur_last_error());
    if (*deblur_last_warning(model) != '\0') std::fprintf(stderr, "warning: %s\n", deblur_last_warning(model));
    deblur::write_png_atomic(output, result);
    std::fprintf(stderr, "wrote %s (%s)\n", output.c_str(), deblur_describe(model));
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
    status = 1;
  }
  deblur_destroy(model);
  return status;
}
