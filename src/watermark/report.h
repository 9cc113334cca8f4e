// The watermark evaluation's report: `epwa eval watermark --report DIR`
// writes DIR/eval.json, and this turns one or more such JSONs (one per model)
// into DIR/report.md, a document for users, and hand-written SVG 1.1 plots
// beside it (no plotting library, so the report needs nothing at run time):
//
// - roc_<model>.svg: ROC curves of each scheme (watermarked texts with the
//   prompt against human texts), false-alarm rate on a log axis;
// - z_hist_<model>.svg: z histograms of watermarked and human texts, one
//   panel per scheme, with the detection threshold marked;
// - z_length_<model>.svg: median z against the number of generated tokens;
// - attacks_<model>.svg: detection rate against attack strength, one panel
//   per kind of attack.
//
// Plots whose data the JSON lacks (a run without --report has no z-scores, a
// run without attacks has no attack keys) are left out, and so are their
// links; the tables show "—" for absent values.
#pragma once

#include <nlohmann/json.hpp>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace epwa::wm {

// Writes DIR/report.md and DIR/*.svg from one or more evaluation JSONs (one
// per model; the model is named by "model_dir"'s last path component, with
// the weights level added where two would share a name). The folder is
// created if needed; files are written atomically (epwa::AtomicFile). Throws
// epwa::Error for a JSON that lacks a required field ("schemes", "z_threshold",
// each scheme's "scheme" and "full_with_prompt", each z summary's "n" and
// "detected") or holds a field of the wrong type, naming the field; nothing is
// written then.
void WriteWatermarkReport(const std::vector<nlohmann::json>& evals, const std::string& dir);
// The same files in memory (name -> contents), written by nobody: what
// WriteWatermarkReport writes, and what the fuzz target checks.
std::map<std::string, std::string> RenderWatermarkReport(const std::vector<nlohmann::json>& evals);

// The empirical ROC curve of a detector that flags a text when z >= t, as
// (false-positive rate, true-positive rate) points: (0, 0) first, then one
// point for every distinct score t among `positives` and `negatives`, from
// the highest down, so the last point is (1, 1). A tie between a positive and
// a negative makes a diagonal step, so the trapezoid area under these points
// is the ROC AUC with ties counted half (RocAuc in evaluate.h). Empty when
// either side is empty.
std::vector<std::pair<double, double>> RocPoints(const std::vector<double>& positives,
                                                 const std::vector<double>& negatives);

// The name a report gives the model of one evaluation JSON: the last path
// component of "model_dir", reduced to [A-Za-z0-9._-] so that it can be part
// of a file name ("model" when absent or empty).
std::string ReportModelName(const nlohmann::json& eval);

}  // namespace epwa::wm
