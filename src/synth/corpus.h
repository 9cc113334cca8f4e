// The English text that `epwa synth` trains its small tokenizers on.
#pragma once

#include <string_view>

namespace epwa {

// About 6 KB of plain English prose written for this project (no third-party
// text), varied enough that the trained BPE learns common English pieces.
std::string_view SynthTokenizerCorpus();

}  // namespace epwa
