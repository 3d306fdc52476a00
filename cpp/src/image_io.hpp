// 8-bit RGB image files for the command-line tools (stb_image / stb_image_write).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace deblur {

struct Rgb8 {
  int height = 0, width = 0;
  std::vector<uint8_t> pixels;  // H x W x 3, interleaved
  bool had_alpha = false;
};

// PNG, JPEG, BMP, TGA...: 8-bit grey / RGB / RGBA, as RGB. Throws std::runtime_error.
Rgb8 read_rgb8(const std::string& path);

// Refuse an output that cannot be written, before any work: only .png.
void check_png_output(const std::string& path);

// Write a PNG through a temporary file in the same folder, renamed into place.
void write_png_atomic(const std::string& path, const Rgb8& image);

}  // namespace deblur
