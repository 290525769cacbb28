"""Image operations, the augmentation policy and the evaluation corruption suite."""
