#!/usr/bin/python3
"""Three-way check of an exported tiny-qwen3-moe folder on a sentence of real text:
  CHECK/epwa_logits.npy + CHECK/epwa_score.json   (build/epwa score --ids ... --json --logits-out)
  CHECK/ref_logits.npy  + CHECK/ref_routing.json  (tools/reference_forward.py, float64 NumPy)
  CHECK/torch_check_logits.npy + torch_check.json (train_qwen3_moe.py's torch model with the
                                                   bf16-rounded weights it exported)
Compares the logits (max abs difference) and every selected expert (the top-k set of every
layer at every position). Prints the result, writes it as JSON with --out, exits 1 on failure.
  compare_qwen3_moe.py CHECK [--tol 1e-3] [--torch-tol 2e-2] [--out MODEL/three_way_check.json]
"""
import argparse
import json
import os
import sys

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("check")
ap.add_argument("--tol", type=float, default=1e-3, help="epwa vs reference")
ap.add_argument("--torch-tol", type=float, default=2e-2,
                help="torch (float32 activations) vs reference (float64)")
ap.add_argument("--out")
a = ap.parse_args()
w = a.check
E = np.load(os.path.join(w, "epwa_logits.npy")).astype(np.float64)
R = np.load(os.path.join(w, "ref_logits.npy")).astype(np.float64)
T = np.load(os.path.join(w, "torch_check_logits.npy")).astype(np.float64)
score = json.load(open(os.path.join(w, "epwa_score.json")))
ref = json.load(open(os.path.join(w, "ref_routing.json")))
tch = json.load(open(os.path.join(w, "torch_check.json")))
n_pos, n_layers = R.shape[0], len(ref["layers"])

# Expert sets as [position][layer] -> sorted list, from each of the three sources.
e_exp = [[sorted(l["experts"]) for l in p["routing"]] for p in score["positions"]]
r_exp = [[sorted(L["positions"][t]["experts"]) for L in ref["layers"]] for t in range(n_pos)]
t_exp = [[sorted(tch["experts"][l][t]) for l in range(n_layers)] for t in range(n_pos)]


def diff_count(x, y):
    return sum(a != b for xs, ys in zip(x, y) for a, b in zip(xs, ys))


res = {
    "text": tch.get("text"), "ids": tch["ids"], "positions": n_pos, "layers": n_layers,
    "experts_per_token": len(r_exp[0][0]),
    "logits_shape": list(E.shape),
    "reference_logit_range": [round(float(R.min()), 4), round(float(R.max()), 4)],
    "max_abs_epwa_vs_reference": float(np.abs(E - R).max()),
    "max_abs_torch_vs_reference": float(np.abs(T - R).max()),
    "max_abs_epwa_vs_torch": float(np.abs(E - T).max()),
    "argmax_agree_epwa_reference": float((E.argmax(1) == R.argmax(1)).mean()),
    "argmax_agree_torch_reference": float((T.argmax(1) == R.argmax(1)).mean()),
    "expert_sets_compared": n_pos * n_layers,
    "expert_sets_differing_epwa_reference": diff_count(e_exp, r_exp),
    "expert_sets_differing_torch_reference": diff_count(t_exp, r_exp),
    "min_router_margin_torch": tch.get("min_router_margin"),
    "tolerances": {"epwa_vs_reference": a.tol, "torch_vs_reference": a.torch_tol},
}
res["ok"] = bool(res["max_abs_epwa_vs_reference"] < a.tol
                 and res["max_abs_torch_vs_reference"] < a.torch_tol
                 and res["expert_sets_differing_epwa_reference"] == 0
                 and res["expert_sets_differing_torch_reference"] == 0)
print(f"text: {res['text']!r} ({n_pos} ids: {tch['ids']})")
print(f"logits {E.shape}; reference range {res['reference_logit_range']}")
print(f"max |epwa - reference| = {res['max_abs_epwa_vs_reference']:.3e}")
print(f"max |torch - reference| = {res['max_abs_torch_vs_reference']:.3e}")
print(f"max |epwa - torch|      = {res['max_abs_epwa_vs_torch']:.3e}")
print(f"argmax agree epwa/ref {res['argmax_agree_epwa_reference'] * 100:.0f}%, torch/ref "
      f"{res['argmax_agree_torch_reference'] * 100:.0f}%")
print(f"top-{res['experts_per_token']} expert sets ({n_pos} positions x {n_layers} layers): differing "
      f"epwa/ref {res['expert_sets_differing_epwa_reference']}, torch/ref "
      f"{res['expert_sets_differing_torch_reference']} (smallest k-th vs (k+1)-th router probability "
      f"gap in torch: {res['min_router_margin_torch']})")
print("OK" if res["ok"] else "FAILED")
if a.out:
    json.dump(res, open(a.out, "w"), indent=2)
sys.exit(0 if res["ok"] else 1)
