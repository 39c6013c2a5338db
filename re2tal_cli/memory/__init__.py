"""memprofile's core: will a training configuration fit a GPU? Estimate (fake tensors) and measure (real steps)."""
