// epwa: run Mixture-of-Experts language models on the CPU.
//
// Every failure a user can cause (bad flags, bad files, unsupported models)
// ends here as one line on stderr and a non-zero exit code, never a crash.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "base/error.h"
#include "cli.h"


namespace {

size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// A command whose output could not be written has failed, even if all its
// work succeeded: "epwa run --json > out.json" on a full disk must not exit 0
// with an empty out.json. The flush surfaces buffered write errors (ENOSPC,
// EBADF for a closed stdout, EPIPE when SIGPIPE is ignored) and fclose those
// that a file system reports only on close (NFS).
int CheckStandardOutput() {
  errno = 0;
  std::cout.flush();
  bool failed = !std::cout.good();
  failed |= std::fflush(stdout) != 0;
  failed |= std::ferror(stdout) != 0;
  int err = errno;
  if (!failed && std::fclose(stdout) != 0) {
    failed = true;
    err = errno;
  }
  if (!failed) return 0;
  std::fprintf(stderr, "epwa: error: writing standard output failed%s%s\n", err ? ": " : "",
               err ? std::strerror(err) : "");
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"epwa: run Mixture-of-Experts language models on the CPU"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "epwa 0.1.0");
  std::map<CLI::App*, epwa::cli::Runner> runners;
  auto add = [&](epwa::cli::Runner (*reg)(CLI::App&)) {
    const size_t before = app.get_subcommands({}).size();
    epwa::cli::Runner r = reg(app);
    runners[app.get_subcommands({})[before]] = std::move(r);
  };
  add(epwa::cli::RegisterInfo);
  add(epwa::cli::RegisterRun);
  add(epwa::cli::RegisterScore);
  add(epwa::cli::RegisterTokenize);
  add(epwa::cli::RegisterSynth);
  add(epwa::cli::RegisterBench);
  add(epwa::cli::RegisterPlan);
  add(epwa::cli::RegisterEval);
  add(epwa::cli::RegisterBenchLoad);
  add(epwa::cli::RegisterHash);
  add(epwa::cli::RegisterKeygen);
  add(epwa::cli::RegisterDetect);
  add(epwa::cli::RegisterOracle);
  add(epwa::cli::RegisterTemplate);
  add(epwa::cli::RegisterServe);
  add(epwa::cli::RegisterChat);
  // CLI11 reports a misspelt command as "A subcommand is required"; name it
  // and list the commands instead.
  auto is_command = [&](const std::string& name) {
    for (const CLI::App* sub : app.get_subcommands({}))
      if (sub->check_name(name)) return true;
    return false;
  };
  if (argc > 1 && argv[1][0] != '-' && !is_command(argv[1])) {
    std::string names, closest;
    size_t best = 3;  // suggest only names within two edits
    for (const CLI::App* sub : app.get_subcommands({})) {
      names += (names.empty() ? "" : ", ") + sub->get_name();
      const size_t d = EditDistance(argv[1], sub->get_name());
      if (d < best) best = d, closest = sub->get_name();
    }
    std::fprintf(stderr, "epwa: error: unknown command '%s'%s; the commands are: %s (see epwa --help)\n",
                 argv[1], closest.empty() ? "" : (" (did you mean '" + closest + "'?)").c_str(),
                 names.c_str());
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "epwa: error: %s (see epwa --help)\n", e.what());
    return 2;
  }
  try {
    for (auto& [sub, runner] : runners)
      if (sub->parsed()) {
        const int code = runner();
        return code != 0 ? code : CheckStandardOutput();
      }
    return 2;
  } catch (const epwa::Error& e) {
    std::fprintf(stderr, "epwa: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "epwa: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "epwa: error: %s\n", e.what());
    return 1;
  }
}
