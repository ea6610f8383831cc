// `muonlab report`: finished runs aggregated over seeds into tables and figures.
#pragma once
#include <iosfwd>
#include <string>
#include <vector>

namespace ml {

struct ReportOptions {
  std::vector<std::string> run_paths;  // run folders, or folders holding them (searched recursively)
  std::string out_dir;
  std::vector<std::string> targets;  // "val_loss=1.6", "val_acc=0.9"
  std::string title = "muonlab report";
};

// Writes report.md, report.csv, report_data.json and the figures into out_dir. Returns 0, or 1
// when the figures could not be drawn (the tables are still written; the message says why).
// Throws std::runtime_error when no finished run is found or a run folder cannot be read.
int run_report(const ReportOptions& options, std::ostream& out, std::ostream& err);

// `muonlab report --study STUDY.yaml --out OUT`: one report per section of the study file into
// OUT/<section>/, and OUT.md with every section's tables, figures and samples under a claims
// table whose verdicts come from the sections' headline rows. A section whose runs do not exist
// yet says so; its claims read "not measured yet". Throws ConfigError for an invalid study file.
int run_study_report(const std::string& study_path, const std::string& out_path, std::ostream& out, std::ostream& err);

}  // namespace ml
