#include "tiling.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <utility>

#include "errors.hpp"

namespace deblur {

namespace {

constexpr double kPi = 3.14159265358979323846;  // numpy.pi
constexpr int kDefaultBlendPx = 16;             // runtime.tiling.DEFAULT_BLEND_PX
constexpr int kEstimateTileScale = 2;           // runtime.tiling.ESTIMATE_TILE_SCALE
const char* const kPassGraph[] = {"estimate", "restore"};

[[noreturn]] void bad_argument(const std::string& message) { throw Error(DEBLUR_ERROR_ARGUMENT, message); }

// Python's -(-a // b) for b > 0 (C++ division truncates towards zero).
int ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : a / b; }

std::string names_of(const std::vector<TensorSpec>& specs) {
  std::string out;
  for (const TensorSpec& s : specs) out += (out.empty() ? "" : ", ") + s.name;
  return "[" + out + "]";
}

// The graphs' I/O names are the bundle format's contract (runtime.tiling feeds them by name).
void check_contract(const Manifest& m) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> inputs = {
      {"estimate", {"image"}},
      {"condition", {"defocus_map"}},
      {"restore", m.uses_pooling() ? std::vector<std::string>{"image", "defocus_map", "cond_mean"}
                                   : std::vector<std::string>{"image", "defocus_map"}}};
  const std::map<std::string, std::string> outputs = {
      {"estimate", "defocus_map"}, {"condition", "cond_mean"}, {"restore", "deblurred"}};
  for (const auto& [graph, expected] : inputs) {
    if (!m.graphs.count(graph)) continue;
    const GraphSpec& spec = m.graph(graph);
    std::vector<std::string> found;
    for (const TensorSpec& t : spec.inputs) found.push_back(t.name);
    bool has_output = false;
    for (const TensorSpec& t : spec.outputs) has_output |= t.name == outputs.at(graph);
    if (found != expected || !has_output)
      throw Error(DEBLUR_ERROR_BUNDLE, "manifest: graph '" + graph + "' has inputs " + names_of(spec.inputs) +
                                           " and outputs " + names_of(spec.outputs) +
                                           ", not the bundle format's");
  }
}

const char* output_of(const std::string& graph) {
  return graph == "estimate" ? "defocus_map" : graph == "condition" ? "cond_mean" : "deblurred";
}

// Input rules of runtime/validate.py, mirrored (same limits, same wording where it fits).
constexpr float kFloatSlack = 0.01f;       // FLOAT_SLACK: float samples this far outside [0, 1] are clipped
constexpr float kMaxDefocusScale = 10.0f;  // MAX_DEFOCUS_SCALE
constexpr double kMapLimitFactor = 10.0;   // MAP_LIMIT_FACTOR: times the trained map range

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.4g", v);
  return text;
}

// (min, max) of finite samples; refuses NaN / Inf.
std::pair<float, float> finite_range(const float* data, size_t count, const std::string& what) {
  float low = std::numeric_limits<float>::infinity(), high = -low;
  size_t bad = 0;
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(data[i])) {
      ++bad;
      continue;
    }
    low = std::min(low, data[i]);
    high = std::max(high, data[i]);
  }
  if (bad) bad_argument(what + " has " + std::to_string(bad) + " non-finite values (NaN or Inf)");
  return {low, high};
}

void check_inputs(const ImageRef& input, float scale, const float* map, double map_max) {
  if (!std::isfinite(scale) || scale < 0 || scale > kMaxDefocusScale)
    bad_argument("defocus scale must be in [0, " + number(kMaxDefocusScale) + "], got " + number(scale));
  const size_t pixels = static_cast<size_t>(input.height) * input.width;
  if (input.type == SampleType::kFloat32) {
    const auto [low, high] = finite_range(static_cast<const float*>(input.data), pixels * 3, "image");
    if (low < -kFloatSlack || high > 1.0f + kFloatSlack)
      bad_argument("image has float32 samples in [" + number(low) + ", " + number(high) +
                   "]; expected [0, 1]");
  }
  if (map == nullptr) return;
  const auto [low, high] = finite_range(map, pixels, "defocus map");
  if (low < 0)
    bad_argument("defocus map has negative values (range [" + number(low) + ", " + number(high) +
                 "]); map units are blur radii >= 0");
  const double limit = kMapLimitFactor * map_max;
  if (static_cast<double>(high) * scale > limit)
    bad_argument("defocus map reaches " + number(static_cast<double>(high) * scale) +
                 " map units as used (scale " + number(scale) + "), over " + number(limit) + ": " +
                 number(kMapLimitFactor) + " times the model's trained range of " + number(map_max));
}

}  // namespace

int round_up(int value, int multiple) { return ceil_div(value, multiple) * multiple; }

int margin_for(int receptive_field) { return (receptive_field + 1) / 2 + 1; }

int min_overlap(int receptive_field, int multiple) {
  return round_up(2 * margin_for(receptive_field), multiple);
}

int default_overlap(int receptive_field, int multiple) {
  return round_up(2 * margin_for(receptive_field) + kDefaultBlendPx, multiple);
}

int estimate_tile_for(int tile, int multiple, std::optional<int> max_side) {
  int side = round_up(tile * kEstimateTileScale, multiple);
  if (max_side) side = std::min(side, *max_side / multiple * multiple);
  return std::max(side, tile);
}

std::vector<int> tile_starts(int length, int tile, int overlap, int multiple) {
  if (length % multiple || tile % multiple || overlap % multiple)
    bad_argument("length " + std::to_string(length) + ", tile " + std::to_string(tile) + " and overlap " +
                 std::to_string(overlap) + " must be multiples of " + std::to_string(multiple));
  if (tile >= length) return {0};
  if (overlap < 0 || overlap >= tile)
    bad_argument("overlap " + std::to_string(overlap) + " must be in [0, tile " + std::to_string(tile) + ")");
  std::vector<int> starts;
  for (int s = 0; s < length - tile; s += tile - overlap) starts.push_back(s);
  starts.push_back(length - tile);
  return starts;
}

int balanced_tile(int length, int tile, int overlap, int multiple) {
  if (tile >= length) return length;
  const int count = ceil_div(length - overlap, tile - overlap);
  return std::min(tile, round_up(ceil_div(length + (count - 1) * overlap, count), multiple));
}

std::vector<std::vector<float>> axis_weights(const std::vector<int>& starts, int tile, int length,
                                             int margin) {
  const int size = std::min(tile, length);
  std::vector<std::vector<double>> raw(starts.size(), std::vector<double>(size, 1.0));
  std::vector<double> fade(length);
  for (size_t k = 0; k + 1 < starts.size(); ++k) {
    const int lo = starts[k + 1] + margin, hi = starts[k] + size - margin;
    if (hi < lo)
      bad_argument("tiles at " + std::to_string(starts[k]) + " and " + std::to_string(starts[k + 1]) +
                   " (size " + std::to_string(size) + ") overlap by " +
                   std::to_string(starts[k] + size - starts[k + 1]) + " px, less than the " +
                   std::to_string(2 * margin) + " px that exact tiling needs");
    for (int p = 0; p < length; ++p) {
      const double t = (static_cast<double>(p - lo) + 0.5) / (hi - lo);  // _ramp on [lo, hi)
      fade[p] = p >= hi ? 1.0 : p < lo ? 0.0 : 0.5 - 0.5 * std::cos(kPi * t);
    }
    for (int i = 0; i < size; ++i) raw[k][i] *= 1.0 - fade[starts[k] + i];
    for (int i = 0; i < size; ++i) raw[k + 1][i] *= fade[starts[k + 1] + i];
  }
  std::vector<double> total(length, 0.0);
  for (size_t k = 0; k < starts.size(); ++k)
    for (int i = 0; i < size; ++i) total[starts[k] + i] += raw[k][i];
  for (double t : total)
    if (t <= 0) bad_argument("tile weights leave pixels uncovered");
  std::vector<std::vector<float>> out(starts.size(), std::vector<float>(size));
  for (size_t k = 0; k < starts.size(); ++k)
    for (int i = 0; i < size; ++i) out[k][i] = static_cast<float>(raw[k][i] / total[starts[k] + i]);
  return out;
}

TileGrid make_grid(int height, int width, int tile, int overlap, int receptive_field, int multiple) {
  const int need = min_overlap(receptive_field, multiple);
  if (overlap < need && (tile < height || tile < width))
    bad_argument("overlap " + std::to_string(overlap) + " is below " + std::to_string(need) +
                 " px, the minimum for exact tiling with a receptive field of " +
                 std::to_string(receptive_field) + " px");
  if (tile % multiple || tile <= 0)
    bad_argument("tile " + std::to_string(tile) + " must be a positive multiple of " +
                 std::to_string(multiple));
  const int margin = margin_for(receptive_field);
  TileGrid g;
  g.tile_h = balanced_tile(height, tile, overlap, multiple);
  g.tile_w = balanced_tile(width, tile, overlap, multiple);
  g.ys = tile_starts(height, g.tile_h, overlap, multiple);
  g.xs = tile_starts(width, g.tile_w, overlap, multiple);
  g.wy = axis_weights(g.ys, g.tile_h, height, margin);
  g.wx = axis_weights(g.xs, g.tile_w, width, margin);
  return g;
}

std::vector<std::pair<int, int>> chunk_bounds(int length, int chunk, int multiple) {
  const int cells = length / multiple;
  const int parts = std::max(1, ceil_div(length, chunk));
  std::vector<int> edges;
  for (int i = 0; i <= parts; ++i)  // Python's round(): half to even, as nearbyint
    edges.push_back(static_cast<int>(std::nearbyint(static_cast<double>(i) * cells / parts)) * multiple);
  std::vector<std::pair<int, int>> bounds;
  for (int i = 0; i < parts; ++i)
    if (edges[i + 1] > edges[i]) bounds.push_back({edges[i], edges[i + 1]});
  return bounds;
}

std::vector<int> pad_index(int length, int padded, bool reflect) {
  std::vector<int> index(padded);
  for (int i = 0; i < padded; ++i) index[i] = i < length ? i : reflect ? 2 * (length - 1) - i : length - 1;
  return index;
}

Pipeline::Pipeline(const Manifest& manifest, Backend& backend, const TilingOptions& options)
    : manifest_(manifest), backend_(backend), options_(options) {
  check_contract(manifest);
  const int m = manifest.size_multiple;
  const int tile = options.tile;
  if (tile <= 0 || tile % m)
    bad_argument("tile " + std::to_string(tile) + " must be a positive multiple of " + std::to_string(m));
  if (options.tile_batch < 1)
    bad_argument("tile batch must be >= 1, got " + std::to_string(options.tile_batch));
  if (options.overlap < -1)
    bad_argument("overlap must be >= 0 (or -1: default), got " + std::to_string(options.overlap));
  std::optional<int> max_side;
  if (const auto p = backend.profile()) {
    // Condition chunks are at least about tile / 2: keep them above the profile minimum.
    const int low = 2 * (std::max(p->min_height, p->min_width) + m);
    const int high = std::min(p->max_height, p->max_width);
    if (tile < low || tile > high)
      bad_argument("tile " + std::to_string(tile) + " must lie in [" + std::to_string(low) + ", " +
                   std::to_string(high) + "] for this engine's profile");
    options_.tile_batch = std::min(options_.tile_batch, p->max_batch);
    max_side = high;
  }
  tiles_[kEstimate] = estimate_tile_for(tile, m, max_side);
  tiles_[kRestore] = tile;
  for (Pass pass : {kEstimate, kRestore}) {
    const std::string graph = kPassGraph[pass];
    const int rf = manifest.receptive_field.at(graph), used = overlap_for(graph);
    if (used < min_overlap(rf, m))
      bad_argument("overlap " + std::to_string(used) + " is below " + std::to_string(min_overlap(rf, m)) +
                   " px, the minimum for exact tiling of '" + graph + "' (receptive field " +
                   std::to_string(rf) + " px)");
    if (used >= tiles_[pass]) {
      const std::string sides =
          pass == kRestore ? "" : " (" + graph + " tiles: " + std::to_string(tiles_[pass]) + " px)";
      bad_argument("tile " + std::to_string(tile) + sides + " must exceed the '" + graph + "' overlap of " +
                   std::to_string(used) + " px");
    }
  }
}

int Pipeline::overlap_for(const std::string& graph) const {
  if (options_.overlap >= 0) return round_up(options_.overlap, manifest_.size_multiple);
  return default_overlap(manifest_.receptive_field.at(graph), manifest_.size_multiple);
}

TileGrid Pipeline::grid(Pass pass, int height, int width) const {
  const std::string graph = kPassGraph[pass];
  return make_grid(height, width, tiles_[pass], overlap_for(graph), manifest_.receptive_field.at(graph),
                   manifest_.size_multiple);
}

std::pair<int, int> Pipeline::padded_size(int height, int width) const {
  const auto p = backend_.profile();
  const int m = manifest_.size_multiple;
  return {round_up(std::max(height, p ? p->min_height : 1), m),
          round_up(std::max(width, p ? p->min_width : 1), m)};
}

int Pipeline::count_tiles(int height, int width) const {
  const auto [ph, pw] = padded_size(height, width);
  int count = 0;
  for (Pass pass : {kEstimate, kRestore}) {
    const TileGrid g = grid(pass, ph, pw);
    count += static_cast<int>(g.ys.size() * g.xs.size());
  }
  return count;
}

void Pipeline::tiled(Pass pass, const std::vector<const std::vector<float>*>& sources,
                     const std::vector<int>& channels, const std::vector<std::string>& names,
                     const std::vector<float>* cond_mean, int height, int width, std::vector<float>& out,
                     int& done, int total) const {
  const std::string graph = kPassGraph[pass];
  const GraphSpec& spec = manifest_.graph(graph);
  const TileGrid g = grid(pass, height, width);
  const int th = g.tile_h, tw = g.tile_w;
  const size_t plane = static_cast<size_t>(th) * tw;
  std::vector<std::array<int, 4>> tiles;  // row index, column index, y, x
  for (size_t i = 0; i < g.ys.size(); ++i)
    for (size_t j = 0; j < g.xs.size(); ++j)
      tiles.push_back({static_cast<int>(i), static_cast<int>(j), g.ys[i], g.xs[j]});
  std::vector<std::vector<float>> blocks(sources.size());
  std::vector<float> cond_block, result;
  for (size_t first = 0; first < tiles.size(); first += options_.tile_batch) {
    const size_t n = std::min(tiles.size() - first, static_cast<size_t>(options_.tile_batch));
    std::vector<Feed> feeds;
    std::vector<Shaped> shapes;
    for (size_t s = 0; s < sources.size(); ++s) {
      const int c_count = channels[s];
      blocks[s].resize(n * c_count * plane);
      for (size_t k = 0; k < n; ++k) {
        const auto [i, j, y, x] = tiles[first + k];
        for (int c = 0; c < c_count; ++c)
          for (int r = 0; r < th; ++r)
            std::copy_n(sources[s]->data() + (static_cast<size_t>(c) * height + y + r) * width + x, tw,
                        blocks[s].data() + ((k * c_count + c) * th + r) * tw);
      }
      feeds.push_back({names[s], {static_cast<int64_t>(n), c_count, th, tw}, blocks[s].data()});
    }
    if (cond_mean != nullptr) {
      cond_block.clear();
      for (size_t k = 0; k < n; ++k)
        cond_block.insert(cond_block.end(), cond_mean->begin(), cond_mean->end());
      feeds.push_back({"cond_mean",
                       {static_cast<int64_t>(n), static_cast<int64_t>(cond_mean->size())},
                       cond_block.data()});
    }
    for (const Feed& f : feeds) shapes.push_back({f.name, f.shape});
    const std::vector<int64_t> shape = spec.output_shape(output_of(graph), shapes);
    if (shape.size() != 4 || shape[0] != static_cast<int64_t>(n) || shape[2] != th || shape[3] != tw)
      throw Error(DEBLUR_ERROR_BUNDLE,
                  "manifest: output of '" + graph + "' is not (batch, C, height, width)");
    const int out_channels = static_cast<int>(shape[1]);
    result.resize(n * out_channels * plane);
    backend_.run(graph, feeds, output_of(graph), shape, result.data());
    for (size_t k = 0; k < n; ++k) {
      const auto [i, j, y, x] = tiles[first + k];
      const std::vector<float>& wy = g.wy[i];
      const std::vector<float>& wx = g.wx[j];
      for (int c = 0; c < out_channels; ++c)
        for (int r = 0; r < th; ++r) {
          float* dst = out.data() + (static_cast<size_t>(c) * height + y + r) * width + x;
          const float* src = result.data() + ((k * out_channels + c) * th + r) * tw;
          for (int q = 0; q < tw; ++q) dst[q] += src[q] * (wy[r] * wx[q]);
        }
    }
    done += static_cast<int>(n);
    if (options_.progress) options_.progress(done, total);
  }
}

std::vector<float> Pipeline::estimate(const std::vector<float>& image, int height, int width, int& done,
                                      int total) const {
  std::vector<float> out(static_cast<size_t>(height) * width, 0.0f);
  tiled(kEstimate, {&image}, {3}, {"image"}, nullptr, height, width, out, done, total);
  return out;
}

std::vector<float> Pipeline::condition_mean(const std::vector<float>& map, int height, int width) const {
  const GraphSpec& spec = manifest_.graph("condition");
  std::vector<float> total, chunk, mean;
  int64_t weight = 0;
  const int side = tiles_[kRestore], m = manifest_.size_multiple;
  for (const auto& [y0, y1] : chunk_bounds(height, side, m))
    for (const auto& [x0, x1] : chunk_bounds(width, side, m)) {
      const int h = y1 - y0, w = x1 - x0;
      chunk.resize(static_cast<size_t>(h) * w);
      for (int r = 0; r < h; ++r)
        std::copy_n(map.data() + static_cast<size_t>(y0 + r) * width + x0, w,
                    chunk.data() + static_cast<size_t>(r) * w);
      const std::vector<Feed> feeds = {{"defocus_map", {1, 1, h, w}, chunk.data()}};
      const std::vector<int64_t> shape = spec.output_shape("cond_mean", {{"defocus_map", {1, 1, h, w}}});
      if (shape.size() != 2 || shape[0] != 1)
        throw Error(DEBLUR_ERROR_BUNDLE, "manifest: cond_mean is not (batch, channels)");
      mean.resize(shape[1]);
      backend_.run("condition", feeds, "cond_mean", shape, mean.data());
      // float32 arithmetic, as NumPy does with `mean * pixels` and `total / weight`.
      const float pixels = static_cast<float>(static_cast<int64_t>(h) * w);
      if (total.empty()) total.assign(mean.size(), 0.0f);
      for (size_t c = 0; c < mean.size(); ++c)
        total[c] = weight == 0 ? mean[c] * pixels : total[c] + mean[c] * pixels;
      weight += static_cast<int64_t>(h) * w;
    }
  for (float& t : total) t /= static_cast<float>(weight);
  return total;
}

std::vector<float> Pipeline::restore(const std::vector<float>& image, const std::vector<float>& map,
                                     const std::vector<float>& cond_mean, int height, int width, int& done,
                                     int total) const {
  std::vector<float> out(static_cast<size_t>(3) * height * width, 0.0f);
  tiled(kRestore, {&image, &map}, {3, 1}, {"image", "defocus_map"},
        manifest_.uses_pooling() ? &cond_mean : nullptr, height, width, out, done, total);
  return out;
}

// --- runtime.ensemble ------------------------------------------------------------------

const Transform kTransforms[8] = {
    {false, false, false}, {true, false, false}, {false, true, true}, {true, true, true},
    {false, false, true},  {false, true, false}, {true, true, false}, {true, false, true},
};

namespace {

// Where element (i, j) of the (H', W') transformed plane comes from in the (height, width) one.
size_t source_of(int i, int j, int height, int width, const Transform& t) {
  const int rows = t.transpose ? width : height, cols = t.transpose ? height : width;
  if (t.flip_rows) i = rows - 1 - i;
  if (t.flip_cols) j = cols - 1 - j;
  return t.transpose ? static_cast<size_t>(j) * width + i : static_cast<size_t>(i) * width + j;
}

// Copies between the original (height, width) planes and `t`'s transformed ones.
std::vector<float> remap(const std::vector<float>& planes, int channels, int height, int width,
                         const Transform& t, bool undo) {
  const int rows = t.transpose ? width : height, cols = t.transpose ? height : width;
  const size_t plane = static_cast<size_t>(height) * width;
  std::vector<float> out(planes.size());
  for (int c = 0; c < channels; ++c)
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j) {
        const size_t original = c * plane + source_of(i, j, height, width, t);
        const size_t moved = c * plane + static_cast<size_t>(i) * cols + j;
        if (undo)
          out[original] = planes[moved];
        else
          out[moved] = planes[original];
      }
  return out;
}

}  // namespace

std::vector<float> apply_transform(const std::vector<float>& planes, int channels, int height, int width,
                                   const Transform& t) {
  return remap(planes, channels, height, width, t, false);
}

std::vector<float> undo_transform(const std::vector<float>& planes, int channels, int height, int width,
                                  const Transform& t) {
  return remap(planes, channels, height, width, t, true);
}

std::vector<float> combine_maps(std::vector<std::vector<float>> maps, float quantile) {
  const size_t n = maps.size();
  if (n == 1) return std::move(maps[0]);
  // NumPy's linear method: position q (n - 1), and its lerp, which counts from the upper
  // neighbour when the fraction is 0.5 or more.
  const double position = static_cast<double>(quantile) * static_cast<double>(n - 1);
  const size_t low = std::min(static_cast<size_t>(position), n - 1), high = std::min(low + 1, n - 1);
  const float fraction = static_cast<float>(position - static_cast<double>(low));
  std::vector<float> out(maps[0].size()), values(n);
  for (size_t p = 0; p < out.size(); ++p) {
    for (size_t k = 0; k < n; ++k) values[k] = maps[k][p];
    std::sort(values.begin(), values.end());
    const float a = values[low], b = values[high], diff = b - a;
    out[p] = fraction >= 0.5f ? b - diff * (1.0f - fraction) : a + diff * fraction;
  }
  return out;
}

void check_self_ensemble(int passes) {
  if (passes != 1 && passes != 2 && passes != 4 && passes != 8)
    bad_argument("self-ensemble must be one of 1, 2, 4, 8, got " + std::to_string(passes));
}

std::string map_range_warning(double high, double map_max, double radius_scale_px) {
  if (high <= map_max) return "";
  char text[256];
  std::snprintf(text, sizeof text,
                "defocus map reaches %.3g map units (%.3g px blur radius), beyond the model's trained "
                "range of %g (%g px): expect artefacts",
                high, high * radius_scale_px, map_max, map_max * radius_scale_px);
  return text;
}

float Pipeline::run(const ImageRef& input, float defocus_scale, const float* map, const ImageRef& output,
                    float* map_out, int self_ensemble) const {
  check_self_ensemble(self_ensemble);
  const int h = input.height, w = input.width;
  if (h < 1 || w < 1) bad_argument("image is empty: " + std::to_string(h) + " x " + std::to_string(w));
  if (output.height != h || output.width != w)
    bad_argument("output is " + std::to_string(output.height) + " x " + std::to_string(output.width) +
                 ", the image is " + std::to_string(h) + " x " + std::to_string(w) + ": they must match");
  check_inputs(input, defocus_scale, map, manifest_.map_max);

  const auto [ph, pw] = padded_size(h, w);
  const bool reflect = ph - h < h && pw - w < w;  // runtime.tiling.pad_to
  const std::vector<int> ry = pad_index(h, ph, reflect), rx = pad_index(w, pw, reflect);
  const size_t plane = static_cast<size_t>(ph) * pw;
  std::vector<float> image(3 * plane);
  const float u8_scale = static_cast<float>(1.0 / 255.0);  // as _to_float: x * float32(1 / 255)
  for (int y = 0; y < ph; ++y)
    for (int x = 0; x < pw; ++x) {
      const size_t src = (static_cast<size_t>(ry[y]) * w + rx[x]) * 3, dst = static_cast<size_t>(y) * pw + x;
      for (int c = 0; c < 3; ++c)
        image[c * plane + dst] =
            input.type == SampleType::kUint8
                ? static_cast<float>(static_cast<const uint8_t*>(input.data)[src + c]) * u8_scale
                : std::min(std::max(static_cast<const float*>(input.data)[src + c], 0.0f), 1.0f);
    }

  // Tiles are square, so a transposed copy has as many.
  const TileGrid est = grid(kEstimate, ph, pw), res = grid(kRestore, ph, pw);
  const int total = self_ensemble * static_cast<int>(res.ys.size() * res.xs.size() +
                                                     (map ? 0 : est.ys.size() * est.xs.size()));
  int done = 0;
  // Copy 0 of the ensemble is the identity: it runs on the planes themselves.
  std::vector<float> moved, moved_map;
  const auto oriented = [&](const std::vector<float>& planes, int channels, int k,
                            std::vector<float>& storage) -> const std::vector<float>& {
    if (k == 0) return planes;
    storage = apply_transform(planes, channels, ph, pw, kTransforms[k]);
    return storage;
  };
  const auto back = [&](std::vector<float> planes, int channels, int k) {
    if (k == 0) return planes;
    return undo_transform(planes, channels, ph, pw, kTransforms[k]);
  };
  std::vector<float> dmap;
  if (map == nullptr) {
    std::vector<std::vector<float>> maps;
    for (int k = 0; k < self_ensemble; ++k) {
      const auto [th, tw] = kTransforms[k].transpose ? std::pair{pw, ph} : std::pair{ph, pw};
      maps.push_back(back(estimate(oriented(image, 3, k, moved), th, tw, done, total), 1, k));
    }
    dmap = combine_maps(std::move(maps), kMapQuantile);
  } else {
    dmap.resize(plane);
    for (int y = 0; y < ph; ++y)
      for (int x = 0; x < pw; ++x)
        dmap[static_cast<size_t>(y) * pw + x] = map[static_cast<size_t>(ry[y]) * w + rx[x]];
  }
  if (defocus_scale != 1.0f)
    for (float& v : dmap) v *= defocus_scale;
  std::vector<float> restored;
  for (int k = 0; k < self_ensemble; ++k) {
    const auto [th, tw] = kTransforms[k].transpose ? std::pair{pw, ph} : std::pair{ph, pw};
    const std::vector<float>& copy_map = oriented(dmap, 1, k, moved_map);
    const std::vector<float> cond =
        manifest_.uses_pooling() ? condition_mean(copy_map, th, tw) : std::vector<float>();
    std::vector<float> out =
        back(restore(oriented(image, 3, k, moved), copy_map, cond, th, tw, done, total), 3, k);
    if (k == 0)
      restored = std::move(out);
    else
      for (size_t i = 0; i < restored.size(); ++i) restored[i] += out[i];
  }
  if (self_ensemble > 1)
    for (float& v : restored) v /= static_cast<float>(self_ensemble);

  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) {
        const float v = restored[c * plane + static_cast<size_t>(y) * pw + x];
        if (!std::isfinite(v))
          throw Error(DEBLUR_ERROR_BACKEND, "the model produced non-finite output samples (NaN or Inf)");
        const float clipped = std::min(std::max(v, 0.0f), 1.0f);
        const size_t at = (static_cast<size_t>(y) * w + x) * 3 + c;
        if (output.type == SampleType::kUint8)  // as _to_image: clip, * 255 + 0.5, truncate
          static_cast<uint8_t*>(output.data)[at] = static_cast<uint8_t>(clipped * 255.0f + 0.5f);
        else
          static_cast<float*>(output.data)[at] = clipped;
      }
  float high = 0.0f;
  for (int y = 0; y < h; ++y) {
    const float* row = dmap.data() + static_cast<size_t>(y) * pw;
    high = std::max(high, *std::max_element(row, row + w));
    if (map_out != nullptr) std::copy_n(row, w, map_out + static_cast<size_t>(y) * w);
  }
  return high;
}

}  // namespace deblur
