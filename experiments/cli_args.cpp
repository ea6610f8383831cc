#include "experiments/cli_args.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <regex>

#include "experiments/config.h"

namespace ml {
namespace {

struct OptionSpec {
  std::string name;        // "--out"
  std::string value_name;  // "DIR"; empty for a flag
  std::string help;
  bool required = false;
  bool repeatable = false;
  std::string default_value = "";  // used when the option is absent, and shown in the help
};

// The options and positional argument of one command line, before conversion to types.
struct ParsedArgs {
  std::string positional;               // the first positional argument
  std::vector<std::string> positionals;  // all of them (commands that take several)
  std::map<std::string, std::vector<std::string>> values;  // a flag given maps to {""}

  bool has(const std::string& name) const { return values.count(name) > 0; }
  std::string value(const std::string& name) const { return has(name) ? values.at(name).front() : ""; }
  std::vector<std::string> all(const std::string& name) const {
    return has(name) ? values.at(name) : std::vector<std::string>{};
  }
};

struct CommandSpec {
  std::string name;
  std::string summary;
  std::string positional;  // "CONFIG.yaml"; empty when the command takes none
  std::string positional_help;
  std::vector<OptionSpec> options;
  std::function<CliArgs(const ParsedArgs&, const CommandSpec&)> build;
  bool many_positionals = false;  // the positional argument may be given more than once, or not at all
};

[[noreturn]] void fail(const CommandSpec& command, const std::string& message) {
  throw CliError("muonlab " + command.name + ": " + message + "; see `muonlab " + command.name + " --help`");
}

int64_t integer_option(const ParsedArgs& parsed, const CommandSpec& command, const std::string& name,
                       int64_t minimum) {
  const std::string text = parsed.value(name);
  static const std::regex integer_pattern("[+-]?[0-9]{1,18}");
  if (!std::regex_match(text, integer_pattern) || std::stoll(text) < minimum)
    fail(command, name + " expects an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
  return std::stoll(text);
}

double number_option(const ParsedArgs& parsed, const CommandSpec& command, const std::string& name, double minimum) {
  const std::string text = parsed.value(name);
  char* end = nullptr;
  const double value = text.empty() ? 0.0 : std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(value) || value < minimum)
    fail(command, name + " expects a number >= " + std::to_string(minimum) + ", got '" + text + "'");
  return value;
}

std::string choice_option(const CommandSpec& command, const std::string& what, const std::string& text,
                          const std::vector<std::string>& choices) {
  if (std::find(choices.begin(), choices.end(), text) != choices.end()) return text;
  std::string alternatives;
  for (const std::string& choice : choices) alternatives += (alternatives.empty() ? "" : ", ") + choice;
  fail(command, what + " must be one of " + alternatives + ", got '" + text + "'");
}

const OptionSpec kSetOption{"--set", "KEY=VALUE",
                            "override a config key, e.g. --set optimizer.lr=0.01 or --set model.widths=[16,32]; "
                            "repeatable, applied in order",
                            false, true, ""};

const std::vector<CommandSpec>& commands() {
  static const std::vector<CommandSpec> table{
      {"train",
       "train a model described by a YAML config",
       "CONFIG.yaml",
       "the run config (see configs/)",
       {kSetOption,
        {"--out", "DIR", "write the run (resolved config, log, checkpoints) to DIR instead of a new folder under runs/"},
        {"--resume", "DIR", "continue the run saved in DIR from its last checkpoint"},
        {"--quiet", "", "print only the final summary"}},
       [](const ParsedArgs& parsed, const CommandSpec&) -> CliArgs {
         return TrainArgs{parsed.positional, parsed.all("--set"), parsed.value("--out"), parsed.value("--resume"),
                          parsed.has("--quiet")};
       }},
      {"eval",
       "evaluate a checkpoint on the validation split of its config's data",
       "CONFIG.yaml",
       "the run config the checkpoint was trained with",
       {{"--checkpoint", "PATH", "the checkpoint to evaluate", true}, kSetOption},
       [](const ParsedArgs& parsed, const CommandSpec&) -> CliArgs {
         return EvalArgs{parsed.positional, parsed.all("--set"), parsed.value("--checkpoint")};
       }},
      {"ortho",
       "orthogonalize a matrix stored as .npy with one of the Muon-family methods",
       "",
       "",
       {{"--method", "NAME", "the orthogonalization method", true},
        {"--in", "A.npy", "the input matrix (2-D)", true},
        {"--out", "B.npy", "where to write the result", true},
        {"--steps", "N", "number of iterations (default: the method's own)"}},
       [](const ParsedArgs& parsed, const CommandSpec& command) -> CliArgs {
         const int64_t steps = parsed.has("--steps") ? integer_option(parsed, command, "--steps", 1) : 0;
         return OrthoArgs{parsed.value("--method"), parsed.value("--in"), parsed.value("--out"), steps};
       }},
      {"bench",
       "time orthogonalization methods, tensor ops or model training steps",
       "ortho|ops|models",
       "what to time",
       {{"--device", "cpu|cuda", "where to run", false, false, "cpu"},
        {"--threads", "N", "CPU threads, 0 for the OpenMP default", false, false, "0"},
        {"--repeats", "N", "timed repetitions of each case", false, false, "5"},
        {"--model", "gpt|cnn", "models: time one benchmark model alone, its peak memory then its own (default: both)"}},
       [](const ParsedArgs& parsed, const CommandSpec& command) -> CliArgs {
         BenchArgs args{choice_option(command, "the target", parsed.positional, {"ortho", "ops", "models"}),
                        choice_option(command, "--device", parsed.value("--device"), {"cpu", "cuda"}),
                        integer_option(parsed, command, "--threads", 0), integer_option(parsed, command, "--repeats", 1),
                        parsed.has("--model") ? choice_option(command, "--model", parsed.value("--model"), {"gpt", "cnn"})
                                              : "all"};
         if (parsed.has("--model") && args.target != "models") fail(command, "--model applies to `bench models` only");
         return args;
       }},
      {"demo",
       "train a small model on Fashion-MNIST with AdamW and with Muon, and print a comparison table",
       "",
       "",
       {{"--quick", "", "a shorter run, for smoke tests"}},
       [](const ParsedArgs& parsed, const CommandSpec&) -> CliArgs { return DemoArgs{parsed.has("--quick")}; }},
      {"check",
       "validate a config and print it fully resolved (every default filled in)",
       "CONFIG.yaml",
       "the run config to check",
       {kSetOption},
       [](const ParsedArgs& parsed, const CommandSpec&) -> CliArgs {
         return CheckArgs{parsed.positional, parsed.all("--set")};
       }},
      {"sweep",
       "run a grid of training runs from a sweep file, skipping finished points and resuming interrupted ones",
       "SWEEP.yaml",
       "the sweep file (see configs/study/ and experiments/sweep.h)",
       {{"--dry-run", "", "list the points, their overrides and whether each would train, resume or be skipped"},
        {"--only", "PATTERN", "run only the points whose names match this glob, e.g. 'muon-*'"},
        {"--quiet", "", "no progress output of the training runs"}},
       [](const ParsedArgs& parsed, const CommandSpec&) -> CliArgs {
         return SweepArgs{parsed.positional, parsed.has("--dry-run"), parsed.value("--only"), parsed.has("--quiet")};
       }},
      {"report",
       "aggregate finished runs over seeds into report.md, report.csv and learning-curve figures",
       "DIR",
       "run folders, or folders holding them (searched recursively); repeatable",
       {{"--out", "DIR", "where report.md, report.csv and the figures go", true},
        {"--target", "METRIC=VALUE",
         "a validation target for steps/seconds-to-target, e.g. val_loss=1.6 or val_acc=0.9; repeatable "
         "(default: none)",
         false, true},
        {"--title", "TEXT", "the report's heading", false, false, "muonlab report"},
        {"--study", "STUDY.yaml",
         "instead of DIRs: one report per section of a study file (configs/study/study.yaml) into OUT/<section>/ "
         "and OUT.md with the claims table"}},
       [](const ParsedArgs& parsed, const CommandSpec& command) -> CliArgs {
         if (parsed.positionals.empty() == !parsed.has("--study"))
           fail(command, parsed.has("--study") ? "give either run folders or --study, not both"
                                               : "missing the DIR argument (run folders) or --study");
         return ReportArgs{parsed.positionals, parsed.value("--out"), parsed.all("--target"), parsed.value("--title"),
                           parsed.value("--study")};
       },
       true},
      {"sample",
       "generate text with a trained character-level GPT",
       "",
       "",
       {{"--checkpoint", "PATH", "a run folder, checkpoint folder or file in one", true},
        {"--prompt", "TEXT", "the text to continue (default: a newline)"},
        {"--tokens", "N", "characters to generate", false, false, "200"},
        {"--temperature", "T", "softmax temperature; 0 picks the most likely character", false, false, "0.8"},
        {"--top-k", "K", "sample among the K most likely characters; 0 for all", false, false, "0"},
        {"--seed", "S", "seed of the sampling", false, false, "0"}},
       [](const ParsedArgs& parsed, const CommandSpec& command) -> CliArgs {
         return SampleArgs{parsed.value("--checkpoint"),
                           parsed.value("--prompt"),
                           integer_option(parsed, command, "--tokens", 1),
                           number_option(parsed, command, "--temperature", 0.0),
                           integer_option(parsed, command, "--top-k", 0),
                           integer_option(parsed, command, "--seed", 0)};
       }},
  };
  return table;
}

std::vector<std::string> command_names() {
  std::vector<std::string> names;
  for (const CommandSpec& command : commands()) names.push_back(command.name);
  return names;
}

const CommandSpec& find_command(const std::string& name) {
  for (const CommandSpec& command : commands())
    if (command.name == name) return command;
  const std::string hint = closest_match(name, command_names());
  throw CliError("muonlab: unknown command '" + name + "'" + (hint.empty() ? "" : " (did you mean " + hint + "?)") +
                 "; see `muonlab --help`");
}

bool is_help_flag(const std::string& arg) { return arg == "--help" || arg == "-h"; }

ParsedArgs parse_command_line(const CommandSpec& command, const std::vector<std::string>& args) {
  ParsedArgs parsed;
  bool have_positional = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 2 || arg[0] != '-') {
      if (command.positional.empty() || (have_positional && !command.many_positionals))
        fail(command, "unexpected argument '" + arg + "'");
      if (arg.empty()) fail(command, "the " + command.positional + " argument is empty");
      if (!have_positional) parsed.positional = arg;
      parsed.positionals.push_back(arg);
      have_positional = true;
      continue;
    }
    const size_t equals = arg.find('=');
    const std::string name = arg.substr(0, equals);
    const auto option = std::find_if(command.options.begin(), command.options.end(),
                                     [&](const OptionSpec& candidate) { return candidate.name == name; });
    if (option == command.options.end()) {
      std::vector<std::string> names;
      for (const OptionSpec& candidate : command.options) names.push_back(candidate.name);
      const std::string hint = closest_match(name, names);
      fail(command, "unknown option " + name + (hint.empty() ? "" : " (did you mean " + hint + "?)"));
    }
    if (parsed.has(name) && !option->repeatable) fail(command, "option " + name + " is given more than once");
    std::string value;
    if (option->value_name.empty()) {
      if (equals != std::string::npos) fail(command, "option " + name + " takes no value");
    } else if (equals != std::string::npos) {
      value = arg.substr(equals + 1);
    } else {
      // An option name where the value should be means the value was forgotten.
      if (i + 1 == args.size() || args[i + 1].rfind("--", 0) == 0)
        fail(command, "option " + name + " needs a value (" + name + " " + option->value_name + ")");
      value = args[++i];
    }
    // An empty path would quietly mean a default (`--out ""` the runs/ folder): only free text may be empty.
    if (!option->value_name.empty() && value.empty() && option->value_name != "TEXT")
      fail(command, "option " + name + " needs a non-empty value (" + name + " " + option->value_name + ")");
    parsed.values[name].push_back(value);
  }
  if (!command.positional.empty() && !have_positional && !command.many_positionals)
    fail(command, "missing the " + command.positional + " argument");
  for (const OptionSpec& option : command.options) {
    if (option.required && !parsed.has(option.name))
      fail(command, "missing the required option " + option.name + " " + option.value_name);
    if (!option.default_value.empty() && !parsed.has(option.name)) parsed.values[option.name] = {option.default_value};
  }
  return parsed;
}

std::string synopsis(const CommandSpec& command) {
  std::string line = "muonlab " + command.name;
  if (!command.positional.empty()) line += " " + command.positional;
  for (const OptionSpec& option : command.options)
    if (option.required) line += " " + option.name + " " + option.value_name;
  return line + " [options]";
}

std::string aligned(const std::string& left, const std::string& right) {
  constexpr size_t kColumn = 22;
  const std::string padded = "  " + left;
  return padded + std::string(padded.size() < kColumn ? kColumn - padded.size() : 1, ' ') + right + "\n";
}

std::string command_usage(const CommandSpec& command) {
  std::string text = "usage: " + synopsis(command) + "\n\n" + command.summary + "\n";
  if (!command.positional.empty()) text += "\n" + aligned(command.positional, command.positional_help);
  text += "\noptions:\n";
  for (const OptionSpec& option : command.options) {
    std::string help = option.help;
    if (option.required) help += " (required)";
    if (!option.default_value.empty()) help += " (default: " + option.default_value + ")";
    text += aligned(option.value_name.empty() ? option.name : option.name + " " + option.value_name, help);
  }
  return text + aligned("-h, --help", "show this help");
}

std::string overview() {
  std::string text = "usage: muonlab <command> [options]\n\ncommands:\n";
  for (const CommandSpec& command : commands()) text += aligned(command.name, command.summary);
  return text + "\nRun `muonlab <command> --help` for the options of a command.\n";
}

}  // namespace

CliArgs parse_cli(const std::vector<std::string>& args) {
  if (args.empty()) throw CliError("muonlab: missing command; see `muonlab --help`");
  const std::string& first = args.front();
  if (is_help_flag(first)) return HelpRequest{""};
  if (first == "help") {
    if (args.size() > 2) throw CliError("muonlab help: expected at most one command name; see `muonlab --help`");
    return HelpRequest{args.size() == 2 ? find_command(args[1]).name : ""};
  }
  if (first.rfind("-", 0) == 0)
    throw CliError("muonlab: expected a command before option " + first + "; see `muonlab --help`");
  const CommandSpec& command = find_command(first);
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (std::any_of(rest.begin(), rest.end(), is_help_flag)) return HelpRequest{command.name};
  return command.build(parse_command_line(command, rest), command);
}

CliArgs parse_cli(int argc, const char* const argv[]) {
  return parse_cli(std::vector<std::string>(argv + std::min(argc, 1), argv + argc));
}

std::string usage(const std::string& command) {
  return command.empty() ? overview() : command_usage(find_command(command));
}

}  // namespace ml
