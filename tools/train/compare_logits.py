#!/usr/bin/python3
"""Compare the exported model three ways on the same ids:
  WORK/epwa_logits.npy + WORK/epwa_score.json   (build/epwa score --json --logits-out)
  WORK/ref_logits.npy  + WORK/ref_routing.json  (tools/reference_forward.py, float64 NumPy)
  WORK/torch_check_logits.npy + torch_check.json (train_moe.py's torch model, bf16-rounded weights)
Prints max abs logit differences and whether the selected experts agree; exits 1 on failure.
  compare_logits.py WORK [--tol 1e-3] [--torch-tol 2e-2]
"""
import argparse
import json
import os
import sys

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("work")
ap.add_argument("--tol", type=float, default=1e-3, help="epwa vs reference")
ap.add_argument("--torch-tol", type=float, default=2e-2,
                help="torch (float32 activations) vs reference")
a = ap.parse_args()
w = a.work
E = np.load(os.path.join(w, "epwa_logits.npy")).astype(np.float64)
R = np.load(os.path.join(w, "ref_logits.npy")).astype(np.float64)
T = np.load(os.path.join(w, "torch_check_logits.npy")).astype(np.float64)
score = json.load(open(os.path.join(w, "epwa_score.json")))
ref = json.load(open(os.path.join(w, "ref_routing.json")))
tch = json.load(open(os.path.join(w, "torch_check.json")))

e_exp = [[sorted(l["experts"]) for l in p["routing"]] for p in score["positions"]]        # [t][layer]
r_exp = [[sorted(L["positions"][t]["experts"]) for L in ref["layers"]] for t in range(R.shape[0])]
t_exp = [[sorted(tch["experts"][l][t]) for l in range(len(tch["experts"]))] for t in range(T.shape[0])]

d_er = np.abs(E - R).max()
d_tr = np.abs(T - R).max()
d_et = np.abs(E - T).max()
print(f"ids: {tch['ids']}")
print(f"logits shape {E.shape}; range of reference logits [{R.min():.3f}, {R.max():.3f}]")
print(f"max |epwa - reference| = {d_er:.3e}")
print(f"max |torch - reference| = {d_tr:.3e}")
print(f"max |epwa - torch|      = {d_et:.3e}")
print(f"argmax agree epwa/ref: {(E.argmax(1) == R.argmax(1)).mean() * 100:.0f}%  "
      f"torch/ref: {(T.argmax(1) == R.argmax(1)).mean() * 100:.0f}%")
print(f"experts identical epwa==ref: {e_exp == r_exp}; torch==ref: {t_exp == r_exp}")
ok = d_er < a.tol and d_tr < a.torch_tol and e_exp == r_exp and t_exp == r_exp
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
