#include "manifest.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "errors.hpp"

namespace deblur {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* const kFormat = "defocus-deblur-bundle/1";
const char* const kGraphNames[] = {"estimate", "condition", "restore"};

[[noreturn]] void fail(const std::string& message) { throw Error(DEBLUR_ERROR_BUNDLE, message); }

std::vector<TensorSpec> tensor_specs(const json& items) {
  std::vector<TensorSpec> specs;
  for (const json& item : items) {
    TensorSpec spec{item.at("name").get<std::string>(), item.at("dtype").get<std::string>(), {}};
    for (const json& d : item.at("shape")) {
      if (d.is_string())
        spec.shape.push_back({-1, d.get<std::string>()});
      else
        spec.shape.push_back({d.get<int64_t>(), ""});
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

GraphSpec graph_spec(const fs::path& root, const std::string& name, const json& data) {
  GraphSpec graph{name, {}, {}, {}};
  try {
    graph.inputs = tensor_specs(data.at("inputs"));
    graph.outputs = tensor_specs(data.at("outputs"));
    for (const auto& [precision, file] : data.at("files").items())
      graph.files[precision] = (root / file.get<std::string>()).string();
  } catch (const json::exception& err) {
    fail("manifest: bad entry for graph '" + name + "' (" + err.what() + ")");
  }
  for (const auto& [precision, path] : graph.files) {
    if (!fs::is_regular_file(path))
      fail("bundle " + root.string() + ": " + fs::path(path).filename().string() + " (" + name + ", " +
           precision + ") is missing");
  }
  return graph;
}

json read_json(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) fail(path.string() + ": cannot be read");
  json data;
  try {
    data = json::parse(file);
  } catch (const json::exception& err) {
    fail(path.string() + ": not valid JSON (" + err.what() + ")");
  }
  const bool ok = data.is_object() && data.contains("format") && data["format"] == kFormat;
  if (!ok) {
    const std::string found = data.is_object() && data.contains("format") ? data["format"].dump() : "none";
    fail(path.string() + ": format is " + found + ", expected '" + kFormat + "'");
  }
  return data;
}

}  // namespace

std::vector<int64_t> GraphSpec::output_shape(const std::string& output,
                                             const std::vector<Shaped>& inputs) const {
  std::map<std::string, int64_t> sizes;
  for (const TensorSpec& spec : this->inputs)
    for (const Shaped& given : inputs)
      if (given.name == spec.name)
        for (size_t k = 0; k < spec.shape.size() && k < given.shape.size(); ++k)
          if (!spec.shape[k].symbol.empty()) sizes[spec.shape[k].symbol] = given.shape[k];
  for (const TensorSpec& spec : outputs) {
    if (spec.name != output) continue;
    std::vector<int64_t> shape;
    for (const Dim& d : spec.shape) {
      if (d.symbol.empty())
        shape.push_back(d.size);
      else if (sizes.count(d.symbol))
        shape.push_back(sizes[d.symbol]);
      else
        fail("output '" + output + "' of '" + name + "': dimension '" + d.symbol +
             "' is not set by the inputs");
    }
    return shape;
  }
  fail("graph '" + name + "' has no output '" + output + "'");
}

const std::string& GraphSpec::file(const std::string& precision) const {
  auto found = files.find(precision);
  if (found == files.end()) fail("bundle has no " + precision + " ONNX for '" + name + "'");
  return found->second;
}

const GraphSpec& Manifest::graph(const std::string& name) const {
  auto found = graphs.find(name);
  if (found == graphs.end()) fail("bundle " + root + " has no '" + name + "' graph");
  return found->second;
}

Manifest load_manifest(const std::string& path_text) {
  const fs::path path(path_text);
  if (!fs::exists(path)) fail("model " + path_text + " does not exist");
  const fs::path manifest_path = fs::is_directory(path) ? path / "manifest.json" : path;
  if (!fs::is_regular_file(manifest_path))
    fail(manifest_path.parent_path().string() + " is not a model bundle: no manifest.json in it");
  Manifest m;
  m.raw = read_json(manifest_path);
  const fs::path root = manifest_path.parent_path();
  m.root = root.string();
  const json& graphs = m.raw.contains("graphs") ? m.raw["graphs"] : json();
  if (!graphs.is_object() || !graphs.contains("estimate") || !graphs.contains("restore"))
    fail(manifest_path.string() + ": needs graphs 'estimate' and 'restore'");
  for (const auto& item : graphs.items()) {
    if (std::find(std::begin(kGraphNames), std::end(kGraphNames), item.key()) == std::end(kGraphNames))
      fail(manifest_path.string() + ": unknown graph '" + item.key() + "'");
    m.graphs[item.key()] = graph_spec(root, item.key(), item.value());
  }
  try {
    m.size_multiple = m.raw.at("size_multiple").get<int>();
    m.map_radius_scale_px = m.raw.at("map_radius_scale_px").get<double>();
    m.map_units = m.raw.value("map_units", "");
    m.map_max = m.raw.value("map_max", 1.0);
    for (const auto& [key, value] : m.raw.at("receptive_field").items())
      m.receptive_field[key] = value.get<int>();
  } catch (const std::exception& err) {
    fail(manifest_path.string() + ": missing or bad key (" + err.what() + ")");
  }
  for (const char* graph : {"estimate", "restore"})
    if (!m.receptive_field.count(graph))
      fail(manifest_path.string() + ": receptive_field lacks '" + graph + "'");
  // runtime.validate.check_bundle_fields
  if (m.size_multiple < 1 || m.size_multiple > 256)
    fail(manifest_path.string() + ": size_multiple " + std::to_string(m.size_multiple) +
         " must be in [1, 256]");
  for (const auto& [key, value] :
       {std::pair{"map_radius_scale_px", m.map_radius_scale_px}, {"map_max", m.map_max}})
    if (!std::isfinite(value) || value <= 0)
      fail(manifest_path.string() + ": " + key + " must be finite and > 0");
  for (const auto& [key, value] : m.receptive_field)
    if (value < 0) fail(manifest_path.string() + ": receptive_field '" + key + "' must be >= 0");
  return m;
}

}  // namespace deblur
