/* C API of the defocus-deblurring runtime (ONNX Runtime backend, CPU).
 *
 * One model handle holds one ONNX Runtime session per graph of a bundle
 * (models/default: estimate, condition, restore), reused across tiles and calls.
 * Every function returns a deblur_status; on an error, deblur_last_error() gives a
 * one-line message (thread-local, valid until this thread's next call). No C++
 * exception crosses this boundary. A handle may be used by one thread at a time.
 *
 * Images are interleaved RGB, H x W x 3, row-major, uint8 (0..255) or float32 (0..1).
 * Maps are H x W float32 in the bundle's map units (manifest "map_units"; value 1.0
 * is a blur disc of radius deblur_info.map_radius_scale_px pixels).
 */
#ifndef DEBLUR_H
#define DEBLUR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DEBLUR_API_VERSION 2 /* 2: deblur_set_self_ensemble */

#if defined(_WIN32)
#if defined(DEBLUR_BUILDING)
#define DEBLUR_API __declspec(dllexport)
#else
#define DEBLUR_API __declspec(dllimport)
#endif
#else
#define DEBLUR_API __attribute__((visibility("default")))
#endif

typedef enum deblur_status {
  DEBLUR_OK = 0,
  DEBLUR_ERROR_ARGUMENT = 1, /* bad option, buffer size, dtype, scale, map or sample */
  DEBLUR_ERROR_BUNDLE = 2,   /* not a bundle, bad manifest, missing graph file */
  DEBLUR_ERROR_BACKEND = 3,  /* ONNX Runtime refused a graph or a run */
  DEBLUR_ERROR_MEMORY = 4,   /* out of memory */
  DEBLUR_ERROR_INTERNAL = 5
} deblur_status;

typedef enum deblur_dtype { DEBLUR_UINT8 = 0, DEBLUR_FLOAT32 = 1 } deblur_dtype;

/* Called after each batch of tiles with the tiles done so far and the total of one run. */
typedef void (*deblur_progress_fn)(int32_t done, int32_t total, void* user);

typedef struct deblur_options {
  int32_t tile;                /* restore tile side (px), a multiple of size_multiple. Default 1024 */
  int32_t overlap;             /* px shared by tiles of both passes; -1: receptive field + 16 (default) */
  int32_t tile_batch;          /* tiles per graph call. Default 1 */
  int32_t threads;             /* ONNX Runtime intra-op threads; 0: all cores (default) */
  const char* precision;       /* "fp32" (default, also for NULL) or "fp16" */
  deblur_progress_fn progress; /* NULL: none (default) */
  void* progress_user;
} deblur_options;

typedef struct deblur_info {
  int32_t size_multiple;       /* graph inputs are padded to multiples of it */
  int32_t tile, estimate_tile; /* tile sides of the restore and estimate passes */
  int32_t overlap, estimate_overlap;
  int32_t uses_pooling;       /* 1: restore takes cond_mean pooled over the whole image */
  double map_radius_scale_px; /* map value 1.0 = blur disc of this radius */
  double map_max;             /* the trained range of the map is [0, map_max] */
} deblur_info;

/* An image buffer: data holds height * width * 3 samples of dtype (size_bytes exactly).
 * deblur_run reads an input's data and never writes it. */
typedef struct deblur_image {
  void* data;
  size_t size_bytes;
  int32_t height;
  int32_t width;
  int32_t dtype; /* deblur_dtype */
} deblur_image;

typedef struct deblur_model deblur_model;

/* Fill options with the defaults above. */
DEBLUR_API void deblur_default_options(deblur_options* options);

/* Load a bundle (its folder or its manifest.json). options may be NULL (defaults).
 * On success *model is a new handle for deblur_destroy; on an error it is NULL. */
DEBLUR_API int deblur_create(const char* bundle, const deblur_options* options, deblur_model** model);

/* Deblur one image.
 *   defocus_scale: multiplies the defocus map (finite, >= 0; 1.0: as estimated).
 *   defocus_map: NULL to estimate it, or height * width finite float32 map values to
 *     use instead (defocus_map_bytes = height * width * 4); also multiplied by the scale.
 *   output: same height and width as the input, dtype uint8 or float32, size_bytes
 *     exactly height * width * 3 * sample size; the result is clipped to [0, 1].
 *   map_out: NULL, or height * width float32 (map_out_bytes) for the map as used. */
DEBLUR_API int deblur_run(deblur_model* model, const deblur_image* input, float defocus_scale,
                          const float* defocus_map, size_t defocus_map_bytes, deblur_image* output,
                          float* map_out, size_t map_out_bytes);

/* Self-ensemble of the model's next runs: passes = 1 (default), 2, 4 or 8 flipped /
 * transposed copies of the image, all restored from one map (the copies' estimates
 * combined per pixel: their 0.75 quantile; or the map given) and averaged: better output
 * at that many times the cost (runtime.Deblurrer's self_ensemble, runtime/README.md). */
DEBLUR_API int deblur_set_self_ensemble(deblur_model* model, int32_t passes);

DEBLUR_API int deblur_get_info(const deblur_model* model, deblur_info* info);

/* "onnxruntime 1.31.1, CPU, fp32, ..."; valid until deblur_destroy. NULL for a NULL model. */
DEBLUR_API const char* deblur_describe(const deblur_model* model);

/* The warning of this model's last successful deblur_run, "" when none: a supplied or
 * scaled-up map as used beyond the trained range (expect artefacts). Valid until the
 * model's next run or deblur_destroy; NULL for a NULL model. */
DEBLUR_API const char* deblur_last_warning(const deblur_model* model);

/* The last error of this thread ("" when none). */
DEBLUR_API const char* deblur_last_error(void);

DEBLUR_API void deblur_destroy(deblur_model* model);

#ifdef __cplusplus
}
#endif

#endif /* DEBLUR_H */
