#include "image_io.hpp"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <system_error>

#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

namespace deblur {

namespace fs = std::filesystem;

Rgb8 read_rgb8(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw std::runtime_error(path + ": no such file");
  FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) throw std::runtime_error(path + ": cannot be opened");
  if (stbi_is_16_bit_from_file(file)) {
    std::fclose(file);
    throw std::runtime_error(path + ": 16-bit images are not supported here (use python -m runtime.infer)");
  }
  int width = 0, height = 0, channels = 0;
  stbi_uc* data = stbi_load_from_file(file, &width, &height, &channels, 3);
  std::fclose(file);
  if (data == nullptr)
    throw std::runtime_error(path + ": not a readable image (" + stbi_failure_reason() + ")");
  Rgb8 image;
  image.height = height;
  image.width = width;
  image.had_alpha = channels == 2 || channels == 4;
  image.pixels.assign(data, data + static_cast<size_t>(width) * height * 3);
  stbi_image_free(data);
  return image;
}

void check_png_output(const std::string& path) {
  const fs::path p(path);
  std::string ext = p.extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ext != ".png") throw std::runtime_error(path + ": the output must be a .png file");
  const fs::path folder = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(folder, ec))
    throw std::runtime_error(path + ": folder " + folder.string() + " does not exist");
  if (fs::is_directory(p, ec)) throw std::runtime_error(path + " is a folder");
  if (access(folder.c_str(), W_OK) != 0)
    throw std::runtime_error(path + ": folder " + folder.string() + " is not writable");
}

void write_png_atomic(const std::string& path, const Rgb8& image) {
  const fs::path p(path);
  const fs::path folder = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::string tmp = (folder / ("." + p.filename().string() + ".XXXXXX")).string();
  const int fd = mkstemp(tmp.data());
  if (fd < 0) throw std::runtime_error(path + ": cannot create a temporary file beside it");
  FILE* file = fdopen(fd, "wb");
  if (file == nullptr) {
    close(fd);
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot open a temporary file beside it");
  }
  auto sink = [](void* context, void* data, int size) {
    std::fwrite(data, 1, static_cast<size_t>(size), static_cast<FILE*>(context));
  };
  const bool encoded = stbi_write_png_to_func(sink, file, image.width, image.height, 3, image.pixels.data(),
                                              image.width * 3) != 0;
  const bool written = std::ferror(file) == 0;
  const bool closed = std::fclose(file) == 0;
  std::error_code ec;
  if (!encoded || !written || !closed) {
    fs::remove(tmp, ec);
    throw std::runtime_error(path + ": cannot be written (disk full?)");
  }
  fs::permissions(
      tmp, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read,
      ec);
  fs::rename(tmp, path, ec);
  if (ec) {
    const std::string reason = ec.message();
    fs::remove(tmp, ec);
    throw std::runtime_error(path + ": cannot be written (" + reason + ")");
  }
}

}  // namespace deblur
