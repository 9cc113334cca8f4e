// epwa: run Mixture-of-Experts language models on the CPU.
//
// Every failure a user can cause (bad flags, bad files, unsupported models)
// ends here as one line on stderr and a non-zero exit code, never a crash.
#include <cstdio>
#include <map>

#include "base/error.h"
#include "cli.h"

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
      if (sub->parsed()) return runner();
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
