// epwa keygen: a new 32-byte watermark key, file mode 0600.
#include <cstdio>

#include "cli.h"
#include "watermark/key.h"

namespace epwa::cli {

Runner RegisterKeygen(CLI::App& app) {
  auto* cmd = app.add_subcommand("keygen", "write a new secret watermark key (32 random bytes, mode 0600)");
  struct Flags {
    std::string out;
    bool force = false;
  };
  auto f = std::make_shared<Flags>();
  cmd->add_option("--out", f->out, "key file to create")->required();
  cmd->add_flag("--force", f->force,
                "replace an existing key file (text marked with it becomes undetectable); never a "
                "device, FIFO, folder or symbolic link");
  return [f]() {
    wm::WriteNewKeyFile(f->out, f->force);
    std::fprintf(stderr, "wrote a new 32-byte watermark key to %s (mode 0600); keep it secret and back it up\n",
                 f->out.c_str());
    return 0;
  };
}

}  // namespace epwa::cli
