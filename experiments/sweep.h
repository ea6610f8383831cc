// `muonlab sweep`: a grid of training runs described by one YAML file, run one after another.
//
// A sweep file names base configs and, per block of runs, the keys to set and the values to try:
//
//   name: shakespeare_lr            # the sweep's folder under `out`
//   out: runs/study                 # default: runs
//   keep: experiments/results/study-data   # optional: finished runs are copied there (no checkpoints)
//   set: {threads: 2, train: {eval_every: 100}}   # overrides for every point
//   grid: {seed: [1337]}            # crossed with every block's grid
//   runs:
//     - base: configs/shakespeare_char_muon.yaml
//       grid: {optimizer.lr: [0.01, 0.02, 0.04]}
//     - base: configs/shakespeare_char_dion2.yaml
//       label: dion2_f0.5           # default: the resolved optimizer.kind
//       set: {optimizer.fraction: 0.5}
//       grid: {optimizer.lr: [0.02, 0.04]}
//
// Each point is its block's base config with the sweep's `set`, the block's `set` and one
// combination of grid values applied as --set overrides (so they are validated like any config
// key), trained into <out>/<name>/<point>/, where the point's name is the label followed by the
// grid values ("muon-lr0.02-seed1337"). Running the same sweep again skips the points that
// finished (in the run folder or in `keep`), resumes the ones that were interrupted after a
// checkpoint and records, then skips, the ones that diverged; a point that fails for any other
// reason is recorded and retried on the next run, and the sweep goes on with the next point. A
// point stopped by SIGINT or SIGTERM (see TrainingInterrupted) stops the whole sweep; it resumes
// on the next run.
#pragma once
#include <iosfwd>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "experiments/config.h"

namespace ml {

struct SweepPoint {
  std::string name;   // unique within the sweep, safe as a folder name
  std::string label;  // the block's label: what the report calls the method
  std::string base;   // the base config file
  std::vector<std::string> overrides;             // key=value, in the order they are applied
  std::vector<std::pair<std::string, std::string>> grid_values;  // the grid keys and this point's values
  RunConfig config;   // the resolved, validated config
};

struct Sweep {
  std::string file;
  std::string name;
  std::string out;   // the sweep's folder: <out>/<name>
  std::string keep;  // "" or <keep>/<name>
  std::vector<SweepPoint> points;
};

// Reads and validates a sweep file, expanding its grid and validating every point's config.
// Throws ConfigError naming the sweep file, the line and the key (or the point whose config is
// invalid).
Sweep load_sweep(const std::string& path);
Sweep parse_sweep(const std::string& yaml_text, const std::string& source_name);

// What running the sweep would do for a point right now.
enum class PointState {
  Pending,      // nothing trained yet
  Resumable,    // interrupted after a checkpoint: continues from it
  Completed,    // finished in the run folder
  Kept,         // finished, found in `keep`
  Diverged,     // recorded as diverged: skipped
  Stale,        // a finished result exists but was made with a different config: reported, not rerun
};
const char* point_state_name(PointState state);

struct PointStatus {
  PointState state = PointState::Pending;
  std::string detail;  // why (for Stale), or the recorded message (Diverged)
};
PointStatus point_status(const Sweep& sweep, const SweepPoint& point);

struct SweepOptions {
  bool dry_run = false;
  std::string only;  // a glob over point names ("" = all)
  bool quiet = false;  // no progress of the training runs
};

// Runs (or, with dry_run, lists) the sweep. Returns the number of points that failed (neither
// completed nor diverged); rethrows TrainingInterrupted.
int run_sweep(const Sweep& sweep, const SweepOptions& options, std::ostream& out);

// A grid key as it reads in a point's name: "optimizer.lr" as "lr", unless another of the point's
// grid keys `keys` ends the same.
std::string grid_key_label(const std::string& key, const std::vector<std::string>& keys);

// The file each run folder of a sweep holds to say which point it is: {"sweep", "point",
// "label", "base", "overrides", "grid"}. The report reads it to name the method.
extern const char* const kSweepPointFile;
// A text model's sample (300 characters from a newline, temperature 0.8, seed 0), written when a
// character-level GPT point completes.
extern const char* const kSampleFile;
// The outcome of a point that did not complete: {"status": "diverged" | "failed", "message"}.
extern const char* const kSweepStatusFile;
// The status and message kSweepStatusFile records in the run folder `dir`; {"", ""} when it has none.
std::pair<std::string, std::string> recorded_status(const std::string& dir);

}  // namespace ml
