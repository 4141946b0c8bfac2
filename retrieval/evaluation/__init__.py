"""The evaluation: metrics (`metrics`), the sweep over methods, read-outs, regimes, layers and seeds (`sweep`),
its report (`report`) and the papers' figures beside ours (`paper_numbers`). See docs/EVALUATION.md."""
