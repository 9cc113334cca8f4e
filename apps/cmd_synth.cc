// epwa synth: write a model folder of a real or test shape with seeded weights.
#include <cstdio>

#include "base/error.h"
#include "base/timer.h"
#include "cli.h"
#include "synth/synth.h"

namespace epwa::cli {

Runner RegisterSynth(CLI::App& app) {
  auto* cmd = app.add_subcommand("synth", "write a Hugging Face model folder with seeded random weights");
  struct Flags {
    SynthOptions options;
    std::string dtype = "bf16";
    bool list = false;
  };
  auto f = std::make_shared<Flags>();
  auto* preset = cmd->add_option("--preset", f->options.preset, "model shape (see --list)");
  cmd->add_option("--config", f->options.config_path,
                  "a real config.json whose shape and layout to write (instead of --preset)")
      ->excludes(preset);
  cmd->add_option("--out", f->options.out_dir, "output folder");
  cmd->add_option("--layers", f->options.layers, "keep only the first N layers")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--dtype", f->dtype, "bf16, f16 or f32")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_option("--seed", f->options.seed, "weight seed (default 1)")->transform(Uint64Number());
  cmd->add_flag("--force", f->options.force, "replace an existing output folder");
  cmd->add_flag("--list", f->list, "list the presets");
  return [f]() {
    if (f->list) {
      for (const auto& name : SynthPresetNames()) {
        const ModelConfig c = SynthPreset(name);
        std::printf("%-20s %s, %lld layers, d_model %lld%s\n", name.c_str(), c.architecture.c_str(),
                    (long long)c.num_layers, (long long)c.hidden_size,
                    c.IsMoe() ? (", " + std::to_string(c.num_experts) + " experts top-" +
                                 std::to_string(c.num_experts_per_tok)).c_str()
                              : "");
      }
      return 0;
    }
    Require(!f->options.preset.empty() || !f->options.config_path.empty(),
            "synth needs --preset NAME (see epwa synth --list) or --config FILE");
    Require(!f->options.out_dir.empty(), "synth needs --out DIR");
    f->options.dtype = f->dtype == "f32" ? DType::kF32 : f->dtype == "f16" ? DType::kF16 : DType::kBF16;
    Stopwatch clock;
    const uint64_t bytes = WriteSynthModel(f->options);
    std::fprintf(stderr, "synth: wrote %s (%s, %.1f MB of weights) in %.1f s\n",
                 f->options.out_dir.c_str(),
                 (f->options.preset.empty() ? f->options.config_path : f->options.preset).c_str(),
                 bytes / 1e6, clock.Seconds());
    return 0;
  };
}

}  // namespace epwa::cli
