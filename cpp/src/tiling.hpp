// Exact tiled inference, the C++ twin of runtime/tiling.py (and of Deblurrer.run's one pass).
//
// Backend-independent: a Backend runs one graph on float32 NCHW host buffers; the
// ONNX Runtime backend (ort_backend.cpp) and the TensorRT one (deblur_trt.cpp) share it.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "manifest.hpp"

namespace deblur {

// One input of a graph call: name, NCHW / NC shape, float32 host data.
struct Feed {
  std::string name;
  std::vector<int64_t> shape;
  const float* data;
};

// An engine profile's limits (TensorRT): batch and spatial sides of the graph inputs.
struct Profile {
  int min_height, min_width, max_height, max_width, max_batch;
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Run `graph` on `feeds`; write its output `output` (shape `shape`) into `out`.
  virtual void run(const std::string& graph, const std::vector<Feed>& feeds, const std::string& output,
                   const std::vector<int64_t>& shape, float* out) = 0;
  virtual std::optional<Profile> profile() const { return std::nullopt; }
};

// --- runtime.tiling's functions, same names and rules --------------------------------

int round_up(int value, int multiple);
int margin_for(int receptive_field);
int min_overlap(int receptive_field, int multiple);
int default_overlap(int receptive_field, int multiple);
int estimate_tile_for(int tile, int multiple, std::optional<int> max_side);
std::vector<int> tile_starts(int length, int tile, int overlap, int multiple);
int balanced_tile(int length, int tile, int overlap, int multiple);
// Normalised raised-cosine weights, one vector of min(tile, length) per tile.
std::vector<std::vector<float>> axis_weights(const std::vector<int>& starts, int tile, int length,
                                             int margin);
std::vector<std::pair<int, int>> chunk_bounds(int length, int chunk, int multiple);

struct TileGrid {
  int tile_h, tile_w;
  std::vector<int> ys, xs;
  std::vector<std::vector<float>> wy, wx;
};

TileGrid make_grid(int height, int width, int tile, int overlap, int receptive_field, int multiple);

// Where a padded row / column reads from (numpy "reflect", or "edge" when too small).
std::vector<int> pad_index(int length, int padded, bool reflect);

// --- runtime.ensemble ------------------------------------------------------------------

// Transpose the two spatial axes, then flip rows and / or columns.
struct Transform {
  bool transpose, flip_rows, flip_cols;
};

// runtime.ensemble.TRANSFORMS, in its order: the first 1, 2, 4 and 8 are the ensembles.
extern const Transform kTransforms[8];

// runtime.ensemble.MAP_QUANTILE.
constexpr float kMapQuantile = 0.75f;

// The (channels, H', W') planes of `t` applied to (channels, height, width) planes.
std::vector<float> apply_transform(const std::vector<float>& planes, int channels, int height, int width,
                                   const Transform& t);
// The inverse: (channels, height, width) planes from `t`'s (channels, H', W') ones.
std::vector<float> undo_transform(const std::vector<float>& planes, int channels, int height, int width,
                                  const Transform& t);
// runtime.ensemble.combine_maps: per pixel, the `quantile` of the maps (NumPy's linear
// method); the map itself for one map.
std::vector<float> combine_maps(std::vector<std::vector<float>> maps, float quantile);
// Deblurrer's rule: a self-ensemble of 1, 2, 4 or 8 copies, else DEBLUR_ERROR_ARGUMENT.
void check_self_ensemble(int passes);

// --- the pipeline ----------------------------------------------------------------------

struct TilingOptions {
  int tile = 1024;     // restore tile (Deblurrer's CPU default)
  int overlap = -1;    // -1: default_overlap of each pass
  int tile_batch = 1;  // tiles per graph call
  std::function<void(int done, int total)> progress;
};

enum class SampleType { kUint8, kFloat32 };

// An interleaved H x W x 3 RGB buffer.
struct ImageRef {
  void* data;
  int height, width;
  SampleType type;
};

// runtime.validate.map_range_warning: the warning for a map as used whose largest value
// `high` is beyond the trained range `map_max`, else "".
std::string map_range_warning(double high, double map_max, double radius_scale_px);

// estimate -> (scale / replace map) -> condition -> restore, tile by tile.
class Pipeline {
 public:
  // Checks the tile and overlap as Deblurrer._fit_profile and _check_overlap do.
  Pipeline(const Manifest& manifest, Backend& backend, const TilingOptions& options);

  // Deblur one image (Deblurrer.run): `self_ensemble` copies (1, 2, 4 or 8), all restored
  // from one map (the map given, or the copies' estimates combined). `map` is null or
  // H x W float32 map values; `map_out` null or H x W. `output` has the input's size.
  // Returns the largest value of the map as used (scaled, over the image).
  float run(const ImageRef& input, float defocus_scale, const float* map, const ImageRef& output,
            float* map_out, int self_ensemble = 1) const;

  int tile() const { return tiles_[1]; }
  int estimate_tile() const { return tiles_[0]; }
  int overlap_for(const std::string& graph) const;
  int count_tiles(int height, int width) const;  // both passes, padded size, one copy

 private:
  enum Pass { kEstimate = 0, kRestore = 1 };
  TileGrid grid(Pass pass, int height, int width) const;
  std::vector<float> estimate(const std::vector<float>& image, int height, int width, int& done,
                              int total) const;
  std::vector<float> condition_mean(const std::vector<float>& map, int height, int width) const;
  std::vector<float> restore(const std::vector<float>& image, const std::vector<float>& map,
                             const std::vector<float>& cond_mean, int height, int width, int& done,
                             int total) const;
  // Run `graph` over the tiles of the (C, H, W) planes `sources` (named by `names`) and
  // blend its output into `out` (Co, H, W).
  void tiled(Pass pass, const std::vector<const std::vector<float>*>& sources,
             const std::vector<int>& channels, const std::vector<std::string>& names,
             const std::vector<float>* cond_mean, int height, int width, std::vector<float>& out, int& done,
             int total) const;
  std::pair<int, int> padded_size(int height, int width) const;

  const Manifest& manifest_;
  Backend& backend_;
  TilingOptions options_;
  int tiles_[2];  // estimate, restore
};

}  // namespace deblur
