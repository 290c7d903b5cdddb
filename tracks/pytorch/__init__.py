"""PyTorch fundamentals as small, tested exercises (see docs/learning-path.md and docs/learn/).

- `autograd`: the gradients of a two-layer network written by hand, checked against torch.autograd and
  finite differences;
- `mlp`: a training loop with a validation split, early stopping and best-weights restore (scikit-learn's
  handwritten digits);
- `attention`: causal self-attention spelled out (rotary, QK-norm, mask, softmax), checked against
  `nanochat.gpt.CausalSelfAttention`.

Each module is short enough to read in one sitting; the tests in tests/tracks/pytorch/ are the exercises'
answers key.
"""
