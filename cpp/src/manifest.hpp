// A bundle's manifest.json (format "defocus-deblur-bundle/1"), as runtime/bundle.py reads it.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace deblur {

// One dimension of a tensor shape: a fixed size, or a symbol ("batch", "height", ...).
struct Dim {
  int64_t size = -1;   // -1 where symbolic
  std::string symbol;  // empty where fixed
};

struct TensorSpec {
  std::string name;
  std::string dtype;
  std::vector<Dim> shape;
};

// A name and a concrete shape, as fed to or returned by a graph.
struct Shaped {
  std::string name;
  std::vector<int64_t> shape;
};

struct GraphSpec {
  std::string name;                          // estimate, condition or restore
  std::vector<TensorSpec> inputs, outputs;   // graph order
  std::map<std::string, std::string> files;  // precision -> absolute file path

  // Concrete shape of `output` given the inputs' shapes: symbols take the value they
  // have in the inputs (runtime.bundle.GraphEntry.output_shape).
  std::vector<int64_t> output_shape(const std::string& output, const std::vector<Shaped>& inputs) const;
  const std::string& file(const std::string& precision) const;
};

struct Manifest {
  std::string root;  // the bundle folder
  int size_multiple = 1;
  double map_radius_scale_px = 0;
  double map_max = 1.0;  // the trained map range [0, map_max] (optional key; runtime.validate's default)
  std::string map_units;
  std::map<std::string, int> receptive_field;  // estimate, restore (, total)
  std::map<std::string, GraphSpec> graphs;
  nlohmann::json raw;

  bool uses_pooling() const { return graphs.count("condition") != 0; }
  const GraphSpec& graph(const std::string& name) const;
};

// Read and check a bundle folder or its manifest.json; every graph file listed must exist.
// Throws Error(DEBLUR_ERROR_BUNDLE) with a one-line message. The sha256 of the files is
// not verified here (runtime.bundle.load_bundle does it).
Manifest load_manifest(const std::string& path);

}  // namespace deblur
